FROM busybox AS build
RUN mkdir -p /out && echo built > /out/tool

FROM busybox AS runtime
COPY --from=build /out/tool /usr/local/bin/tool
CMD ["/usr/local/bin/tool"]
