FROM busybox
COPY app /srv/app
