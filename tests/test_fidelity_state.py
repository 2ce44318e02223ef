"""Edit scenarios for the state steps leave: WORKDIR, USER, SHELL, and the config-only steps
(LABEL, EXPOSE, CMD, ENTRYPOINT, HEALTHCHECK, STOPSIGNAL, VOLUME, MAINTAINER), which change the image
config and nothing BuildKit builds (see tests/support/fidelity.py)."""

from __future__ import annotations

import pytest

from tests.support.fidelity import FidelityRun, Scenario, scenario_params

PWD = """.run("pwd > /pwd")"""
IDS = """.run("id -u > /tmp/uid && id -g > /tmp/gid")"""


def config_scenario(name: str, before: str, after: str) -> Scenario:
    """A config-only edit at the end of a stage: nothing is rebuilt, the config differs."""
    return Scenario(
        name=name,
        before=f"""app = BASE.run("echo built > /built").{before}""",
        after=f"""app = BASE.run("echo built > /built").{after}""",
        misses=0,
    )


SCENARIOS = [
    Scenario(
        name="workdir changes",
        before="""app = BASE.workdir("/srv/one")""" + PWD,
        after="""app = BASE.workdir("/srv/two")""" + PWD,
        misses=2,
    ),
    Scenario(
        name="workdir gets a trailing slash",
        before="""app = BASE.workdir("/app")""" + PWD,
        after="""app = BASE.workdir("/app/")""" + PWD,
        misses=1,
    ),
    Scenario(
        name="workdir slash is added",
        before="""app = BASE""" + PWD,
        after="""app = BASE.workdir("/")""" + PWD,
        misses=0,
        known_difference=(
            "the plan does not read the base's config, so it cannot know that its WorkingDir "
            "is already /: it misses where BuildKit reuses the RUN"
        ),
    ),
    Scenario(
        name="relative workdir changes",
        before="""app = BASE.workdir("/srv").workdir("one")""" + PWD,
        after="""app = BASE.workdir("/srv").workdir("two")""" + PWD,
        misses=2,
    ),
    Scenario(
        name="workdir from an ARG changes",
        before="""app = BASE.arg("DIR", "/data/one").workdir("$DIR")""" + PWD,
        after="""app = BASE.arg("DIR", "/data/two").workdir("$DIR")""" + PWD,
        misses=2,
    ),
    Scenario(
        name="workdir of a continued stage",
        before="""base = BASE.workdir("/w")\napp = base.run("echo in > in.txt")""",
        after="""base = BASE.workdir("/w")\napp = base.workdir("sub").run("echo in > in.txt")""",
        misses=2,
    ),
    Scenario(
        name="user before a run changes",
        before="""app = BASE.user("1:1")""" + IDS,
        after="""app = BASE.user("2:2")""" + IDS,
        misses=1,
    ),
    Scenario(
        name="user before a workdir changes",
        before="""app = BASE.user("1:1").workdir("/data")""" + IDS,
        after="""app = BASE.user("2:2").workdir("/data")""" + IDS,
        misses=2,
    ),
    Scenario(
        name="user at the end changes",
        before="""app = BASE.run("echo built > /built").user("1:1")""",
        after="""app = BASE.run("echo built > /built").user("nobody")""",
        misses=0,
    ),
    Scenario(
        name="shell before a shell-form run changes",
        before="""app = BASE.shell("/bin/sh", "-c").run("echo $0 > /shell")""",
        after="""app = BASE.shell("/bin/ash", "-c").run("echo $0 > /shell")""",
        misses=1,
    ),
    Scenario(
        name="shell before an exec-form run changes",
        before="""app = BASE.shell("/bin/sh", "-c").run(["/bin/sh", "-c", "echo exec > /exec"])""",
        after="""app = BASE.shell("/bin/ash", "-c").run(["/bin/sh", "-c", "echo exec > /exec"])""",
        misses=0,
    ),
    Scenario(
        name="label before a run changes",
        before="""app = BASE.label(stage="one").run("echo built > /built")""",
        after="""app = BASE.label(stage="two").run("echo built > /built")""",
        misses=0,
    ),
    config_scenario(
        "label changes",
        'label({"org.opencontainers.image.version": "1"})',
        'label({"org.opencontainers.image.version": "2"})',
    ),
    config_scenario("expose changes", "expose(8080)", 'expose(8081, "53/udp")'),
    config_scenario("cmd changes", 'cmd("cat", "/built")', 'cmd("cat", "/token")'),
    config_scenario("entrypoint changes", 'entrypoint("/bin/sh")', 'entrypoint("/bin/ash", "-c")'),
    config_scenario(
        "healthcheck changes",
        'healthcheck("true", interval=30)',
        'healthcheck("cat", "/built", interval=10, retries=2)',
    ),
    config_scenario(
        "stopsignal and volume change",
        'stopsignal("SIGTERM").volume("/data")',
        'stopsignal("SIGINT").volume("/data", "/cache")',
    ),
    # MAINTAINER sets the config's author, kept as written ($X is not expanded) and the last
    # one wins; BuildKit makes no vertex for it, and a RUN after it is not rebuilt.
    config_scenario("author changes", 'author("Jane <jane@example.com>")', 'author("$HOME x")'),
    Scenario(
        name="author before a run changes",
        before="""app = BASE.author("one").run("echo built > /built")""",
        after="""app = BASE.author("one").author('"two" three').run("echo built > /built")""",
        misses=0,
    ),
    Scenario(
        name="author set in the stage continued",
        before="""base = BASE.author("base")\napp = base.run("echo built > /built")""",
        after="""base = BASE.author("base")\napp = base.env(A="1").run("echo built > /built")""",
        misses=1,
    ),
]


@pytest.mark.parametrize("scenario", scenario_params(SCENARIOS))
def test_scenario(fidelity: FidelityRun, scenario: Scenario) -> None:
    """The plan predicts BuildKit step by step; both backends build the same image."""
    fidelity.check(scenario)
