"""Lowering a plan to a Dockerfile and exactly the context it needs: pure, no engine.

:func:`lower_to_dockerfile` turns a :class:`~imagedsl.planner.Plan` into a multi-stage
Dockerfile a person can review:

- Only the steps the target needs are there (the plan already dropped the rest).
- The steps are cut into Dockerfile stages where the graph branches (a prefix shared by
  several stages), where a stage is read by ``COPY --from`` or a bind mount, and where one
  named stage of ``build.py`` ends and another continues from it. Stages are named after the
  ``build.py`` variables (the target's stage after the target); a stage that continues
  another declares the ARGs in scope again, as Dockerfile scoping requires.
- Every string is spelled so that BuildKit reads back exactly the value imagedsl keyed
  (:mod:`imagedsl.backends.dockerfile._words`): JSON (exec) form where a shell form would
  not survive the parser, quoting and escaping elsewhere, and a clear error for the few
  values no Dockerfile can hold (a line break in an ENV value).
- Each COPY, ADD or bind mount from the context reads one directory named by the digest of
  the files it copies (:mod:`imagedsl.backends.dockerfile._staging`), so the build context
  holds exactly the selected files and BuildKit's cache key for the COPY follows the content
  only.

Only syntax that the Dockerfile frontend built into Docker 20.10 accepts is used, unless a
step asks for more (``COPY --link``, ``RUN --network``, ...): then the lowered Dockerfile
lists it as a :class:`Requirement`, and the BuildKit driver
(:mod:`imagedsl.backends.dockerfile.buildkit`) refuses it up front on an engine known to
reject it (see docs/dockerfile-backend.md).

:func:`write_build_dir` writes the Dockerfile and its context trees into a directory that
``docker build`` builds as it is (``imagedsl lower -o DIR``). Nothing here runs a process or
needs a Docker engine.
"""

from __future__ import annotations

import heapq
import json
import os
import posixpath
import re
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Final

import attrs

from imagedsl.backends.dockerfile._staging import (
    StagedTree,
    archive_sources,
    tree_name,
    write_tree,
)
from imagedsl.backends.dockerfile._vertices import ExpectedVertex
from imagedsl.backends.dockerfile._words import (
    Unspellable,
    expanding_flag_value,
    expanding_word,
    flag_value,
    is_plain,
    json_array,
    json_word,
    newer_expansion,
    shell_form_is_exact,
)
from imagedsl.buildstate import DEFAULT_SHELL, BuildState
from imagedsl.contexts import ContextSource, names_itself
from imagedsl.errors import InputError, SourceLocation
from imagedsl.steps import (
    INLINE_FILE_NAME,
    LAYER_KINDS,
    Add,
    Arg,
    Author,
    BindMount,
    CacheMount,
    Cmd,
    Copy,
    Entrypoint,
    Env,
    Expose,
    FromImage,
    FromScratch,
    FromStage,
    Healthcheck,
    InlineFile,
    Label,
    OnBuild,
    Run,
    SecretMount,
    Shell,
    StagePath,
    StopSignal,
    TmpfsMount,
    UrlSource,
    User,
    Volume,
    Workdir,
)
from imagedsl.treehash import NOTHING_MATCHED, Tree, sole_file

if TYPE_CHECKING:
    from imagedsl.graph import StepNode
    from imagedsl.planner import Plan

#: The first line of every lowered Dockerfile (``write_build_dir`` recognises its own dirs).
HEADER: Final = "# Lowered by imagedsl"
_STAGE_NAME: Final = re.compile(r"[a-z][a-z0-9_.-]*\Z")
_RESERVED_STAGE_NAMES: Final = frozenset({"scratch", "context"})
_GLOB_CHARS: Final = re.compile(r"[*?\[\\]")


# -- errors ------------------------------------------------------------------------------------


@attrs.define
class LoweringError(InputError):
    """A step cannot be written as a Dockerfile instruction (or not for this engine)."""

    instruction: str
    problem: str
    location: SourceLocation | None = attrs.field(default=None)

    def __str__(self) -> str:
        return f"{self.instruction}: {self.problem}"


# -- the lowered Dockerfile ----------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class DockerfileStage:
    """One stage of the lowered Dockerfile: its name and the plan steps it holds."""

    name: str
    #: Indices into ``plan.steps``, in order (the first may be the FROM).
    steps: tuple[int, ...]
    #: The 1-based line of the stage's FROM instruction.
    line: int


@attrs.frozen(kw_only=True)
class DockerfileFeatures:
    """What the engine's Dockerfile frontend accepts beyond the one built into Docker 20.10
    (BuildKit 0.8, checked on that engine): what it lacks is written in an equivalent form it
    accepts (see docs/dockerfile-backend.md)."""

    #: ``RUN <<EOF`` and ``COPY <<EOF`` (dockerfile 1.4).
    heredocs: bool = False
    #: ``COPY --link`` and ``ADD --link`` (dockerfile 1.4).
    link: bool = False


#: Docker 20.10's built-in frontend: no heredocs, no ``--link`` (``--chmod`` works).
BUILTIN_FRONTEND_20_10: Final = DockerfileFeatures()
#: Dockerfile frontend 1.4 and later (Docker 23's built-in one, buildx's).
DOCKERFILE_1_4: Final = DockerfileFeatures(heredocs=True, link=True)


@attrs.frozen(kw_only=True)
class Requirement:
    """A step that needs a Dockerfile feature newer than Docker 20.10's built-in frontend."""

    feature: str
    step: int


@attrs.frozen(kw_only=True)
class LoweredDockerfile:
    """A Dockerfile for one target and what it needs to build."""

    text: str
    #: The name of the target's stage (the last one).
    target: str
    stages: tuple[DockerfileStage, ...]
    #: Plan step index -> the BuildKit vertex label ``[STAGE K/N]`` it gets when every
    #: instruction that may make a vertex makes one (FROM an image and filesystem steps only:
    #: config steps make none). For display: the driver maps vertices by their names
    #: (``expected_vertices``), since BuildKit skips some (``WORKDIR /``).
    vertices: Mapping[int, str]
    #: Dockerfile stage name -> its instructions that may make a vertex, in order.
    expected_vertices: Mapping[str, tuple[ExpectedVertex, ...]]
    #: Plan step index -> the 1-based Dockerfile line of its instruction.
    lines: Mapping[int, int]
    #: The context trees COPY, ADD and bind mounts read, each under ``tree.name``.
    trees: tuple[StagedTree, ...]
    requirements: tuple[Requirement, ...] = ()
    #: "none" when every RUN asks for ``network="none"``: then ``docker build --network=none``
    #: says it for all of them, which Docker 20.10 accepts (its frontend lacks RUN --network).
    build_network: str | None = None

    def step_at_line(self, line: int) -> int | None:
        """The plan step whose instruction is on (or, for a comment, just below) ``line``."""
        best = None
        for index, first in self.lines.items():
            if first <= line and (best is None or first > self.lines[best]):
                best = index
        return best


def lower_to_dockerfile(
    plan: Plan,
    *,
    features: DockerfileFeatures = BUILTIN_FRONTEND_20_10,
    run_network_flags: bool = True,
) -> LoweredDockerfile:
    """Lower ``plan``'s target to a Dockerfile (see the module docstring) that a frontend
    with ``features`` builds (by default, any: Docker 20.10's built-in one).

    ``run_network_flags=False`` leaves ``--network`` off every RUN (for a build that gives
    :attr:`LoweredDockerfile.build_network` to ``docker build`` instead)."""
    return _Lowerer(plan, features, run_network_flags=run_network_flags).lower()


@attrs.define
class _Segment:
    steps: list[int]
    name: str = ""


@attrs.frozen
class _LinkStage:
    """A ``FROM scratch`` stage that holds one ``link=True`` COPY or ADD, for a frontend
    without ``--link``: ``COPY --from=NAME / /`` then places it as ``--link`` would."""

    name: str
    lines: tuple[str, ...]
    step: int


class _Lowerer:
    def __init__(
        self, plan: Plan, features: DockerfileFeatures, *, run_network_flags: bool = True
    ) -> None:
        self.plan = plan
        self.features = features
        self.run_network_flags = run_network_flags
        self.run_networks: set[str] = set()
        self.taken: set[str] = set()
        self.links: list[_LinkStage] = []
        self.nodes: list[StepNode] = [step.node for step in plan.steps]
        self.trees: dict[str, StagedTree] = {}
        self.requirements: list[Requirement] = []
        self.segment_of: dict[int, int] = {}
        self.segments: list[_Segment] = []
        self.children: dict[int, list[int]] = defaultdict(list)

    # -- structure ---------------------------------------------------------------------------

    def lower(self) -> LoweredDockerfile:
        self._cut()
        self._name()
        order = self._order()
        lines = [
            f"{HEADER} from {_buildfile_name(self.plan.buildfile)}, target {self.plan.target}.",
            "# Edit the build file, not this file. Context files are in directories named by",
            "# the digest of what each step copies.",
        ]
        declared = self.plan.graph.scope.declared
        if declared:
            lines.append("")
            lines.extend(_arg_line(Arg(name=name, default=default)) for name, default in declared)
        step_lines: dict[int, int] = {}
        vertices: dict[int, str] = {}
        expected: dict[str, tuple[ExpectedVertex, ...]] = {}
        stages: list[DockerfileStage] = []
        # BuildKit leaves the stage name out of its labels in a one-stage Dockerfile.
        many = len(self.segments) > 1 or any(self._link_emulated(node) for node in self.nodes)

        def emit(index: int | None, text: Sequence[str]) -> None:
            for line in text:
                if index is not None and not line.startswith("#") and index not in step_lines:
                    step_lines[index] = len(lines) + 1
                lines.append(line)

        for number in order:
            segment = self.segments[number]
            counted = [i for i in segment.steps if self._makes_vertex(i, segment)]
            prefix = f"{segment.name} " if many else ""
            for k, index in enumerate(counted, start=1):
                vertices.setdefault(index, f"[{prefix}{k}/{len(counted)}]")
            self.links = []
            rendered: list[tuple[int, list[str], list[tuple[int, str]], list[str]]] = []
            for index in segment.steps:
                step = self.plan.steps[index]
                try:
                    head = self._continuation(index, segment)
                    inherited = self._inherited_triggers(index, segment) if head else []
                    text = self._instruction(self.nodes[index], segment)
                    if not isinstance(self.nodes[index].step, Run | OnBuild) and newer_expansion(
                        text
                    ):
                        self._require("${NAME-word} or ${NAME:?word}", self.nodes[index])
                except Unspellable as error:
                    raise LoweringError(
                        step.instruction, f"cannot be written in a Dockerfile: {error}"
                    ).with_location(step.location) from None
                rendered.append((index, head, inherited, text))
            for link in self.links:
                lines.append("")
                stages.append(DockerfileStage(name=link.name, steps=(), line=len(lines) + 1))
                emit(None, link.lines[:1])
                emit(link.step, link.lines[1:])
                expected[link.name] = (_expected_vertex(link.step, link.lines[1:]),)
            lines.append("")
            from_line = len(lines) + 1
            written: dict[int, list[str]] = {}
            for index, head, inherited, text in rendered:
                emit(None, head)
                if head and self.nodes[index].kind == "from-stage":
                    step_lines[index] = len(lines)  # FROM <stage>: the FROM line is the step's
                for trigger, line in inherited:
                    emit(trigger, [line])
                emit(index, text)
                written[index] = text
            linked = {link.step for link in self.links}
            expected[segment.name] = tuple(
                _expected_vertex(index, written[index], primary=index not in linked)
                for index in counted
            )
            stages.append(
                DockerfileStage(name=segment.name, steps=tuple(segment.steps), line=from_line)
            )
        return LoweredDockerfile(
            text="\n".join(lines) + "\n",
            target=self.segments[order[-1]].name,
            stages=tuple(stages),
            vertices=vertices,
            expected_vertices=expected,
            lines=step_lines,
            trees=tuple(self.trees.values()),
            requirements=tuple(self.requirements),
            build_network="none" if self.run_networks == {"none"} else None,
        )

    def _cut(self) -> None:
        """Cut the steps into segments, one per Dockerfile stage.

        A segment ends where the graph branches, where a ``COPY --from`` or bind mount reads
        it, and where one named stage ends and another continues from it. A FROM that several
        stages start from is written in each of them instead: a shared FROM is no work.
        """
        children = self.children
        referenced: set[int] = set()
        for node in self.nodes:
            if node.parent is not None:
                children[node.parent].append(node.index)
            referenced.update(node.sources)
        output = len(self.nodes) - 1
        inline = {
            node.index
            for node in self.nodes
            if node.kind in ("from", "scratch")
            and node.index != output
            and node.index not in referenced
        }
        ends: set[int] = set()
        for node in self.nodes:
            kids = children.get(node.index, [])
            if node.index in inline:
                continue
            if (
                node.index == output
                or node.index in referenced
                or len(kids) != 1
                or self.nodes[kids[0]].stage != node.stage
            ):
                ends.add(node.index)
        for node in self.nodes:
            if node.index in inline:
                continue
            if node.parent is None or node.parent in ends or node.parent in inline:
                start = [node.index] if node.parent not in inline else [node.parent, node.index]
                for index in start:
                    self.segment_of.setdefault(index, len(self.segments))
                self.segments.append(_Segment(start))
            else:
                number = self.segment_of[node.parent]
                self.segments[number].steps.append(node.index)
                self.segment_of[node.index] = number

    def _name(self) -> None:
        taken: set[str] = set()
        output = len(self.nodes) - 1
        # The target's stage is named first, so it keeps the target's name.
        ordered = sorted(
            range(len(self.segments)), key=lambda s: (output not in self.segments[s].steps, s)
        )
        for number in ordered:
            segment = self.segments[number]
            last = self.nodes[segment.steps[-1]]
            if last.index == output:
                wanted = self.plan.target
            elif any(self.nodes[c].stage == last.stage for c in self.children.get(last.index, [])):
                wanted = f"{last.stage}-{last.position}"  # a shared prefix of a named stage
            else:
                wanted = last.stage
            name = _stage_name(wanted)
            candidate, n = name, 1
            while candidate in taken:
                n += 1
                candidate = f"{name}-{n}"
            taken.add(candidate)
            segment.name = candidate
        self.taken = taken

    def _order(self) -> list[int]:
        """Segments in an order where every stage comes after the stages it uses."""
        needs: dict[int, set[int]] = defaultdict(set)
        for number, segment in enumerate(self.segments):
            first = self.nodes[segment.steps[0]]
            if first.parent is not None:
                needs[number].add(self.segment_of[first.parent])
            for index in segment.steps:
                needs[number].update(self.segment_of[s] for s in self.nodes[index].sources)
        waiting = {n: set(needs[n]) for n in range(len(self.segments))}
        ready = [(self._position(n), n) for n, deps in waiting.items() if not deps]
        heapq.heapify(ready)
        order: list[int] = []
        while ready:
            _, number = heapq.heappop(ready)
            order.append(number)
            for other, deps in waiting.items():
                if number in deps:
                    deps.discard(number)
                    if not deps:
                        heapq.heappush(ready, (self._position(other), other))
        assert len(order) == len(self.segments), "segments depend on each other in a cycle"
        return order

    def _position(self, number: int) -> int:
        """Where a segment's own steps start (a FROM it shares with others does not count)."""
        steps = self.segments[number].steps
        return steps[1] if len(steps) > 1 and self.segment_of[steps[0]] != number else steps[0]

    def _makes_vertex(self, index: int, segment: _Segment) -> bool:
        node = self.nodes[index]
        if node.kind == "from":
            return index == segment.steps[0]
        return node.kind in LAYER_KINDS and not node.is_config

    # -- instructions ------------------------------------------------------------------------

    def _continuation(self, index: int, segment: _Segment) -> list[str]:
        """``FROM stage AS name`` (and the ARGs in scope) before a stage that continues one."""
        node = self.nodes[index]
        if index != segment.steps[0] or isinstance(node.step, FromImage | FromScratch):
            return []
        assert node.parent is not None
        parent = self.nodes[node.parent]
        # BuildKit carries the state (its environment, ARG values included, the working
        # directory, the user) into a stage FROM another: nothing is declared again, which
        # would re-apply --build-arg and global values and reorder the environment.
        return [f"FROM {self._segment_name(parent.index)} AS {segment.name}"]

    def _segment_name(self, index: int) -> str:
        return self.segments[self.segment_of[index]].name

    def _require(self, feature: str, node: StepNode) -> None:
        self.requirements.append(Requirement(feature=feature, step=node.index))

    def _instruction(self, node: StepNode, segment: _Segment) -> list[str]:
        step = node.step
        segment_name = segment.name
        before = self.nodes[node.parent].state if node.parent is not None else node.state
        match step:
            case FromImage():
                platform = f"--platform={step.platform} " if step.platform else ""
                return [f"FROM {platform}{self._image(node, step)} AS {segment_name}"]
            case FromScratch():
                platform = f"--platform={step.platform} " if step.platform else ""
                return [f"FROM {platform}scratch AS {segment_name}"]
            case FromStage():
                return []  # the stage's FROM line (written by _continuation) is all of it
            case Run():
                return self._run(node, step, before)
            case Copy() | Add():
                return self._copy(node, step, segment)
            case Workdir():
                return [f"WORKDIR {expanding_word(step.path)}"]
            case Env():
                pairs = " ".join(f"{name}={expanding_word(value)}" for name, value in step.items)
                return [f"ENV {pairs}"]
            case Arg():
                return [_arg_line(step)]
            case User():
                return [f"USER {expanding_word(step.user)}"]
            case Label():
                pairs = " ".join(f"{expanding_word(k)}={expanding_word(v)}" for k, v in step.items)
                return [f"LABEL {pairs}"]
            case Expose():
                return ["EXPOSE " + " ".join(step.ports)]
            case Volume():
                if all(_is_plain_expanding(path) for path in step.paths):
                    return ["VOLUME " + " ".join(expanding_word(p) for p in step.paths)]
                words = [json_word(path, expanding=True) for path in step.paths]
                return ["VOLUME " + json_array(words)]
            case Entrypoint() | Cmd():
                name = "ENTRYPOINT" if isinstance(step, Entrypoint) else "CMD"
                line = f"{name} {_command(step.command, step.shell_form, before)}"
                if isinstance(step, Entrypoint):
                    return [line, *self._cmd_kept(node, segment)]
                return [line]
            case OnBuild():
                # Only the target's stage writes its triggers: BuildKit would run a stage's
                # triggers in every stage that continues FROM it, which build.py never does.
                return [f"ONBUILD {step.instruction}"] if self._is_target(segment) else []
            case Healthcheck():
                return [_healthcheck(step)]
            case Shell():
                return ["SHELL " + json_array(step.command)]
            case StopSignal():
                return [f"STOPSIGNAL {step.signal}"]
            case Author():
                return [f"MAINTAINER {step.name}"]  # BuildKit expands no variable in it
        raise AssertionError(step)  # pragma: no cover - every step kind is handled

    def _image(self, node: StepNode, step: FromImage) -> str:
        if step.template is not None:
            return step.template  # global ARGs stay for BuildKit to expand (--build-arg works)
        reference = step.image
        if reference.transport == "registry":
            text = reference.familiar
        elif reference.transport == "docker-daemon":
            # The engine's own image store is where a Dockerfile's FROM looks first.
            text = reference.name + (f":{reference.tag}" if reference.tag else "")
            text += f"@{reference.digest}" if reference.digest else ""
        else:
            raise LoweringError(
                self.plan.steps[node.index].instruction,
                f"a base image from {reference.transport}: cannot be named in a Dockerfile; "
                "load it into the engine (docker load) and use docker-daemon:NAME:TAG",
            ).with_location(step.location)
        if not is_plain(text):
            raise Unspellable(text, "is not an image reference a Dockerfile can hold")
        return text

    def _run(self, node: StepNode, step: Run, before: BuildState) -> list[str]:
        flags: list[str] = []
        sources = iter(node.sources)
        trees = iter(node.trees)
        for mount in step.mounts:
            if isinstance(mount, CacheMount):
                options = ["type=cache", f"target={_mount_value(mount.target)}"]
                if mount.id != mount.target:
                    options.append(f"id={_mount_value(mount.id)}")
                if mount.sharing != "shared":
                    options.append(f"sharing={mount.sharing}")
                if mount.mode != 0o755:
                    options.append(f"mode={mount.mode:04o}")
                options += [f"uid={mount.uid}"] if mount.uid else []
                options += [f"gid={mount.gid}"] if mount.gid else []
                options += ["ro"] if mount.readonly else []
            elif isinstance(mount, SecretMount):
                options = ["type=secret", f"id={_mount_value(mount.id)}"]
                if mount.target is not None and mount.target != f"/run/secrets/{mount.id}":
                    options.append(f"target={_mount_value(mount.target)}")
                if mount.env is not None:
                    options.append(f"env={_mount_value(mount.env)}")
                    self._require("RUN --mount=type=secret,env=...", node)
                options += ["required=true"] if mount.required else []
                options += [f"mode={mount.mode:04o}"] if mount.mode != 0o400 else []
                options += [f"uid={mount.uid}"] if mount.uid else []
                options += [f"gid={mount.gid}"] if mount.gid else []
            elif isinstance(mount, BindMount):
                options = ["type=bind", f"target={_mount_value(mount.target)}"]
                if isinstance(mount.source, StagePath):
                    source_stage = self._segment_name(next(sources))
                    options.insert(1, f"from={source_stage}")
                    options.insert(2, f"source={_mount_value(mount.source.path)}")
                else:
                    tree = next(trees)
                    source = self._bind_source(mount.source, tree)
                    options.insert(1, f"source={_mount_value(source)}")
                options += ["rw"] if mount.readwrite else []
            else:
                assert isinstance(mount, TmpfsMount)
                options = ["type=tmpfs", f"target={_mount_value(mount.target)}"]
                if mount.size is not None:
                    options.append(f"size={mount.size}")
                    self._require("RUN --mount=type=tmpfs,size=...", node)
            flags.append("--mount=" + ",".join(options))
        self.run_networks.add(step.network)
        if step.network != "default" and self.run_network_flags:
            flags.append(f"--network={step.network}")
            self._require("RUN --network", node)
        if step.heredoc and self.features.heredocs:
            heredoc = _heredoc(step.command[0])
            if heredoc is not None:
                head, body = heredoc
                return [" ".join(["RUN", *flags, head]), *body]
        # A script in one exec-form argument of the stage's SHELL is what RUN <<EOF runs.
        command = _command(step.command, step.shell_form, before)
        return [" ".join(["RUN", *flags, command])]

    def _copy(self, node: StepNode, step: Copy | Add, segment: _Segment) -> list[str]:
        if not step.link or self.features.link:
            return self._copy_lines(node, step, step.dest, link=step.link)
        if not self._link_emulated(node):
            # A plain COPY places the same files; see docs/dockerfile-backend.md for what
            # differs (directories above the destination, BuildKit's cache reuse).
            return self._copy_lines(node, step, step.dest, link=False)
        name = self._link_stage_name(segment)
        dest = self._link_dest(node)
        assert dest is not None
        body = self._copy_lines(node, step, dest, link=False)
        self.links.append(_LinkStage(name, (f"FROM scratch AS {name}", *body), node.index))
        return [f"COPY --from={name} / /"]

    def _copy_lines(self, node: StepNode, step: Copy | Add, dest: str, *, link: bool) -> list[str]:
        name = "COPY" if isinstance(step, Copy) else "ADD"
        flags: list[str] = []
        comment: list[str] = []
        source = step.source
        if isinstance(source, StagePath):
            flags.append(f"--from={self._segment_name(node.sources[0])}")
        if step.chown is not None:
            flags.append(f"--chown={expanding_flag_value(step.chown, what='--chown')}")
        if step.chmod is not None:
            flags.append(f"--chmod={step.chmod}")
            if int(step.chmod, 8) & 0o7000:  # Docker 20.10's BuildKit drops them silently
                self._require("COPY --chmod with setuid, setgid or sticky bits", node)
        if link:
            flags.append("--link")
        if isinstance(source, StagePath):
            # Every path in order, wildcards included: the DSL reads them as BuildKit does.
            for path in source.paths:
                if "\\" in path:
                    raise Unspellable(path, "has a backslash, which BuildKit reads as an escape")
            assert isinstance(step, Copy)
            for pattern in step.exclude:
                flags.append(f"--exclude={flag_value(pattern, what='--exclude')}")
            if step.exclude:
                self._require("COPY --exclude (from a stage)", node)
            sources = list(source.paths)
        elif isinstance(source, UrlSource):
            # imagedsl fetches the file and checks its checksum while staging it; a COPY of
            # it is what ADD --checksum does (ADD never unpacks a URL), on every frontend.
            name = "COPY"
            staged = self._stage_download(source)
            comment = [f"# {source.url} ({source.checksum})"]
            sources = [f"{staged.name}/{staged.file_name}"]
        elif isinstance(source, InlineFile):
            if self.features.heredocs and (source.mode == 0o644 or step.chmod is not None):
                heredoc = _heredoc_file(source)
                if heredoc is not None:
                    head, lines = heredoc
                    return [" ".join([name, *flags, head, expanding_word(dest)]), *lines]
            staged = self._stage_inline(node.trees[0], source)
            comment = [f"# a file written in the build file ({len(source.content)} bytes)"]
            sources = [f"{staged.name}/{staged.file_name}"]
        else:
            tree = node.trees[0]
            staged = self._stage(tree, source)
            comment = [_copy_comment(step, node)]
            sources = self._copy_source(staged, step, dest)
            if len(sources) > 1 and not dest.endswith("/"):
                dest += "/"  # several sources go into a directory, as they were placed
        words = [*sources, dest]
        kinds = [*[False] * len(sources), True]
        if all(is_plain(w) for w in sources) and _is_plain_expanding(dest):
            body = " ".join([*sources, expanding_word(dest)])
        else:
            body = json_array(
                [json_word(w, expanding=e) for w, e in zip(words, kinds, strict=True)]
            )
        return [*comment, " ".join([name, *flags, body])]

    # -- link=True without --link ----------------------------------------------------------

    def _link_emulated(self, node: StepNode) -> bool:
        """Whether a ``link=True`` step is written as a ``FROM scratch`` stage copied in:
        when the frontend lacks ``--link`` and the stage can say the same thing (an absolute
        destination without variables, a numeric ``--chown``: a scratch stage has neither
        the stage's variables nor its ``/etc/passwd``)."""
        step = node.step
        if not isinstance(step, Copy | Add) or not step.link or self.features.link:
            return False
        chown_ok = step.chown is None or re.fullmatch(r"\d+(:\d+)?", step.chown) is not None
        return chown_ok and self._link_dest(node) is not None

    def _link_dest(self, node: StepNode) -> str | None:
        """The step's destination as an absolute path without variables, when known."""
        assert node.parent is not None
        step = node.step
        assert isinstance(step, Copy | Add)
        if "$" in step.dest:
            return None
        before = self.nodes[node.parent].state
        dest = step.dest if step.dest.startswith("/") else before.resolve_path(step.dest)
        if not dest.startswith("/") or "$" in dest:
            return None  # relative to a base image's WORKDIR, or holding its variables
        if step.dest.endswith(("/", "/.", "/..")) or step.dest in (".", ".."):
            dest = dest.rstrip("/") + "/"
        return dest

    def _link_stage_name(self, segment: _Segment) -> str:
        n = 1
        while f"{segment.name}-link-{n}" in self.taken:
            n += 1
        name = f"{segment.name}-link-{n}"
        self.taken.add(name)
        return name

    # -- ONBUILD and CMD across stages -------------------------------------------------------

    def _is_target(self, segment: _Segment) -> bool:
        return len(self.nodes) - 1 in segment.steps

    def _inherited_triggers(self, index: int, segment: _Segment) -> list[tuple[int, str]]:
        """The ONBUILD steps of earlier stages of the target's chain, written after its
        ``FROM stage`` line (in chain order), since only the target's stage writes them."""
        if not self._is_target(segment):
            return []
        found: list[tuple[int, str]] = []
        at = self.nodes[index].parent
        while at is not None:
            step = self.nodes[at].step
            if isinstance(step, OnBuild):
                found.append((at, f"ONBUILD {step.instruction}"))
            at = self.nodes[at].parent
        found.reverse()
        return found

    def _cmd_kept(self, node: StepNode, segment: _Segment) -> list[str]:
        """An ENTRYPOINT keeps a CMD set earlier in build.py's stage, but BuildKit drops a CMD
        its Dockerfile stage did not set: write that CMD again after the ENTRYPOINT."""
        at = node.parent
        shell_changed = False
        while at is not None:
            earlier = self.nodes[at]
            step = earlier.step
            if isinstance(step, Cmd):
                if at in segment.steps:
                    return []  # this Dockerfile stage set it: BuildKit keeps it
                before = self.nodes[earlier.parent].state if earlier.parent is not None else None
                assert before is not None
                if step.shell_form and not shell_changed and shell_form_is_exact(step.command[0]):
                    return [f"CMD {step.command[0]}"]
                return ["CMD " + json_array(before.argv(step.command, step.shell_form))]
            shell_changed = shell_changed or isinstance(step, Shell)
            at = earlier.parent
        return []

    # -- context trees -----------------------------------------------------------------------

    def _stage(self, tree: Tree, source: ContextSource) -> StagedTree:
        entries = tree.entries
        file_name = None
        if len(entries) == 1 and entries[0].placed == ".":
            # One file copied to a file name: it keeps its own name, so that a destination
            # that is an existing directory (".") receives it by that name, as in Docker.
            file_name = posixpath.basename(entries[0].source)
        staged = StagedTree(
            name=tree_name(tree.digest, file_name),
            digest=tree.digest,
            root=source.context.root,
            entries=entries,
            file_name=file_name,
        )
        known = self.trees.setdefault(staged.name, staged)
        if known.identity != staged.identity:  # pragma: no cover - a 64-bit prefix collision
            raise Unspellable(staged.name, "names two different trees; change a file and retry")
        return known

    def _stage_inline(self, tree: Tree, source: InlineFile) -> StagedTree:
        staged = StagedTree(
            name=tree_name(tree.digest, INLINE_FILE_NAME),
            digest=tree.digest,
            root="",
            entries=tree.entries,
            file_name=INLINE_FILE_NAME,
            data=source.content,
        )
        return self.trees.setdefault(staged.name, staged)

    def _stage_download(self, source: UrlSource) -> StagedTree:
        digest = source.checksum.partition(":")[2]
        name = source.file_name
        if _GLOB_CHARS.search(name):
            raise Unspellable(name, "has wildcard characters, which BuildKit would expand")
        staged = StagedTree(
            name=tree_name(digest, name),
            digest=source.checksum,
            root="",
            entries=(),
            file_name=name,
            url=source.url,
        )
        return self.trees.setdefault(staged.name, staged)

    def _copy_source(self, staged: StagedTree, step: Copy | Add, dest: str) -> list[str]:
        """The COPY/ADD sources that place exactly the tree's entries under ``dest``."""
        entries = staged.entries
        if staged.digest == NOTHING_MATCHED:
            # A wildcard that matches nothing in the (empty) staged directory: BuildKit copies
            # nothing and makes no destination, as for the wildcards of build.py.
            return [f"{staged.name}/*"]
        named = [f"{staged.name}/{staged.file_name}"] if staged.file_name is not None else []
        if isinstance(step, Add) and isinstance(step.source, ContextSource) and len(entries) > 1:
            named = archive_sources(staged, step.source) or []
        for name in named:  # (a staged directory's name is hex digits)
            if _GLOB_CHARS.search(file := name.partition("/")[2]):
                raise Unspellable(file, "has wildcard characters, which BuildKit would expand")
        if named:
            return named
        single = len(entries) == 1 and entries[0].type == "file" and "/" not in entries[0].placed
        # ADD unpacks a local archive only when its source is the file itself (one a selector
        # names: the one file of an added directory is copied into it, as it is).
        if isinstance(step, Add):
            source = step.source
            by_name = isinstance(source, ContextSource) and names_itself(source, entries[0].source)
        else:
            by_name = dest.endswith("/") or posixpath.basename(dest.rstrip("/")) in (".", "..")
        if single and by_name and not _GLOB_CHARS.search(entries[0].placed):
            return [f"{staged.name}/{entries[0].placed}"]
        return [f"{staged.name}/"]

    def _bind_source(self, source: ContextSource, tree: Tree) -> str:
        staged = self._stage(tree, source)
        single = sole_file(source, tree)
        return staged.name if single is None else f"{staged.name}/{single.placed}"


# -- helpers -----------------------------------------------------------------------------------


def _expected_vertex(index: int, text: Sequence[str], *, primary: bool = True) -> ExpectedVertex:
    """The vertex the instruction written as ``text`` may make (its first non-comment line)."""
    line = next(line for line in text if not line.startswith("#"))
    keyword, _, rest = line.partition(" ")
    return ExpectedVertex(step=index, keyword=keyword, text=rest, primary=primary)


def _buildfile_name(buildfile: str) -> str:
    name = posixpath.basename(buildfile) or buildfile
    return name if name.isprintable() else json.dumps(name)


def _stage_name(wanted: str) -> str:
    name = re.sub(r"[^a-z0-9_.-]+", "-", wanted.lower()).strip("-") or "stage"
    if not _STAGE_NAME.match(name):
        name = f"stage-{name}"
    if name in _RESERVED_STAGE_NAMES:
        name = f"{name}-stage"
    return name


def _arg_line(step: Arg) -> str:
    if step.default is None:
        return f"ARG {step.name}"
    return f"ARG {step.name}={expanding_word(step.default)}"


def _mount_value(value: str) -> str:
    return flag_value(value, what="a --mount option")


def _is_plain_expanding(value: str) -> bool:
    """Whether ``value`` fits a whitespace-split COPY line (the parser splits, then lexes)."""
    word = expanding_word(value)
    return not word.startswith('"') and not any(c.isspace() for c in word)


def _command(command: Sequence[str], shell_form: bool, state: BuildState) -> str:
    if shell_form:
        if shell_form_is_exact(command[0]):
            return command[0]
        return json_array(state.argv(tuple(command), True))
    return json_array(command)


def _delimiter(text: str) -> str:
    """A heredoc delimiter that no line of ``text`` equals."""
    lines = set(text.split("\n"))
    name, n = "EOF", 1
    while name in lines:
        n += 1
        name = f"EOF{n}"
    return name


def _heredoc(script: str, *, run: bool = True) -> tuple[str, list[str]] | None:
    """``<<'EOF'`` and the lines of ``script`` (quoted: BuildKit expands nothing in it), or
    None when it cannot stand in a Dockerfile as it is (a RUN script starting with ``#!``
    BuildKit would run as a file; control characters; no final line break)."""
    if not script.endswith("\n") or (run and script.startswith("#!")) or "\r" in script:
        return None
    body = script[:-1].split("\n")
    if not all(line.isprintable() for line in body):
        return None
    delimiter = _delimiter(script)
    return f"<<'{delimiter}'", [*body, delimiter]


def _heredoc_file(source: InlineFile) -> tuple[str, list[str]] | None:
    try:
        text = source.content.decode("utf-8")
    except UnicodeDecodeError:
        return None
    return _heredoc(text, run=False)


def _healthcheck(step: Healthcheck) -> str:
    if step.test is None:
        return "HEALTHCHECK NONE"
    options = []
    if step.interval is not None:
        options.append(f"--interval={step.interval}")
    if step.timeout is not None:
        options.append(f"--timeout={step.timeout}")
    if step.start_period is not None:
        options.append(f"--start-period={step.start_period}")
    if step.retries is not None:
        options.append(f"--retries={step.retries}")
    if step.shell_form:
        test = step.test[0]
        body = test if shell_form_is_exact(test) else json_array([*DEFAULT_SHELL, test])
    else:
        body = json_array(step.test)
    return " ".join(["HEALTHCHECK", *options, "CMD", body])


def _copy_comment(step: Copy | Add, node: StepNode) -> str:
    assert isinstance(step.source, ContextSource)
    text = " ".join(step.source.describe_paths())
    if isinstance(step, Copy) and step.exclude:
        text += " (excluding " + " ".join(step.exclude) + ")"
    if isinstance(step, Copy) and step.parents:
        text += " (with their parent directories)"
    if node.part is not None:
        text += f" [layer {node.part}]"
    if not text.isprintable():
        text = json.dumps(text)
    return f"# {text}"


# -- writing a build directory ------------------------------------------------------------------


@attrs.define
class BuildDirError(InputError):
    """``lower -o DIR`` would overwrite something it did not write."""

    directory: str
    problem: str

    def __str__(self) -> str:
        return f"{self.directory}: {self.problem}"


def write_build_dir(plan: Plan, directory: str | os.PathLike[str]) -> LoweredDockerfile:
    """Write ``DIR/Dockerfile`` and exactly the context it needs; ``docker build DIR`` builds it.

    ``DIR`` must be empty, missing, or a directory this function wrote before (its trees that
    the new Dockerfile no longer needs are removed).
    """
    lowered = lower_to_dockerfile(plan)
    root = Path(directory)
    wanted = {tree.name for tree in lowered.trees}
    if root.exists():
        if not root.is_dir():
            raise BuildDirError(str(root), "exists and is not a directory")
        present = {path.name for path in root.iterdir()}
        if present:
            dockerfile = root / "Dockerfile"
            ours = dockerfile.is_file() and dockerfile.read_text(errors="replace").startswith(
                HEADER
            )
            foreign = sorted(
                n
                for n in present
                if n != "Dockerfile" and not _is_tree_name(n) and not n.startswith(".staging-")
            )
            if not ours or foreign:
                raise BuildDirError(
                    str(root),
                    "is not empty and was not written by `imagedsl lower -o`"
                    + (f" (it holds {', '.join(foreign[:5])})" if foreign else ""),
                )
            for name in present - wanted - {"Dockerfile"}:
                _remove_tree(root / name)
    root.mkdir(parents=True, exist_ok=True)
    for tree in lowered.trees:
        write_tree(tree, root)
    from imagedsl.store import atomic_write

    atomic_write(root / "Dockerfile", lowered.text.encode())
    return lowered


def _is_tree_name(name: str) -> bool:
    return len(name) == len(tree_name("0" * 64)) and all(c in "0123456789abcdef" for c in name)


def _remove_tree(path: Path) -> None:
    import shutil

    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)
