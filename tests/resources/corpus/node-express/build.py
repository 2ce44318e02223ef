"""An Express server: lock file first, production dependencies, non-root."""

import imagedsl as dsl

src = dsl.context(".", dockerignore=True)

app = (
    dsl.image("node:20-bookworm-slim")
    .env(NODE_ENV="production")
    .workdir("/usr/src/app")
    .copy(src.glob("package*.json"), "./")
    .run("npm ci --omit=dev")
    .copy(src, ".", chown="node:node")
    .user("node")
    .expose(3000)
    .cmd("node", "server.js")
)
