FROM busybox
ENV X=e
ARG X=1
RUN echo $X > /x
ARG Y=2
ENV Y=f
RUN echo $Y > /y
