"""A numeric user and group, as Kubernetes' runAsNonRoot wants."""

import imagedsl as dsl

src = dsl.context(".", dockerignore=True)

app = (
    dsl.image("alpine:3.19")
    .run("mkdir -p /app /var/lib/app && chown 1000:1000 /var/lib/app")
    .copy(src.dir("app"), "/app/", chown="1000:1000")
    .user(1000, 1000)
    .workdir("/var/lib/app")
    .run("id > /var/lib/app/id.txt")
    .cmd("/bin/sh", "/app/run.sh")
)
