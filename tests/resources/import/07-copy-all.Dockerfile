FROM busybox
WORKDIR /ctx
COPY . .
