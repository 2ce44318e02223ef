"""Bases known by what they are: plans key a base by its content identity, asked of the local
engine (a stand-in on a socket here), the lock file or the layout itself."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from imagedsl import api, engine_api
from imagedsl.api import BuildSession
from imagedsl.bases import BaseNotFoundError
from imagedsl.engine_api import EngineAPI, EngineError, LocalImages, _parse_reply
from imagedsl.lockfile import LockFile, Pin
from imagedsl.planner import PlanStatus, record_step
from imagedsl.store import Store
from tests.support.engine import FakeEngine, fake_engine

IMAGE_A = "sha256:" + "a" * 64
IMAGE_B = "sha256:" + "b" * 64
MANIFEST = "sha256:" + "d" * 64


@pytest.fixture(name="engine")
def fixture_engine(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeEngine]:
    """A stand-in engine that DOCKER_HOST points at."""
    with fake_engine() as engine:
        monkeypatch.setenv("DOCKER_HOST", engine.host)
        yield engine


@pytest.fixture(name="no_engine")
def fixture_no_engine(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """DOCKER_HOST names a socket nobody listens on."""
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path / 'absent.sock'}")


def write_build(directory: Path, *bases: str) -> Path:
    """A build file with one stage per base, each FROM it with one RUN."""
    lines = ["import imagedsl as dsl", ""]
    lines += [f"s{i} = dsl.image({base!r}).run('true')" for i, base in enumerate(bases)]
    path = directory / "build.py"
    path.write_text("\n".join(lines) + "\n")
    return path


def plan(path: Path, store: Store, target: str = "s0", platform: str | None = None) -> api.Plan:
    """Plan a target of the build file as the CLI does (engine, lock file)."""
    return api.load_buildfile(path).plan(target, store=store, platform=platform)


def build_all(planned: api.Plan, store: Store) -> None:
    """Record every step, as a backend does after a successful build."""
    for step in planned.steps:
        record_step(store, step)


def test_the_engine_image_is_the_key(engine: FakeEngine, tmp_path: Path) -> None:
    """A name the engine holds is keyed by its image ID, and the plan says where it came from."""
    engine.tag("python:3.12-slim", IMAGE_A)
    planned = plan(write_build(tmp_path, "python:3.12-slim"), Store(tmp_path / "store"))
    assert planned.steps[0].node.preimage["digest"] == IMAGE_A
    assert planned.steps[0].node.preimage["ref"] is None
    assert planned.steps[0].notes == (f"resolved to {IMAGE_A} by the local engine",)
    assert engine.requests == ["/images/docker.io/library/python:3.12-slim/json"]


def test_a_retag_to_other_content_misses_once(engine: FakeEngine, tmp_path: Path) -> None:
    """Retagging to another image misses with one reason on the FROM; back again, all hit."""
    engine.tag("python:3.12-slim", IMAGE_A)
    path = write_build(tmp_path, "python:3.12-slim")
    store = Store(tmp_path / "store")
    build_all(plan(path, store), store)
    assert [s.status for s in plan(path, store).steps] == [PlanStatus.HIT, PlanStatus.HIT]

    engine.tag("python:3.12-slim", IMAGE_B)
    moved = plan(path, store)
    assert [s.status for s in moved.steps] == [PlanStatus.MISS, PlanStatus.MISS]
    assert moved.steps[0].reasons == (f"base image changed: python:3.12-slim is now {IMAGE_B}",)
    assert moved.steps[1].reasons[0].startswith("parent changed: s0[0] FROM python:3.12-slim")

    engine.tag("python:3.12-slim", IMAGE_A)
    assert [s.status for s in plan(path, store).steps] == [PlanStatus.HIT, PlanStatus.HIT]


def test_one_image_under_any_name_has_one_key(engine: FakeEngine, tmp_path: Path) -> None:
    """The same image by a registry name, another tag or docker-daemon: gives one FROM key."""
    engine.tag("python:3.12-slim", IMAGE_A)
    engine.tag("local/python:mine", IMAGE_A)
    path = write_build(
        tmp_path, "python:3.12-slim", "local/python:mine", "docker-daemon:local/python:mine"
    )
    store = Store(tmp_path / "store")
    keys = {plan(path, store, f"s{i}").steps[0].key for i in range(3)}
    assert len(keys) == 1


def test_another_platform_in_the_engine_does_not_count(engine: FakeEngine, tmp_path: Path) -> None:
    """An arm64 image does not pin an amd64 plan of a registry name (BuildKit would pull), but
    docker-daemon: takes the engine's image as it is."""
    engine.tag("busybox:latest", IMAGE_A, architecture="arm64")
    path = write_build(tmp_path, "busybox", "docker-daemon:busybox")
    store = Store(tmp_path / "store")
    assert plan(path, store).steps[0].node.preimage["digest"] is None
    assert (
        plan(path, store, "s0", platform="linux/arm64").steps[0].node.preimage["digest"] == IMAGE_A
    )
    assert plan(path, store, "s1").steps[0].node.preimage["digest"] == IMAGE_A


@pytest.mark.usefixtures("no_engine")
def test_no_engine_falls_back_to_the_lock_then_the_name(tmp_path: Path) -> None:
    """Without an engine a plan goes on quietly: the lock file's pin, else the tag name."""
    path = write_build(tmp_path, "python:3.12-slim")
    store = Store(tmp_path / "store")
    unpinned = plan(path, store)
    assert unpinned.steps[0].node.preimage["digest"] is None
    assert unpinned.steps[0].notes == (
        "base image is not pinned to a digest: its key follows the tag name",
    )
    LockFile(tmp_path / "imagedsl.lock").updated(
        [("docker.io/library/python:3.12-slim", "linux/amd64", Pin(IMAGE_A, MANIFEST))]
    ).write()
    locked = plan(path, store)
    assert locked.steps[0].node.preimage["digest"] == IMAGE_A
    assert locked.steps[0].node.base is not None
    assert locked.steps[0].node.base.manifest == MANIFEST
    assert locked.steps[0].notes == (f"pinned to {IMAGE_A} by the lock file",)


def test_the_engine_comes_before_the_lock(engine: FakeEngine, tmp_path: Path) -> None:
    """BuildKit builds FROM the engine's image, so the plan keys that one and notes the lock."""
    engine.tag("python:3.12-slim", IMAGE_B)
    LockFile(tmp_path / "imagedsl.lock").updated(
        [("docker.io/library/python:3.12-slim", "linux/amd64", Pin(IMAGE_A))]
    ).write()
    planned = plan(write_build(tmp_path, "python:3.12-slim"), Store(tmp_path / "store"))
    assert planned.steps[0].node.preimage["digest"] == IMAGE_B
    assert planned.steps[0].notes[0] == f"resolved to {IMAGE_B} by the local engine"
    assert IMAGE_A in planned.steps[0].notes[1]


def test_a_pinned_reference_is_not_looked_up(engine: FakeEngine, tmp_path: Path) -> None:
    """name@sha256:… is keyed by that digest, whatever the engine holds."""
    engine.tag("python:3.12-slim", IMAGE_A)
    planned = plan(write_build(tmp_path, f"python:3.12-slim@{MANIFEST}"), Store(tmp_path / "s"))
    assert planned.steps[0].node.preimage["digest"] == MANIFEST
    assert planned.steps[0].notes == ()
    assert engine.requests == []


def test_a_hung_engine_costs_one_timeout(
    engine: FakeEngine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An engine that does not answer in time is given up for the rest of the plan."""
    monkeypatch.setattr(engine_api, "LOOKUP_TIMEOUT", 0.2)
    engine.delay = 5.0
    engine.tag("a:1", IMAGE_A)
    engine.tag("b:1", IMAGE_B)
    path = write_build(tmp_path, "a:1", "b:1")
    (tmp_path / "build.py").write_text(
        path.read_text() + "both = dsl.image('a:1').copy(s1.path('/x'), '/x')\n"
    )
    started = time.monotonic()
    planned = plan(path, Store(tmp_path / "store"), "both")
    assert time.monotonic() - started < 2.0
    froms = [s for s in planned.steps if s.kind == "from"]
    assert [s.node.preimage.get("digest") for s in froms] == [None, None]
    assert len(engine.requests) == 1
    for step in froms:  # an engine that is there but silent is said, unlike an absent one
        assert step.notes[1].startswith(f"planned without the local engine at {engine.host}")


def test_plan_resolve_pins_engine_images(engine: FakeEngine, tmp_path: Path) -> None:
    """--resolve takes what the engine holds (and the digest it was pulled by) without asking a
    registry; a docker-daemon: base the engine lacks is an input error naming the engine."""
    engine.tag("python:3.12-slim", IMAGE_A, repo_digests=(f"python@{MANIFEST}", f"other@{IMAGE_B}"))
    engine.tag("local/tool:1", IMAGE_B)
    path = write_build(tmp_path, "python:3.12-slim", "docker-daemon:local/tool:1")
    (tmp_path / "build.py").write_text(path.read_text() + "both = s0.copy(s1.path('/x'), '/x')\n")
    lock = BuildSession(path, "both", store=tmp_path / "store").resolve_bases()
    assert lock.pins == {
        "docker.io/library/python:3.12-slim": {"linux/amd64": Pin(IMAGE_A, MANIFEST)},
        "docker-daemon:local/tool:1": {"linux/amd64": Pin(IMAGE_B)},
    }
    written = json.loads((tmp_path / "imagedsl.lock").read_text())
    assert written["version"] == 2
    assert written["images"]["docker-daemon:local/tool:1"] == {"linux/amd64": {"image": IMAGE_B}}

    engine.images.clear()
    with pytest.raises(BaseNotFoundError) as missing:
        BuildSession(path, "s1", store=tmp_path / "store").resolve_bases()
    assert missing.value.reference == "docker-daemon:local/tool:1"
    assert missing.value.places == (("the local engine", "has no such image"),)


def test_the_docker_context_names_the_engine(
    engine: FakeEngine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without DOCKER_HOST, the current docker context's endpoint is the engine asked."""
    monkeypatch.delenv("DOCKER_HOST")
    config = tmp_path / "docker-config"
    meta = config / "contexts" / "meta" / hashlib.sha256(b"mine").hexdigest()
    meta.mkdir(parents=True)
    (meta / "meta.json").write_text(
        json.dumps({"Name": "mine", "Endpoints": {"docker": {"Host": engine.host}}})
    )
    (config / "config.json").write_text(json.dumps({"currentContext": "mine"}))
    monkeypatch.setenv("DOCKER_CONFIG", str(config))
    assert [e.host for e in EngineAPI.candidates()] == [engine.host]
    monkeypatch.setenv("DOCKER_CONTEXT", "default")
    assert [e.host for e in EngineAPI.candidates()] == [
        engine_api.DEFAULT_DOCKER_HOST,
        engine_api.CI_DOCKER_HOST,
    ]
    monkeypatch.setenv("DOCKER_HOST", "ssh://somewhere")
    assert EngineAPI.candidates() == []


def test_local_images_remember_and_give_up(engine: FakeEngine, tmp_path: Path) -> None:
    """One request per name; an absent engine is skipped for the next candidate, and said."""
    engine.tag("a:1", IMAGE_A)
    absent = EngineAPI(f"unix://{tmp_path / 'absent.sock'}")
    images = LocalImages([absent, EngineAPI(engine.host)])
    assert images.image("a:1") is not None
    assert images.image("a:1") is not None
    assert images.image("b:1") is None
    assert engine.requests == ["/images/a:1/json", "/images/b:1/json"]
    assert images.engine is not None
    assert images.engine.host == engine.host
    nobody = LocalImages([absent])
    assert nobody.image("a:1") is None
    assert nobody.engine is None
    assert absent.host in nobody.absence()


def test_replies_are_read_whole() -> None:
    """Chunked and sized answers parse; anything else is an engine error."""
    chunked = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
    )
    assert _parse_reply("h", "/p", chunked) == (200, b"abcde")
    sized = b"HTTP/1.1 404 Not Found\r\nContent-Length: 2\r\n\r\n{}"
    assert _parse_reply("h", "/p", sized) == (404, b"{}")
    with pytest.raises(EngineError):
        _parse_reply("h", "/p", b"garbage")


def test_a_template_is_looked_up_as_expanded(engine: FakeEngine, tmp_path: Path) -> None:
    """``dsl.image(f"py:{V}")`` asks the engine for the tag the global ARG (or --build-arg)
    gives, so a --build-arg that names another image is another key."""
    engine.tag("py:1", IMAGE_A)
    engine.tag("py:2", IMAGE_B)
    path = tmp_path / "build.py"
    path.write_text(
        "import imagedsl as dsl\n\nV = dsl.arg('V', '1')\napp = dsl.image(f'py:{V}').run('true')\n"
    )
    store = Store(tmp_path / "store")
    assert api.load_buildfile(path).plan(store=store).steps[0].node.preimage["digest"] == IMAGE_A
    other = api.load_buildfile(path).plan(store=store, build_args={"V": "2"})
    assert other.steps[0].node.preimage["digest"] == IMAGE_B
