FROM busybox AS shell_ep
ENTRYPOINT exec sleep 1

FROM busybox AS exec_ep
ENTRYPOINT ["sleep", "1"]
CMD ["2"]

FROM busybox
ENTRYPOINT []
