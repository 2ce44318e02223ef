"""A large web app's Dockerfile style: ten global ARGs, read where each stage needs them."""

import imagedsl as dsl

PYTHON_VERSION = dsl.arg("PYTHON_VERSION", "3.12")
DEBIAN_RELEASE = dsl.arg("DEBIAN_RELEASE", "bookworm")
APP_HOME = dsl.arg("APP_HOME", "/srv/app")
APP_USER = dsl.arg("APP_USER", "web")
UID = dsl.arg("UID", "1000")
GID = dsl.arg("GID", "1000")
PORT = dsl.arg("PORT", "8000")
BUILD_ENV = dsl.arg("BUILD_ENV", "production")
VERSION = dsl.arg("VERSION", "0.0.0")
VCS_REF = dsl.arg("VCS_REF", "unknown")

src = dsl.context(".", dockerignore=True)
python = f"python:{PYTHON_VERSION}-slim-{DEBIAN_RELEASE}"

python_deps = (
    dsl.image(python)
    .arg(BUILD_ENV)
    .copy(src.file("requirements.txt"), "/tmp/")
    .run('pip wheel --wheel-dir /wheels -r /tmp/requirements.txt && echo "built for ${BUILD_ENV}"')
)

stage = dsl.image(python)
for name in (APP_HOME, APP_USER, UID, GID, PORT, VERSION, VCS_REF):
    stage = stage.arg(name)
runtime = (
    stage.label(
        {
            "org.opencontainers.image.version": "$VERSION",
            "org.opencontainers.image.revision": "$VCS_REF",
        }
    )
    .env(APP_HOME="$APP_HOME", PORT="$PORT")
    .run("groupadd --gid $GID $APP_USER && useradd --uid $UID --gid $GID --create-home $APP_USER")
    .workdir("$APP_HOME")
    .copy(python_deps.path("/wheels"), "/wheels")
    .run("pip install --no-cache-dir /wheels/* || true")
    .copy(src, "$APP_HOME", chown="$UID:$GID")
    .user("$UID:$GID")
    .expose("$PORT")
    .cmd("gunicorn --bind 0.0.0.0:$PORT app.main:app")
)
