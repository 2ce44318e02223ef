"""Relative WORKDIRs, and COPY destinations relative to them."""

import imagedsl as dsl

src = dsl.context(".", dockerignore=True)

app = (
    dsl.image("alpine:3.19")
    .workdir("/opt")
    .workdir("app")
    .copy(src.dir("config"), "config/")
    .workdir("scripts")
    .copy(src.file("scripts/start.sh"), "./")
    .copy(src.file("lib/util.sh"), "../lib/")
    .workdir("..")
    .run("ls -R . > /opt/app/manifest.txt")
    .cmd("sh", "scripts/start.sh")
)
