"""What the ``imagedsl`` command prints: progress on stderr and the plan table.

The library reports through :class:`~imagedsl.reporting.Reporter` hooks and prints nothing;
:class:`TerminalReporter` is the CLI's implementation of those hooks.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from imagedsl.errors import SourceLocation
from imagedsl.reporting import Reporter

if TYPE_CHECKING:
    from imagedsl.check import CheckReport, Finding
    from imagedsl.inspect import InspectReport
    from imagedsl.planner import Plan


class TerminalReporter(Reporter):
    """Progress on stderr: a live hashing line on a terminal, a line per step output, per blob
    transferred, per push and per remote cache."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._live = stream.isatty()
        self._total = (0, 0)
        self._last = 0.0
        self._shown = False
        self._sizes: dict[str, int] = {}
        self._lock = threading.Lock()

    def _line(self, text: str) -> None:
        with self._lock:
            self._stream.write(text + "\n")
            self._stream.flush()

    def hashing_started(self, root: str, files: int, total_bytes: int) -> None:
        self._total = (files, total_bytes)
        self._last = time.monotonic()
        self._shown = files >= 2000 or total_bytes >= 64 << 20
        if self._shown:
            self._stream.write(
                f"hashing {files} files ({mib(total_bytes)}) in {display_path(Path(root))}"
                + ("" if self._live else "\n")
            )
            self._stream.flush()

    def hashing_progress(self, root: str, files_done: int, bytes_done: int) -> None:
        now = time.monotonic()
        if not (self._shown and self._live) or now - self._last < 0.2:
            return
        self._last = now
        files, total = self._total
        self._stream.write(
            f"\rhashing {display_path(Path(root))}: {files_done}/{files} files, "
            f"{mib(bytes_done)}/{mib(total)}"
        )
        self._stream.flush()

    def hashing_finished(self, root: str) -> None:  # noqa: ARG002 - the hook's signature
        if self._shown and self._live:
            self._stream.write("\r\x1b[K")
            self._stream.flush()

    def step_output(self, label: str, line: str) -> None:  # noqa: ARG002 - the hook's signature
        """A backend's progress line (BuildKit's, for the docker backend), printed as is."""
        self._line(line)

    def transfer_started(self, digest: str, size: int, direction: str) -> None:  # noqa: ARG002
        with self._lock:
            self._sizes[digest] = size

    def transfer_finished(self, digest: str, outcome: str) -> None:
        """``pushed 0123456789ab 1.2 MiB``; blobs already where they belong are not mentioned."""
        if outcome == "present":
            return
        with self._lock:
            size = self._sizes.pop(digest, None)
        shown = "" if size is None else f" {human_size(size)}"
        self._line(f"{outcome:>8} {digest.removeprefix('sha256:')[:12]}{shown}")

    def image_pushed(self, reference: str, repository: str, tags: Sequence[str]) -> None:  # noqa: ARG002
        self._line(f"pushed {repository} tags {', '.join(tags) or '(by digest only)'}")

    def cache_imported(self, reference: str, records: int, new: int, layers: int) -> None:
        self._line(f"cache {reference}: {records} records, {new} new, {layers} layers")

    def cache_missing(self, reference: str) -> None:
        self._line(f"warning: no remote cache at {reference}; going on without it")

    def cache_exported(self, reference: str, records: int, layers: int) -> None:
        self._line(f"cache: {records} records, {layers} layers -> {reference}")

    def bases_pinned(self, count: int, lock_path: str) -> None:
        self._line(f"pinned {count} base image(s) in {display_path(Path(lock_path))}")

    def platform_started(self, platform: str, number: int, count: int) -> None:
        self._line(f"platform {platform} ({number}/{count})")


def format_plan(plan: Plan, buildfile: str, findings: Sequence[Finding] = ()) -> str:
    """The human table: one row per step, reasons indented under misses, and ``findings``
    (``imagedsl check``'s errors) one line each under the steps they concern. A plan of
    several platforms gets a PLATFORM column (a shared step is one row, on its platform)."""
    several = len(plan.platforms) > 1
    header = ("WAVE", "STEP", "STATUS", "KEY", *(("PLATFORM",) if several else ()))
    rows = [(*header, "INSTRUCTION")]
    details: dict[int, list[str]] = {}
    for i, step in enumerate(plan.steps):
        rows.append(
            (
                str(step.wave),
                f"{step.stage}[{step.index}]",
                step.status.value,
                step.key[:12],
                *((step.platform,) if several else ()),
                _truncate(step.instruction, 72),
            )
        )
        details[i + 1] = [*step.reasons, *(f"note: {n}" for n in step.notes)]
    for finding in findings:
        details[finding.row + 1].append(f"{finding.severity} {finding.rule}: {finding.summary}")
    columns = len(header)
    widths = [max(len(row[c]) for row in rows) for c in range(columns)]
    title = f"plan for {buildfile}:{plan.target}"
    lines = [title + (f" ({', '.join(plan.platforms)})" if several else "")]
    for i, row in enumerate(rows):
        cells = [row[c].ljust(widths[c]) for c in range(columns)]
        lines.append("  ".join([*cells, row[columns]]).rstrip())
        for reason in details.get(i, []):
            lines.append(" " * (sum(widths) + 2 * columns) + f"- {reason}")
    summary = plan.summary
    lines.append(
        f"{summary['hit']} hit, {summary['miss']} miss, {summary['maybe']} maybe, "
        f"{summary['config']} config"
    )
    return "\n".join(lines) + "\n"


def format_findings(report: CheckReport) -> str:
    """``imagedsl check``'s text: ``FILE:LINE: severity rule: message`` per finding, then the
    counts."""
    lines = []
    for finding in report.findings:
        where = display_location(SourceLocation(finding.file, finding.line))
        mark = " (suppressed by allow)" if finding.suppressed else ""
        lines.append(
            f"{where}: {finding.severity} {finding.rule}{mark}: {finding.message} "
            f"[{finding.stage}[{finding.step}]]"
        )
    counts = report.counts()
    lines.append(
        f"{report.target}: {counts['error']} error(s), {counts['warning']} warning(s), "
        f"{counts['info']} info, {counts['suppressed']} suppressed"
    )
    return "\n".join(lines) + "\n"


def format_inspect(report: InspectReport, *, top: int = 10) -> str:
    """``imagedsl inspect``'s text: a row per layer, the totals, the biggest waste, secrets."""
    lines = [f"image {report.image}"]
    rows = [("LAYER", "SIZE", "COMPRESSED", "WASTED", "+", "~", "-", "MADE BY")]
    for layer in report.layers:
        made_by = (
            layer.created_by if layer.step is None else f"{layer.step} {layer.file}:{layer.line}"
        )
        rows.append(
            (
                str(layer.index),
                human_size(layer.content_bytes),
                human_size(layer.compressed_bytes),
                human_size(layer.wasted_bytes),
                str(layer.added),
                str(layer.changed),
                str(layer.deleted),
                _truncate(made_by, 60),
            )
        )
    widths = [max(len(row[c]) for row in rows) for c in range(7)]
    for row in rows:
        cells = [row[c].rjust(widths[c]) if c else row[c].ljust(widths[c]) for c in range(7)]
        lines.append("  ".join([*cells, row[7]]).rstrip())
    lines.append(
        f"size {human_size(report.size_bytes)}, wasted {human_size(report.wasted_bytes)}, "
        f"efficiency {report.efficiency * 100:.2f} %"
    )
    for item in report.wasted[:top]:
        layers = ", ".join(str(i) for i in item.layers)
        lines.append(f"  wasted {human_size(item.bytes):>10}  {item.path} (layers {layers})")
    if len(report.wasted) > top:
        lines.append(f"  ... and {len(report.wasted) - top} more wasted paths (--json lists all)")
    for secret in report.secrets:
        hidden = ", deleted later but still in the layer" if secret.deleted_later else ""
        lines.append(f"secret: {secret.path} ({secret.kind}) in layer {secret.layer}{hidden}")
    return "\n".join(lines) + "\n"


def display_path(path: Path) -> str:
    """A path as the user would type it: relative to the current directory when inside it."""
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def display_location(location: SourceLocation) -> str:
    """``FILE:LINE`` with the file as the user would type it."""
    return f"{display_path(Path(location.file))}:{location.line}"


def mib(size: int) -> str:
    """``12.3 MiB``."""
    return f"{size / (1 << 20):.1f} MiB"


def human_size(size: int) -> str:
    """``512 B``, ``1.5 KiB``, ``12.3 MiB``."""
    if size < 1 << 10:
        return f"{size} B"
    if size < 1 << 20:
        return f"{size / (1 << 10):.1f} KiB"
    return mib(size)


def _truncate(text: str, width: int) -> str:
    text = text.replace("\n", "\\n")
    return text if len(text) <= width else text[: width - 1] + "…"
