FROM busybox
WORKDIR /app
COPY a.txt /app/
COPY b.txt ./b-copy.txt
