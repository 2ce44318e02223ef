import imagedsl as dsl

src = dsl.context(".", ignore=["Dockerfile", "build.py"])

build = (
    dsl.image("golang:1.22")
    .arg("GIT_TOKEN")
    .env(GIT_TOKEN="$GIT_TOKEN")
    .workdir("/src")
    .copy(src.select("go.mod", "go.sum"), "./")
    .run("go mod download")
    .copy(src, ".")
    .run("CGO_ENABLED=0 go build -o /out/app .")
)
app = (
    dsl.image("gcr.io/distroless/static-debian12:nonroot")
    .copy(build.path("/out/app"), "/app")
    .entrypoint("/app")
)
