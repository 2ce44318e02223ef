FROM busybox
COPY --exclude=*.py app /no-python/
