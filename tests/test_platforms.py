"""Several target platforms without an engine: --platform lists, dsl.platforms, the plan union,
the image index written, outputs that hold one platform, emulation detection."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import imagedsl as dsl
from imagedsl.api import BuildSession, parse_platforms
from imagedsl.backends import BuildRequest, BuildRequestError
from imagedsl.backends.dockerfile.buildkit import DockerfileBackend
from imagedsl.backends.emulation import EmulationUnavailableError, emulation_problem
from imagedsl.backends.engine import DockerEngine
from imagedsl.backends.oci.backend import OCIBackend, check_run_support
from imagedsl.backends.oci.bases import BasePlatformError, WantedBase, check_base_platform
from imagedsl.backends.oci.platforms import check_platform_output
from imagedsl.errors import BuildFileError, PlatformError
from imagedsl.oci.image import BaseImage
from imagedsl.oci.platform import Platform, canonical_platforms
from imagedsl.oci.reference import parse_reference
from imagedsl.planner import PlanStatus
from imagedsl.reporting import Reporter
from imagedsl.store import Store, StoreArea

BUILD_FILE = """\
import imagedsl as dsl

tools = dsl.scratch(platform="$BUILDPLATFORM").workdir("/tools").env(MODE="native")
app = dsl.scratch().copy(tools.path("/tools"), "/tools").cmd(["/tools/run"])
"""


@pytest.fixture(name="project")
def fixture_project(tmp_path: Path) -> Path:
    """A build file with a native ($BUILDPLATFORM) stage copied into the target."""
    (tmp_path / "build.py").write_text(BUILD_FILE)
    return tmp_path


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("linux/amd64", ("linux/amd64",), id="one"),
        pytest.param("linux/x86_64,linux/aarch64", ("linux/amd64", "linux/arm64"), id="aliases"),
        pytest.param("linux/arm64/v8, linux/arm64", ("linux/arm64",), id="each-once"),
        pytest.param("LINUX/ARM", ("linux/arm/v7",), id="arm-default-variant"),
        pytest.param("linux/amd64/v1,linux/arm/v6", ("linux/amd64", "linux/arm/v6"), id="variants"),
    ],
)
def test_platform_lists_normalise_as_buildkit_does(text: str, expected: tuple[str, ...]) -> None:
    """Aliases become canonical names, in the order given, each once."""
    assert canonical_platforms(text) == expected
    assert parse_platforms(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("123", id="number"),
        pytest.param("linux/amd64,", id="trailing-comma"),
        pytest.param("", id="empty"),
        pytest.param("linux", id="no-arch"),
        pytest.param("linux/amd64,plan9/amd64", id="unknown-os"),
        pytest.param("linux/amd64/v1/x", id="too-long"),
    ],
)
def test_bad_platforms_are_refused_naming_the_value(text: str) -> None:
    """A PlatformError (exit 2) keeps the value given."""
    with pytest.raises(PlatformError) as caught:
        parse_platforms(text)
    assert caught.value.value == text
    assert caught.value.exit_code == 2


def test_cli_refuses_a_bad_platform_with_exit_2(project: Path) -> None:
    """``--platform 123`` stops the plan with exit 2 and names the value."""
    result = subprocess.run(
        [sys.executable, "-m", "imagedsl", "plan", str(project / "build.py"), "--platform", "123"],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 2
    assert "'123'" in result.stderr


def test_a_union_plan_shows_shared_steps_once(project: Path, tmp_path: Path) -> None:
    """The native stage is planned once; the target's steps once per platform."""
    session = BuildSession(
        project / "build.py", platform="linux/amd64,linux/aarch64", store=tmp_path / "s"
    )
    plan = session.plan()
    assert plan.platforms == ("linux/amd64", "linux/arm64")
    rows = [(s.stage, s.index, s.platform) for s in plan.steps]
    assert rows.count(("tools", 1, "linux/amd64")) == 1
    assert [r for r in rows if r[0] == "app"] == [
        ("app", i, p) for p in ("linux/amd64", "linux/arm64") for i in range(3)
    ]
    keys = [s.key for s in plan.steps]
    single = [s.key for s in BuildSession(project / "build.py", store=tmp_path / "s").plan().steps]
    assert keys[: len(single)] == single  # the first platform's plan, then what differs
    for index, step in enumerate(plan.steps):
        assert step.node.index == index
        assert all(dep < index for dep in step.node.deps)
    data = plan.to_json()
    assert data["schema"] == 1
    assert data["platforms"] == ["linux/amd64", "linux/arm64"]
    assert {s["platform"] for s in data["steps"]} == {"linux/amd64", "linux/arm64"}


def test_one_platform_plans_as_before(project: Path, tmp_path: Path) -> None:
    """A single platform is not a union: the plan is the planner's, with platform fields."""
    plan = BuildSession(project / "build.py", platform="linux/arm64", store=tmp_path / "s").plan()
    assert plan.platforms == ()
    assert plan.target_platform == "linux/arm64"
    assert plan.to_json()["platforms"] == ["linux/arm64"]
    assert [s.platform for s in plan.steps if s.stage == "tools"] == ["linux/amd64"] * 3


def test_the_table_has_a_platform_column_for_several(project: Path, tmp_path: Path) -> None:
    """imagedsl plan shows the platform of each row when several are planned."""
    from imagedsl._terminal import format_plan

    plan = BuildSession(
        project / "build.py", platform="linux/amd64,linux/arm64", store=tmp_path / "s"
    ).plan()
    text = format_plan(plan, "build.py")
    assert "PLATFORM" in text.splitlines()[1]
    assert "(linux/amd64, linux/arm64)" in text.splitlines()[0]


def test_build_file_declares_default_platforms(tmp_path: Path) -> None:
    """dsl.platforms(...) is the default; --platform overrides it."""
    (tmp_path / "build.py").write_text(
        BUILD_FILE + 'dsl.platforms("linux/amd64", "linux/aarch64", targets=["app"])\n'
    )
    session = BuildSession(tmp_path / "build.py", store=tmp_path / "s")
    assert session.platforms == ("linux/amd64", "linux/arm64")
    assert session.buildfile.default_platforms("tools") == ()
    assert BuildSession(tmp_path / "build.py", platform="linux/arm64").platforms == ("linux/arm64",)


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        pytest.param('dsl.platforms("linux/z80")', "unknown platform", id="bad-platform"),
        pytest.param("dsl.platforms()", "at least one", id="none"),
        pytest.param('dsl.platforms("linux/amd64", targets=["nope"])', "not a target", id="target"),
        pytest.param(
            'dsl.platforms("linux/amd64")\ndsl.platforms("linux/arm64")', "twice", id="twice"
        ),
    ],
)
def test_bad_platform_declarations_are_refused(tmp_path: Path, line: str, problem: str) -> None:
    """A declaration that cannot be honoured stops the load at its line."""
    (tmp_path / "build.py").write_text(BUILD_FILE + line + "\n")
    with pytest.raises(BuildFileError) as caught:
        BuildSession(tmp_path / "build.py")
    assert problem in str(caught.value)
    assert caught.value.location is not None


def test_platforms_value_is_public() -> None:
    """dsl.platforms returns a frozen declaration with canonical platforms."""
    made = dsl.platforms("linux/x86_64", targets="app")
    assert made == dsl.Platforms(("linux/amd64",), ("app",))


@pytest.mark.parametrize("kind", ["docker-archive:out.tar", "docker", "docker:name:1"])
def test_single_platform_outputs_refuse_a_list(kind: str) -> None:
    """docker-archive and docker hold one platform per name: a list is refused up front."""
    with pytest.raises(BuildRequestError, match="one platform per image name"):
        check_platform_output(kind, ["linux/amd64", "linux/arm64"])
    assert check_platform_output(kind, ["linux/amd64"]) is not None


def test_oci_build_writes_one_index(project: Path, tmp_path: Path) -> None:
    """Two platforms: the native stage is built once, the layout's tag names an index of two
    manifests, each with its platform, and the archive holds the same index."""
    store = Store(tmp_path / "store")
    session = BuildSession(project / "build.py", platform="linux/amd64,linux/arm64", store=store)
    layout = tmp_path / "layout"
    outcome = session.build(OCIBackend(), output=f"oci:{layout}:v1")
    built = outcome.result.built
    native = [b for b in built if b.startswith("tools[")]
    assert len(native) == 1  # the WORKDIR, on the build platform, once
    assert native[0].endswith("(linux/amd64)")
    copies = [b for b in built if b.startswith("app[1]")]
    assert [c.rpartition(" ")[2] for c in copies] == ["(linux/amd64)", "(linux/arm64)"]
    assert not [c for c in outcome.result.cached if c.startswith("tools[")]
    index = json.loads((layout / "index.json").read_bytes())
    [entry] = index["manifests"]
    assert entry["mediaType"] == "application/vnd.oci.image.index.v1+json"
    assert entry["annotations"]["org.opencontainers.image.ref.name"] == "v1"
    inner = json.loads((layout / "blobs" / "sha256" / entry["digest"][7:]).read_bytes())
    platforms = [m["platform"] for m in inner["manifests"]]
    assert platforms == [
        {"architecture": "amd64", "os": "linux"},
        {"architecture": "arm64", "os": "linux"},
    ]
    for child in inner["manifests"]:
        manifest = json.loads((layout / "blobs" / "sha256" / child["digest"][7:]).read_bytes())
        config = json.loads(
            (layout / "blobs" / "sha256" / manifest["config"]["digest"][7:]).read_bytes()
        )
        assert config["architecture"] == child["platform"]["architecture"]
    archive = tmp_path / "image.tar"
    again = session.build(OCIBackend(), output=f"oci-archive:{archive}:v1")
    assert again.result.digest == entry["digest"]  # the same bytes: nothing rebuilt differs
    assert again.result.built == ()


def test_single_platform_build_is_unchanged(project: Path, tmp_path: Path) -> None:
    """One platform given as a list of one builds the image manifest, not an index."""
    store = Store(tmp_path / "store")
    plain = BuildSession(project / "build.py", store=store).build(OCIBackend())
    listed = BuildSession(project / "build.py", platform="linux/amd64", store=store).build(
        OCIBackend()
    )
    assert plain.result.manifest is not None
    assert plain.result.manifest.media_type == "application/vnd.oci.image.manifest.v1+json"
    assert listed.result.digest == plain.result.digest


def _base(config: dict[str, str]) -> BaseImage:
    return BaseImage(reference="b", manifest_digest="sha256:" + "0" * 64, config=config, layers=())


@pytest.mark.parametrize(
    ("config", "platform", "refused"),
    [
        pytest.param({"os": "linux", "architecture": "amd64"}, "linux/arm64", True, id="other"),
        pytest.param({"os": "linux", "architecture": "amd64"}, "linux/amd64", False, id="same"),
        pytest.param(
            {"os": "linux", "architecture": "arm64", "variant": "v8"}, "linux/arm64", False, id="v8"
        ),
        pytest.param({}, "linux/arm64", False, id="unknown"),
    ],
)
def test_a_base_of_another_platform_is_refused(
    config: dict[str, str], platform: str, refused: bool
) -> None:
    """A single-platform base must be for its stage's platform."""
    wanted = WantedBase(reference=parse_reference("docker-daemon:x:1"), platform=platform)
    if refused:
        with pytest.raises(BasePlatformError) as caught:
            check_base_platform(wanted, _base(config))
        assert caught.value.found == "linux/amd64"
        assert caught.value.platform == platform
    else:
        check_base_platform(wanted, _base(config))


def _binfmt(root: Path, name: str, text: str) -> Path:
    root.mkdir(exist_ok=True)
    (root / "register").write_text("")
    (root / f"qemu-{name}").write_text(text)
    return root


AMD64 = Platform("linux", "amd64")


@pytest.mark.parametrize(
    ("entry", "problem"),
    [
        pytest.param("enabled\ninterpreter /q\nflags: POCF\n", None, id="registered-F"),
        pytest.param("enabled\ninterpreter /q\nflags: PF\n", None, id="PF"),
        pytest.param("enabled\ninterpreter /q\nflags: OC\n", "lacks flag F", id="no-F"),
        pytest.param("disabled\ninterpreter /q\nflags: F\n", "disabled", id="disabled"),
        pytest.param(
            "enabled\ninterpreter /usr/libexec/qemu-binfmt/aarch64-binfmt-P\nflags: PF\n",
            "wrapper",
            id="debian-wrapper",
        ),
    ],
)
def test_emulation_is_detected_from_binfmt_misc(
    tmp_path: Path, entry: str, problem: str | None
) -> None:
    """Only an enabled handler with flag F runs RUN steps inside a container's root."""
    root = _binfmt(tmp_path / "binfmt", "aarch64", entry)
    found = emulation_problem("linux/arm64", host=AMD64, binfmt=root)
    assert (found is None) if problem is None else (problem in (found or ""))


def test_native_and_missing_emulation(tmp_path: Path) -> None:
    """The host's own platform needs nothing; a missing handler or mount is named."""
    assert emulation_problem("linux/amd64", host=AMD64, binfmt=tmp_path) is None
    assert emulation_problem("linux/386", host=AMD64, binfmt=tmp_path) is None
    assert "not mounted" in (emulation_problem("linux/arm64", host=AMD64, binfmt=tmp_path) or "")
    root = _binfmt(tmp_path / "b", "aarch64", "enabled\nflags: F\n")
    assert "qemu-s390x" in (emulation_problem("linux/s390x", host=AMD64, binfmt=root) or "")


FOREIGN = ("linux/s390x", "linux/riscv64", "linux/ppc64le", "linux/mips64le")


def test_foreign_run_without_emulation_fails_before_any_work(tmp_path: Path) -> None:
    """A RUN for a platform nothing emulates here stops the build before a step runs."""
    foreign = [p for p in FOREIGN if emulation_problem(p) is not None]
    if not foreign:
        pytest.fail(f"this machine emulates all of {FOREIGN}: the test needs one it does not")
    store = Store(tmp_path / "store")
    session_plan = BuildSession(
        _write(tmp_path, "app = dsl.scratch().run(['/bin/true'])\n"),
        platform=foreign[0],
        store=store,
    ).plan()
    with pytest.raises(EmulationUnavailableError) as caught:
        check_run_support(session_plan)
    assert caught.value.platform == foreign[0]
    assert "binfmt" in str(caught.value)
    with pytest.raises(EmulationUnavailableError):
        OCIBackend().build(session_plan, BuildRequest(), store=store, reporter=Reporter())
    assert not any(s.status is PlanStatus.HIT for s in session_plan.steps if s.kind == "run")


def test_the_docker_backend_checks_emulation_before_buildkit_runs(
    docker_engine: DockerEngine, busybox_image: str, tmp_path: Path
) -> None:
    """With an engine on this machine (its kernel runs BuildKit's RUN steps), a RUN for a
    platform nothing emulates here stops the build before BuildKit is called: no image, no
    record of a completed step."""
    foreign = [p for p in FOREIGN if emulation_problem(p) is not None]
    if not foreign:
        pytest.fail(f"this machine emulates all of {FOREIGN}: the test needs one it does not")
    assert docker_engine.local
    store = Store(tmp_path / "store")
    planned = BuildSession(
        _write(tmp_path, f"app = dsl.image({busybox_image!r}).run('true')\n"),
        platform=foreign[0],
        store=store,
    ).plan()
    with pytest.raises(EmulationUnavailableError) as caught:
        DockerfileBackend(docker_engine).build(
            planned, BuildRequest(), store=store, reporter=Reporter()
        )
    assert caught.value.platform == foreign[0]
    assert caught.value.instruction == "RUN true"
    assert not list(store.area(StoreArea.CONTEXTS).glob("*/*"))  # nothing was staged


@pytest.mark.parametrize(
    ("host", "buildx", "local"),
    [
        (None, False, True),
        ("unix:///run/docker.sock", False, True),
        ("tcp://10.0.0.5:2376", False, False),
        ("ssh://builder", False, False),
        (None, True, False),
    ],
)
def test_an_engine_is_local_on_a_unix_socket_without_buildx(
    host: str | None, buildx: bool, local: bool
) -> None:
    engine = DockerEngine(client="/usr/bin/docker", env={}, buildx=buildx, host=host)
    assert engine.local is local


def _write(root: Path, body: str) -> Path:
    path = root / "build.py"
    path.write_text("import imagedsl as dsl\n" + body)
    return path


def test_lower_and_check_take_a_list(project: Path, tmp_path: Path) -> None:
    """One Dockerfile serves every platform; check reports against the union's rows."""
    session = BuildSession(
        project / "build.py", platform="linux/amd64,linux/arm64", store=tmp_path / "s"
    )
    text = session.lower()
    assert "FROM --platform=$BUILDPLATFORM scratch AS tools" in text
    plan = session.plan()
    report = session.check(plan)
    assert all(0 <= f.row < len(plan.steps) for f in report.findings)


def test_cli_refuses_a_list_for_docker_archive(project: Path, tmp_path: Path) -> None:
    """``--output docker-archive:`` with two platforms: exit 2 before anything is built."""
    result = subprocess.run(
        [sys.executable, "-m", "imagedsl", "build", str(project / "build.py"), "--backend", "oci",
         "--platform", "linux/amd64,linux/arm64", "--store", str(tmp_path / "s"),
         "--output", f"docker-archive:{tmp_path / 'x.tar'}"],
        capture_output=True, text=True, check=False, timeout=60,
    )  # fmt: skip
    assert result.returncode == 2
    assert "one platform per image name" in result.stderr
    assert not (tmp_path / "x.tar").exists()
