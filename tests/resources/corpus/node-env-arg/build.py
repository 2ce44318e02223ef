"""NODE_ENV from a build ARG, with development and production targets."""

import imagedsl as dsl

src = dsl.context(".", dockerignore=True)

base = (
    dsl.image("node:20-slim")
    .arg("NODE_ENV", "production")
    .env(NODE_ENV="$NODE_ENV")
    .workdir("/app")
    .copy(src.select("package.json", "package-lock.json"), "./")
    .run("npm ci")
)
development = base.env(DEBUG="app:*").copy(src, ".").cmd("npm", "run", "dev")
production = (
    base.copy(src.dir("src"), "./src")
    .copy(src.file("server.js"), "./")
    .healthcheck("node server.js --check", interval="30s", timeout="5s", retries=3)
    .cmd("node", "server.js")
)
