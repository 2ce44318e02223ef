"""The OCI image model, apart from its sources and sinks (the role of go-containerregistry's v1).

- :mod:`~imagedsl.oci.mediatypes`: every media type, once; layer compressions.
- :mod:`~imagedsl.oci.annotations`: the annotation keys we read and write.
- :mod:`~imagedsl.oci.digest`: what a sha256 digest looks like.
- :mod:`~imagedsl.oci.platform`: ``os/architecture[/variant]``.
- :mod:`~imagedsl.oci.descriptor`: content descriptors.
- :mod:`~imagedsl.oci.manifest`: image manifests and indexes, parsed and written.
- :mod:`~imagedsl.oci.image`: layers and images whose blobs are in the store.
- :mod:`~imagedsl.oci.reference`: image references and their parsing.
- :mod:`~imagedsl.oci.blobs`: the blob store, the one place that writes, verifies and renames
  a blob.
- :mod:`~imagedsl.oci.layout`: reading OCI layouts, OCI archives and docker-archives.

The planner, the registry client, the remote cache, the lock file and both backends import
from here; nothing here imports them. This file imports nothing: ``imagedsl plan`` needs only
:mod:`~imagedsl.oci.reference`.
"""
