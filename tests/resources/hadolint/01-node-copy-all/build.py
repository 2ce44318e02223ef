import imagedsl as dsl

src = dsl.context(".", ignore=["Dockerfile", "build.py"])

app = (
    dsl.image("node:20")
    .workdir("/app")
    .copy(src, "/app")
    .run("npm ci")
    .run("npm run build")
    .cmd("node", "dist/server.js")
)
