FROM busybox
SHELL ["/bin/sh", "-e", "-c"]
RUN echo strict > /strict
