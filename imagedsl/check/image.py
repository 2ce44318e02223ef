"""Rules on the image as a whole: ``root-user``, ``toolchain-in-final``, ``unpinned-base``.

The target's image is its last step's stage chain (FROM ... last step): a process started
from it runs as the last USER of that chain, carries whatever the chain installed, and
starts from a base that, named by tag, may be a different image next week.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Final

from imagedsl.check._context import CheckContext
from imagedsl.check._shell import commands, operands, program, run_script
from imagedsl.check.model import Finding
from imagedsl.steps import Cmd, Entrypoint, FromImage, Run, User

_ROOT: Final = frozenset({"", "root", "0"})
#: Base images that are compilers or SDKs (the last part of the repository name).
_TOOLCHAIN_IMAGES: Final = frozenset(
    {
        "gcc", "golang", "rust", "maven", "gradle", "buildpack-deps", "clang", "swift",
        "haskell", "sdk", "dotnet-sdk", "android-sdk", "llvm",
    }
)  # fmt: skip
_JDK_IMAGES: Final = frozenset(
    {"openjdk", "eclipse-temurin", "amazoncorretto", "ibmjava", "sapmachine"}
)
#: Packages that are build tools (apt, apk, yum/dnf names).
_BUILD_PACKAGES: Final = frozenset(
    {
        "build-essential", "gcc", "g++", "gcc-c++", "make", "cmake", "clang", "llvm",
        "autoconf", "automake", "libtool", "pkg-config", "pkgconf", "build-base", "musl-dev",
        "libc6-dev", "libc-dev", "golang", "golang-go", "rustc", "cargo", "gfortran",
        "ninja-build", "meson", "bison", "flex", "nasm", "yasm",
    }
)  # fmt: skip
_INSTALLERS: Final = {
    "apt-get": ("install",),
    "apt": ("install",),
    "apk": ("add",),
    "yum": ("install", "groupinstall"),
    "dnf": ("install", "groupinstall"),
    "microdnf": ("install",),
    "zypper": ("install", "in"),
}
_REMOVERS: Final = {
    "apt-get": ("purge", "remove", "autoremove"),
    "apt": ("purge", "remove", "autoremove"),
    "apk": ("del",),
    "yum": ("remove", "erase", "autoremove"),
    "dnf": ("remove", "erase", "autoremove"),
    "microdnf": ("remove",),
    "zypper": ("remove", "rm"),
}


def root_user(ctx: CheckContext) -> Iterator[Finding]:
    """The target image runs as root: its last USER is root, or it sets none and says
    what to run (ENTRYPOINT or CMD)."""
    chain = ctx.chain(ctx.output)
    users = [node for node in chain if isinstance(node.step, User)]
    final = ctx.output.state.user
    if final.partition(":")[0] not in _ROOT:
        return
    if users:
        yield ctx.finding(
            "root-user",
            users[-1],
            f"the image runs as root: its last USER is {final!r}",
            "A process that breaks out of the application then owns the container. Switch "
            "to an unprivileged user "
            'after the steps that need root: .user("10001:10001") (a numeric uid needs no '
            "entry in /etc/passwd).",
        )
        return
    runs_something = any(isinstance(node.step, Entrypoint | Cmd) for node in chain)
    base = chain[0].step
    named_nonroot = isinstance(base, FromImage) and any(
        word in str(base.image) for word in ("nonroot", "non-root", "rootless")
    )
    if runs_something and not named_nonroot:
        yield ctx.finding(
            "root-user",
            ctx.output,
            "the image runs as root: no USER step sets another user",
            "The base's default user is root unless it sets one, and a process that breaks "
            'out of the application then owns the container. Add .user("10001:10001") after '
            "the steps that need root (a numeric uid needs no entry in /etc/passwd).",
        )


def toolchain_in_final(ctx: CheckContext) -> Iterator[Finding]:
    """The target image is a compiler or SDK image, or installs build tools and keeps them."""
    chain = ctx.chain(ctx.output)
    base = chain[0]
    if isinstance(base.step, FromImage) and _toolchain_image(base.step):
        yield ctx.finding(
            "toolchain-in-final",
            base,
            f"the final image is built on {base.step.image.familiar}, a compiler/SDK image",
            "The toolchain ships with the application (hundreds of MB, and tools an "
            "attacker can use). Build in a stage of its own and copy only the result into a "
            'small runtime image: app = dsl.image("…-slim").copy(builder.path("/out/app"), '
            '"/app").',
        )
    for node in chain:
        if isinstance(node.step, Run):
            kept = _build_tools_kept(node.step)
            if kept:
                yield ctx.finding(
                    "toolchain-in-final",
                    node,
                    f"RUN installs build tools ({', '.join(kept)}) in the final image and "
                    "keeps them",
                    "Compile in a builder stage and copy only the result into the "
                    "final image (or remove them in the same RUN, e.g. apk add --virtual "
                    ".build-deps ... && apk del .build-deps).",
                )


def _toolchain_image(step: FromImage) -> bool:
    reference = step.image
    if reference.transport != "registry":
        return False
    last = reference.name.rsplit("/", 1)[-1]
    tag = reference.tag or ""
    if last in _TOOLCHAIN_IMAGES or reference.name.endswith("dotnet/sdk"):
        return True
    if last in _JDK_IMAGES and "jre" not in tag:
        return "jdk" in tag or last == "openjdk"
    return any(marker in tag for marker in ("-devel", "-sdk"))


def _build_tools_kept(step: Run) -> list[str]:
    installed: list[str] = []
    removed: set[str] = set()
    virtual: dict[str, list[str]] = {}
    for words in commands(run_script(step)):
        name, args = program(words), operands(words)
        if name not in _INSTALLERS or not args:
            continue
        if args[0] in _INSTALLERS[name]:
            packages = [a for a in args[1:] if a.split("=")[0] in _BUILD_PACKAGES]
            group = next(
                (words[i + 1] for i, w in enumerate(words[:-1]) if w in ("--virtual", "-t")), None
            )
            if group is not None:
                virtual[group] = packages
            installed.extend(packages)
            if "Development Tools" in " ".join(words):
                installed.append("Development Tools")
        elif args[0] in _REMOVERS[name]:
            for arg in args[1:]:
                removed.add(arg)
                removed.update(virtual.get(arg, ()))
    return [p for p in dict.fromkeys(installed) if p.split("=")[0] not in removed]


def unpinned_base(ctx: CheckContext) -> Iterator[Finding]:
    """Base images named by tag only: no digest in the reference, none in the lock file."""
    for node in ctx.nodes:
        step = node.step
        if not isinstance(step, FromImage) or node.preimage.get("digest") is not None:
            continue
        reference = step.image
        if reference.transport == "registry":
            fix = (
                f'Pin it: dsl.image("{reference.familiar}@sha256:…"), or run `imagedsl plan '
                "--resolve` to record its digest in imagedsl.lock."
            )
        else:
            fix = "Give its digest in the reference (…@sha256:…) to pin it."
        yield ctx.finding(
            "unpinned-base",
            node,
            f"{ctx.instruction(node)} names its base by tag only",
            "The key follows the name, so a new image pushed under that tag is a different base with "
            f"the same key, and two builds can differ. {fix}",
        )


CHECKS = (root_user, toolchain_in_final, unpinned_base)
