FROM busybox
WORKDIR /app
WORKDIR sub/dir
WORKDIR /
WORKDIR /srv/
RUN pwd > /pwd
