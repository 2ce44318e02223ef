import imagedsl as dsl

src = dsl.context(".", ignore=["Dockerfile", "build.py"])

app = (
    dsl.image("python:3.12-slim")
    .run(
        "apt-get update && apt-get install -y build-essential libpq-dev"
        " && rm -rf /var/lib/apt/lists/*"
    )
    .copy(src.file("requirements.txt"), ".")
    .run("pip install --no-cache-dir -r requirements.txt")
    .user("10001")
    .cmd("python", "-m", "app")
)
