FROM busybox
RUN <<EOF
mkdir -p /h
echo heredoc > /h/file
EOF
