"""A real interpreter at build time: bytecode and a file the program wrote."""

import imagedsl as dsl

src = dsl.context(".", dockerignore=True)

app = (
    dsl.image("local/debian-python:bookworm")
    .env(PYTHONPATH="/opt/hello")
    .copy(src.dir("src"), "/opt/hello/")
    .run("python3 -m compileall -q /opt/hello && python3 -m hello > /opt/hello/greeting.txt")
    .cmd("python3", "-m", "hello")
)
