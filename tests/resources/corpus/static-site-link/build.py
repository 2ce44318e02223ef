"""Static files copied with --link: their layer does not depend on the layers below."""

import imagedsl as dsl

src = dsl.context(".", dockerignore=True)

site = (
    dsl.image("nginx:1.27-alpine")
    .run("rm -f /etc/nginx/conf.d/default.conf.bak")
    .copy(src.dir("site"), "/usr/share/nginx/html/", link=True)
    .expose(80)
)
