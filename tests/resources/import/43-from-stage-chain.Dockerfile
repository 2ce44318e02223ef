FROM busybox AS base
ENV BASE=1

FROM base AS dev
RUN echo dev > /dev-marker

FROM base AS prod
RUN echo prod > /prod-marker
