import imagedsl as dsl

app = (
    dsl.image("alpine:3.20@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef")
    .env(AWS_SECRET_ACCESS_KEY="wJalrXUtnFEMI/K7MDENG/bPxRfiCYzzzzzzzzzz", LOG_LEVEL="info")
    .user("10001")
    .cmd("sh")
)
