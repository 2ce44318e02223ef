"""RUN steps of the OCI backend, executed in runc over the layers below them.

- :mod:`~imagedsl.backends.oci.run.executor`: one RUN, from its inputs to the change it made
  (root filesystem, mounts, user, secrets, output).
- :mod:`~imagedsl.backends.oci.run.rootfs`: extracted layer snapshots, overlay mounts, and
  the change a RUN leaves as layer entries.
- :mod:`~imagedsl.backends.oci.run.runc`: the OCI runtime ``config.json`` and the ``runc``
  process, always killed and deleted before control returns.

Imported only when a RUN must execute: builds without one never load it.
"""
