"""Edit scenarios for RUN: commands, forms, mounts (cache, secret, bind, tmpfs) and their
options, network, and stages built for other stages (see tests/support/fidelity.py)."""

from __future__ import annotations

import pytest

from tests.support.fidelity import FidelityRun, Project, Scenario, scenario_params

SCRIPTS = {"scripts/setup.sh": "echo setup\n", "scripts/other.sh": "echo other\n"}
TOOL = """tool = BASE.run("mkdir -p /out && echo tool > /out/tool.txt{extra}")\n"""
READ_TOOL = (
    """app = BASE.run("cat /tool/tool.txt > /seen", mounts=[dsl.bind(tool.path("/out"), "/tool"{rw})])"""
    """.run("echo after > /after")"""
)
SECRET_RUN = """app = BASE.run("test -s {path} && echo ok > /ok", mounts=[{mount}])"""


def change_secret_value(project: Project) -> None:
    project.secrets["token"] = "another secret value\n"


def edit_bound_script(project: Project) -> None:
    project.write_files({"scripts/setup.sh": "echo setup, edited\n"})


def rename_bound_script(project: Project) -> None:
    (project.context / "scripts" / "setup.sh").rename(project.context / "scripts" / "go.sh")


def edit_unbound_script(project: Project) -> None:
    project.write_files({"scripts/unused.sh": "echo never read\n"})


SCENARIOS = [
    Scenario(
        name="a run command changes",
        before="""app = BASE.run("echo one > /one").run("echo two > /two")""",
        after="""app = BASE.run("echo one, edited > /one").run("echo two > /two")""",
        misses=2,
    ),
    Scenario(
        name="shell form becomes exec form with the same argv",
        before="""app = BASE.run("echo same > /same")""",
        after="""app = BASE.run(["/bin/sh", "-c", "echo same > /same"])""",
        misses=0,
    ),
    Scenario(
        name="output without a final newline",
        before="""app = BASE.run("echo -n one").run("printf two > /two")""",
        after="""app = BASE.run("echo -n one, edited").run("printf two > /two")""",
        misses=2,
    ),
    Scenario(
        name="cache mount target changes",
        before="""app = BASE.run("echo x > /x", mounts=[dsl.cache("/cache", id="fid-c")])""",
        after="""app = BASE.run("echo x > /x", mounts=[dsl.cache("/cache2", id="fid-c")])""",
        misses=1,
        mount_points=("/cache", "/cache2"),
    ),
    Scenario(
        name="cache mount id changes",
        before="""app = BASE.run("echo x > /x", mounts=[dsl.cache("/cache", id="fid-a-TOKEN")])""",
        after="""app = BASE.run("echo x > /x", mounts=[dsl.cache("/cache", id="fid-b-TOKEN")])""",
        misses=1,
        mount_points=("/cache",),
    ),
    Scenario(
        name="cache mount sharing changes",
        before="""app = BASE.run("echo x > /x", mounts=[dsl.cache("/cache", sharing="shared")])""",
        after="""app = BASE.run("echo x > /x", mounts=[dsl.cache("/cache", sharing="locked")])""",
        misses=1,
        mount_points=("/cache",),
    ),
    Scenario(
        name="a secret value changes",
        before=SECRET_RUN.format(path="/run/secrets/token", mount='dsl.secret("token")'),
        secrets={"token": "a secret value\n"},
        edit=change_secret_value,
        misses=0,
        mount_points=("/run/secrets",),
    ),
    Scenario(
        name="a secret target changes",
        before=SECRET_RUN.format(path="/run/secrets/token", mount='dsl.secret("token")'),
        after=SECRET_RUN.format(
            path="/etc/token", mount='dsl.secret("token", target="/etc/token")'
        ),
        secrets={"token": "a secret value\n"},
        misses=1,
        mount_points=("/run/secrets", "/etc/token"),
    ),
    Scenario(
        name="a secret id changes",
        before=SECRET_RUN.format(
            path="/run/secrets/s", mount='dsl.secret("one", target="/run/secrets/s")'
        ),
        after=SECRET_RUN.format(
            path="/run/secrets/s", mount='dsl.secret("two", target="/run/secrets/s")'
        ),
        secrets={"one": "first\n", "two": "second\n"},
        misses=1,
        mount_points=("/run/secrets",),
    ),
    Scenario(
        name="a bind-mounted context file is edited",
        before="""app = BASE.run("sh /s/setup.sh > /out", mounts=[dsl.bind(src.dir("scripts"), "/s")])""",
        files=SCRIPTS,
        edit=edit_bound_script,
        misses=1,
        mount_points=("/s",),
    ),
    Scenario(
        name="a file beside a bind-mounted file is added",
        before="""app = BASE.run("sh /setup.sh > /out", mounts=[dsl.bind(src.file("scripts/setup.sh"), "/setup.sh")])""",
        files=SCRIPTS,
        edit=edit_unbound_script,
        misses=0,
        mount_points=("/setup.sh",),
    ),
    Scenario(
        # BuildKit keys a mount by the bytes it mounts: a file's name is not among them.
        name="a bind-mounted file is renamed, same bytes",
        before="""app = BASE.run("sh /setup.sh > /out", mounts=[dsl.bind(src.file("scripts/setup.sh"), "/setup.sh")])""",
        after="""app = BASE.run("sh /setup.sh > /out", mounts=[dsl.bind(src.file("scripts/go.sh"), "/setup.sh")])""",
        files=SCRIPTS,
        edit=rename_bound_script,
        misses=0,
        mount_points=("/setup.sh",),
    ),
    Scenario(
        name="a bind mount target changes",
        before="""app = BASE.run("ls /s > /out", mounts=[dsl.bind(src.dir("scripts"), "/s")])""",
        after="""app = BASE.run("ls /t > /out", mounts=[dsl.bind(src.dir("scripts"), "/t")])""",
        files=SCRIPTS,
        misses=1,
        mount_points=("/s", "/t"),
    ),
    Scenario(
        name="a bind mount becomes writable",
        before="""app = BASE.run("ls /s > /out", mounts=[dsl.bind(src.dir("scripts"), "/s")])""",
        after="""app = BASE.run("ls /s > /out", mounts=[dsl.bind(src.dir("scripts"), "/s", readwrite=True)])""",
        files=SCRIPTS,
        misses=1,
        mount_points=("/s",),
    ),
    Scenario(
        name="a bind-mounted stage is rebuilt with identical output",
        before=TOOL.format(extra="") + READ_TOOL.format(rw=""),
        after=TOOL.format(extra=" && echo rebuilt > /rebuilt") + READ_TOOL.format(rw=""),
        misses=1,
        maybes=2,
        mount_points=("/tool",),
    ),
    Scenario(
        name="a bind-mounted stage's output changes",
        before=TOOL.format(extra="") + READ_TOOL.format(rw=""),
        after=TOOL.format(extra=" && echo v2 >> /out/tool.txt") + READ_TOOL.format(rw=""),
        misses=1,
        maybes=2,
        mount_points=("/tool",),
    ),
    Scenario(
        name="a writable bind-mounted stage is rebuilt",
        before=TOOL.format(extra="") + READ_TOOL.format(rw=", readwrite=True"),
        after=TOOL.format(extra=" && echo rebuilt > /rebuilt")
        + READ_TOOL.format(rw=", readwrite=True"),
        misses=1,
        maybes=2,
        mount_points=("/tool",),
    ),
    Scenario(
        name="a tmpfs mount is added",
        before="""app = BASE.run("echo x > /x")""",
        after="""app = BASE.run("echo x > /x", mounts=[dsl.tmpfs("/scratch")])""",
        misses=1,
        mount_points=("/scratch",),
    ),
    Scenario(
        name="network none is asked for",
        before="""app = BASE.run("echo x > /x")""",
        after="""app = BASE.run("echo x > /x", network="none")""",
        misses=1,
        needs="RUN --network",
    ),
    Scenario(
        name="only a stage another target uses changes",
        before="""app = BASE.run("echo app > /app")\nother = BASE.run("echo other > /other")""",
        after="""app = BASE.run("echo app > /app")\nother = BASE.run("echo other, edited > /other")""",
        misses=0,
    ),
    Scenario(
        name="a shared prefix changes",
        before="""deps = BASE.run("echo deps > /deps")\napp = deps.run("echo app > /app")\n"""
        """test = deps.run("echo test > /test")""",
        after="""deps = BASE.run("echo deps, edited > /deps")\napp = deps.run("echo app > /app")\n"""
        """test = deps.run("echo test > /test")""",
        misses=2,
    ),
    Scenario(
        name="a stage referenced by name changes",
        before="""app = BASE.copy(dsl.stage("tool").path("/out"), "/tools")\n"""
        + TOOL.format(extra=""),
        after="""app = BASE.copy(dsl.stage("tool").path("/out"), "/tools")\n"""
        + TOOL.format(extra=" && echo v2 > /out/v2.txt"),
        misses=1,
        maybes=1,
        target="app",
    ),
]


@pytest.mark.parametrize("scenario", scenario_params(SCENARIOS))
def test_scenario(fidelity: FidelityRun, scenario: Scenario) -> None:
    """The plan predicts BuildKit step by step; both backends build the same image."""
    fidelity.check(scenario)
