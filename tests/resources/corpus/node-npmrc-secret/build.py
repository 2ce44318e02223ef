"""A private registry token as a secret mount: never in a layer, never in a key."""

import imagedsl as dsl

src = dsl.context(".", dockerignore=True)

deps = (
    dsl.image("node:20-bookworm")
    .workdir("/app")
    .copy(src.select("package.json", "package-lock.json"), "./")
    .run(
        "npm ci",
        mounts=[dsl.secret("npmrc", target="/root/.npmrc"), dsl.cache("/root/.npm")],
    )
)

app = (
    dsl.image("node:20-bookworm-slim")
    .workdir("/app")
    .copy(deps.path("/app/node_modules"), "./node_modules")
    .copy(src, ".")
    .cmd("node", "server.js")
)
