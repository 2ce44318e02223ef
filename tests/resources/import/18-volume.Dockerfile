FROM busybox
VOLUME /data
VOLUME ["/logs", "/cache"]
