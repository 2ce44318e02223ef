FROM busybox AS build-linux
RUN echo linux > /os

FROM build-${TARGETOS} AS picked
RUN cat /os
