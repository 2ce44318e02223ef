"""pip with its cache mounted and the requirements bind-mounted, not copied."""

import imagedsl as dsl

src = dsl.context(".", dockerignore=True)

app = (
    dsl.image("python:3.12-slim")
    .workdir("/app")
    .run(
        "pip install -r /tmp/requirements.txt",
        mounts=[
            dsl.cache("/root/.cache/pip"),
            dsl.bind(src.file("requirements.txt"), "/tmp/requirements.txt"),
        ],
    )
    .copy(src.dir("app"), "./app")
    .entrypoint("python", "-m")
    .cmd(["app.main"])
)
