"""A static C binary in an empty image."""

import imagedsl as dsl

src = dsl.context(".", dockerignore=True)

build = (
    dsl.image("debian:bookworm")
    .run("apt-get update && apt-get install -y --no-install-recommends build-essential")
    .workdir("/src")
    .copy(src.select("Makefile", "hello.c"), "./")
    .run("cc -static -O2 -o /src/hello hello.c && make all")
)
hello = dsl.scratch().copy(build.path("/src/hello"), "/hello").cmd(["/hello"])
