FROM busybox AS files
RUN mkdir -p /out && echo bound > /out/f

FROM busybox
RUN --mount=type=bind,from=files,source=/out,target=/in cp /in/f /f
RUN --mount=type=bind,source=a.txt,target=/mnt/a.txt cp /mnt/a.txt /a.txt
