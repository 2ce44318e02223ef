"""A Node/Express server on port 3011, with its npm dependencies in their own layer.

    imagedsl plan examples/node-express/build.py
    imagedsl build examples/node-express/build.py --backend docker -t node-express
    docker run --rm -p 3011:3011 node-express        # then: curl http://localhost:3011/

The base is ``node:20-bookworm-slim`` from Docker Hub. Where Docker Hub cannot be reached,
set ``NODE_BASE`` to a local image that has node and npm (the tests use a Debian bookworm
image made with mmdebstrap, see README.md). Where builds cannot reach the npm registry, fill
``npm-cache/`` beforehand on a machine that can (``npm ci --cache npm-cache``): the build then
installs offline from it.
"""

from __future__ import annotations

import os
from pathlib import Path

import imagedsl as dsl

src = dsl.context(".", ignore=["node_modules", "npm-cache", "build.py", "README.md", "*.log"])

base = (
    dsl.image(os.environ.get("NODE_BASE", "node:20-bookworm-slim"))
    .env(NODE_ENV="production")
    .workdir("/app")
)

# The manifests alone first, so that editing server.js never reinstalls the dependencies.
if Path(__file__).with_name("npm-cache").is_dir():
    install = "npm ci --omit=dev --offline --cache /tmp/npm-cache --no-audit --no-fund"
    cache = dsl.bind(dsl.context("npm-cache"), "/tmp/npm-cache", readwrite=True)
else:
    install = "npm ci --omit=dev --no-audit --no-fund"
    cache = dsl.cache("/root/.npm", id="npm")

deps = base.copy(src.select("package.json", "package-lock.json"), "/app/").run(
    install, mounts=[cache]
)

# The server runs as an unprivileged user (a numeric uid needs no /etc/passwd entry).
app = (
    deps.copy(src.file("server.js"), "/app/")
    .env(PORT="3011")
    .expose(3011)
    .user("10001:10001")
    .cmd("node", "server.js")
)

dsl_targets = dsl.targets("app")
