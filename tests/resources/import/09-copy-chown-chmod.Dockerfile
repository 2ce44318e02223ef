FROM busybox
COPY --chown=1000:1000 --chmod=640 a.txt /owned/a.txt
COPY --chown=daemon app /daemon-app
