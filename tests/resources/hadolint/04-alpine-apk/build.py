import imagedsl as dsl

app = (
    dsl.image("alpine:latest")
    .run("apk update && apk add curl")
    .run("apk add --no-cache bash")
    .run("apk add --virtual .build-deps gcc musl-dev && make && apk del .build-deps")
    .entrypoint("/bin/sh")
)
