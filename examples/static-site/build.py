"""Static files as an image, written directly as OCI layers: no daemon, no base image.

    imagedsl plan examples/static-site/build.py
    imagedsl build examples/static-site/build.py --backend oci --output oci:static-site.oci:latest
    skopeo inspect oci:static-site.oci:latest      # or: umoci unpack, podman load, docker load

layers="auto" spreads the files over layers by path as the site grows (about 8 MiB each),
so on a big site editing one page re-uploads one small layer; the output is byte-for-byte
reproducible (the same digest from the same files, wherever they are checked out).
"""

from __future__ import annotations

import imagedsl as dsl

src = dsl.context(".", ignore=["build.py", "*.oci"])

site = (
    dsl.scratch()
    .copy(src.dir("public"), "/srv/www", layers="auto")
    .label(
        {
            "org.opencontainers.image.title": "static-site",
            "org.opencontainers.image.description": "An example of imagedsl's OCI backend",
        }
    )
    .volume("/srv/www")
)
