FROM busybox AS s0
RUN echo 0 > /s0

FROM busybox AS s1
RUN echo 1 > /s1

FROM busybox AS s2
RUN echo 2 > /s2

FROM busybox AS s3
RUN echo 3 > /s3

FROM busybox AS s4
RUN echo 4 > /s4

FROM busybox
COPY --from=s0 /s0 /all/
COPY --from=s1 /s1 /all/
COPY --from=s2 /s2 /all/
COPY --from=s3 /s3 /all/
COPY --from=s4 /s4 /all/
