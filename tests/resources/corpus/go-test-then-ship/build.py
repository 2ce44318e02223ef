"""Go with lint, build and runtime stages over one dependency stage."""

import imagedsl as dsl

src = dsl.context(".", dockerignore=True)

deps = (
    dsl.image("golang:1.22-bookworm")
    .workdir("/workspace")
    .copy(src.select("go.mod", "go.sum"), "./")
    .run("go mod download && go mod verify")
)
lint = deps.copy(src, ".").run("go vet ./...")
build = (
    deps.copy(src.dir("cmd"), "cmd/")
    .copy(src.dir("internal"), "internal/")
    .run("go build -o /workspace/bin/server ./cmd/server")
)
runtime = (
    dsl.image("debian:bookworm-slim")
    .run(
        "apt-get update && apt-get install -y --no-install-recommends ca-certificates"
        " && rm -rf /var/lib/apt/lists/*"
    )
    .copy(build.path("/workspace/bin/server"), "/usr/local/bin/server")
    .cmd("server", "--listen", ":8080")
)
