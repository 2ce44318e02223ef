"""A Python web app: dependencies in their own layer, the app code on top.

    imagedsl plan examples/python-app/build.py             (no daemon needed)
    imagedsl build examples/python-app/build.py --backend docker -t python-app
    docker run --rm -p 8080:8080 python-app               # then: curl http://localhost:8080/

The base is ``python:3.12-slim`` from Docker Hub. Where Docker Hub cannot be reached, set
``PYTHON_BASE`` to a local image with python3 and pip (the tests use a Debian bookworm image
made with mmdebstrap, see README.md). Where builds cannot reach the package index, download
the wheels beforehand into ``wheels/`` (``pip download -r requirements.txt -d wheels``): the
build then installs from them, offline.
"""

from __future__ import annotations

import os
from pathlib import Path

import imagedsl as dsl

src = dsl.context(".", ignore=[".git", "**/__pycache__", "*.pyc", "build.py", "wheels", "*.md"])

base = (
    dsl.image(os.environ.get("PYTHON_BASE", "python:3.12-slim"))
    .env(PYTHONDONTWRITEBYTECODE="1", PYTHONPATH="/app/deps")
    .workdir("/app")
)

# Dependencies go to /app/deps in a layer of their own: editing the app never reinstalls them.
install = "python3 -m pip install --target /app/deps -r requirements.txt"
if Path(__file__).with_name("wheels").is_dir():
    install += " --no-index --find-links /wheels"
    cache = dsl.bind(dsl.context("wheels"), "/wheels")
else:
    cache = dsl.cache("/root/.cache/pip", id="pip")

deps = base.copy(src.file("requirements.txt"), "/app/").run(install, mounts=[cache])

# The app runs as an unprivileged user (a numeric uid needs no /etc/passwd entry).
app = (
    deps.copy(src.dir("app"), "/app/app")
    .env(PORT="8080")
    .expose(8080)
    .user("10001:10001")
    .entrypoint("python3", "-m", "app")
)

test = deps.copy(src, "/app").run("python3 -m unittest discover -s app -q")

dsl_targets = dsl.targets("app", "test")
