import imagedsl as dsl

src = dsl.context("ctx")
app = dsl.image("alpine:3.20@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef").copy(src, "/srv").user("10001").cmd("sh")
