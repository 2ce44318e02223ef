import imagedsl as dsl

src = dsl.context("ctx", ignore=[".env", "deploy_key"])
app = (
    dsl.image("alpine:3.20@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef")
    .copy(src.dir("app"), "/srv/app")
    .copy(src.file("big.txt"), "/srv/")
    .run("wget -O /tmp/tool.tgz https://example.invalid/tool.tgz")
    .run("cd /srv && rm big.txt && rm -f /tmp/tool.tgz")
)
