FROM busybox AS checked
HEALTHCHECK --interval=30s --timeout=5s --start-period=1m --retries=3 CMD wget -q -O- http://localhost/ || exit 1

FROM busybox AS exec_check
HEALTHCHECK CMD ["true"]

FROM checked
HEALTHCHECK NONE
