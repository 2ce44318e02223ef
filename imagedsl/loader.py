"""Loading ``build.py``: run it as a module, find its stages and targets, report errors well.

A build file is ordinary Python run with importlib's spec loader (as nox loads a noxfile).
Its stages are the module-level :class:`~imagedsl.dsl.Stage` values (names not starting with
``_``), named by their variables; ``dsl.targets(...)`` may declare which are targets and the
default. Without it every module-level stage is a target and the default is the last one
defined, as ``docker build`` builds the last stage of a Dockerfile.

Anything that goes wrong while the file runs becomes a :class:`~imagedsl.errors.BuildFileError`
whose location is the build file's own line (not a line inside imagedsl).
"""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import ModuleType, TracebackType
from typing import TYPE_CHECKING, Any

import attrs
import blake3

from imagedsl._declarations import collecting
from imagedsl.buildstate import AUTOMATIC_ARGS
from imagedsl.dsl import GlobalArg, Platforms, Stage, StageRef, Targets
from imagedsl.errors import BuildFileError, ImageDSLError, SourceLocation, UnknownTargetError

if TYPE_CHECKING:
    from imagedsl.graph import BaseResolver, ResolvedBase
    from imagedsl.lockfile import LockFile
    from imagedsl.oci.reference import ImageReference
    from imagedsl.planner import Plan
    from imagedsl.reporting import Reporter
    from imagedsl.store import Store

DEFAULT_BUILDFILE = "build.py"


@attrs.frozen(kw_only=True)
class BuildFile:
    """A loaded build file: its named stages and its targets (the default first)."""

    path: Path
    stages: Mapping[str, Stage | StageRef] = attrs.field(repr=False)
    targets: tuple[str, ...]
    #: The global ARGs (``dsl.arg`` at module level), in file order.
    global_args: tuple[GlobalArg, ...] = ()
    #: ``dsl.platforms(...)``: target -> its default platforms ("" for every target).
    platforms: Mapping[str, tuple[str, ...]] = attrs.field(factory=dict)

    def default_platforms(self, target: str | None = None) -> tuple[str, ...]:
        """The platforms ``dsl.platforms`` declares for ``target`` (empty: none declared,
        the build's platform is this machine's)."""
        name = self.target(target)
        return self.platforms.get(name) or self.platforms.get("", ())

    @property
    def default_target(self) -> str:
        """The target built when none is named."""
        return self.targets[0]

    def target(self, name: str | None) -> str:
        """Check a target name (None: the default); raise UnknownTargetError listing them."""
        if name is None:
            return self.default_target
        if name not in self.targets:
            raise UnknownTargetError(name, self.targets)
        return name

    def plan(
        self,
        target: str | None = None,
        *,
        store: Store | None = None,
        build_args: Mapping[str, str] | None = None,
        platform: str | None = None,
        build_platform: str | None = None,
        reporter: Reporter | None = None,
        resolve_base: BaseResolver | None = None,
        source_date_epoch: int | None = None,
    ) -> Plan:
        """Plan one target of this build file (see :func:`imagedsl.planner.plan`).

        Unpinned bases are known by content from the local engine, the lock file beside the
        build file, or the layout or archive itself (see :mod:`imagedsl.bases`), unless
        ``resolve_base`` says otherwise.
        """
        from imagedsl.lockfile import LockFile
        from imagedsl.planner import plan

        if resolve_base is None:
            resolve_base = _default_resolver(LockFile.beside(self.path))
        return plan(
            self.stages,
            self.target(target),
            store=store,
            build_args=build_args,
            global_args=self.global_args,
            platform=platform,
            build_platform=build_platform,
            reporter=reporter,
            resolve_base=resolve_base,
            buildfile=str(self.path),
            project=str(self.path),
            source_date_epoch=source_date_epoch,
        )


def _default_resolver(lock: LockFile) -> BaseResolver:
    """:func:`imagedsl.bases.base_resolver`, made at the first base to resolve: a plan with
    no image base imports nothing for it."""
    made: list[BaseResolver] = []

    def resolve(reference: ImageReference, platform: str) -> ResolvedBase | None:
        if not made:
            from imagedsl.bases import base_resolver

            made.append(base_resolver(lock))
        return made[0](reference, platform)

    return resolve


def split_spec(spec: str | None) -> tuple[Path, str | None]:
    """Split ``FILE[:TARGET]`` (default file ``./build.py``; a directory means its build.py)."""
    if not spec:
        return Path(DEFAULT_BUILDFILE), None
    path_text, target = spec, None
    head, sep, tail = spec.rpartition(":")
    if sep and head and "/" not in tail and not Path(spec).exists():
        path_text, target = head, tail or None
    elif sep and not head:
        path_text, target = DEFAULT_BUILDFILE, tail or None
    path = Path(path_text)
    if path.is_dir():
        path = path / DEFAULT_BUILDFILE
    return path, target


def load_buildfile(path: str | os.PathLike[str]) -> BuildFile:
    """Run a build file and collect its stages and targets."""
    file = Path(path)
    if not file.is_file():
        raise BuildFileError(None, f"{file}: no such build file")
    resolved = file.resolve()
    with collecting() as made:
        module = _execute(file, resolved)
    return _collect(file, resolved, vars(module), made)


def _execute(shown: Path, resolved: Path) -> ModuleType:
    name = "imagedsl_buildfile_" + blake3.blake3(str(resolved).encode()).hexdigest()[:16]
    spec = importlib.util.spec_from_file_location(name, resolved)
    if spec is None or spec.loader is None:  # pragma: no cover - only for odd suffixes
        raise BuildFileError(None, f"{shown}: cannot be loaded as Python")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    sys.path.insert(0, str(resolved.parent))  # so build.py can import helpers beside it
    try:
        spec.loader.exec_module(module)
    except SyntaxError as error:
        where = SourceLocation(str(shown), error.lineno or 0)
        raise BuildFileError(where, f"syntax error: {error.msg}") from None
    except ImageDSLError as error:
        found = _user_location(error.__traceback__, resolved, shown, error.location)
        raise BuildFileError(found, str(error)) from None
    except KeyboardInterrupt:
        raise
    except SystemExit as error:
        found = _user_location(error.__traceback__, resolved, shown, None)
        raise BuildFileError(
            found, f"the build file called sys.exit({error.code!r}) while it was loaded"
        ) from None
    except Exception as error:
        found = _user_location(error.__traceback__, resolved, shown, None)
        raise BuildFileError(found, f"{type(error).__name__}: {error}") from None
    finally:
        sys.path.remove(str(resolved.parent))
    return module


def _user_location(
    tb: TracebackType | None, resolved: Path, shown: Path, known: SourceLocation | None
) -> SourceLocation | None:
    """The innermost frame in the build file, shown with the path the user typed."""
    if known is not None and Path(known.file) == resolved:
        return SourceLocation(str(shown), known.line)
    import traceback  # only on the error path

    line = None
    for frame, lineno in traceback.walk_tb(tb):
        if Path(frame.f_code.co_filename) == resolved:
            line = lineno
    if line is None:
        return known
    return SourceLocation(str(shown), line)


def _collect(
    shown: Path, resolved: Path, namespace: Mapping[str, Any], made: Sequence[object] = ()
) -> BuildFile:
    stages: dict[str, Stage | StageRef] = {}
    declared: list[Targets] = []
    global_args: dict[str, GlobalArg] = {}
    for name, value in namespace.items():
        if name.startswith("_"):
            continue
        if isinstance(value, GlobalArg):
            if value.name not in AUTOMATIC_ARGS:
                global_args.setdefault(value.name, value)
        elif isinstance(value, Stage):
            stages[name] = value
        elif isinstance(value, Targets):
            declared.append(value)
    defaults = _default_platforms(shown, made)
    # A bare dsl.targets(...) call declares targets too (it used to be ignored).
    declared += [t for t in made if isinstance(t, Targets) and all(t is not d for d in declared)]
    declared.sort(key=lambda t: 0 if t.location is None else t.location.line)
    if len(declared) > 1:
        location = declared[1].location
        where = None if location is None else SourceLocation(str(shown), location.line)
        raise BuildFileError(where, "dsl.targets(...) may be used once per build file")
    if declared:
        targets = []
        for name, value in declared[0].stages:
            if isinstance(value, StageRef) and value.name == name:
                if name not in stages:
                    location = declared[0].location
                    where = None if location is None else SourceLocation(str(shown), location.line)
                    raise BuildFileError(
                        where,
                        f"dsl.targets names {name!r}, which is not a module-level stage; "
                        f"stages: {', '.join(stages) or '(none)'}",
                    )
            else:
                stages[name] = value
            targets.append(name)
        return BuildFile(
            path=resolved,
            stages=stages,
            targets=tuple(targets),
            global_args=tuple(global_args.values()),
            platforms=_checked_platforms(defaults, targets),
        )
    if not stages:
        raise BuildFileError(
            SourceLocation(str(shown), 1),
            "defines no stages: assign one at module level, e.g. app = dsl.image('alpine')",
        )
    ordered = list(stages)
    return BuildFile(
        path=resolved,
        stages=stages,
        targets=(ordered[-1], *ordered[:-1]),
        global_args=tuple(global_args.values()),
        platforms=_checked_platforms(defaults, ordered),
    )


def _default_platforms(
    shown: Path, made: Sequence[object]
) -> dict[str, tuple[tuple[str, ...], SourceLocation | None]]:
    """``dsl.platforms(...)`` declarations: target ("" for all) -> platforms, where declared.
    A target declared twice is refused."""
    found: dict[str, tuple[tuple[str, ...], SourceLocation | None]] = {}
    for declared in made:
        if not isinstance(declared, Platforms):
            continue
        where = declared.location and SourceLocation(str(shown), declared.location.line)
        for name in declared.targets or ("",):
            if name in found:
                shown_name = repr(name) if name else "every target"
                raise BuildFileError(where, f"dsl.platforms(...) declares {shown_name} twice")
            found[name] = (declared.platforms, where)
    return found


def _checked_platforms(
    found: Mapping[str, tuple[tuple[str, ...], SourceLocation | None]],
    targets: Sequence[str],
) -> dict[str, tuple[str, ...]]:
    for name, (_, where) in found.items():
        if name and name not in targets:
            raise BuildFileError(
                where,
                f"dsl.platforms(targets=...) names {name!r}, which is not a target; "
                f"targets: {', '.join(targets)}",
            )
    return {name: platforms for name, (platforms, _) in found.items()}
