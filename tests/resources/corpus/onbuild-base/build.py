"""An ONBUILD base: the triggers run in the images built FROM it."""

import imagedsl as dsl

base = (
    dsl.image("python:3.12-slim")
    .env(PYTHONUNBUFFERED="1")
    .run("mkdir -p /usr/src/app")
    .workdir("/usr/src/app")
    .onbuild("COPY requirements.txt /usr/src/app/")
    .onbuild("RUN pip install --no-cache-dir -r requirements.txt")
    .onbuild("COPY . /usr/src/app")
    .cmd("python", "app.py")
)
