"""Development and production targets over one base stage."""

import imagedsl as dsl

src = dsl.context(".", dockerignore=True)

base = (
    dsl.image("python:3.11-slim")
    .env(PIP_NO_CACHE_DIR="1", PIP_DISABLE_PIP_VERSION_CHECK="1")
    .workdir("/app")
    .copy(src.file("requirements.txt"), ".")
    .run("pip install -r requirements.txt")
)
dev = (
    base.copy(src.file("requirements-dev.txt"), ".")
    .run("pip install -r requirements-dev.txt")
    .copy(src, ".")
    .cmd("pytest", "-q")
)
prod = (
    base.copy(src.dir("app"), "./app/")
    .run("useradd --create-home appuser")
    .user("appuser")
    .cmd("gunicorn", "-w", "4", "-b", "0.0.0.0:8000", "app.main:app")
)
