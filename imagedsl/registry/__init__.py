"""The registry client, as a package: each job in its own module.

- :mod:`~imagedsl.registry.client`: the distribution operations (resolve, pull, push, mount,
  tags), :class:`~imagedsl.registry.client.RegistryClient`.
- :mod:`~imagedsl.registry.transport`: URLs, the connection pool, retries, probing, deadlines.
- :mod:`~imagedsl.registry.auth`: Docker's ``config.json``, credential helpers, Basic and
  Bearer.
- :mod:`~imagedsl.registry.errors`: what can go wrong, as error classes.
- :mod:`~imagedsl.registry.push`: pushing an image from a layout, an archive or the store.

Import a name from the module that defines it. The OCI values these use (descriptors,
manifests, platforms, references, blobs) are :mod:`imagedsl.oci`'s.
"""
