FROM busybox
COPY *.txt /texts/
