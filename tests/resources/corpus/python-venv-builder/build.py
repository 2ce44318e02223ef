"""A virtualenv built in one stage and copied into a clean runtime."""

import imagedsl as dsl

src = dsl.context(".", dockerignore=True)

builder = (
    dsl.image("python:3.12-slim")
    .run("python -m venv /opt/venv")
    .env(PATH="/opt/venv/bin:$PATH")
    .copy(src.file("requirements.txt"), "/tmp/requirements.txt")
    .run("pip install --no-cache-dir -r /tmp/requirements.txt")
)

app = (
    dsl.image("python:3.12-slim")
    .run("groupadd --system app && useradd --system --gid app app")
    .copy(builder.path("/opt/venv"), "/opt/venv")
    .env(PATH="/opt/venv/bin:$PATH")
    .workdir("/srv")
    .copy(src.dir("app"), "app/", chown="app:app")
    .user("app")
    .cmd("python", "-m", "app.main")
)
