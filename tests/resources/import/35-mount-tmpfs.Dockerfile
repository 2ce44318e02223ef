FROM busybox
RUN --mount=type=tmpfs,target=/scratch echo t > /scratch/t && echo ok > /ok
