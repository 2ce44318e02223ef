import imagedsl as dsl

src = dsl.context(".", ignore=["Dockerfile", "build.py"])

app = (
    dsl.image("python:3.12-slim")
    .workdir("/srv")
    .copy(src.file("requirements.txt"), ".")
    .run("pip install -r requirements.txt")
    .copy(src.dir("app"), "app/")
    .user("root")
    .cmd("python", "-m", "app")
)
