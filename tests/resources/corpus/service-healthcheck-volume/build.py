"""A data service in the official-image style: own user, a VOLUME, a health check."""

import imagedsl as dsl

src = dsl.context(".", dockerignore=True)

server = (
    dsl.image("debian:bookworm-slim")
    .run("groupadd -r -g 999 store && useradd -r -g store -u 999 store")
    .run("mkdir /data && chown store:store /data")
    .volume("/data")
    .workdir("/data")
    .copy(src.file("conf/service.conf"), "/etc/service/service.conf")
    .copy(src.file("docker-entrypoint.sh"), "/usr/local/bin/", chmod="755")
    .entrypoint(["docker-entrypoint.sh"])
    .expose(6379)
    .healthcheck(
        "cat", "/etc/service/service.conf", interval="10s", timeout="3s", start_period="5s"
    )
    .stopsignal("SIGTERM")
    .cmd("service-server", "/etc/service/service.conf")
)
