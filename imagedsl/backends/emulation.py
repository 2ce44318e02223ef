"""RUN steps for another architecture: binfmt_misc hands the kernel's exec of a foreign ELF
binary to a static QEMU (Debian's qemu-user-static).

The handler must be registered with flag ``F`` ("fix binary"): the kernel then opens the
interpreter when it is registered, so it works inside a container's root, where
``/usr/bin/qemu-aarch64-static`` does not exist. Debian registers its handlers with ``PF`` or
without ``F`` on some releases; ``.ci/run`` registers aarch64 again with ``F`` (see
docs/multiplatform.md). Whether a RUN can execute is checked before any work, by both
backends (:func:`check_emulation`; the Docker backend when its engine runs on this machine,
whose kernel then runs BuildKit's RUN steps).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Final

from imagedsl.backends import BuildRequestError
from imagedsl.errors import EnvironmentFailure
from imagedsl.oci.platform import Platform

if TYPE_CHECKING:
    from imagedsl.planner import Plan

BINFMT_MISC: Final = Path("/proc/sys/fs/binfmt_misc")

#: Debian's binfmt-P wrappers exec QEMU by path: inside a container's root it is not there.
_WRAPPERS: Final = ("/usr/libexec/qemu-binfmt/",)

#: Image architecture -> the name QEMU (and its binfmt_misc handler) gives it.
QEMU_NAMES: Final = {
    "amd64": "x86_64",
    "arm64": "aarch64",
    "arm": "arm",
    "386": "i386",
    "ppc64le": "ppc64le",
    "s390x": "s390x",
    "riscv64": "riscv64",
    "mips64le": "mips64el",
    "loong64": "loongarch64",
}


def emulation_problem(
    platform: str, *, host: Platform | None = None, binfmt: Path = BINFMT_MISC
) -> str | None:
    """None when programs for ``platform`` run on this machine (natively, or through a
    binfmt_misc handler registered with flag F); else what is missing, in a few words."""
    wanted = Platform.parse(platform).normalized()
    native = (host or Platform.host()).normalized()
    if wanted.os != "linux":
        return f"RUN steps run Linux programs, not {wanted.os} ones"
    if wanted.architecture == native.architecture:
        return None
    if (wanted.architecture, native.architecture) == ("386", "amd64"):
        return None  # x86-64 kernels run 32-bit x86 programs
    name = QEMU_NAMES.get(wanted.architecture)
    if name is None:
        return f"no QEMU emulator is known for {wanted.architecture}"
    if not (binfmt / "register").exists():
        return f"binfmt_misc is not mounted at {binfmt}"
    entry = binfmt / f"qemu-{name}"
    try:
        lines = entry.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return f"no binfmt_misc handler qemu-{name} is registered"
    if not lines or lines[0].strip() != "enabled":
        return f"the binfmt_misc handler qemu-{name} is disabled"
    fields: dict[str, str] = {}
    for line in lines[1:]:
        name_part, _, value = line.partition(" ")
        fields[name_part] = value
    interpreter = fields.get("interpreter", "").strip()
    if interpreter.startswith(_WRAPPERS):
        return (
            f"the binfmt_misc handler qemu-{name} runs Debian's wrapper {interpreter}, which "
            f"looks qemu-{name}-static up inside the container's root"
        )
    if "F" not in fields.get("flags:", ""):
        return (
            f"the binfmt_misc handler qemu-{name} lacks flag F (its interpreter {interpreter} "
            "would be looked up inside the container's root)"
        )
    return None


class EmulationUnavailableError(EnvironmentFailure, BuildRequestError):
    """A RUN for another platform must execute, and this machine cannot run its programs."""

    def __init__(self, platform: str, problem: str, instruction: str, stage: str) -> None:
        self.platform = platform
        self.problem = problem
        self.instruction = instruction
        self.stage = stage
        super().__init__(self._message())

    def _message(self) -> str:
        arch = Platform.parse(self.platform).architecture
        name = QEMU_NAMES.get(arch, arch)
        return (
            f"{self.stage}: {self.instruction}: this RUN is for {self.platform}, which this "
            f"machine ({Platform.host()}) runs only under emulation, and {self.problem}. "
            "Enable it: apt-get install qemu-user-static; mount binfmt_misc if absent "
            f"(mount -t binfmt_misc binfmt_misc {BINFMT_MISC}); register qemu-{name} with "
            "flags F (.ci/run does all three; see docs/multiplatform.md). Or build that stage "
            "on $BUILDPLATFORM and cross-compile"
        )

    def __str__(self) -> str:
        return self._message()


def check_emulation(plan: Plan) -> None:
    """Before any work: raise :class:`EmulationUnavailableError` for the first RUN that must
    execute (it is not a hit) for a platform this machine runs neither natively nor under
    emulation."""
    from imagedsl.planner import PlanStatus

    checked: set[str] = set()
    for step in plan.steps:
        if step.kind != "run" or step.status is PlanStatus.HIT or step.platform in checked:
            continue
        checked.add(step.platform)
        problem = emulation_problem(step.platform)
        if problem is not None:
            raise EmulationUnavailableError(
                step.platform, problem, step.instruction, f"{step.stage}[{step.index}]"
            ).with_location(step.location)
