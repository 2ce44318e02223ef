"""A Go tool with a stage per OS, chosen by TARGETOS (as docker/buildx-style repos do)."""

import imagedsl as dsl

GO_VERSION = dsl.arg("GO_VERSION", "1.22")
src = dsl.context(".", dockerignore=True)

base = (
    dsl.image(f"golang:{GO_VERSION}", platform="$BUILDPLATFORM")
    .workdir("/src")
    .copy(src.select("go.mod", "go.sum"), "./")
    .run("go mod download")
)
build = (
    base.arg("TARGETOS")
    .arg("TARGETARCH")
    .copy(src, ".")
    .run("GOOS=$TARGETOS GOARCH=$TARGETARCH go build -o /out/tool ./cmd/server")
)
test = base.copy(src, ".").run("go test ./...")
binaries_linux = dsl.scratch().copy(build.path("/out/tool"), "/tool")
binaries_windows = dsl.scratch().copy(build.path("/out/tool"), "/tool.exe")
binaries = dsl.from_stage("binaries_${TARGETOS}")
