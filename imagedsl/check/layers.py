"""Rules on what layers hold: ``cache-order``, ``deleted-later`` and ``package-cache``.

A layer is an immutable diff: whatever a step writes ships, and a later deletion only hides
it. So a package manager's download cache left by a RUN costs its bytes in every pull; a
file deleted by a later RUN still ships in the layer that added it; and a COPY of the whole
context placed before the dependency install makes every edit reinstall the dependencies,
where copying the manifests alone first would keep that layer cached.
"""

from __future__ import annotations

import posixpath
import shlex
from collections.abc import Iterator, Mapping, Sequence

import attrs

from imagedsl._layerparts import is_manifest
from imagedsl.check._context import CheckContext
from imagedsl.check._shell import (
    absolute,
    commands,
    covers,
    iter_options,
    operands,
    program,
    removed_paths,
    run_script,
    under,
    with_workdirs,
)
from imagedsl.check.model import Finding
from imagedsl.contexts import ContextSource
from imagedsl.graph import StepNode
from imagedsl.steps import Add, Copy, Run, StagePath

# -- package-cache -----------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class PackageCache:
    """A cache a package manager leaves, and how to not leave it."""

    manager: str
    #: The directory, absolute, or starting with ``~/`` when the user's home is unknown.
    path: str
    #: What to add at the end of the same RUN.
    cleanup: str
    #: A tool command that cleans it (``yum clean all``), as (program, operand) pairs.
    cleaned_by: tuple[tuple[str, str], ...] = ()


def package_caches(words: Sequence[str], env: Mapping[str, str], home: str) -> list[PackageCache]:
    """The caches one simple command leaves (``home`` is ``~`` when unknown)."""
    name, args = program(words), operands(words)
    first = args[0] if args else ""
    found: list[PackageCache] = []
    if name in ("apt-get", "apt") and "update" in args:
        found.append(
            PackageCache(
                manager="apt", path="/var/lib/apt/lists", cleanup="rm -rf /var/lib/apt/lists/*"
            )
        )
    elif name == "apk" and first in ("add", "update") and "--no-cache" not in words:
        found.append(
            PackageCache(manager="apk", path="/var/cache/apk", cleanup="rm -rf /var/cache/apk/*")
        )
    elif _is_pip(words) and "install" in args and _pip_caches(words, env):
        path = next(
            iter_options(words, "--cache-dir"), env.get("PIP_CACHE_DIR", f"{home}/.cache/pip")
        )
        found.append(
            PackageCache(
                manager="pip", path=path, cleanup="rm -rf " + path, cleaned_by=(("pip", "cache"),)
            )
        )
    elif name == "uv" and (first == "sync" or args[:2] == ["pip", "install"]):
        if "--no-cache" not in words and "UV_NO_CACHE" not in env:
            path = next(
                iter_options(words, "--cache-dir"), env.get("UV_CACHE_DIR", f"{home}/.cache/uv")
            )
            found.append(
                PackageCache(
                    manager="uv", path=path, cleanup="rm -rf " + path, cleaned_by=(("uv", "cache"),)
                )
            )
    elif name == "npm" and first in ("install", "i", "ci", "add", "update"):
        path = next(
            iter_options(words, "--cache"),
            env.get("npm_config_cache", env.get("NPM_CONFIG_CACHE", f"{home}/.npm")),
        )
        found.append(
            PackageCache(
                manager="npm",
                path=path,
                cleanup="npm cache clean --force",
                cleaned_by=(("npm", "cache"),),
            )
        )
    elif name == "yarn" and first in ("", "install", "add"):
        default = "/usr/local/share/.cache/yarn" if home == "/root" else f"{home}/.cache/yarn"
        path = next(iter_options(words, "--cache-folder"), env.get("YARN_CACHE_FOLDER", default))
        found.append(
            PackageCache(
                manager="yarn",
                path=path,
                cleanup="yarn cache clean",
                cleaned_by=(("yarn", "cache"),),
            )
        )
    elif name in ("yum", "dnf", "microdnf") and first in _INSTALLS:
        tool = "dnf" if name == "dnf" else "yum"
        found.append(
            PackageCache(
                manager=name,
                path=f"/var/cache/{tool}",
                cleanup=f"{name} clean all",
                cleaned_by=((name, "clean"),),
            )
        )
    elif name == "zypper" and first in (*_INSTALLS, "in", "up", "dup", "patch"):
        found.append(
            PackageCache(
                manager="zypper",
                path="/var/cache/zypp",
                cleanup="zypper clean --all",
                cleaned_by=(("zypper", "clean"), ("zypper", "cc")),
            )
        )
    return found


_INSTALLS = ("install", "update", "upgrade", "groupinstall", "reinstall", "localinstall")


def _is_pip(words: Sequence[str]) -> bool:
    name = program(words)
    if name == "pip" or (name.startswith("pip") and name[3:].replace(".", "").isdigit()):
        return True
    return name.startswith("python") and len(words) > 2 and words[1:3] == ["-m", "pip"]


def _pip_caches(words: Sequence[str], env: Mapping[str, str]) -> bool:
    if "--no-cache-dir" in words or any(w.startswith("--no-cache-dir=") for w in words):
        return False
    # With --no-index nothing is downloaded, so nothing is cached.
    return "PIP_NO_CACHE_DIR" not in env and "--no-index" not in words


def _home(user: str) -> str:
    name = user.partition(":")[0]
    return "/root" if name in ("", "root", "0") else "~"


def _mounted(path: str, targets: Sequence[str]) -> bool:
    if path.startswith("~/"):
        # The home is unknown: a mount of the same path under any home covers it.
        parts = path[2:].split("/")
        tails = ["/" + "/".join(parts[: i + 1]) for i in range(len(parts))]
        return any(t.rstrip("/").endswith(tail) for t in targets for tail in tails)
    return any(under(path, target) for target in targets)


def _deleted(path: str, removed: Sequence[str]) -> bool:
    if path.startswith("~/"):
        return any(r.endswith((path[1:], path[1:] + "/*")) for r in removed)
    return any(covers(pattern, path) for pattern in removed)


def package_cache(ctx: CheckContext) -> Iterator[Finding]:
    """RUNs whose package manager leaves its cache in the layer."""
    for node, step in ctx.runs():
        script_commands = commands(run_script(step))
        workdir = _workdir(node)
        removed = removed_paths(script_commands, workdir)
        targets = [m.target for m in step.mounts if m.target is not None and m.type != "secret"]
        ran = {(program(w), operands(w)[0] if operands(w) else "") for w in script_commands}
        env = node.state.variables
        home = _home(node.state.user)
        reported: set[str] = set()
        for words in script_commands:
            for cache in package_caches(words, env, home):
                if cache.path in reported or _mounted(cache.path, targets):
                    continue
                if _deleted(cache.path, removed) or ran.intersection(cache.cleaned_by):
                    continue
                reported.add(cache.path)
                mount = cache.path if not cache.path.startswith("~") else "/root" + cache.path[1:]
                sharing = ', sharing="locked"' if cache.manager in ("apt", "apk") else ""
                yield ctx.finding(
                    "package-cache",
                    node,
                    f"{shlex.join(words[:3])} leaves {cache.manager}'s cache ({cache.path}) in "
                    "the layer",
                    f"It ships with the image. Add `&& {cache.cleanup}` at the end of the same "
                    "RUN, or keep it out of the layer with a cache mount: "
                    f'mounts=[dsl.cache("{mount}"{sharing})].',
                )


# -- deleted-later ----------------------------------------------------------------------------

_OUTPUT_OPTIONS = ("-o", "-O", "--output", "--output-document", "-P", "--directory-prefix",
                   "-C", "--directory", "-d")  # fmt: skip


def created_paths(words: Sequence[str], workdir: str | None, home: str) -> list[str]:
    """Absolute paths one simple command writes (as far as its words tell)."""
    found: list[str] = []
    name, args = program(words), operands(words)
    for i, word in enumerate(words):
        if word in (">", ">>") and i + 1 < len(words):
            found.append(words[i + 1])
        elif word.startswith(">") and word.strip(">"):
            found.append(word.lstrip(">"))
    found.extend(iter_options(words, *_OUTPUT_OPTIONS))
    downloads_by_name = (name == "wget" and not {"-O", "-P"} & set(words)) or (
        name == "curl" and bool({"-O", "--remote-name"} & set(words))
    )
    if name in ("mkdir", "touch"):
        found.extend(args)
    elif name in ("cp", "mv", "ln", "install") and len(args) >= 2:
        found.append(args[-1])
    elif name == "git" and args[:1] == ["clone"] and len(args) >= 2:
        found.append(args[2] if len(args) > 2 else posixpath.basename(args[1]).removesuffix(".git"))
    elif downloads_by_name and args:
        found.append(posixpath.basename(args[-1].split("?")[0]))
    for cache in package_caches(words, {}, home):
        found.append(cache.path)
    paths = []
    for path in found:
        resolved = absolute(path, workdir)
        if resolved is not None and resolved != "/":
            paths.append(resolved)
    return paths


def deleted_later(ctx: CheckContext) -> Iterator[Finding]:
    """RUNs that delete files an earlier layer of the same image added."""
    for node, step in ctx.runs():
        script_commands = commands(run_script(step))
        removed = removed_paths(script_commands, _workdir(node))
        if not removed:
            continue
        for earlier in ctx.chain(node)[:-1]:
            found = _deleted_from(earlier, removed)
            if found is None:
                continue
            what, size = found
            where = "" if earlier.location is None else f" (line {earlier.location.line})"
            bytes_text = "" if size is None else f", {_human(size)}"
            yield ctx.finding(
                "deleted-later",
                node,
                f"RUN deletes {what}{bytes_text}, which {ctx.instruction(earlier)}{where} "
                "added in an earlier layer",
                "The bytes still ship in that layer, and anyone can read them. "
                + _deleted_fix(earlier),
            )


def _deleted_from(earlier: StepNode, removed: Sequence[str]) -> tuple[str, int | None] | None:
    step = earlier.step
    if isinstance(step, Copy | Add):
        dest = earlier.state.resolve_path(step.dest)
        if not dest.startswith("/"):
            return None
        dest = dest.rstrip("/") or "/"
        near = [p for p in removed if under(p, dest) or under(dest, p.rstrip("/*") or "/")]
        if not near:
            return None
        if isinstance(step.source, StagePath) or not earlier.trees:
            return f"{near[0]} under {dest}", None
        files = []
        for tree in earlier.trees:
            for placed, _, kind, _, size, _ in tree.rows:
                path = posixpath.normpath(posixpath.join(dest, placed))
                if kind == "file" and any(covers(p, path) for p in near):
                    files.append((path, size))
        if not files:
            return None
        shown = ", ".join(path for path, _ in files[:3]) + (" ..." if len(files) > 3 else "")
        return shown, sum(size for _, size in files)
    if isinstance(step, Run):
        earlier_commands = commands(run_script(step))
        workdir = _workdir(earlier)
        own_removals = removed_paths(earlier_commands, workdir)
        home = _home(earlier.state.user)
        for words, directory in with_workdirs(earlier_commands, workdir):
            for path in created_paths(words, directory, home):
                if any(covers(r, path) for r in own_removals):
                    continue
                if any(covers(pattern, path) for pattern in removed):
                    return path, None
    return None


def _deleted_fix(earlier: StepNode) -> str:
    step = earlier.step
    if isinstance(step, Copy | Add) and isinstance(step.source, ContextSource):
        return "Leave the files out of that copy instead (exclude=[...] or the context's ignore)."
    if isinstance(step, Copy):
        return "Copy only what the image needs from that stage instead."
    return "Delete them in the RUN that makes them, so they never enter a layer."


def _workdir(node: StepNode) -> str | None:
    workdir = node.state.workdir
    return workdir if workdir.startswith("/") else None


def _human(size: int) -> str:
    if size < 1 << 10:
        return f"{size} B"
    if size < 1 << 20:
        return f"{size / (1 << 10):.1f} KiB"
    return f"{size / (1 << 20):.1f} MiB"


# -- cache-order ------------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class Installer:
    """A dependency install: what it reads, and the command to run on the manifests alone."""

    ecosystem: str
    #: Manifests it needs (all of them must be copied) and may use (copied when present).
    needs: tuple[str, ...]
    uses: tuple[str, ...] = ()
    command: str


#: Installers by program: (verbs, manifests needed, manifests used when present, the command
#: to run on the manifests alone; "" for the command itself).
_INSTALLERS: dict[str, tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...], str]] = {
    "poetry": (("install",), ("pyproject.toml", "poetry.lock"), (), "poetry install --no-root"),
    "uv": (("sync",), ("pyproject.toml", "uv.lock"), (), "uv sync --frozen --no-install-project"),
    "pipenv": (("install", "sync"), ("Pipfile", "Pipfile.lock"), (), ""),
    "go": (("build", "install", "mod", "test", "vet"), ("go.mod",), ("go.sum",), "go mod download"),
    "cargo": (("build", "install", "fetch", "test"), ("Cargo.toml",), ("Cargo.lock",), "cargo fetch"),
    "bundle": (("", "install"), ("Gemfile",), ("Gemfile.lock",), ""),
    "composer": (("install",), ("composer.json",), ("composer.lock",),
                 "composer install --no-scripts --no-autoloader"),
    "mvn": (("package", "install", "verify", "compile", "test"), ("pom.xml",), (),
            "mvn dependency:go-offline"),
}  # fmt: skip


def installer(words: Sequence[str]) -> Installer | None:
    """The dependency install one simple command is, if it is one."""
    name, args = program(words), operands(words)
    first = args[0] if args else ""
    text = shlex.join(words)
    node_locks = ("package-lock.json", "npm-shrinkwrap.json", ".npmrc")
    if name == "npm" and first in ("ci", "install", "i") and len(args) == 1:
        return Installer(ecosystem="npm", needs=("package.json",), uses=node_locks, command=text)
    if name == "yarn" and first in ("", "install"):
        return Installer(
            ecosystem="yarn",
            needs=("package.json",),
            uses=("yarn.lock", ".yarnrc.yml"),
            command=text,
        )
    if name == "pnpm" and first in ("install", "i") and len(args) == 1:
        return Installer(
            ecosystem="pnpm", needs=("package.json",), uses=("pnpm-lock.yaml",), command=text
        )
    if _is_pip(words) and "install" in args:
        files = tuple(
            posixpath.basename(f)
            for f in iter_options(words, "-r", "--requirement", "-c", "--constraint")
        )
        if files and "/" not in "".join(iter_options(words, "-r", "--requirement")):
            return Installer(ecosystem="pip", needs=files, command=text)
        return None
    known = _INSTALLERS.get(name)
    if known is not None and first in known[0]:
        _, needs, uses, command = known
        return Installer(ecosystem=name, needs=needs, uses=uses, command=command or text)
    return None


def cache_order(ctx: CheckContext) -> Iterator[Finding]:
    """A broad COPY from the context before the dependency install that needs only its
    manifests."""
    reported: set[int] = set()
    for node, step in ctx.runs():
        installs = [i for w in commands(run_script(step)) if (i := installer(w)) is not None]
        if not installs:
            continue
        chain = ctx.chain(node)
        for position, earlier in enumerate(chain[:-1]):
            if earlier.index in reported or not broad_copy(earlier):
                continue
            if _installed_before(chain[:position], {i.ecosystem for i in installs}):
                continue
            for install in installs:
                split = _split(ctx, earlier, install)
                if split is None:
                    continue
                reported.add(earlier.index)
                summary, advice = _order_message(ctx, earlier, node, install, split)
                yield ctx.finding("cache-order", earlier, summary, advice)
                break


def broad_copy(node: StepNode) -> bool:
    """Whether ``node`` copies more from the context than dependency manifests."""
    step = node.step
    if not isinstance(step, Copy) or not isinstance(step.source, ContextSource):
        return False
    return not all(
        s.kind in ("file", "any") and is_manifest(posixpath.basename(s.path))
        for s in step.source.selectors
    )


def _installed_before(chain: Sequence[StepNode], ecosystems: set[str]) -> bool:
    for node in chain:
        if isinstance(node.step, Run):
            for words in commands(run_script(node.step)):
                found = installer(words)
                if found is not None and found.ecosystem in ecosystems:
                    return True
    return False


def _split(ctx: CheckContext, copy: StepNode, install: Installer) -> list[str] | None:
    """The context paths of the manifests ``install`` reads, if ``copy`` places all it needs
    at its destination's top."""
    present: dict[str, str] = {}
    for _, _, facts in ctx.copied_trees(copy):
        for source, placed in facts.manifests:
            present[placed] = source
    if not all(name in present for name in install.needs):
        return None
    wanted = [*install.needs, *(name for name in install.uses if name in present)]
    return [present[name] for name in wanted]


def _order_message(
    ctx: CheckContext, copy: StepNode, run: StepNode, install: Installer, sources: list[str]
) -> tuple[str, str]:
    step = copy.step
    assert isinstance(step, Copy)
    assert isinstance(step.source, ContextSource)
    dest = copy.state.resolve_path(step.dest).rstrip("/") + "/"
    selection = ", ".join(f'"{s}"' for s in sources)
    line = "" if run.location is None else f" (line {run.location.line})"
    return (
        f"{ctx.instruction(copy)} copies {_describe_selection(step.source)} before the "
        f"dependency install {install.command!r}{line}",
        "So editing any copied file re-runs the install. Copy the manifests alone and install "
        f'first, then the rest: .copy(src.select({selection}), "{dest}")'
        f'.run("{install.command}").copy({_dsl_source(step.source)}, "{step.dest}")',
    )


def _describe_selection(source: ContextSource) -> str:
    if any(s.path == "." for s in source.selectors):
        return "the whole context"
    return " and ".join(s.path for s in source.selectors)


def _dsl_source(source: ContextSource) -> str:
    if len(source.selectors) == 1:
        selector = source.selectors[0]
        if selector.path == ".":
            return "src"
        method = {"dir": "dir", "file": "file", "glob": "glob"}.get(selector.kind, "select")
        return f'src.{method}("{selector.path}")'
    return "src.select(" + ", ".join(f'"{s.path}"' for s in source.selectors) + ")"


CHECKS = (cache_order, deleted_later, package_cache)
