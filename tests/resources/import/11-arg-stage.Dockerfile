FROM busybox
ARG VERSION=1.0
ARG FLAG
RUN echo "$VERSION $FLAG" > /version
