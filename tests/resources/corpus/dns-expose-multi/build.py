"""A DNS server's image: several ports, TCP and UDP, in an empty image."""

import imagedsl as dsl

src = dsl.context(".", dockerignore=True)

build = dsl.image("debian:bookworm-slim").run(
    'mkdir -p /etc/coredns && echo "stand-in" > /etc/coredns/VERSION'
)
coredns = (
    dsl.scratch()
    .copy(build.path("/etc/coredns/VERSION"), "/etc/coredns/VERSION")
    .copy(src.file("Corefile"), "/etc/coredns/Corefile")
    .expose(53, "53/udp", 9153)
    .entrypoint(["/coredns"])
    .cmd("-conf", "/etc/coredns/Corefile")
)
