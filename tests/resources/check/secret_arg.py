import imagedsl as dsl

app = (
    dsl.image("alpine:3.20@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef")
    .arg("GITHUB_TOKEN", default="ghp_0123456789abcdefghijklmnopqrstuvwxyzAB")
    .arg("NPM_TOKEN")
    .run("echo building")
)
