"""Progress hooks: the library calls them and stays quiet; the CLI overrides them to print.

Subclass :class:`Reporter` and override only what you need; every hook is a no-op here.
"""

from __future__ import annotations


class Reporter:
    """No-op progress hooks, called by the planner and the backends."""

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
