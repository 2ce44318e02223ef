import imagedsl as dsl

app = (
    dsl.image("python:3.12-slim")
    .env(PIP_NO_CACHE_DIR="1")
    .run("pip install flask")
    .run("pip install gunicorn", mounts=[dsl.cache("/root/.cache/pip")])
    .user("10001")
    .cmd("gunicorn", "app:app")
)
