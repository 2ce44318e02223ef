FROM busybox
COPY --link a.txt /linked/a.txt
