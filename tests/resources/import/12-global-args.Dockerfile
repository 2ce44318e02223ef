ARG BASE_TAG=latest
ARG GREETING=hi
FROM busybox
ARG GREETING
RUN echo "$GREETING" > /greeting
