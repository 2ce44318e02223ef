import imagedsl as dsl

app = (
    dsl.image("debian:12@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef")
    .run("apt-get update && apt-get install -y curl")
    .allow("package-cache")
    .cmd("curl")
    .allow("root-user")
)
