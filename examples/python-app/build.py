"""A Python web app: dependencies in their own layer, the app code on top.

Plan it (no daemon needed):  imagedsl plan examples/python-app/build.py
"""

from __future__ import annotations

import imagedsl as dsl

src = dsl.context(".", ignore=[".git", "**/__pycache__", "*.pyc", "build.py"])

base = dsl.image("python:3.12-slim").env(PYTHONDONTWRITEBYTECODE="1").workdir("/app")

deps = base.copy(src.file("requirements.txt"), "/app/").run(
    "pip install --no-cache-dir -r requirements.txt", mounts=[dsl.cache("/root/.cache/pip")]
)

app = (
    deps.copy(src.dir("app"), "/app/app")
    .env(PORT="8080")
    .expose(8080)
    .entrypoint("python", "-m", "app")
)

test = deps.copy(src, "/app").run("python -m unittest discover -s app -q")

dsl_targets = dsl.targets("app", "test")
