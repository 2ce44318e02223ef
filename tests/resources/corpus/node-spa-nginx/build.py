"""A single-page app built with npm and served by nginx."""

import imagedsl as dsl

src = dsl.context(".", dockerignore=True)

build = (
    dsl.image("node:20-alpine")
    .workdir("/app")
    .copy(src.select("package.json", "package-lock.json"), "./")
    .run("npm ci")
    .copy(src, ".")
    .run("npm run build")
)

web = (
    dsl.image("nginx:1.27-alpine")
    .copy(src.file("nginx.conf"), "/etc/nginx/conf.d/default.conf")
    .copy(build.path("/app/dist"), "/usr/share/nginx/html")
    .expose(80)
    .stopsignal("SIGQUIT")
    .cmd("nginx", "-g", "daemon off;")
)
