import imagedsl as dsl

src = dsl.context(".", ignore=["Dockerfile", "build.py"])

build = (
    dsl.image("golang:1.22-alpine")
    .workdir("/src")
    .copy(src, ".")
    .run("go build -o /out/server ./cmd/server")
)
app = (
    dsl.image("alpine:3.20")
    .run("apk add ca-certificates")
    .copy(build.path("/out/server"), "/usr/local/bin/server")
    .entrypoint("server")
)
