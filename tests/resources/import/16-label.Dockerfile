FROM busybox
LABEL org.opencontainers.image.source="https://example.invalid/repo" team=core
LABEL description="an image with a label"
