FROM busybox AS shell_cmd
CMD echo shell form

FROM busybox AS exec_cmd
CMD ["echo", "exec", "form"]

FROM busybox AS one_cmd
CMD ["/bin/true"]

FROM busybox
CMD []
