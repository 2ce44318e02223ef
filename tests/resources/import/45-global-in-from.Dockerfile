ARG TAG=latest
FROM busybox:${TAG}
RUN echo tagged > /t
