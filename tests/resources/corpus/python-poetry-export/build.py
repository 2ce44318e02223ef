"""Poetry only in a builder stage that exports requirements for pip."""

import imagedsl as dsl

PYTHON_VERSION = dsl.arg("PYTHON_VERSION", "3.12")
src = dsl.context(".", dockerignore=True)

requirements = (
    dsl.image(f"python:{PYTHON_VERSION}-slim")
    .arg("POETRY_VERSION", "1.8.3")
    .run('pip install --no-cache-dir "poetry==${POETRY_VERSION}"')
    .workdir("/build")
    .copy(src.select("pyproject.toml", "poetry.lock"), "./")
    .run("poetry export --without-hashes -o requirements.txt")
)

app = (
    dsl.image(f"python:{PYTHON_VERSION}-slim")
    .workdir("/code")
    .copy(requirements.path("/build/requirements.txt"), "./requirements.txt")
    .run("pip install --no-cache-dir --upgrade -r requirements.txt")
    .copy(src.dir("service"), "./service")
    .cmd("uvicorn", "service.api:app", "--host", "0.0.0.0", "--port", "80")
)
