"""OCI annotations from build ARGs, base image chosen by a global ARG."""

import imagedsl as dsl

BASE_IMAGE = dsl.arg("BASE_IMAGE", "alpine:3.19")
src = dsl.context(".", dockerignore=True)

app = (
    dsl.image(f"{BASE_IMAGE}")
    .arg("BUILD_DATE")
    .arg("VCS_REF")
    .arg("VERSION", "1.0.0")
    .label(
        {
            "org.opencontainers.image.created": "$BUILD_DATE",
            "org.opencontainers.image.revision": "$VCS_REF",
            "org.opencontainers.image.version": "$VERSION",
            "org.opencontainers.image.title": "example app",
            "maintainer": "team@example.com",
        }
    )
    .copy(src.file("bin/app"), "/usr/local/bin/app", chmod=0o755)
    .cmd(["app"])
)
