import imagedsl as dsl

explicit = dsl.image("alpine:3.20@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef").user("app").run("id").user("root").cmd("sh")
implicit = dsl.image("alpine:3.20@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef").entrypoint("sh")
data = dsl.image("alpine:3.20@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef").run("mkdir /data")
