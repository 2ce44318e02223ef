"""Every instruction form of issue 10 builds the same image under both backends.

Each target of one ``build.py`` uses one form (``RUN <<EOF`` scripts, ``COPY <<EOF`` files,
``COPY --parents``, ``link=True``, ``ADD --checksum``, ``USER uid gid``, shell-form and reset
CMD/ENTRYPOINT, ONBUILD); it is built by the docker backend (Docker 20.10's built-in BuildKit,
which lacks heredocs, ``--link``, ``--parents`` and ``--checksum``: the lowering writes
equivalent forms) and by the OCI backend from the same base bytes, and the two root
filesystems (file by file: type, mode, owner, content) and image configs must be equal.
A base with ONBUILD triggers, built by the docker backend, then has its triggers run by both.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.docker import DockerEngine
from tests.support.equivalence import differences, export_listing, layout_listing
from tests.support.fidelity import CONFIG_FIELDS

DOWNLOAD = b"downloaded by ADD --checksum\n"
ARCHIVE_NAME = "data.tar.gz"
ARCHIVE = b"\x1f\x8b\x08\x00not really a tar, never unpacked from a URL\n"

BUILD_PY = '''\
import os

import imagedsl as dsl

BASE = os.environ["BASE"]
URL = os.environ["URL"]
src = dsl.context("ctx")
base = dsl.image(BASE)

heredoc_run = base.run(
    dsl.script(
        """
        mkdir -p /out
        echo "home=$HOME shell=$0" > /out/one
        for n in 1 2; do echo "line $n" >> /out/one; done
        """
    ),
    mounts=[dsl.tmpfs("/scratch")],
)
inline_files = (
    base.copy(dsl.inline("key = value\\nother = 2\\n", mode=0o600), "/etc/app.conf")
    .copy(dsl.inline(b"\\x00\\x01 not text \\xff"), "/data.bin", chown="5:6")
    .copy(dsl.inline("into an existing directory\\n"), "/tmp")
    .copy(dsl.inline("#!/bin/sh\\necho script\\n", mode=0o755), "/usr/local/bin/hello")
)
parents = (
    base.copy(src.glob("pkg/*/a.txt"), "/dst/", parents=True)
    .copy(src.select("pkg/one", "top.txt"), "/d2", parents=True, chown="5:6", chmod=0o750)
    .copy(src.file("pkg/one/a.txt"), "/d3/", parents=True, exclude=["*.md"])
)
linked = (
    base.run("mkdir -m 700 /app /app/lib && chown 1000:1000 /app /app/lib")
    .copy(src.file("top.txt"), "/app/", link=True)
    .copy(src.dir("pkg"), "/app/lib/pkg", link=True, chown="7:8", chmod=0o750)
    .workdir("/app")
    .copy(src.file("top.txt"), "rel/top.txt", link=True)
    .add(src.file("top.txt"), "/new/dir/", link=True)
)
downloads = (
    base.add(dsl.url(URL + "/files/plain.txt", checksum=os.environ["PLAIN_SUM"]), "/dl/")
    .add(
        dsl.url(URL + "/files/data.tar.gz?x=1", checksum=os.environ["ARCHIVE_SUM"]),
        "/dl/renamed.tgz",
        chmod=0o644,
        chown="1000:1000",
    )
    .add(dsl.url(URL + "/", checksum=os.environ["PLAIN_SUM"]), "/dl2/")
)
config_forms = (
    base.user(1000, 1000)
    .workdir("/home/app")
    .cmd("echo $HOME")
    .healthcheck("test -d /", interval="10s", retries=2)
    .stopsignal("SIGINT")
    .expose(8080, "9000-9002/udp")
    .onbuild("RUN echo built-on-me")
    .onbuild("ENV FROM_BASE=1")
)
user_names = base.user("app", "app").entrypoint(["/bin/sh", "-c"]).cmd("id")
resets = base.entrypoint("/bin/echo", "x").cmd([]).label(step="reset")
entry_reset = base.entrypoint()
cmd_base = base.cmd("echo", "kept").shell("/bin/sh", "-ec")
cmd_kept = cmd_base.entrypoint("exec env")
onbuild_base = (
    base.onbuild("RUN echo triggered > /triggered")
    .onbuild('ENV TRIGGERED="yes it was"')
    .onbuild("WORKDIR /trig")
    .onbuild("RUN pwd > /trig/pwd")
    .onbuild("CMD cat /triggered")
    .onbuild("LABEL from.trigger=1")
)
'''

ON_TRIGGERS_PY = """\
import os

import imagedsl as dsl

on_triggers = (
    dsl.image(os.environ["BASE"])
    .run("echo $TRIGGERED > /seen && pwd > /pwd")
    .entrypoint("/bin/sh", "-c")
)
"""


@pytest.fixture(name="project", scope="module")
def fixture_project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The build file and its context."""
    root = tmp_path_factory.mktemp("forms")
    (root / "build.py").write_text(BUILD_PY)
    (root / "on_triggers.py").write_text(ON_TRIGGERS_PY)
    ctx = root / "ctx"
    for directory in ("pkg/one", "pkg/two/deep"):
        (ctx / directory).mkdir(parents=True)
    (ctx / "pkg" / "one" / "a.txt").write_text("one a\n")
    (ctx / "pkg" / "one" / "notes.md").write_text("notes\n")
    (ctx / "pkg" / "two" / "a.txt").write_text("two a\n")
    (ctx / "pkg" / "two" / "deep" / "b.sh").write_text("#!/bin/sh\n")
    (ctx / "pkg" / "two" / "deep" / "b.sh").chmod(0o755)
    (ctx / "top.txt").write_text("top\n")
    return root


class _Files(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        body = {"/files/plain.txt": DOWNLOAD, f"/files/{ARCHIVE_NAME}": ARCHIVE, "/": DOWNLOAD}
        data = body.get(path)
        self.send_response(200 if data is not None else 404)
        self.send_header("Content-Length", str(len(data or b"")))
        self.end_headers()
        self.wfile.write(data or b"")

    def log_message(self, format: str, *args: Any) -> None:
        del format, args


@pytest.fixture(name="files_url", scope="module")
def fixture_files_url() -> Iterator[str]:
    """An HTTP server on loopback serving the files ADD fetches."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Files)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def _imagedsl(engine: DockerEngine, *args: str, env: dict[str, str]) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "imagedsl", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **({"DOCKER_HOST": engine.host} if engine.host else {}), **env},
        check=False,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return result.stderr


def _config(engine: DockerEngine, tag: str) -> dict[str, Any]:
    found = engine.run("image", "inspect", "--format", "{{json .Config}}", tag).stdout
    config = json.loads(found)
    return {field: config.get(field) or None for field in CONFIG_FIELDS}


@pytest.fixture(name="tags")
def fixture_tags(docker_engine: DockerEngine) -> Iterator[tuple[str, str]]:
    """(docker backend's tag, OCI backend's tag), removed afterwards."""
    name = f"imagedsl-test/forms-{uuid.uuid4().hex[:10]}"
    yield f"{name}:docker", f"{name}:oci"
    for tag in ("docker", "oci"):
        docker_engine.run("image", "rm", "--force", f"{name}:{tag}", check=False)


def build_both(
    engine: DockerEngine,
    spec: str,
    base: str,
    tags: tuple[str, str],
    tmp_path: Path,
    env: dict[str, str],
) -> Path:
    """Build ``spec`` with both backends on ``base``; return the OCI build's layout."""
    docker_tag, oci_tag = tags
    store = str(tmp_path / "store")
    _imagedsl(engine, "build", spec, "--backend", "docker", "--store", store, "-t", docker_tag,
              env={**env, "BASE": base})  # fmt: skip
    layout = tmp_path / "layout"
    oci_env = {**env, "BASE": f"docker-daemon:{base}"}
    for output in (f"oci:{layout}:image", f"docker:{oci_tag}"):
        _imagedsl(engine, "build", spec, "--backend", "oci", "--store", store,
                  "--output", output, env=oci_env)  # fmt: skip
    return layout


def assert_same_image(
    engine: DockerEngine, tags: tuple[str, str], layout: Path, tmp_path: Path, mounts: list[str]
) -> dict[str, Any]:
    """Same root filesystem (file by file) and same config; return the config."""
    docker = export_listing(engine, tags[0], tmp_path)
    ours = layout_listing(layout, "image")
    assert differences(docker, ours, mount_points=mounts) == {}
    config = _config(engine, tags[0])
    assert _config(engine, tags[1]) == config
    return config


@pytest.fixture(name="sums")
def fixture_sums(files_url: str) -> dict[str, str]:
    """The environment the build file reads: the server's URL and the pinned checksums."""
    return {
        "URL": files_url,
        "PLAIN_SUM": "sha256:" + hashlib.sha256(DOWNLOAD).hexdigest(),
        "ARCHIVE_SUM": "sha256:" + hashlib.sha256(ARCHIVE).hexdigest(),
    }


FORMS = [
    pytest.param("heredoc_run", ["/scratch"], id="run-heredoc"),
    pytest.param("inline_files", [], id="copy-heredoc"),
    pytest.param("parents", [], id="copy-parents"),
    pytest.param("linked", [], id="link"),
    pytest.param("downloads", [], id="add-checksum"),
    pytest.param("config_forms", [], id="user-shell-cmd-onbuild"),
    pytest.param("user_names", [], id="user-names-exec-list"),
    pytest.param("resets", [], id="cmd-reset"),
    pytest.param("entry_reset", [], id="entrypoint-reset"),
    pytest.param("cmd_kept", [], id="cmd-kept-across-stages"),
]


@pytest.mark.parametrize(("target", "mounts"), FORMS)
def test_both_backends_build_the_same_image(
    docker_engine: DockerEngine,
    busybox_image: str,
    project: Path,
    sums: dict[str, str],
    tags: tuple[str, str],
    tmp_path: Path,
    target: str,
    mounts: list[str],
) -> None:
    """The form gives one root filesystem and one config under both backends."""
    spec = f"{project / 'build.py'}:{target}"
    layout = build_both(docker_engine, spec, busybox_image, tags, tmp_path, sums)
    assert_same_image(docker_engine, tags, layout, tmp_path, mounts)


def test_what_the_forms_made(
    docker_engine: DockerEngine,
    busybox_image: str,
    project: Path,
    sums: dict[str, str],
    tags: tuple[str, str],
    tmp_path: Path,
) -> None:
    """Spot checks of what the forms mean, on the docker backend's image: the heredoc ran in
    the shell, the inline file into an existing directory took the delimiter's name, the
    downloaded files are 0600 unless chmod, the config holds the shell forms and triggers."""
    store = str(tmp_path / "store")
    for target, tag in (("heredoc_run", tags[0]), ("config_forms", tags[1])):
        _imagedsl(docker_engine, "build", f"{project / 'build.py'}:{target}", "--store", store,
                  "-t", tag, env={**sums, "BASE": busybox_image})  # fmt: skip
    ran = docker_engine.run("run", "--rm", tags[0], "cat", "/out/one").stdout
    assert ran == "home=/ shell=/bin/sh\nline 1\nline 2\n"  # BuildKit sets no HOME
    config = _config(docker_engine, tags[1])
    assert config["User"] == "1000:1000"
    assert config["Cmd"] == ["/bin/sh", "-c", "echo $HOME"]
    assert config["OnBuild"] == ["RUN echo built-on-me", "ENV FROM_BASE=1"]
    assert config["Healthcheck"]["Test"] == ["CMD-SHELL", "test -d /"]


def test_base_triggers_run_under_both_backends(
    docker_engine: DockerEngine,
    busybox_image: str,
    project: Path,
    sums: dict[str, str],
    tags: tuple[str, str],
    tmp_path: Path,
) -> None:
    """A base built with ONBUILD triggers: a build FROM it runs them first (RUN, ENV,
    WORKDIR, CMD, LABEL), under both backends, and its own image has no triggers left."""
    base_tag = f"{tags[0]}-onbuild-base"
    try:
        _imagedsl(docker_engine, "build", f"{project / 'build.py'}:onbuild_base", "--store",
                  str(tmp_path / "base-store"), "-t", base_tag,
                  env={**sums, "BASE": busybox_image})  # fmt: skip
        spec = str(project / "on_triggers.py")
        layout = build_both(docker_engine, spec, base_tag, tags, tmp_path, {})
        config = assert_same_image(docker_engine, tags, layout, tmp_path, [])
    finally:
        docker_engine.run("image", "rm", "--force", base_tag, check=False)
    assert config["OnBuild"] is None
    assert config["WorkingDir"] == "/trig"
    assert "TRIGGERED=yes it was" in config["Env"]
    assert config["Labels"]["from.trigger"] == "1"
    assert config["Cmd"] == ["/bin/sh", "-c", "cat /triggered"]  # set by a trigger: kept
    seen = docker_engine.run("run", "--rm", tags[1], "cat /seen /pwd /trig/pwd").stdout
    assert seen == "yes it was\n/trig\n/trig\n"


@pytest.mark.parametrize("trigger", ["COPY . /app", "ADD data.tar /", "ARG VERSION"])
def test_a_base_whose_triggers_read_outside_it_is_refused_by_both_backends(
    docker_engine: DockerEngine, busybox_image: str, tags: tuple[str, str], tmp_path: Path,
    trigger: str,
) -> None:  # fmt: skip
    """BuildKit would run the trigger against the docker backend's staged context (or a
    --build-arg), which no key covers; before, that build went ahead and copied the staging
    directory's digest-named trees. Both backends now refuse it, naming the base, the
    trigger and the build.py line."""
    base_tag = f"{tags[0]}-reads-outside"
    docker_engine.run(
        "build", "-q", "-t", base_tag, "-",
        input=f"FROM {busybox_image}\nONBUILD {trigger}\n",
    )  # fmt: skip
    (tmp_path / "build.py").write_text(
        f'import imagedsl as dsl\n\napp = dsl.image("{base_tag}").run("ls /")\n'
    )
    try:
        for backend in ("docker", "oci"):
            result = subprocess.run(
                [sys.executable, "-m", "imagedsl", "build", "--backend", backend,
                 "--store", str(tmp_path / "store"), "-t", tags[0], "build.py"],
                capture_output=True, text=True, cwd=tmp_path, check=False, timeout=300,
                env={**os.environ, **docker_engine.env},
            )  # fmt: skip
            assert result.returncode == 2, (backend, result.stderr)
            assert f"ONBUILD {trigger}" in result.stderr, (backend, result.stderr)
            assert base_tag in result.stderr, (backend, result.stderr)
            assert "build.py:3" in result.stderr, (backend, result.stderr)  # the FROM's line
    finally:
        docker_engine.run("image", "rm", "--force", base_tag, check=False)
    assert docker_engine.run("image", "inspect", tags[0], check=False).returncode != 0
