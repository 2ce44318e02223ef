FROM busybox
COPY <<'EOF' /etc/app.conf
key = value
other = 2
EOF
