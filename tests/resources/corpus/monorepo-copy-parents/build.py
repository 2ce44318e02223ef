"""Workspace manifests copied with their paths kept (COPY --parents), for npm ci."""

import imagedsl as dsl

src = dsl.context(".", dockerignore=True)

app = (
    dsl.image("node:20-slim")
    .workdir("/repo")
    .copy(src.select("package.json", "package-lock.json"), "./")
    .copy(src.select("services/*/package.json", "packages/*/package.json"), "./", parents=True)
    .run("npm ci")
    .cmd("npm", "run", "start", "--workspace", "services/api")
)
