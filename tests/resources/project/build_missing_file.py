import imagedsl as dsl

src = dsl.context(".")
app = dsl.image("alpine:3.20").copy(src.file("no-such-file.txt"), "/x")
