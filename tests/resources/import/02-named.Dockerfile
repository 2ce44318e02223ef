FROM busybox AS base
RUN echo base > /base
