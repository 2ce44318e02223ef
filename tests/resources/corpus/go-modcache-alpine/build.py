"""Go with the module and build caches mounted, and a non-root Alpine runtime."""

import imagedsl as dsl

src = dsl.context(".", dockerignore=True)
modules = dsl.cache("/go/pkg/mod")

builder = (
    dsl.image("golang:1.22-alpine")
    .run("apk add --no-cache git ca-certificates")
    .workdir("/app")
    .copy(src.select("go.mod", "go.sum"), "./")
    .run("go mod download", mounts=[modules])
    .copy(src, ".")
    .run(
        "go build -o /usr/local/bin/server ./cmd/server",
        mounts=[modules, dsl.cache("/root/.cache/go-build")],
    )
)

app = (
    dsl.image("alpine:3.19")
    .run("addgroup -S app && adduser -S -G app app")
    .copy(builder.path("/usr/local/bin/server"), "/usr/local/bin/server")
    .user("app")
    .entrypoint(["server"])
)
