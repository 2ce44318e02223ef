import imagedsl as dsl

src = dsl.context("ctx", ignore=[".env", "deploy_key"])
app = (
    dsl.image("node:20@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef")
    .workdir("/app")
    .copy(src, "/app")
    .run("npm ci --omit=dev", mounts=[dsl.cache("/root/.npm")])
    .user("10001")
    .cmd("node", "app/main.js")
)
