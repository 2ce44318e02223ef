import imagedsl as dsl

compiled = dsl.image("golang:1.22@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef").run("go version").user("10001").cmd("app")
installed = (
    dsl.image("debian:12@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef")
    .run(
        "apt-get update && apt-get install -y --no-install-recommends build-essential curl"
        " && rm -rf /var/lib/apt/lists/*"
    )
    .user("10001")
    .cmd("app")
)
cleaned = (
    dsl.image("alpine:3.20@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef")
    .run("apk add --no-cache --virtual .build-deps gcc musl-dev && make && apk del .build-deps")
    .user("10001")
    .cmd("app")
)
