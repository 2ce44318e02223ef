"""Every field of every preimage: a change of exactly that field moves exactly the right keys.

The table below is checked against the preimages the planner really produces for a catalogue
build that uses every step kind, every mount type and every option that enters a key. A new
preimage field (or a new step kind) without an entry in ``TABLE`` fails
``test_table_covers_every_preimage_field``; each entry is then checked by
``test_field_change_moves_its_step_and_descendants_only``: the change moves the key of the step
that holds the field and of steps downstream of it, and no other key.
"""

from __future__ import annotations

import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs
import pytest

import imagedsl as dsl
from imagedsl import keys, steps
from imagedsl.graph import StepNode
from imagedsl.planner import plan
from imagedsl.steps import Mount

PINNED = "sha256:" + "1" * 64
CHECKSUM = "sha256:" + "2" * 64
CONFIG_KINDS = frozenset(
    cls.kind for cls in typing.get_args(steps.ConfigStep) if isinstance(cls.kind, str)
)

#: The catalogue's inputs. A mutation overrides exactly one of them.
DEFAULTS: Mapping[str, Any] = {
    # builder: a pinned registry base, a RUN
    "builder_repository": "registry.test/builder",
    "builder_digest": PINNED,
    "builder_platform": "linux/amd64",
    "builder_command": "make /out/tool",
    # tool: scratch + COPY --from the builder
    "scratch_platform": "linux/amd64",
    # app: an unpinned base and one of everything else
    "app_tag": "3.20",
    "app_platform": "linux/amd64",
    "env0": "zero",
    "arg_name": "V",
    "arg_default": "1",
    "env": "e",
    "user": "app",
    "shell": ("/bin/sh", "-c"),
    "workdir": "/app",
    "copy_dest": "/app/files/",
    "copy_chown": "1:1",
    "copy_chmod": "0644",
    "copy_exclude": ("*.log",),
    "copy_link": False,
    "file_text": "one",
    "add_dest": "/app/notes.txt",
    "add_chown": "2:2",
    "add_chmod": "0600",
    "notes_text": "notes",
    "notes_name": "notes.txt",
    "url_dest": "/app/remote.bin",
    "url_chown": "3:3",
    "url_chmod": "0755",
    "url_checksum": CHECKSUM,
    "url_address": "https://example.invalid/remote.bin",
    "from_path": "/tool",
    "from_dest": "/usr/local/bin/",
    "from_chown": "4:4",
    "from_chmod": "0750",
    "from_exclude": ("*.tmp",),
    # a second COPY --from, of several paths (stage.paths)
    "from_paths": ("/tool", "/tool/bin"),
    "run_command": "build.sh",
    "network": "default",
    "cache_target": "/cache",
    "cache_id": "pip",
    "cache_sharing": "shared",
    "cache_mode": 0o755,
    "cache_uid": 0,
    "cache_gid": 0,
    "cache_readonly": False,
    "secret_id": "token",
    "secret_target": "/run/secrets/token",
    "secret_env": "TOKEN",
    "secret_required": False,
    "secret_mode": 0o400,
    "secret_uid": 0,
    "secret_gid": 0,
    "bind_target": "/src",
    "bind_readwrite": False,
    "bound_text": "bound",
    "tmpfs_target": "/tmp/scratch",
    "tmpfs_size": 1024,
    "label": {"org.test": "yes"},
    "ports": (8080,),
    "volumes": ("/data",),
    "entrypoint": ("/entry",),
    "entrypoint_shell": False,
    "cmd": ("serve",),
    "cmd_shell": False,
    "health_test": ("check",),
    "health_shell": False,
    "health_interval": "30s",
    "health_timeout": "5s",
    "health_start_period": "1s",
    "health_retries": 3,
    "stopsignal": "SIGTERM",
    "author": "Jane <jane@example.com>",
    "onbuild": "RUN make",
    # final: FROM <stage by name>, then one more config step
    "final_ref": "app",
    "final_label": {"stage": "final"},
}


def catalogue(root: Path, **overrides: Any) -> dict[str, dsl.Stage]:
    """The catalogue build: every step kind and every keyed option, fed from ``DEFAULTS``."""
    unknown = set(overrides) - set(DEFAULTS)
    assert not unknown, f"not a catalogue input: {unknown}"
    k = {**DEFAULTS, **overrides}
    (root / "files").mkdir(parents=True, exist_ok=True)
    (root / "files" / "a.txt").write_text(k["file_text"])
    (root / "files" / "skip.log").write_text("excluded")
    (root / k["notes_name"]).write_text(k["notes_text"])
    (root / "bound.txt").write_text(k["bound_text"])
    src = dsl.context(root)
    builder = dsl.image(
        f"{k['builder_repository']}@{k['builder_digest']}", platform=k["builder_platform"]
    ).run(k["builder_command"])
    tool = dsl.scratch(platform=k["scratch_platform"]).copy(builder.path("/out/tool"), "/tool")
    mounts: list[Mount] = [
        dsl.cache(
            k["cache_target"],
            id=k["cache_id"],
            sharing=k["cache_sharing"],
            mode=k["cache_mode"],
            uid=k["cache_uid"],
            gid=k["cache_gid"],
            readonly=k["cache_readonly"],
        ),
        dsl.secret(
            k["secret_id"],
            target=k["secret_target"],
            env=k["secret_env"],
            required=k["secret_required"],
            mode=k["secret_mode"],
            uid=k["secret_uid"],
            gid=k["secret_gid"],
        ),
        dsl.bind(src.file("bound.txt"), k["bind_target"], readwrite=k["bind_readwrite"]),
        dsl.tmpfs(k["tmpfs_target"], size=k["tmpfs_size"]),
    ]
    app = (
        dsl.image(f"alpine:{k['app_tag']}", platform=k["app_platform"])
        .env(E0=k["env0"])
        .arg(k["arg_name"], k["arg_default"])
        .env(E=k["env"])
        .user(k["user"])
        .shell(*k["shell"])
        .workdir(k["workdir"])
        .copy(
            src.dir("files"),
            k["copy_dest"],
            chown=k["copy_chown"],
            chmod=k["copy_chmod"],
            exclude=k["copy_exclude"],
            link=k["copy_link"],
        )
        .add(src.file(k["notes_name"]), k["add_dest"], chown=k["add_chown"], chmod=k["add_chmod"])
        .add(
            dsl.url(k["url_address"], checksum=k["url_checksum"]),
            k["url_dest"],
            chown=k["url_chown"],
            chmod=k["url_chmod"],
        )
        .copy(
            tool.path(k["from_path"]),
            k["from_dest"],
            chown=k["from_chown"],
            chmod=k["from_chmod"],
            exclude=k["from_exclude"],
        )
        .copy(tool.paths(*k["from_paths"]), "/opt/tools/")
        .run(k["run_command"], mounts=mounts, network=k["network"])
        .label(k["label"])
        .expose(*k["ports"])
        .volume(*k["volumes"])
        .entrypoint(*k["entrypoint"], shell=k["entrypoint_shell"])
        .cmd(*k["cmd"], shell=k["cmd_shell"])
        .healthcheck(
            *k["health_test"],
            shell=k["health_shell"],
            interval=k["health_interval"],
            timeout=k["health_timeout"],
            start_period=k["health_start_period"],
            retries=k["health_retries"],
        )
        .stopsignal(k["stopsignal"])
        .author(k["author"])
        .onbuild(k["onbuild"])
    )
    final = dsl.from_stage(k["final_ref"]).label(k["final_label"])
    # "app" and "app-again" name one stage: FROM either continues the same steps.
    return {"builder": builder, "tool": tool, "app": app, "app-again": app, "final": final}


def nodes_of(
    root: Path,
    build_args: Mapping[str, str] | None = None,
    epoch: int = 0,
    **overrides: Any,
) -> list[StepNode]:
    """The catalogue's keyed steps for target ``final``, in plan order, with no store (and
    a fixed SOURCE_DATE_EPOCH, whatever the environment says)."""
    stages = catalogue(root, **overrides)
    planned = plan(stages, "final", build_args=build_args, source_date_epoch=epoch)
    return [step.node for step in planned.steps]


def flatten(preimage: Mapping[str, Any]) -> dict[str, Any]:
    """A preimage as ``path -> value``: ``mounts[TYPE].FIELD`` and ``state.FIELD`` spelled out."""
    flat: dict[str, Any] = {}
    for name, value in preimage.items():
        if name == "mounts":
            for mount in value:
                for field, item in mount.items():
                    flat[f"mounts[{mount['type']}].{field}"] = item
        elif name == "state":
            for field, item in value.items():
                flat[f"state.{field}"] = item
        else:
            flat[name] = value
    return flat


def family(preimage: Mapping[str, Any], path: str) -> tuple[str, str]:
    """The table row of one preimage field: per preimage kind; ``parent`` and the config
    steps' ``state.*`` are made by one code path each, so they have one row each."""
    kind = str(preimage["kind"])
    if path in ("v", "kind", "parent"):
        return ("*", path)
    if kind in CONFIG_KINDS and path.startswith("state."):
        return ("config", path)
    return (kind, path)


@attrs.frozen
class Change:
    """One catalogue input changed; ``origin`` is the kind of the first step it moves when
    that is not the row's own kind (the field is inherited from an earlier step), ``also``
    the other fields of the origin step that change with it."""

    overrides: Mapping[str, Any] = attrs.field(factory=dict)
    origin: str | None = None
    also: frozenset[str] = frozenset()
    build_args: Mapping[str, str] | None = None
    epoch: int = 0


def change(origin: str | None = None, also: tuple[str, ...] = (), **overrides: Any) -> Change:
    return Change(overrides, origin, frozenset(also))


#: Fields that no single DSL change can move on its own, with the reason.
EXEMPT: Mapping[tuple[str, str], str] = {
    ("*", "v"): "the key format version: pinned by tests/test_golden_keys.py",
    ("*", "kind"): "names the preimage's kind; a different step is a different row",
    ("add", "exclude"): "ADD takes no exclude patterns: always []",
    ("copy", "exclude"): "a context COPY is keyed by what its patterns leave (the tree; see "
    "EXTRA copy-exclude), so its exclude is []; only a built COPY --from keeps its patterns",
    **{
        ("run", f"mounts[{kind}].type"): "names the mount's kind; each kind has its own fields"
        for kind in ("cache", "secret", "bind", "tmpfs")
    },
}

TABLE: Mapping[tuple[str, str], Change] = {
    ("*", "parent"): change(origin="from", also=("ref",), app_tag="3.21"),
    ("from", "ref"): change(app_tag="edge"),
    ("from", "digest"): change(builder_digest="sha256:" + "9" * 64),
    ("from", "platform"): change(builder_platform="linux/arm64"),
    ("scratch", "platform"): change(scratch_platform="linux/arm64"),
    ("run", "argv"): change(run_command="build.sh --fast"),
    ("run", "env"): change(origin="env", also=("items", "state.env", "state.config_env"), env="f"),
    ("run", "workdir"): change(origin="workdir", also=("path",), workdir="/srv"),
    ("run", "user"): change(origin="user", also=("state.user",), user="other"),
    ("run", "network"): change(network="none"),
    # SOURCE_DATE_EPOCH is in every RUN's environment: a plan argument, not a build-file one.
    ("run", "source_date_epoch"): Change(epoch=1_700_000_000),
    ("run", "platform"): change(origin="from", app_platform="linux/arm64"),
    ("run", "mounts[cache].target"): change(cache_target="/cache2"),
    ("run", "mounts[cache].id"): change(cache_id="npm"),
    ("run", "mounts[cache].sharing"): change(cache_sharing="locked"),
    ("run", "mounts[cache].mode"): change(cache_mode=0o700),
    ("run", "mounts[cache].uid"): change(cache_uid=1000),
    ("run", "mounts[cache].gid"): change(cache_gid=1000),
    ("run", "mounts[cache].readonly"): change(cache_readonly=True),
    ("run", "mounts[secret].id"): change(secret_id="other"),
    ("run", "mounts[secret].target"): change(secret_target="/run/secrets/other"),
    ("run", "mounts[secret].env"): change(secret_env="OTHER"),
    ("run", "mounts[secret].required"): change(secret_required=True),
    ("run", "mounts[secret].mode"): change(secret_mode=0o440),
    ("run", "mounts[secret].uid"): change(secret_uid=1000),
    ("run", "mounts[secret].gid"): change(secret_gid=1000),
    ("run", "mounts[bind].target"): change(bind_target="/src2"),
    ("run", "mounts[bind].readwrite"): change(bind_readwrite=True),
    ("run", "mounts[bind].content"): change(bound_text="bound, edited"),
    ("run", "mounts[tmpfs].target"): change(tmpfs_target="/tmp/other"),
    ("run", "mounts[tmpfs].size"): change(tmpfs_size=2048),
    ("copy", "dest"): change(copy_dest="/app/other/"),
    ("copy", "chown"): change(copy_chown="5:5"),
    ("copy", "chmod"): change(copy_chmod="0640"),
    ("copy", "tree"): change(file_text="two"),
    ("add", "dest"): change(add_dest="/app/notes2.txt"),
    ("add", "chown"): change(add_chown="6:6"),
    ("add", "chmod"): change(add_chmod="0640"),
    ("add", "tree"): change(notes_text="notes, edited"),
    # One file copied to a file name: its own name (same bytes, renamed) is in BuildKit's key.
    ("add", "name"): change(notes_name="notes-renamed.txt"),
    ("add-url", "dest"): change(url_dest="/app/remote2.bin"),
    ("add-url", "chown"): change(url_chown="7:7"),
    ("add-url", "chmod"): change(url_chmod="0700"),
    ("add-url", "checksum"): change(url_checksum="sha256:" + "3" * 64),
    # The file name the URL gives (what a directory destination receives), not the URL.
    ("add-url", "name"): change(url_address="https://example.invalid/other.bin"),
    ("copy-from", "dest"): change(from_dest="/opt/bin/"),
    ("copy-from", "chown"): change(from_chown="8:8"),
    ("copy-from", "chmod"): change(from_chmod="0700"),
    ("copy-from", "exclude"): change(from_exclude=("*.tmp", "*.o")),
    ("copy-from", "path"): change(from_path="/tool/bin"),
    ("copy-from", "paths"): change(from_paths=("/tool", "/tool/lib")),
    ("copy-from", "source"): change(origin="run", also=("argv",), builder_command="make all"),
    ("workdir", "path"): change(workdir="/srv"),
    ("workdir", "user"): change(origin="user", also=("state.user",), user="other"),
    ("env", "items"): change(also=("state.env", "state.config_env"), env="f"),
    ("arg", "name"): change(also=("state.env",), arg_name="W"),
    ("arg", "default"): change(also=("state.env",), arg_default="2"),
    ("user", "user"): change(also=("state.user",), user="other"),
    ("label", "items"): change(label={"org.test": "no"}),
    ("expose", "ports"): change(ports=(8081,)),
    ("volume", "paths"): change(volumes=("/data2",)),
    ("entrypoint", "command"): change(entrypoint=("/entry2",)),
    ("entrypoint", "shell_form"): change(entrypoint_shell=True),
    ("cmd", "command"): change(cmd=("serve2",)),
    ("cmd", "shell_form"): change(cmd_shell=True),
    ("healthcheck", "test"): change(health_test=("check2",)),
    ("healthcheck", "shell_form"): change(health_shell=True),
    ("healthcheck", "interval"): change(health_interval="31s"),
    ("healthcheck", "timeout"): change(health_timeout="6s"),
    ("healthcheck", "start_period"): change(health_start_period="2s"),
    ("healthcheck", "retries"): change(health_retries=4),
    ("shell", "command"): change(also=("state.shell",), shell=("/bin/bash", "-c")),
    ("stopsignal", "signal"): change(stopsignal="SIGINT"),
    ("author", "name"): change(author="Joe"),
    ("onbuild", "instruction"): change(onbuild="RUN make install"),
    ("from-stage", "ref"): change(final_ref="app-again"),
    ("config", "state.env"): change(origin="arg", also=("default",), arg_default="2"),
    ("config", "state.config_env"): change(origin="env", also=("items", "state.env"), env0="one"),
    ("config", "state.workdir"): change(origin="workdir", also=("path",), workdir="/srv"),
    ("config", "state.user"): change(origin="user", also=("user",), user="other"),
    ("config", "state.shell"): change(origin="shell", also=("command",), shell=("/bin/ash", "-c")),
}

#: Changes that are not one field's row but must move keys the same way.
EXTRA: Mapping[str, Change] = {
    # link=True drops the parent: the layer no longer depends on what is below it.
    "copy-link": change(also=(), copy_link=True),
    # --build-arg moves the ARG's effective value without touching the build file.
    "build-arg": Change(origin="arg", also=frozenset(), build_args={"V": "from-cli"}),
    # Exclude patterns that leave out one more file move the tree (and only the tree).
    "copy-exclude": change(copy_exclude=("*.log", "*.txt")),
    # The order of a COPY --from's paths: BuildKit copies them in that order (a later path
    # may overwrite an earlier one's files), and its own key holds the order too.
    "copy-from-paths-order": change(from_paths=("/tool/bin", "/tool")),
}


def test_table_covers_every_preimage_field(tmp_path: Path) -> None:
    """Every field of every preimage the catalogue produces has a row (or an exemption), and
    every row names a field that exists: a new preimage field without a case fails here."""
    nodes = nodes_of(tmp_path)
    produced = {family(n.preimage, path) for n in nodes for path in flatten(n.preimage)}
    rows = set(TABLE) | set(EXEMPT)
    assert sorted(produced - rows) == [], "preimage fields without a row in TABLE"
    assert sorted(rows - produced) == [], "rows for fields no preimage has"
    assert not set(TABLE) & set(EXEMPT)


#: Every preimage function of imagedsl/keys.py, and where its preimages are checked: the
#: catalogue above, or (for those the planner does not make from a build file) elsewhere.
PREIMAGE_FUNCTIONS: Mapping[str, str] = {
    "base_preimage": "catalogue",
    "run_preimage": "catalogue",
    "mount_preimage": "catalogue",
    "copy_preimage": "catalogue",
    "copy_from_stage_preimage": "catalogue",
    "add_url_preimage": "catalogue",
    "workdir_preimage": "catalogue",
    "config_preimage": "catalogue",
    "layers_preimage": "the filesystem key of a split COPY: golden keys (layers='auto')",
    "trigger_preimage": "a base's ONBUILD triggers, keyed by the OCI backend from the base's "
    "config: tests/test_oci_build.py::test_base_onbuild_triggers_run_first",
}


def test_every_preimage_function_is_accounted_for() -> None:
    """A new preimage function in keys.py needs a line in PREIMAGE_FUNCTIONS (and, if the
    planner makes it from a build file, rows in TABLE through the catalogue)."""
    found = {
        name
        for name, value in vars(keys).items()
        if name.endswith("_preimage") and not name.startswith("_") and callable(value)
    }
    assert found == set(PREIMAGE_FUNCTIONS)


def test_catalogue_has_every_step_kind(tmp_path: Path) -> None:
    """The catalogue uses every step kind there is, so the table sees every preimage kind."""
    every = {cls.kind for cls in typing.get_args(steps.Step)}
    seen = {n.step.kind for n in nodes_of(tmp_path)}
    assert every - seen == set()
    kinds = {n.preimage["kind"] for n in nodes_of(tmp_path)}
    assert {"copy-from", "add-url"} <= kinds


def _references(node: StepNode) -> set[str]:
    """The keys a step's preimage points at: its parent, its source, its bind mounts."""
    refs = {node.preimage.get("parent"), node.preimage.get("source")}
    for mount in node.preimage.get("mounts", ()):
        if mount["type"] == "bind" and mount["content"] and ":" in mount["content"]:
            refs.add(mount["content"].split(":")[0])
    return {r for r in refs if isinstance(r, str)}


def _descendants(nodes: list[StepNode], index: int) -> set[int]:
    found: set[int] = set()
    for node in nodes:
        if index in node.deps or found.intersection(node.deps):
            found.add(node.index)
    return found


def check_change(tmp_path: Path, row: tuple[str, str], case: Change) -> None:
    before = nodes_of(tmp_path / "before")
    after = nodes_of(tmp_path / "after", case.build_args, case.epoch, **case.overrides)
    assert [(n.stage, n.position, n.kind) for n in before] == [
        (n.stage, n.position, n.kind) for n in after
    ], "the change must not change the graph's shape"
    moved = [i for i, (b, a) in enumerate(zip(before, after, strict=True)) if b.key != a.key]
    assert moved, "no key moved"
    origin = moved[0]
    kind, path = row
    origin_kind = str(after[origin].preimage["kind"])
    expected_origin = case.origin or kind
    if expected_origin == "config":
        assert origin_kind in CONFIG_KINDS
    elif expected_origin != "*":
        assert origin_kind == expected_origin, f"first moved step is {origin_kind}"
    old, new = flatten(before[origin].preimage), flatten(after[origin].preimage)
    differing = {p for p in old.keys() | new.keys() if old.get(p) != new.get(p)}
    if case.origin is None and kind != "*":
        assert differing == {path} | case.also, "the change must touch exactly its field"
    elif path in differing or case.origin is not None:
        assert differing <= {path} | case.also, f"origin fields moved: {differing}"
    # Only the origin and what is downstream of it move ...
    assert set(moved) <= {origin} | _descendants(after, origin)
    # ... and everything that points at a moved key or filesystem moves too.
    gone = {before[i].key for i in moved} | {
        b.fs_key for b, a in zip(before, after, strict=True) if b.fs_key != a.fs_key
    }
    for b, a in zip(before, after, strict=True):
        if _references(b) & gone:
            assert b.key != a.key, f"{a.locus} points at a moved key but kept its own"
    # The row's field itself moved in some step of its kind.
    if kind != "*":
        holders = [
            (b, a)
            for b, a in zip(before, after, strict=True)
            if family(a.preimage, path) == row and path in flatten(a.preimage)
        ]
        assert any(flatten(b.preimage)[path] != flatten(a.preimage)[path] for b, a in holders)
        assert all(b.key != a.key for b, a in holders if b.preimage != a.preimage)
    else:
        downstream = {origin} | _descendants(after, origin)
        parents = [
            (before[i], after[i]) for i in sorted(downstream) if before[i].preimage.get(path)
        ]
        assert parents
        assert all(b.preimage[path] != a.preimage[path] for b, a in parents)


@pytest.mark.parametrize("row", sorted(TABLE), ids=lambda row: ".".join(row))
def test_field_change_moves_its_step_and_descendants_only(
    tmp_path: Path, row: tuple[str, str]
) -> None:
    """A DSL change of one preimage field moves that step's key and keys downstream of it,
    and no other key."""
    check_change(tmp_path, row, TABLE[row])


@pytest.mark.parametrize("name", sorted(EXTRA))
def test_changes_beside_the_table(tmp_path: Path, name: str) -> None:
    """``link=True``, ``--build-arg`` and exclude patterns move keys by the same rules."""
    row = {
        "copy-link": ("*", "parent"),
        "build-arg": ("config", "state.env"),
        "copy-from-paths-order": ("copy-from", "paths"),
    }.get(name, ("copy", "tree"))
    check_change(tmp_path, row, EXTRA[name])
