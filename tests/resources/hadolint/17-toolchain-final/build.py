import imagedsl as dsl

src = dsl.context(".", ignore=["Dockerfile", "build.py"])

app = (
    dsl.image("gcc:13")
    .workdir("/src")
    .copy(src.file("hello.c"), ".")
    .run("gcc -O2 -o /usr/local/bin/hello hello.c")
    .user("10001")
    .cmd("hello")
)
