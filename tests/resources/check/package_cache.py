import imagedsl as dsl

apt = dsl.image("debian:12@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef").run("apt-get update && apt-get install -y curl")
apk = dsl.image("alpine:3.20@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef").run("apk add curl")
pip = dsl.image("python:3.12@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef").run("pip install requests")
npm = dsl.image("node:20@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef").workdir("/app").run("npm install express")
clean = (
    dsl.image("debian:12@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef")
    .env(PIP_NO_CACHE_DIR="1")
    .run("apt-get update && apt-get install -y python3-pip && rm -rf /var/lib/apt/lists/*")
    .run("pip install requests")
    .run("apk add --no-cache curl")
    .run("npm ci", mounts=[dsl.cache("/root/.npm")])
)
