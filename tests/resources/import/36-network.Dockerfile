FROM busybox
RUN --network=none echo offline > /offline
