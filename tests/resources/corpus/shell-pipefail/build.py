"""SHELL switched to pipefail for a pipeline, and back."""

import imagedsl as dsl

app = (
    dsl.image("debian:bookworm-slim")
    .shell("/bin/sh", "-o", "pipefail", "-c")
    .run('echo "deb stand-in" | tee /etc/apt-sources.txt | wc -l > /lines.txt')
    .shell("/bin/sh", "-c")
    .run("echo plain > /plain.txt")
    .cmd("cat", "/lines.txt")
)
