"""A Go service cross-compiled on the build platform, shipped on distroless."""

import imagedsl as dsl

GO_VERSION = dsl.arg("GO_VERSION", "1.22")
src = dsl.context(".", dockerignore=True)

build = (
    dsl.image(f"golang:{GO_VERSION}-alpine", platform="$BUILDPLATFORM")
    .workdir("/src")
    .copy(src.select("go.mod", "go.sum"), "./")
    .run("go mod download")
    .copy(src, ".")
    .arg("TARGETOS")
    .arg("TARGETARCH")
    .run(
        "CGO_ENABLED=0 GOOS=$TARGETOS GOARCH=$TARGETARCH go build -trimpath -o /out/server ./cmd/server"
    )
)

final = (
    dsl.image("gcr.io/distroless/static-debian12:nonroot")
    .copy(build.path("/out/server"), "/server")
    .user("nonroot:nonroot")
    .expose(8080)
    .entrypoint(["/server"])
)
