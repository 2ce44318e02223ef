import imagedsl as dsl

src = dsl.context(".", ignore=["Dockerfile", "build.py"])

app = (
    dsl.image("ruby:3.3")
    .workdir("/app")
    .copy(src, ".")
    .run("bundle install")
    .user("root")
    .cmd("bundle", "exec", "puma")
)
