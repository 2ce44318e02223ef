FROM busybox
USER 1000
USER 1000:1000
USER nobody
USER nobody:nogroup
