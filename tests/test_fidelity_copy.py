"""Edit scenarios for COPY and ADD: options, destinations, sources from the context and from
other stages (see tests/support/fidelity.py for what each scenario checks)."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

import imagedsl as dsl
from imagedsl.backends import BuildRequest
from imagedsl.backends.oci.backend import OCIBackend
from imagedsl.backends.oci.copy_entries import StepInputError
from imagedsl.importer import DockerfileImportError, translate_text
from imagedsl.planner import plan
from imagedsl.reporting import Reporter
from imagedsl.store import Store
from tests.support.docker import DockerEngine
from tests.support.fidelity import (
    FidelityRun,
    Project,
    Scenario,
    Symlink,
    scenario_params,
    tar_bytes,
)
from tests.support.oci import layer_members, read_image

FILES = {"app/main.py": "print('hi')\n", "app/util.py": "X = 1\n", "conf.txt": "a=1\n"}
LIST_APP = """.run("stat -c '%n %u %g %a %s' /app/* > /listing")"""
TOOL = """tool = BASE.run("mkdir -p /out && echo tool > /out/tool.txt{extra}")\n"""
#: A stage with files, directories and a symlink for copies of several paths.
TOOLS = (
    'tool = BASE.run("mkdir -p /out/sub /out/lib /out/other && echo a > /out/a.txt'
    " && echo b > /out/b.txt && echo c > /out/sub/c.txt && echo so > /out/lib/x.so"
    ' && echo other > /out/other/a.txt && ln -s a.txt /out/link.txt{extra}")\n'
)
LIST_DEST = """.run("find /dest | sort > /listing")"""


def several(*paths: str, extra: str = "") -> str:
    """``COPY --from=tool PATHS /dest/`` and a RUN that reads the result."""
    quoted = ", ".join(repr(path) for path in paths)
    return (
        TOOLS.format(extra=extra) + f"app = BASE.copy(tool.paths({quoted}), '/dest/')" + LIST_DEST
    )


#: Context files under directories a build arg names (d1 and d2 hold equal files).
ARG_DIRS = {"d1/f": "same\n", "d2/f": "same\n", "d3/f": "other\n"}
COPY_BY_ARG = """app = BASE.arg("D", "d1").copy(src.file("$D/f"), "/f").run("cat /f > /g")"""


def edit_file_under_the_arg_path(project: Project) -> None:
    project.write_files({"d1/f": "edited\n"})


def add_excluded_file(project: Project) -> None:
    project.write_files({"app/scratch.tmp": "left out by exclude=\n"})


def add_matching_text_file(project: Project) -> None:
    project.write_files({"notes.txt": "matches the glob\n"})


def add_file_to_app(project: Project) -> None:
    project.write_files({"app/new.py": "NEW = 1\n"})


def delete_the_only_config(project: Project) -> None:
    (project.context / "conf.txt").unlink()


def add_unmatched_file(project: Project) -> None:
    project.write_files({"notes.md": "does not match the glob\n"})


def edit_symlink_target(project: Project) -> None:
    project.write_files({"real.conf": "the target, edited\n"})


def retarget_symlink(project: Project) -> None:
    project.write_files({"app/current": Symlink("util.py")})


def v7_tar(files: dict[str, bytes]) -> bytes:
    """A tar in the old v7 format (no magic, no owner names), which Python cannot write: a
    ustar one with the magic and version cleared and the checksums written again."""
    data = bytearray(tar_bytes(files))
    at = 0
    while at < len(data) and any(data[at : at + 512]):
        header = data[at : at + 512]
        assert bytes(header[156:157]) in (b"0", b"\x00"), "regular files only"
        header[257:512] = bytes(255)  # magic, version, names, devices, prefix
        header[148:156] = b" " * 8
        header[148:156] = f"{sum(header):06o}\x00 ".encode()
        data[at : at + 512] = header
        size = int(header[124:136].strip(b" \x00") or b"0", 8)
        at += 512 + (size + 511) // 512 * 512
    return bytes(data)


def edit_lone_file(project: Project) -> None:
    project.write_files({"one/x": "x, edited\n"})


def edit_packed_archive(project: Project) -> None:
    project.write_files({"pack/bundle.tar": tar_bytes({"a.txt": b"one, edited\n"})})


def edit_archive(project: Project) -> None:
    project.write_files({"bundle.tar": tar_bytes({"a.txt": b"one\n", "b.txt": b"two, edited\n"})})


SCENARIOS = [
    Scenario(
        name="chown changes",
        before="""app = BASE.copy(src.dir("app"), "/app", chown="1:1")""" + LIST_APP,
        after="""app = BASE.copy(src.dir("app"), "/app", chown="2:2")""" + LIST_APP,
        files=FILES,
        misses=2,
    ),
    Scenario(
        name="chmod changes",
        before="""app = BASE.copy(src.dir("app"), "/app", chmod="644")""" + LIST_APP,
        after="""app = BASE.copy(src.dir("app"), "/app", chmod="755")""" + LIST_APP,
        files=FILES,
        misses=2,
    ),
    Scenario(
        name="exclude pattern that excludes nothing is added",
        before="""app = BASE.copy(src.dir("app"), "/app")""" + LIST_APP,
        after="""app = BASE.copy(src.dir("app"), "/app", exclude=["*.tmp"])""" + LIST_APP,
        files=FILES,
        misses=0,
    ),
    Scenario(
        name="exclude pattern that excludes a file is added",
        before="""app = BASE.copy(src.dir("app"), "/app")""" + LIST_APP,
        after="""app = BASE.copy(src.dir("app"), "/app", exclude=["util.py"])""" + LIST_APP,
        files=FILES,
        misses=2,
    ),
    Scenario(
        name="a file an exclude pattern leaves out is added",
        before="""app = BASE.copy(src.dir("app"), "/app", exclude=["*.tmp"])""" + LIST_APP,
        files=FILES,
        edit=add_excluded_file,
        misses=0,
    ),
    Scenario(
        name="dest dot and dot slash",
        before="""app = BASE.workdir("/app").copy(src.file("conf.txt"), ".")""" + LIST_APP,
        after="""app = BASE.workdir("/app").copy(src.file("conf.txt"), "./")""" + LIST_APP,
        files=FILES,
        misses=0,
    ),
    Scenario(
        name="dest file name becomes a directory",
        before="""app = BASE.copy(src.file("conf.txt"), "/app/app.conf")""" + LIST_APP,
        after="""app = BASE.copy(src.file("conf.txt"), "/app/")""" + LIST_APP,
        files=FILES,
        misses=2,
    ),
    Scenario(
        name="relative dest under another workdir",
        before="""app = BASE.workdir("/srv/a").copy(src.file("conf.txt"), "etc/")"""
        """.run("cat etc/conf.txt > /out")""",
        after="""app = BASE.workdir("/srv/b").copy(src.file("conf.txt"), "etc/")"""
        """.run("cat etc/conf.txt > /out")""",
        files=FILES,
        misses=3,
    ),
    Scenario(
        # BuildKit keeps a stage's owners in a COPY --from without --chown.
        name="copy from a stage of files another user owns, whose output changes",
        before=TOOL.format(extra=" && chown -R 3:4 /out")
        + """app = BASE.copy(tool.path("/out"), "/tools/").run("stat -c '%u:%g %n' /tools/* > /c")""",
        after=TOOL.format(extra=" && echo v2 >> /out/tool.txt && chown -R 3:4 /out")
        + """app = BASE.copy(tool.path("/out"), "/tools/").run("stat -c '%u:%g %n' /tools/* > /c")""",
        misses=1,
        maybes=2,
    ),
    Scenario(
        name="copy from a stage rebuilt with identical output",
        before=TOOL.format(extra="")
        + """app = BASE.copy(tool.path("/out/tool.txt"), "/tool.txt").run("cat /tool.txt > /copied")""",
        after=TOOL.format(extra=" && echo rebuilt > /rebuilt")
        + """app = BASE.copy(tool.path("/out/tool.txt"), "/tool.txt").run("cat /tool.txt > /copied")""",
        misses=1,
        maybes=2,
    ),
    Scenario(
        name="copy from a stage whose output changed",
        before=TOOL.format(extra="")
        + """app = BASE.copy(tool.path("/out/tool.txt"), "/tool.txt").run("cat /tool.txt > /copied")""",
        after=TOOL.format(extra=" && echo v2 >> /out/tool.txt")
        + """app = BASE.copy(tool.path("/out/tool.txt"), "/tool.txt").run("cat /tool.txt > /copied")""",
        misses=1,
        maybes=2,
    ),
    Scenario(
        name="copy from a stage names another path",
        before=TOOL.format(extra="")
        + """app = BASE.copy(tool.path("/out/tool.txt"), "/tools/").run("ls /tools > /copied")""",
        after=TOOL.format(extra="")
        + """app = BASE.copy(tool.path("/out"), "/tools/").run("ls /tools > /copied")""",
        misses=0,
        maybes=2,
    ),
    Scenario(
        # BuildKit follows a symlink named as the source: the target's bytes, the link's name.
        name="copy from a stage names a symlink, whose target changes",
        before=TOOL.format(extra=" && ln -s tool.txt /out/current && ln -s /out /out/dir")
        + """app = BASE.copy(tool.path("/out/current"), "/tools/")"""
        """.copy(tool.path("/out/dir"), "/all").run("find /tools /all -exec stat -c '%n %F %s' {} + | sort > /copied")""",
        after=TOOL.format(
            extra=" && echo more >> /out/tool.txt && ln -s tool.txt /out/current"
            " && ln -s /out /out/dir"
        )
        + """app = BASE.copy(tool.path("/out/current"), "/tools/")"""
        """.copy(tool.path("/out/dir"), "/all").run("find /tools /all -exec stat -c '%n %F %s' {} + | sort > /copied")""",
    ),
    Scenario(
        # BuildKit makes the destination of an empty directory (0755, the --chown owner);
        # the OCI backend made nothing. Edit: the directory's mode in the stage changes.
        name="copy from a stage of an empty directory",
        before=TOOL.format(extra=" && mkdir -p /out/empty /e && chmod 700 /e")
        + """app = BASE.copy(tool.path("/e"), "/made").copy(tool.path("/out/empty"), "/t/e/")"""
        """.copy(tool.path("/e"), "/owned", chown="5:6").run("stat -c '%a %u %n' /made /t/e /owned > /c")""",
        after=TOOL.format(extra=" && mkdir -p /out/empty /e && chmod 750 /e")
        + """app = BASE.copy(tool.path("/e"), "/made").copy(tool.path("/out/empty"), "/t/e/")"""
        """.copy(tool.path("/e"), "/owned", chown="5:6").run("stat -c '%a %u %n' /made /t/e /owned > /c")""",
    ),
    Scenario(
        name="copy from a stage with another owner",
        before=TOOL.format(extra="")
        + """app = BASE.copy(tool.path("/out"), "/tools", chown="3:3").run("stat -c '%u' /tools/tool.txt > /o")""",
        after=TOOL.format(extra="")
        + """app = BASE.copy(tool.path("/out"), "/tools", chown="4:4").run("stat -c '%u' /tools/tool.txt > /o")""",
        misses=0,
        maybes=2,
    ),
    # COPY --from=tool a b ... /dest/: one COPY, one layer, the paths in order (each as a COPY
    # of it alone would place it), wildcards matched as BuildKit matches them.
    Scenario(
        name="several paths of a stage whose output changed",
        before=several("/out/a.txt", "/out/sub"),
        after=several("/out/a.txt", "/out/sub", extra=" && echo v2 >> /out/sub/c.txt"),
        misses=1,
        maybes=2,
    ),
    Scenario(
        name="several paths of a stage rebuilt with identical output",
        before=several("/out/*.txt", "/out/li*", "/out/sub"),
        after=several("/out/*.txt", "/out/li*", "/out/sub", extra=" && echo again > /again"),
        misses=1,
        maybes=2,
    ),
    Scenario(
        name="the paths of a copy from a stage are reordered",
        before=several("/out/a.txt", "/out/sub", "/out/b.txt"),
        after=several("/out/b.txt", "/out/sub", "/out/a.txt"),
        # BuildKit's key holds the order (its copies are chained in it): a new copy for it.
        misses=0,
        maybes=2,
    ),
    Scenario(
        name="a path is added to a copy with an empty wildcard",
        before=several("/out/*.none", "/out/a.txt"),
        after=several("/out/*.none", "/out/a.txt", "/out/lib/x.so"),
        misses=0,
        maybes=2,
    ),
    Scenario(
        name="a later path of a stage overwrites an earlier one",
        before=several("/out/other", "/out/a.txt"),  # /dest/a.txt: "a"
        after=several("/out/a.txt", "/out/b.txt", "/out/other"),  # /dest/a.txt: "other"
        misses=0,
        maybes=2,
    ),
    Scenario(
        # A directory holding one file stays a directory; its one archive stays packed.
        name="a directory holding one file is added, and the file edited",
        before="""app = BASE.add(src.dir("one"), "/added").add(src.dir("pk"), "/d/")"""
        """.run("find /added /d -type f | sort > /all")""",
        files={"one/x": "x\n", "pk/plain.tar": tar_bytes({"in.txt": b"in\n"})},
        edit=edit_lone_file,
        misses=3,
    ),
    Scenario(
        # Go's filepath.Match negates a class with ^ only: [!a] is '!' or 'a'. The plan read it
        # as "not a", so the file it named was b.txt, and an edit of b.txt missed.
        name="a glob class starting with ! names a file edited",
        before="""app = BASE.copy(src.glob("[!a]*.txt"), "/g/").run("ls -1 /g > /l")""",
        files={"a.txt": "a\n", "b.txt": "b\n", "!c.txt": "c\n"},
        edit=lambda project: project.write_files({"b.txt": "b, edited\n"}),
        misses=0,
    ),
    Scenario(
        # BuildKit unpacks the archive among ADD's sources and copies the rest; the docker
        # backend refused it (it wrote several sources as one staged directory).
        name="an archive added among other files is edited",
        before="""app = BASE.add(src.select("bundle.tar", "n.txt"), "/dest/")"""
        """.run("find /dest | sort > /all")""",
        files={"bundle.tar": tar_bytes({"a.txt": b"one\n", "b.txt": b"two\n"}), "n.txt": "n\n"},
        edit=edit_archive,
        misses=2,
    ),
    Scenario(
        # An old v7 tar has no "ustar" magic; BuildKit unpacks any file whose first header
        # Go's tar reader takes, and the OCI backend copied this one whole.
        name="an old-format tar is added, and a file beside it edited",
        before="""app = BASE.add(src.file("v7.tar"), "/v7/").copy(src.file("n.txt"), "/n")"""
        """.run("find /v7 | sort > /all")""",
        files={"v7.tar": v7_tar({"a.txt": b"one\n", "d/b.txt": b"two\n"}), "n.txt": "n\n"},
        edit=lambda project: project.write_files({"n.txt": "edited\n"}),
        misses=2,
    ),
    Scenario(
        # BuildKit unpacks an archive ADD names itself, not one inside a directory it adds.
        name="an archive inside an added directory is edited",
        before="""app = BASE.add(src.dir("pack"), "/pack/").run("ls -1 /pack > /all")""",
        files={"pack/bundle.tar": tar_bytes({"a.txt": b"one\n"}), "pack/n.txt": "n\n"},
        edit=edit_packed_archive,
        misses=2,
    ),
    Scenario(
        # Docker 20.10's BuildKit unpacks an archive with its own owners, --chown or not.
        name="archive added with ADD --chown is edited",
        before="""app = BASE.add(src.file("bundle.tar"), "/bundle/", chown="10:20")"""
        """.run("stat -c '%u:%g %n' /bundle/* > /owners")""",
        files={"bundle.tar": tar_bytes({"a.txt": b"one\n", "b.txt": b"two\n"})},
        edit=edit_archive,
        misses=2,
    ),
    Scenario(
        name="archive added with ADD is edited",
        before="""app = BASE.add(src.file("bundle.tar"), "/bundle/").run("cat /bundle/*.txt > /all")""",
        files={"bundle.tar": tar_bytes({"a.txt": b"one\n", "b.txt": b"two\n"})},
        edit=edit_archive,
        misses=2,
    ),
    Scenario(
        name="file added with ADD is edited",
        before="""app = BASE.add(src.file("conf.txt"), "/etc/app.conf").run("cat /etc/app.conf > /c")""",
        files=FILES,
        edit=lambda project: project.write_files({"conf.txt": "a=2\n"}),
        misses=2,
    ),
    Scenario(
        name="a file the glob matches is added",
        before="""app = BASE.copy(src.glob("*.txt"), "/txt/").run("ls /txt > /listing")""",
        files=FILES,
        edit=add_matching_text_file,
        misses=2,
    ),
    Scenario(
        # BuildKit allows a wildcard that matches nothing: the other source is still copied.
        name="the only file a glob matches is deleted, beside another source",
        before="""app = BASE.copy(src.select("*.txt", "app/main.py"), "/srv/")"""
        """.run("ls -1A /srv > /listing")""",
        files=FILES,
        edit=delete_the_only_config,
        misses=2,
    ),
    Scenario(
        # BuildKit copies each match in turn to a path not ending in /: one file takes the
        # name, and when a second file matches, the last one in order stays.
        name="a glob copied to a name matches a second file",
        before="""app = BASE.copy(src.glob("*.txt"), "/etc/conf")"""
        """.run("stat -c '%F %s' /etc/conf > /r && cat /etc/conf >> /r")""",
        files=FILES,
        edit=add_matching_text_file,
        misses=2,
    ),
    Scenario(
        name="a glob copied to a name matches a directory",
        before="""app = BASE.copy(src.glob("ap*"), "/srv/x").run("find /srv | sort > /r")""",
        files=FILES,
        edit=add_file_to_app,
        misses=2,
    ),
    Scenario(
        # A COPY of nothing: an empty layer, and its destination is not made.
        name="the only file a glob matches is deleted",
        before="""app = BASE.copy(src.glob("*.txt"), "/srv/")"""
        """.run("if [ -e /srv ]; then ls -1A /srv; else echo none; fi > /listing")""",
        files=FILES,
        edit=delete_the_only_config,
        misses=2,
    ),
    Scenario(
        name="a file the glob does not match is added",
        before="""app = BASE.copy(src.glob("*.txt"), "/txt/").run("ls /txt > /listing")""",
        files=FILES,
        edit=add_unmatched_file,
        misses=0,
    ),
    Scenario(
        name="a file of a multi-path copy is edited",
        before="""app = BASE.copy(src.select("conf.txt", "app"), "/all/").run("ls -R /all > /listing")""",
        files=FILES,
        edit=lambda project: project.write_files({"app/util.py": "X = 2\n"}),
        misses=2,
    ),
    Scenario(
        name="the target of a symlinked file is edited",
        before="""app = BASE.copy(src.file("app.conf"), "/etc/app.conf").run("cat /etc/app.conf > /c")""",
        files={"real.conf": "the target\n", "app.conf": Symlink("real.conf")},
        edit=edit_symlink_target,
        misses=2,
    ),
    Scenario(
        name="a symlink inside a copied directory is retargeted",
        before="""app = BASE.copy(src.dir("app"), "/app").run("readlink /app/current > /r")""",
        files={**FILES, "app/current": Symlink("main.py")},
        edit=retarget_symlink,
        misses=2,
    ),
    Scenario(
        name="a layer below a linked copy changes",
        before="""app = BASE.run("echo one > /below").copy(src.dir("app"), "/app", link=True)""",
        after="""app = BASE.run("echo two > /below").copy(src.dir("app"), "/app", link=True)""",
        files=FILES,
        misses=1,
    ),
    Scenario(
        name="a layer below a linked copy changes and a run after reads it",
        before="""app = BASE.run("echo one > /below").copy(src.dir("app"), "/app", link=True)"""
        """.run("cat /below > /seen")""",
        after="""app = BASE.run("echo two > /below").copy(src.dir("app"), "/app", link=True)"""
        """.run("cat /below > /seen")""",
        files=FILES,
        misses=2,
    ),
    # Variables in source paths (BuildKit expands every COPY argument; checked with a plain
    # Dockerfile on Docker 20.10's BuildKit too: COPY $D/f with D=d1 then D=d2, equal files,
    # is CACHED; D=d3 rebuilds it). The RUN after sees D in its environment, so it rebuilds
    # whenever D changes.
    Scenario(
        name="a build arg changes a copied path to other content",
        before=COPY_BY_ARG,
        files=ARG_DIRS,
        build_args={"D": "d1"},
        build_args_after={"D": "d3"},
        misses=2,
    ),
    Scenario(
        name="a build arg changes a copied path to equal content",
        before=COPY_BY_ARG,
        files=ARG_DIRS,
        build_args={"D": "d1"},
        build_args_after={"D": "d2"},
        misses=1,
    ),
    Scenario(
        name="build args change but the copied path stays",
        before="""app = BASE.arg("A").arg("B").copy(src.file("${A}${B:-}/f"), "/f")""",
        files=ARG_DIRS,
        build_args={"A": "d", "B": "1"},
        build_args_after={"A": "d1", "B": ""},
        misses=0,
    ),
    Scenario(
        name="a file under a path a build arg names is edited",
        before=COPY_BY_ARG,
        files=ARG_DIRS,
        build_args={"D": "d1"},
        edit=edit_file_under_the_arg_path,
        misses=2,
    ),
    Scenario(
        name="a build arg changes the path copied from a stage",
        before="""tool = BASE.run("mkdir -p /out && echo a > /out/a && echo b > /out/b")\n"""
        """app = BASE.arg("N", "a").copy(tool.path("/out/$N"), "/n")""",
        build_args={"N": "a"},
        build_args_after={"N": "b"},
        # A path never copied before: its output is known once built (BuildKit rebuilds).
        misses=0,
        maybes=1,
    ),
]


@pytest.mark.parametrize("scenario", scenario_params(SCENARIOS))
def test_scenario(fidelity: FidelityRun, scenario: Scenario) -> None:
    """The plan predicts BuildKit step by step; both backends build the same image."""
    fidelity.check(scenario)


# -- several paths of a stage: what BuildKit refuses, and what imagedsl refuses --------------------


def _stage_project(root: Path) -> dsl.Context:
    """``ctx/out``: a.txt, b.txt and sub/c.txt, copied into a stage ``tool`` by both sides."""
    for name, text in {"a.txt": "a\n", "b.txt": "b\n", "sub/c.txt": "c\n"}.items():
        path = root / "ctx" / "out" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return dsl.context(root / "ctx")


def _buildkit(engine: DockerEngine, root: Path, copy: str) -> tuple[int, str, Path]:
    """Build ``FROM scratch`` + ``copy`` (from a stage ``tool`` holding ``/out``) with BuildKit
    itself: (exit code, output, the exported filesystem)."""
    (root / "ctx" / "Dockerfile").write_text(
        f"FROM scratch AS tool\nCOPY out /out\nFROM scratch\n{copy}\n"
    )
    out = root / f"fs-{uuid.uuid4().hex[:8]}"
    done = engine.build(root / "ctx", "--output", f"type=local,dest={out}", check=False)
    return done.returncode, done.stdout + done.stderr, out


def test_a_missing_path_of_several_fails_as_in_buildkit(
    docker_engine: DockerEngine, tmp_path: Path
) -> None:
    """A path of a several-path COPY --from that the stage lacks fails the build, naming the
    path, with BuildKit and with the OCI backend; a wildcard that matches nothing does not."""
    src = _stage_project(tmp_path)
    code, output, _ = _buildkit(
        docker_engine, tmp_path, "COPY --from=tool /out/a.txt /out/nope /dest/"
    )
    assert code != 0, output
    assert '"/out/nope" not found' in output
    code, output, fs = _buildkit(
        docker_engine, tmp_path, "COPY --from=tool /out/*.none /out/a.txt /dest/"
    )
    assert code == 0, output
    assert sorted(p.name for p in (fs / "dest").iterdir()) == ["a.txt"]

    tool = dsl.scratch().copy(src.dir("out"), "/out")
    for paths, missing in [
        (("/out/a.txt", "/out/nope"), "/out/nope"),
        (("/out/*.none", "/out/a.txt"), None),
    ]:
        app = dsl.scratch().copy(tool.paths(*paths), "/dest/")
        store = Store(tmp_path / "store")
        planned = plan({"tool": tool, "app": app}, "app", store=store)
        layout = tmp_path / f"oci-{len(paths)}-{missing is None}"
        request = BuildRequest(output=f"oci:{layout}")
        backend = OCIBackend(compression="none")
        if missing is None:
            backend.build_image(planned, request, store=store, reporter=Reporter())
            _, manifest, _ = read_image(layout)
            names = {m.name for layer in manifest["layers"] for m in layer_members(layout, layer)}
            assert "dest/a.txt" in names
            assert not any("none" in n for n in names)
        else:
            with pytest.raises(StepInputError, match=missing):
                backend.build_image(planned, request, store=store, reporter=Reporter())


def test_several_paths_into_a_destination_without_a_slash_are_refused(
    docker_engine: DockerEngine, tmp_path: Path
) -> None:
    """BuildKit copies each source onto a destination without ``/`` in turn: a file then a
    directory fails, two files leave the last one as the destination. imagedsl refuses the
    form where it is written (the DSL, the importer), never building either."""
    src = _stage_project(tmp_path)
    code, output, _ = _buildkit(
        docker_engine, tmp_path, "COPY --from=tool /out/a.txt /out/sub /dest"
    )
    assert code != 0, output
    assert "cannot copy to non-directory" in output
    code, output, fs = _buildkit(
        docker_engine, tmp_path, "COPY --from=tool /out/a.txt /out/b.txt /dest"
    )
    assert code == 0, output
    assert (fs / "dest").is_file()
    assert (fs / "dest").read_text() == "b\n"

    tool = dsl.scratch().copy(src.dir("out"), "/out")
    for source in (tool.paths("/out/a.txt", "/out/sub"), tool.path("/out/*.txt")):
        with pytest.raises(dsl.StepArgumentError) as refused:
            dsl.scratch().copy(source, "/dest")
        assert refused.value.argument == "dest"
        assert "must end with '/'" in refused.value.problem
    for line in ("COPY --from=tool /out/a.txt /out/sub /dest", "COPY --from=tool /out/*.txt /d"):
        with pytest.raises(DockerfileImportError) as caught:
            translate_text(f"FROM scratch AS tool\nFROM scratch\n{line}\n")
        assert caught.value.line == 3
        assert "end the destination with /" in caught.value.problem
