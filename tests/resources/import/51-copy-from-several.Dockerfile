FROM busybox AS build
RUN mkdir -p /app/bin /app/conf /app/lib && echo tool > /app/bin/tool && echo a=1 > /app/config.yaml
RUN echo so > /app/lib/a.so && echo so > /app/lib/b.so && echo c > /app/conf/c.cfg

FROM busybox AS runtime
# several paths of one stage: one COPY, one layer
COPY --from=build /app/bin /app/config.yaml /srv/
# wildcards, as BuildKit matches them
COPY --from=build /app/lib/*.so /app/conf /usr/lib/app/
CMD ["/srv/tool"]
