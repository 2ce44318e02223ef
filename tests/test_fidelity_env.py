"""Edit scenarios for the environment BuildKit keys a RUN on: ENV and ARG values, their order
and precedence, build args, global ARGs, the automatic platform ARGs, and the platform itself
(see tests/support/fidelity.py for what each scenario checks).

BuildKit keeps one ordered list of variables per stage: ENV and ARG (when it has a value) both
write to it, a write to an existing name moves it to the end, and a RUN is keyed on the list in
order (see /work/briefs/issue10.md and docs/dockerfile-backend.md)."""

from __future__ import annotations

import pytest

from tests.support.fidelity import FidelityRun, Scenario, scenario_params

ENV_DUMP = """.run("env | grep -v -e ^HOSTNAME= -e ^PWD= -e ^SHLVL= | sort > /env")"""
ECHO_X = """.run("echo $X > /x")"""
#: The environment the runtime gave the RUN's process (pid 1), names a shell drops included.
PROC_ENV_DUMP = (
    """.run("tr '\\\\0' '\\\\n' < /proc/1/environ | grep -v ^HOSTNAME= | sort > /env")"""
)

SCENARIOS = [
    Scenario(
        name="env with a dotted name a process reads changes",
        before="""app = BASE.env({"spring.profiles.active": "dev"})""" + PROC_ENV_DUMP,
        after="""app = BASE.env({"spring.profiles.active": "prod"})""" + PROC_ENV_DUMP,
        misses=1,
    ),
    Scenario(
        name="arg with a dash a process reads changes",
        before="""app = BASE.arg("my-var", "1").env(LATER="$my-var")""" + PROC_ENV_DUMP,
        after="""app = BASE.arg("my-var", "2").env(LATER="$my-var")""" + PROC_ENV_DUMP,
        misses=1,
    ),
    Scenario(
        name="env value a run reads changes",
        before="""app = BASE.env(MODE="dev")""" + ENV_DUMP,
        after="""app = BASE.env(MODE="prod")""" + ENV_DUMP,
        misses=1,
    ),
    Scenario(
        name="env pairs are reordered",
        before="""app = BASE.env(A="1", B="2")""" + ENV_DUMP,
        after="""app = BASE.env(B="2", A="1")""" + ENV_DUMP,
        misses=1,
    ),
    Scenario(
        name="env overwritten equals env reordered",
        before="""app = BASE.env(QA="1", QB="2").env(QA="3")""" + ENV_DUMP,
        after="""app = BASE.env(QB="2", QA="3")""" + ENV_DUMP,
        misses=0,
    ),
    Scenario(
        name="args are declared in another order",
        before="""app = BASE.arg("A", "1").arg("B", "2")""" + ENV_DUMP,
        after="""app = BASE.arg("B", "2").arg("A", "1")""" + ENV_DUMP,
        misses=1,
    ),
    Scenario(
        name="arg after an env of its name changes",
        before="""app = BASE.env(X="e").arg("X", "1")""" + ECHO_X,
        after="""app = BASE.env(X="e").arg("X", "2")""" + ECHO_X,
        misses=1,
    ),
    Scenario(
        name="env before an arg of its name changes",
        before="""app = BASE.env(X="e").arg("X", "1")""" + ECHO_X,
        after="""app = BASE.env(X="f").arg("X", "1")""" + ECHO_X,
        misses=0,
    ),
    Scenario(
        name="arg shadowed by an env changes",
        before="""app = BASE.arg("X", "1").env(X="e")""" + ECHO_X,
        after="""app = BASE.arg("X", "2").env(X="e")""" + ECHO_X,
        misses=0,
    ),
    Scenario(
        name="an unused arg with a value is added",
        before="""app = BASE""" + ENV_DUMP,
        after="""app = BASE.arg("UNUSED", "1")""" + ENV_DUMP,
        misses=1,
    ),
    Scenario(
        name="an arg without a value is added",
        before="""app = BASE""" + ENV_DUMP,
        after="""app = BASE.arg("UNSET")""" + ENV_DUMP,
        misses=0,
    ),
    Scenario(
        name="a build arg a run reads changes",
        before="""app = BASE.arg("LEVEL", "1").run("echo $LEVEL > /level")""",
        build_args={"LEVEL": "2"},
        build_args_after={"LEVEL": "3"},
        misses=1,
    ),
    Scenario(
        name="a build arg no stage declares is given",
        before="""app = BASE.arg("LEVEL", "1").run("echo $LEVEL > /level")""",
        build_args_after={"OTHER": "x"},
        misses=0,
    ),
    Scenario(
        name="a build arg equal to the default is given",
        before="""app = BASE.arg("LEVEL", "1").run("echo $LEVEL > /level")""",
        build_args_after={"LEVEL": "1"},
        misses=0,
    ),
    Scenario(
        name="an env made from an arg changes",
        before="""app = BASE.arg("V", "1").env(E="v$V")""" + ENV_DUMP,
        after="""app = BASE.arg("V", "2").env(E="v$V")""" + ENV_DUMP,
        misses=1,
    ),
    Scenario(
        name="an env made from the base's PATH changes",
        before="""app = BASE.env(PATH="/opt/one:$PATH")""" + ENV_DUMP,
        after="""app = BASE.env(PATH="/opt/two:$PATH")""" + ENV_DUMP,
        misses=1,
    ),
    Scenario(
        name="arg and env carry into a continued stage",
        before="""base = BASE.arg("X", "1").env(X="e")\napp = base""" + ECHO_X,
        after="""base = BASE.arg("X", "2").env(X="e")\napp = base""" + ECHO_X,
        misses=0,
    ),
    Scenario(
        name="an arg carries into a continued stage",
        before="""base = BASE.arg("V", "1")\napp = base.workdir("/w$V")""" + ECHO_X,
        after="""base = BASE.arg("V", "2")\napp = base.workdir("/w$V")""" + ECHO_X,
        misses=2,
    ),
    Scenario(
        name="a global arg a stage declares changes",
        before="""VERSION = dsl.arg("VERSION", "1")\napp = BASE.arg("VERSION").run("echo $VERSION > /v")""",
        after="""VERSION = dsl.arg("VERSION", "2")\napp = BASE.arg("VERSION").run("echo $VERSION > /v")""",
        misses=1,
    ),
    Scenario(
        name="a global arg no stage declares changes",
        before="""VERSION = dsl.arg("VERSION", "1")\napp = BASE.run("echo $VERSION > /v")""",
        after="""VERSION = dsl.arg("VERSION", "2")\napp = BASE.run("echo $VERSION > /v")""",
        misses=0,
    ),
    Scenario(
        name="the platform is written as an alias",
        before="""app = BASE.arg("TARGETPLATFORM").run("echo $TARGETPLATFORM > /platform")""",
        platform="linux/amd64",
        platform_after="linux/x86_64",
        misses=0,
    ),
    Scenario(
        name="the target arch is declared",
        before="""app = BASE.run("echo $TARGETARCH > /arch")""",
        after="""app = BASE.arg("TARGETARCH").run("echo $TARGETARCH > /arch")""",
        misses=1,
    ),
    Scenario(
        # BuildKit lets a --build-arg override an automatic ARG in the global scope; the
        # plan expanded the global ARG's default with the platform's (a false hit), and the
        # OCI backend built that value.
        name="a build arg overrides the target arch a global default reads",
        before="""A = dsl.arg("A", "v-${TARGETARCH}")\n"""
        """app = BASE.arg("A").run("echo $A > /a")""",
        build_args_after={"TARGETARCH": "arm64"},
        misses=1,
    ),
    Scenario(
        # Docker 20.10's frontend fails such a word ("missing ':' in substitution") where the
        # OCI backend expands it: the docker backend refuses it up front there, naming it.
        name="an env value uses an expansion without a colon",
        before="""app = BASE.env(A="${U-x}", B="${A+y}").run("echo $A$B > /a")""",
        needs="${NAME-word} or ${NAME:?word}",
    ),
    Scenario(
        # BuildKit's predefined proxy ARGs reach every RUN undeclared (both cases, after the
        # stage's ENV), and stay out of its cache key: the OCI backend passed none.
        name="a proxy build arg changes",
        before="""app = BASE.env(no_proxy="stage").run("env | grep -i _proxy= | sort > /e")""",
        build_args={"http_proxy": "http://p:1", "NO_PROXY": "np", "Https_Proxy": "hp"},
        build_args_after={"http_proxy": "http://p:2", "NO_PROXY": "np"},
        misses=0,
        compare_images=False,  # BuildKit keeps the RUN made with the first proxies
    ),
    Scenario(
        name="a step is added after a run that reads proxy build args",
        before="""app = BASE.env(no_proxy="stage").run("env | grep -i _proxy= | sort > /e")""",
        after="""app = BASE.env(no_proxy="stage").run("env | grep -i _proxy= | sort > /e")"""
        """.run("cat /e > /f")""",
        build_args={"http_proxy": "http://p:1", "NO_PROXY": "np", "Https_Proxy": "hp"},
        misses=1,
    ),
    Scenario(
        name="the base platform is written out",
        before="""app = BASE.run("uname -m > /machine")""",
        after="""app = dsl.image(IMAGE, platform="linux/x86_64").run("echo TOKEN > /token")"""
        """.run("uname -m > /machine")""",
        misses=0,
    ),
]


@pytest.mark.parametrize("scenario", scenario_params(SCENARIOS))
def test_scenario(fidelity: FidelityRun, scenario: Scenario) -> None:
    """The plan predicts BuildKit step by step; both backends build the same image."""
    fidelity.check(scenario)
