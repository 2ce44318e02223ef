import imagedsl as dsl

app = dsl.image("debian:12@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef").run("true").allow("no-such-rule")
