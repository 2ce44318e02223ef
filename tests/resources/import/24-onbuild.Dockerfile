FROM busybox
ONBUILD RUN echo triggered > /triggered
ONBUILD ENV TRIGGERED=1
