FROM busybox
ENV A=1 B="two words" C='single $quoted'
ENV LEGACY value with spaces
ENV PATH=/opt/bin:$PATH
RUN echo "$A $B $C $LEGACY" > /env.txt
