FROM --platform=$BUILDPLATFORM busybox AS cross
ARG TARGETARCH
ARG TARGETOS
RUN echo "$TARGETOS/$TARGETARCH" > /target

FROM busybox
COPY --from=cross /target /target
