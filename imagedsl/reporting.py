"""Progress hooks: the library calls them and stays quiet; the CLI overrides them to print.

Subclass :class:`Reporter` and override only what you need; every hook is a no-op here.
Transfer hooks are called from the registry client's worker threads: an implementation that
keeps state must lock.
"""

from __future__ import annotations

from collections.abc import Sequence


class Reporter:
    """No-op progress hooks, called by the planner, the backends and the registry client."""

    def hashing_started(self, root: str, files: int, total_bytes: int) -> None:
        """Files of a context are about to be read and hashed."""

    def hashing_progress(self, root: str, files_done: int, bytes_done: int) -> None:
        """Some more files of a context were hashed."""

    def hashing_finished(self, root: str) -> None:
        """All files of a context that needed it were hashed."""

    def step_started(self, label: str) -> None:
        """A backend started making a step real."""

    def step_output(self, label: str, line: str) -> None:
        """A line of output from a running step."""

    def step_finished(self, label: str, status: str) -> None:
        """A backend finished a step (``built``, ``cached`` or ``failed``)."""

    def transfer_started(self, digest: str, size: int, direction: str) -> None:
        """A blob starts moving to or from a registry (``direction``: ``pull`` or ``push``)."""

    def transfer_advanced(self, digest: str, done: int) -> None:
        """``done`` bytes of the blob have moved (counting a resumed part)."""

    def transfer_finished(self, digest: str, outcome: str) -> None:
        """The blob is done: ``pulled``, ``present``, ``pushed``, ``exists`` or ``mounted``."""

    def image_pushed(self, reference: str, repository: str, tags: Sequence[str]) -> None:
        """An image is in ``repository`` under ``tags``; ``reference`` is ``NAME:TAG@DIGEST``."""

    def cache_imported(self, reference: str, records: int, new: int, layers: int) -> None:
        """A remote cache's records were imported (``new`` of them were not in the store)."""

    def cache_missing(self, reference: str) -> None:
        """No remote cache exists at ``reference`` yet; the build goes on without it."""

    def cache_exported(self, reference: str, records: int, layers: int) -> None:
        """This build's records and layers were pushed as a remote cache."""

    def bases_pinned(self, count: int, lock_path: str) -> None:
        """``count`` base images are pinned in the lock file at ``lock_path``."""

    def platform_started(self, platform: str, number: int, count: int) -> None:
        """A multi-platform build starts its ``number``-th platform of ``count``."""
