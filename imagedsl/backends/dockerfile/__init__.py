"""The Dockerfile backend, in two parts that import one way (``buildkit`` -> ``lowering``).

- :mod:`~imagedsl.backends.dockerfile.lowering`: a plan -> a Dockerfile and exactly the
  context it needs. Pure: no process, no engine (``imagedsl lower`` and library users).
- :mod:`~imagedsl.backends.dockerfile.buildkit`: :class:`DockerfileBackend` (the ``docker``
  backend), which builds the lowered Dockerfile with BuildKit and records what it built.

Their helpers: ``_words`` (spelling values as Dockerfile words), ``_staging`` (writing
context trees, the store's pool of them), ``_progress`` (reading BuildKit's plain progress).
"""
