"""A C program compiled in a build stage and copied alone into a ``scratch`` image.

    imagedsl plan examples/c-scratch/build.py
    imagedsl build examples/c-scratch/build.py --backend docker -t hello-static
    docker run --rm hello-static

The build stage uses ``gcc:13-bookworm`` from Docker Hub. Where Docker Hub cannot be reached,
set ``GCC_BASE`` to a local image with gcc and the static C library (the tests use a Debian
bookworm image with ``gcc`` and ``libc6-dev``, made with mmdebstrap; see README.md).
"""

from __future__ import annotations

import os

import imagedsl as dsl

src = dsl.context(".", ignore=["build.py", "README.md"])

builder = (
    dsl.image(os.environ.get("GCC_BASE", "gcc:13-bookworm"))
    .workdir("/src")
    .copy(src.file("hello.c"), "/src/")
    .run("mkdir -p /out && gcc -static -Os -Wall -Werror -o /out/hello hello.c && strip /out/hello")
)

# nobody:nogroup by number: scratch has no /etc/passwd, and the binary needs no privilege.
app = (
    dsl.scratch()
    .copy(builder.path("/out/hello"), "/hello")
    .user("65534:65534")
    .entrypoint(["/hello"])
)

dsl_targets = dsl.targets("app")
