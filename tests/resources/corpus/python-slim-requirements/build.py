"""The classic Python service: requirements first, then the code."""

import imagedsl as dsl

src = dsl.context(".", dockerignore=True)

app = (
    dsl.image("python:3.12-slim")
    .env(PYTHONDONTWRITEBYTECODE="1", PYTHONUNBUFFERED="1")
    .workdir("/app")
    .copy(src.file("requirements.txt"), ".")
    .run("pip install --no-cache-dir -r requirements.txt")
    .copy(src.dir("app"), "./app/")
    .expose(8000)
    .cmd("gunicorn --bind 0.0.0.0:8000 app.main:app")
)
