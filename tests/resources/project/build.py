"""A build file with shared prefixes, two targets and a multi-stage copy."""

import imagedsl as dsl

src = dsl.context(".", ignore=["build*.py"], dockerignore=True)

base = dsl.image("python:3.12-slim").env(PYTHONDONTWRITEBYTECODE="1").workdir("/app")

deps = base.copy(src.file("requirements.txt"), "/app/").run(
    "pip install -r requirements.txt", mounts=[dsl.cache("/root/.cache/pip")]
)

builder = (
    dsl.image("gcc:13").workdir("/src").copy(src.dir("cmd"), ".").run("cc -o /out/tool tool.c")
)

app = (
    deps.copy(src.dir("app"), "/app/app")
    .copy(builder.path("/out/tool"), "/usr/local/bin/tool")
    .entrypoint("python", "-m", "app")
)

test = deps.copy(src, "/app").run("python -m pytest -q")
