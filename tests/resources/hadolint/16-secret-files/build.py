import imagedsl as dsl

src = dsl.context(".", ignore=["Dockerfile", "build.py"])

app = (
    dsl.image("python:3.12-slim")
    .workdir("/app")
    .copy(src, ".")
    .run("pip install --no-cache-dir -r requirements.txt")
    .user("10001")
    .cmd("python", "main.py")
)
