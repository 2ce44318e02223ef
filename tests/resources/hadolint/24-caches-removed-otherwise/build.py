import imagedsl as dsl

app = (
    dsl.image("alpine:3.20")
    .run("apk add --update curl && rm -rf /var/cache/apk/*")
    .run("pip install --no-index --find-links /wheels flask")
    .user("10001")
    .cmd("curl")
)
