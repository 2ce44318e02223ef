"""The seccomp profile every RUN step runs under: Docker's default, as BuildKit applies it.

The profile is read from the system, in the format Docker and the ``containers`` tools share
(``defaultAction``, ``archMap``, ``syscalls`` with ``includes``/``excludes``):

- ``$IMAGEDSL_SECCOMP_PROFILE``: a profile file used as it is (Docker's own ``default.json``,
  or an operator's);
- else ``/usr/share/containers/seccomp.json`` (Debian's ``golang-github-containers-common``,
  which podman, buildah and skopeo bring). That is podman's default, which is Docker's with a
  few calls let through for nested containers; :func:`docker_default` takes them back, so a
  RUN is refused what BuildKit refuses it: new namespaces (``unshare``, ``clone`` with
  namespace flags, ``setns``), ``mount`` and its new API, ``pivot_root``, the kernel keyring
  (``keyctl``), ``reboot``, ``syslog``, NUMA policy and ``pidfd_getfd``, each of which
  Docker grants only with capabilities a RUN does not have; ``clone3`` answers ``ENOSYS`` so
  the C library falls back to ``clone``; unknown calls fail with ``EPERM``, as in Docker.

The profile is then resolved for this RUN (:func:`runtime_seccomp`): rules whose ``includes``
and ``excludes`` (capabilities, architectures, minimum kernel) do not hold are dropped, and
what is left is the OCI runtime spec's ``linux.seccomp``.

A machine whose kernel or runc cannot filter system calls fails the RUN with
:class:`SeccompUnavailableError`, which names the opt-out (``--no-seccomp``).
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
from collections.abc import Collection, Mapping
from functools import cache
from pathlib import Path
from typing import Any, Final

import attrs

from imagedsl.errors import EnvironmentFailure

PROFILE_ENV: Final = "IMAGEDSL_SECCOMP_PROFILE"
SYSTEM_PROFILE: Final = Path("/usr/share/containers/seccomp.json")
ALLOW: Final = "SCMP_ACT_ALLOW"
ERRNO: Final = "SCMP_ACT_ERRNO"
EPERM: Final = 1
ENOSYS: Final = 38
#: Namespace flags ``clone`` may not use without CAP_SYS_ADMIN: NEWNS, NEWCGROUP, NEWUTS,
#: NEWIPC, NEWUSER, NEWPID, NEWNET (and NEWTIME, 0x80, which Docker leaves).
CLONE_NAMESPACE_FLAGS: Final = 0x7E020000
#: Calls the containers profile allows to everyone that Docker's default allows only with
#: capabilities a RUN does not get (CAP_SYS_ADMIN, CAP_SYS_BOOT, CAP_SYSLOG, CAP_SYS_NICE,
#: CAP_SYS_PTRACE), or to nobody (the kernel keyring, which is not namespaced).
DOCKER_WITHHELD: Final = frozenset(
    {
        "add_key",
        "keyctl",
        "request_key",
        "clone",
        "clone3",
        "unshare",
        "setns",
        "mount",
        "umount",
        "umount2",
        "pivot_root",
        "fsconfig",
        "fsmount",
        "fsopen",
        "fspick",
        "mount_setattr",
        "move_mount",
        "open_tree",
        "name_to_handle_at",
        "syslog",
        "reboot",
        "get_mempolicy",
        "mbind",
        "set_mempolicy",
        "pidfd_getfd",
    }
)
#: Calls the containers profile refuses that Docker's default allows.
DOCKER_ALLOWED: Final = frozenset({"io_pgetevents", "io_pgetevents_time64", "vmsplice"})
#: Go's names of this machine's architecture (what ``includes.arches`` lists).
_GO_ARCH: Final = {
    "x86_64": "amd64",
    "aarch64": "arm64",
    "armv7l": "arm",
    "i686": "386",
    "ppc64le": "ppc64le",
    "s390x": "s390x",
    "riscv64": "riscv64",
}
_SCMP_ARCH: Final = {
    "amd64": "SCMP_ARCH_X86_64",
    "arm64": "SCMP_ARCH_AARCH64",
    "arm": "SCMP_ARCH_ARM",
    "386": "SCMP_ARCH_X86",
    "ppc64le": "SCMP_ARCH_PPC64LE",
    "s390x": "SCMP_ARCH_S390X",
    "riscv64": "SCMP_ARCH_RISCV64",
}


@attrs.define
class SeccompUnavailableError(EnvironmentFailure):
    """RUN steps must run under a seccomp profile and this machine cannot give one:
    ``problem`` says what is missing."""

    stage: str
    instruction: str
    problem: str

    def __str__(self) -> str:
        return (
            f"{self.stage}: {self.instruction}: RUN steps run under Docker's default seccomp "
            f"profile, and {self.problem}; build with --no-seccomp to run them without one "
            f"(less isolated than BuildKit), or with --backend docker"
        )


def kernel_problem() -> str | None:
    """Why this kernel cannot filter system calls, or None."""
    try:
        status = Path("/proc/self/status").read_text()
    except OSError:
        return "/proc/self/status cannot be read"
    if not any(line.startswith("Seccomp:") for line in status.splitlines()):
        return "the kernel has no seccomp support (CONFIG_SECCOMP)"
    actions = Path("/proc/sys/kernel/seccomp/actions_avail")
    try:
        available = actions.read_text().split()
    except OSError:
        return None  # kernels before 4.14 do not list them; runc will say if filters fail
    if not {"errno", "allow"} <= set(available):
        return f"the kernel's seccomp filters lack errno or allow ({' '.join(available)})"
    return None


@cache
def runtime_problem(runc: str) -> str | None:
    """Why ``runc`` cannot apply a seccomp profile (built without libseccomp), or None."""
    try:
        found = subprocess.run(
            [runc, "features"], capture_output=True, text=True, check=False, timeout=30
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        return f"{runc} features failed: {error}"
    if found.returncode != 0:
        return None  # runc before 1.1 has no `features`; it says at run time if it cannot
    try:
        enabled = json.loads(found.stdout)["linux"]["seccomp"]["enabled"]
    except (ValueError, KeyError, TypeError):
        return None
    return None if enabled else f"{runc} was built without seccomp support (libseccomp)"


def profile_path() -> tuple[Path, bool]:
    """The profile file, and whether it is the containers one (to be made Docker's)."""
    explicit = os.environ.get(PROFILE_ENV)
    return (Path(explicit), False) if explicit else (SYSTEM_PROFILE, True)


@cache
def read_profile(path: Path) -> dict[str, Any]:
    """A profile document (read once per process); OSError or ValueError when the file
    cannot be read or is not a profile."""
    document = json.loads(path.read_text())
    if not isinstance(document, dict) or not isinstance(document.get("syscalls"), list):
        raise ValueError(f"{path} is not a seccomp profile (no syscalls list)")
    return document


def load_profile(
    runc: str, capabilities: Collection[str], stage: str, instruction: str
) -> dict[str, Any]:
    """The ``linux.seccomp`` of a RUN with ``capabilities`` (see the module docstring)."""
    problem = kernel_problem() or runtime_problem(runc)
    if problem is None:
        path, from_containers = profile_path()
        try:
            document = read_profile(path)
        except (OSError, ValueError) as error:
            where = str(path) if from_containers else f"${PROFILE_ENV} ({path})"
            problem = f"the profile {where} cannot be read ({error})"
            if from_containers:
                problem += "; Debian ships it in golang-github-containers-common"
        else:
            if from_containers:
                document = docker_default(document)
            return runtime_seccomp(document, capabilities)
    raise SeccompUnavailableError(stage, instruction, problem)


def docker_default(containers: Mapping[str, Any]) -> dict[str, Any]:
    """Docker's default profile from the containers one (see the module docstring)."""
    rules: list[dict[str, Any]] = []
    for rule in containers["syscalls"]:
        names = set(rule.get("names") or ())
        if rule.get("action") == ALLOW:
            names -= DOCKER_WITHHELD
        else:
            names -= DOCKER_ALLOWED
        names.discard("clone")
        if names:
            rules.append({**rule, "names": sorted(names)})
    arg = 1 if _go_arch() in ("s390", "s390x") else 0  # s390 passes clone's flags second
    no_namespaces = {"index": arg, "value": CLONE_NAMESPACE_FLAGS, "valueTwo": 0}
    rules += [
        {"names": sorted(DOCKER_ALLOWED), "action": ALLOW},
        {
            "names": ["clone"],
            "action": ALLOW,
            "args": [{**no_namespaces, "op": "SCMP_CMP_MASKED_EQ"}],
        },
        {"names": ["clone3"], "action": ERRNO, "errnoRet": ENOSYS},
    ]
    return {**containers, "defaultErrnoRet": EPERM, "syscalls": rules}


def runtime_seccomp(
    profile: Mapping[str, Any],
    capabilities: Collection[str],
    *,
    machine: str | None = None,
    kernel: str | None = None,
) -> dict[str, Any]:
    """``profile`` resolved for a process with ``capabilities`` on this machine: the OCI
    runtime spec's ``linux.seccomp``."""
    arch = _go_arch(machine)
    release = _kernel_version(kernel or platform.release())
    syscalls = []
    for rule in profile["syscalls"]:
        if not _applies(rule, arch, release, capabilities):
            continue
        entry: dict[str, Any] = {"names": list(rule["names"]), "action": rule["action"]}
        if rule.get("errnoRet") is not None:
            entry["errnoRet"] = rule["errnoRet"]
        if rule.get("args"):
            entry["args"] = [
                {key: arg[key] for key in ("index", "value", "valueTwo", "op") if key in arg}
                for arg in rule["args"]
            ]
        syscalls.append(entry)
    seccomp: dict[str, Any] = {
        "defaultAction": profile.get("defaultAction", ERRNO),
        "architectures": _architectures(profile, arch),
        "syscalls": syscalls,
    }
    if profile.get("defaultErrnoRet") is not None:
        seccomp["defaultErrnoRet"] = profile["defaultErrnoRet"]
    return seccomp


def _applies(
    rule: Mapping[str, Any], arch: str, release: tuple[int, ...], caps: Collection[str]
) -> bool:
    includes = rule.get("includes") or {}
    excludes = rule.get("excludes") or {}
    if includes.get("arches") and arch not in includes["arches"]:
        return False
    if not all(cap in caps for cap in includes.get("caps") or ()):
        return False
    minimum = includes.get("minKernel")
    if minimum and release < _kernel_version(minimum):
        return False
    if arch in (excludes.get("arches") or ()):
        return False
    return not any(cap in caps for cap in excludes.get("caps") or ())


def _architectures(profile: Mapping[str, Any], arch: str) -> list[str]:
    native = _SCMP_ARCH.get(arch)
    for entry in profile.get("archMap") or ():
        if entry.get("architecture") == native:
            return [native, *(entry.get("subArchitectures") or ())]
    return [native] if native else []


def _go_arch(machine: str | None = None) -> str:
    name = machine or platform.machine()
    return _GO_ARCH.get(name, name)


def _kernel_version(text: str) -> tuple[int, ...]:
    numbers: list[int] = []
    for part in text.split("-")[0].split(".")[:3]:
        digits = "".join(c for c in part if c.isdigit())
        if not digits:
            break
        numbers.append(int(digits))
    return tuple(numbers)


def names_in(seccomp: Mapping[str, Any], action: str) -> set[str]:
    """The calls a resolved profile gives ``action`` to without argument checks."""
    found: set[str] = set()
    for rule in seccomp["syscalls"]:
        if rule["action"] == action and not rule.get("args"):
            found.update(rule["names"])
    return found


__all__ = [
    "PROFILE_ENV",
    "SYSTEM_PROFILE",
    "SeccompUnavailableError",
    "docker_default",
    "kernel_problem",
    "load_profile",
    "names_in",
    "profile_path",
    "read_profile",
    "runtime_problem",
    "runtime_seccomp",
]
