FROM busybox
COPY --parents pkg/*/a.txt /dst/
