"""A static Go binary with its version stamped in, FROM scratch."""

import imagedsl as dsl

VERSION = dsl.arg("VERSION", "dev")
COMMIT = dsl.arg("COMMIT", "unknown")
src = dsl.context(".", dockerignore=True)

build = (
    dsl.image("golang:1.22")
    .arg(VERSION)
    .arg(COMMIT)
    .workdir("/go/src/app")
    .copy(src, ".")
    .run(
        'CGO_ENABLED=0 go build -ldflags "-s -w -X main.version=${VERSION} -X main.commit=${COMMIT}"'
        " -o /bin/app ./cmd/server"
    )
)

app = (
    dsl.scratch()
    .copy(build.path("/etc/passwd"), "/etc/passwd")
    .copy(build.path("/bin/app"), "/app")
    .user(65534)
    .label({"org.opencontainers.image.version": "$VERSION"})
    .entrypoint(["/app"])
)
