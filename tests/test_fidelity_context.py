"""Edit scenarios for the build context: content, modes, names, files added and removed, and
ignore rules (see tests/support/fidelity.py for what each scenario checks)."""

from __future__ import annotations

import os

import pytest

from tests.support.fidelity import FidelityRun, Project, Scenario, Symlink, scenario_params

FILES = {
    "app/main.py": "print('hi')\n",
    "app/util.py": "X = 1\n",
    "app/pkg/__init__.py": "",
    "docs/readme.md": "# readme\n",
    "requirements.txt": "flask==3.0\n",
}
COPY_APP = """app = BASE.copy(src.dir("app"), "/app").run("find /app | sort > /listing")"""
TWO_COPIES = (
    """app = BASE.copy(src.dir("app"), "/app").copy(src.dir("docs"), "/docs")"""
    """.run("find /app /docs | sort > /listing")"""
)


def edit_source_file(project: Project) -> None:
    project.write_files({"app/main.py": "print('hello, world')\n"})


def touch_mtime_only(project: Project) -> None:
    for path in project.context.rglob("*"):
        os.utime(path, (2_000_000_000, 2_000_000_000))


def rewrite_same_size_and_mtime(project: Project) -> None:
    path = project.context / "app" / "util.py"
    before = path.stat()
    path.write_text("X = 2\n")
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert path.stat().st_size == before.st_size


def make_executable(project: Project) -> None:
    (project.context / "app" / "main.py").chmod(0o755)


def rename_file(project: Project) -> None:
    (project.context / "app" / "util.py").rename(project.context / "app" / "utils.py")


def add_file(project: Project) -> None:
    project.write_files({"app/new.py": "NEW = True\n"})


def empty_the_docs(project: Project) -> None:
    (project.context / "docs" / "readme.md").unlink()


def delete_file(project: Project) -> None:
    (project.context / "app" / "util.py").unlink()


def add_empty_directory(project: Project) -> None:
    (project.context / "app" / "data").mkdir()


def rename_copied_directory(project: Project) -> None:
    (project.context / "app").rename(project.context / "application")


def replace_by_symlink(project: Project) -> None:
    project.write_files({"app/util.py": Symlink("main.py")})


def move_between_copies(project: Project) -> None:
    (project.context / "app" / "util.py").rename(project.context / "docs" / "util.py")


def edit_unselected_file(project: Project) -> None:
    project.write_files({"docs/readme.md": "# readme, edited\n"})


def add_ignored_files(project: Project) -> None:
    project.write_files({"app/debug.log": "noise\n", "app/cache/blob.bin": b"\0" * 64})


def ignore_a_copied_file(project: Project) -> None:
    project.write_files({".dockerignore": "*.log\napp/util.py\n"})


def ignore_nothing_more(project: Project) -> None:
    project.write_files({".dockerignore": "*.log\n*.bak\n"})


def rename_conf(project: Project) -> None:
    (project.context / "a.conf").rename(project.context / "b.conf")


#: One file copied to a file name, then read: BuildKit's COPY key holds the source's own name
#: (the file keeps it when the destination is a directory), not its directories.
COPY_CONF = """app = BASE.copy(SOURCE, "/etc/app.conf").run("cat /etc/app.conf > /seen")"""
CONF = {"a.conf": "c = 1\n", "app.conf": "x = 1\n", "q/app.conf": "x = 1\n"}


SCENARIOS = [
    Scenario(
        name="a file copied to a file name is renamed, same bytes",
        before=COPY_CONF.replace("SOURCE", 'src.file("a.conf")'),
        after=COPY_CONF.replace("SOURCE", 'src.file("b.conf")'),
        files=CONF,
        edit=rename_conf,
        misses=2,
    ),
    Scenario(
        name="the one file a wildcard matches is renamed, same bytes",
        before=COPY_CONF.replace("SOURCE", 'src.glob("*.conf")').replace("app.conf", "a.conf"),
        files={"a.conf": "c = 1\n"},
        edit=rename_conf,
        misses=2,
    ),
    Scenario(
        name="an inline file becomes a context file of the same bytes",
        before=COPY_CONF.replace("SOURCE", 'dsl.inline("x = 1\\n")'),
        after=COPY_CONF.replace("SOURCE", 'src.file("app.conf")'),
        files=CONF,
        misses=2,
    ),
    Scenario(
        name="a file copied to a file name moves to another directory, same name and bytes",
        before=COPY_CONF.replace("SOURCE", 'src.file("app.conf")'),
        after=COPY_CONF.replace("SOURCE", 'src.file("q/app.conf")'),
        files=CONF,
        misses=0,
    ),
    Scenario(
        name="a source file is edited",
        before=COPY_APP,
        files=FILES,
        edit=edit_source_file,
        misses=2,
    ),
    Scenario(
        name="mtimes are touched", before=COPY_APP, files=FILES, edit=touch_mtime_only, misses=0
    ),
    Scenario(
        name="a file is rewritten with its size and mtime",
        before=COPY_APP,
        files=FILES,
        edit=rewrite_same_size_and_mtime,
        misses=2,
    ),
    Scenario(
        name="a file becomes executable",
        before=COPY_APP,
        files=FILES,
        edit=make_executable,
        misses=2,
    ),
    Scenario(name="a file is renamed", before=COPY_APP, files=FILES, edit=rename_file, misses=2),
    Scenario(name="a file is added", before=COPY_APP, files=FILES, edit=add_file, misses=2),
    Scenario(name="a file is deleted", before=COPY_APP, files=FILES, edit=delete_file, misses=2),
    Scenario(
        # BuildKit still makes the destination of a directory that holds nothing.
        name="a copied directory is emptied",
        before="""app = BASE.copy(src.dir("docs"), "/docs/")"""
        """.run("if [ -e /docs ]; then ls -1A /docs; else echo none; fi > /listing")""",
        files=FILES,
        edit=empty_the_docs,
        misses=2,
    ),
    Scenario(
        name="an empty directory is added",
        before=COPY_APP,
        files=FILES,
        edit=add_empty_directory,
        misses=2,
    ),
    Scenario(
        name="the copied directory is renamed, same files",
        before=COPY_APP,
        after="""app = BASE.copy(src.dir("application"), "/app").run("find /app | sort > /listing")""",
        files=FILES,
        edit=rename_copied_directory,
        misses=0,
    ),
    Scenario(
        name="a file is replaced by a symlink",
        before=COPY_APP,
        files=FILES,
        edit=replace_by_symlink,
        misses=2,
    ),
    Scenario(
        name="a file moves from one copy to another",
        before=TWO_COPIES,
        files=FILES,
        edit=move_between_copies,
        misses=3,
    ),
    Scenario(
        name="a file no step reads is edited",
        before=COPY_APP,
        files=FILES,
        edit=edit_unselected_file,
        misses=0,
    ),
    Scenario(
        name="files the ignore rules leave out are added",
        before="""src = dsl.context("ctx", ignore=["**/*.log", "**/cache"])\n""" + COPY_APP,
        files=FILES,
        edit=add_ignored_files,
        misses=0,
    ),
    Scenario(
        name="dockerignore leaves out a copied file",
        before="""src = dsl.context("ctx", dockerignore=True)\n""" + COPY_APP,
        files={**FILES, ".dockerignore": "*.log\n"},
        edit=ignore_a_copied_file,
        misses=2,
    ),
    Scenario(
        name="dockerignore gets a pattern that matches nothing",
        before="""src = dsl.context("ctx", dockerignore=True)\n""" + COPY_APP,
        files={**FILES, ".dockerignore": "*.log\n"},
        edit=ignore_nothing_more,
        misses=0,
    ),
]


@pytest.mark.parametrize("scenario", scenario_params(SCENARIOS))
def test_scenario(fidelity: FidelityRun, scenario: Scenario) -> None:
    """The plan predicts BuildKit step by step; both backends build the same image."""
    fidelity.check(scenario)
