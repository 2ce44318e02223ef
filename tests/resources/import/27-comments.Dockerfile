# A file with comments

# about the base
FROM busybox AS commented
# before a run
RUN echo c > /c

# about the env
ENV K=v
# trailing comment
