FROM busybox
RUN mkdir -p /a \
    && echo one > /a/one \
    && echo two > /a/two
ENV X=1 \
    Y=2
