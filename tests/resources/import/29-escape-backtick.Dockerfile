# escape=`
FROM busybox
RUN echo one `
    && echo two > /two
WORKDIR C:`app
