"""Golden keys: a fixed build file whose keys tests/resources/golden_keys.json pins.

Never edit this file or files/ to make the golden test pass: a change here changes keys on
purpose, and the JSON is then regenerated (python -m tests.support.golden --update).
"""

import imagedsl as dsl

src = dsl.context("files")

base = (
    dsl.image("registry.test/python@sha256:" + "a" * 64, platform="linux/amd64")
    .arg("VERSION", "1.0")
    .env(PYTHONDONTWRITEBYTECODE="1", APP_VERSION="$VERSION")
    .user("app:app")
    .workdir("/app")
)

deps = base.copy(src.file("requirements.txt"), "/app/", chmod="0640", chown="app:app").run(
    "pip install -r requirements.txt",
    mounts=[
        dsl.cache("/root/.cache/pip", sharing="locked"),
        dsl.secret("index-token", env="PIP_TOKEN"),
        dsl.tmpfs("/tmp/build", size=1 << 20),
    ],
)

builder = (
    dsl.image("gcc:13")
    .workdir("/src")
    .copy(src.dir("tool"), ".", exclude=["*.o"])
    .run(["cc", "-o", "/out/tool", "tool.c"], network="none")
)

tool = dsl.scratch().copy(builder.path("/out/tool"), "/tool", link=True).entrypoint("/tool")

app = (
    deps.copy(src.dir("src"), "/app/src", layers="auto")
    .copy(builder.path("/out/tool"), "/usr/local/bin/", chmod="0755")
    .add(
        dsl.url("https://example.invalid/data.bin", checksum="sha256:" + "b" * 64),
        "/app/data.bin",
    )
    .run("python -m compileall src", mounts=[dsl.bind(src.dir("tool"), "/mnt/tool")])
    .shell("/bin/bash", "-eu", "-c")
    .label({"org.opencontainers.image.title": "golden"})
    .expose(8080, "53/udp")
    .volume("/data")
    .healthcheck("curl", "-f", "http://localhost:8080/", interval=30, retries=3)
    .stopsignal("SIGINT")
    .entrypoint("python", "-m", "src")
    .cmd("--serve")
)

# HEALTHCHECK NONE: the base's check switched off.
quiet = deps.healthcheck(None)

targets = dsl.targets("app", "tool", "deps", "quiet")
