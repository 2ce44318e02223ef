import imagedsl as dsl

app = dsl.image("alpine:3.20").run("echo hi")
