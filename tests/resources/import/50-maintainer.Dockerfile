FROM busybox
MAINTAINER Jane Doe <jane@example.com>
ENV X=1
# BuildKit keeps the text as written: $X stays, the last MAINTAINER wins
MAINTAINER "The Team" $X
CMD ["true"]
