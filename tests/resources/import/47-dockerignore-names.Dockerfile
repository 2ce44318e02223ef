FROM busybox AS Builder.Stage-1
RUN echo b > /b

FROM builder.stage-1 AS final-image
COPY a.txt /
