"""The direct OCI backend: it builds images itself, with no daemon.

- :mod:`~imagedsl.backends.oci.backend`: :class:`~imagedsl.backends.oci.backend.OCIBackend`,
  walking a plan step by step; the image config and manifest.
- :mod:`~imagedsl.backends.oci.bases`: base images from a registry, the engine, a layout or
  an archive, into the store and the builder's view of their files.
- :mod:`~imagedsl.backends.oci.copy_entries`: what COPY and ADD put in their layers.
- :mod:`~imagedsl.backends.oci.filesystem`: reading layers safely; the filesystem a stack of
  layers makes.
- :mod:`~imagedsl.backends.oci.layer`: deterministic layer tars, gzip and zstd.
- :mod:`~imagedsl.backends.oci.outputs`: OCI layouts, archives, loading into the engine.
- :mod:`~imagedsl.backends.oci.run`: RUN steps in runc.

The OCI model it builds with (media types, descriptors, manifests, references, blobs,
layouts) is :mod:`imagedsl.oci`.
"""
