FROM busybox AS base
ENV A=1

# continue the base
FROM base AS app
# first step
RUN echo 1 > /one
ENV B=2
WORKDIR /app
