"""The `docker init` Go template: sources bind-mounted into the build, never copied."""

import imagedsl as dsl

src = dsl.context(".", dockerignore=True)
modules = dsl.cache("/go/pkg/mod")

build = (
    dsl.image("golang:1.22")
    .workdir("/src")
    .run(
        "go mod download -x",
        mounts=[
            modules,
            dsl.bind(src.file("go.sum"), "/src/go.sum"),
            dsl.bind(src.file("go.mod"), "/src/go.mod"),
        ],
    )
    .run("CGO_ENABLED=0 go build -o /bin/cli .", mounts=[modules, dsl.bind(src, "/src")])
)
final = dsl.image("alpine:3.19").copy(build.path("/bin/cli"), "/bin/").entrypoint(["/bin/cli"])
