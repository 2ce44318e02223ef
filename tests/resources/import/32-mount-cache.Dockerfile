FROM busybox
RUN --mount=type=cache,target=/cache,id=c1,sharing=locked echo x > /cache/x && echo done > /done
