"""Files written inline, as COPY heredocs."""

import imagedsl as dsl

app = (
    dsl.image("alpine:3.19")
    .copy(dsl.inline("[server]\nport = 8080\nworkers = 4\n"), "/etc/app/config.ini")
    .copy(dsl.inline('#!/bin/sh\nexec "$@"\n'), "/usr/local/bin/entrypoint")
    .run("chmod 755 /usr/local/bin/entrypoint")
    .entrypoint(["entrypoint"])
    .cmd("cat", "/etc/app/config.ini")
)
