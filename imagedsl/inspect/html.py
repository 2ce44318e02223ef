"""``imagedsl inspect --html FILE``: the report as one self-contained page.

Everything is in the one file (inline CSS and SVG, no script, no font, no request): the
layers drawn as bars by size, with their wasted bytes and secrets marked; the build graph
(when a build file is given) with each step's status from a plan made now; the wasted paths
and the secrets; and the build file itself with numbered lines, which every layer and step
links to (``#L12``).
"""

from __future__ import annotations

import html
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Final

from imagedsl.inspect.model import InspectReport, LayerReport

if TYPE_CHECKING:
    from imagedsl.planner import Plan

_STATUS_COLOURS: Final = {
    "hit": "#8fd19e",
    "miss": "#f08c84",
    "maybe": "#f2d66b",
    "config": "#d6d6d6",
}
_STYLE: Final = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 2em; color: #222; }
h1 { font-size: 1.4em; } h2 { font-size: 1.15em; margin-top: 1.6em; }
table { border-collapse: collapse; } td, th { padding: 2px 8px; text-align: left; }
th { border-bottom: 1px solid #999; } tr:nth-child(even) td { background: #f6f6f6; }
.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
.bar { position: relative; height: 14px; background: #7aa7d9; min-width: 1px; }
.bar .waste { position: absolute; right: 0; top: 0; height: 14px; background: #d9534f; }
.secret { color: #fff; background: #8b0000; border-radius: 3px; padding: 0 4px; font-size: .85em; }
.summary span { margin-right: 2em; white-space: nowrap; display: inline-block; }
pre.source { background: #fafafa; border: 1px solid #ddd; padding: .5em; overflow-x: auto; }
pre.source span { display: block; } pre.source span:target { background: #fff3a0; }
pre.source a { color: #999; display: inline-block; width: 3em; text-decoration: none; }
svg text { font: 11px system-ui, sans-serif; }
.legend span { display: inline-block; padding: 0 6px; margin-right: 4px; border-radius: 3px; }
"""


def render(report: InspectReport, plan: Plan | None = None) -> str:
    """The page for ``report``; with ``plan``, also the build graph and the build file."""
    source = _source_lines(plan)
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>imagedsl inspect {_e(report.image)}</title>",
        f"<style>{_STYLE}</style></head><body>",
        f"<h1>{_e(report.image)}</h1>",
        _summary(report),
        "<h2>Layers</h2>",
        _layers(report, linked=bool(source)),
    ]
    if plan is not None:
        parts += ["<h2>Build graph</h2>", _graph(plan, linked=bool(source))]
    parts += ["<h2>Wasted</h2>", _wasted(report), "<h2>Secrets</h2>", _secrets(report)]
    if source:
        shown = Path(plan.buildfile).name if plan is not None else "build.py"
        parts += [f"<h2>{_e(shown)}</h2>", _source(source)]
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def write(path: str | os.PathLike[str], report: InspectReport, plan: Plan | None = None) -> None:
    """Write the page to ``path``."""
    Path(path).write_text(render(report, plan), encoding="utf-8")


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def _size(size: int) -> str:
    if size < 1 << 10:
        return f"{size} B"
    if size < 1 << 20:
        return f"{size / (1 << 10):.1f} KiB"
    return f"{size / (1 << 20):.1f} MiB"


def _summary(report: InspectReport) -> str:
    digest = report.manifest_digest or "(no manifest digest)"
    return (
        '<p class="summary">'
        f"<span>size <b>{_size(report.size_bytes)}</b></span>"
        f"<span>wasted <b>{_size(report.wasted_bytes)}</b></span>"
        f"<span>efficiency <b>{report.efficiency * 100:.2f} %</b></span>"
        f"<span>secrets <b>{len(report.secrets)}</b></span>"
        f"<span><code>{_e(digest)}</code></span></p>"
    )


def _layers(report: InspectReport, *, linked: bool) -> str:
    widest = max((layer.content_bytes for layer in report.layers), default=0) or 1
    secrets: dict[int, int] = {}
    for secret in report.secrets:
        secrets[secret.layer] = secrets.get(secret.layer, 0) + 1
    rows = [
        "<table><tr><th>#</th><th>size</th><th>compressed</th><th></th>"
        "<th>+</th><th>~</th><th>-</th><th>made by</th></tr>"
    ]
    for layer in report.layers:
        width = max(layer.content_bytes / widest * 400, 1)
        waste = 0 if not layer.content_bytes else layer.wasted_bytes / layer.content_bytes * 100
        marks = (
            f' <span class="secret">{secrets[layer.index]} secret(s)</span>'
            if layer.index in secrets
            else ""
        )
        rows.append(
            f'<tr id="layer-{layer.index}"><td class="num">{layer.index}</td>'
            f'<td class="num">{_size(layer.content_bytes)}</td>'
            f'<td class="num">{_size(layer.compressed_bytes)}</td>'
            f'<td><div class="bar" style="width:{width:.0f}px" title="'
            f'{_e(_size(layer.wasted_bytes))} wasted"><div class="waste" '
            f'style="width:{min(waste, 100):.1f}%"></div></div>{marks}</td>'
            f'<td class="num">{layer.added}</td><td class="num">{layer.changed}</td>'
            f'<td class="num">{layer.deleted}</td><td>{_made_by(layer, linked=linked)}</td></tr>'
        )
    rows.append("</table>")
    return "\n".join(rows)


def _made_by(layer: LayerReport, *, linked: bool) -> str:
    text = _e(layer.created_by[:120])
    if layer.step is None:
        return text
    where = f"{layer.file}:{layer.line}"
    link = f'<a href="#L{layer.line}">{_e(where)}</a>' if linked else _e(where)
    return f"<b>{_e(layer.step)}</b> {link} {text}"


def _graph(plan: Plan, *, linked: bool) -> str:
    """The steps as boxes in columns by wave, coloured by status, with their dependencies."""
    rows_in_wave: dict[int, int] = {}
    places: list[tuple[float, float]] = []
    for step in plan.steps:
        row = rows_in_wave.get(step.wave, 0)
        rows_in_wave[step.wave] = row + 1
        places.append((10 + step.wave * 190, 10 + row * 34))
    width = 10 + (max(rows_in_wave, default=0) + 1) * 190
    height = 20 + max(rows_in_wave.values(), default=1) * 34
    edges = []
    for i, step in enumerate(plan.steps):
        parent = () if step.node.parent is None else (step.node.parent,)
        for dep in sorted({*step.node.deps, *parent}):
            (x1, y1), (x2, y2) = places[dep], places[i]
            edges.append(
                f'<line x1="{x1 + 170}" y1="{y1 + 13}" x2="{x2}" y2="{y2 + 13}" '
                'stroke="#888" stroke-width="1"/>'
            )
    boxes = []
    for (x, y), step in zip(places, plan.steps, strict=True):
        colour = _STATUS_COLOURS.get(step.status.value, "#eee")
        label = _e(_short(f"{step.stage}[{step.index}] {step.instruction}", 27))
        title = _e(f"{step.stage}[{step.index}] {step.instruction} ({step.status.value})")
        box = (
            f'<rect x="{x}" y="{y}" width="170" height="26" rx="5" fill="{colour}" '
            f'stroke="#555"/><text x="{x + 6}" y="{y + 17}">{label}</text>'
        )
        line = step.location.line if step.location is not None else None
        if linked and line is not None:
            box = f'<a href="#L{line}">{box}</a>'
        boxes.append(f"<g><title>{title}</title>{box}</g>")
    legend = " ".join(
        f'<span style="background:{colour}">{name}</span>'
        for name, colour in _STATUS_COLOURS.items()
    )
    return (
        f'<p class="legend">{legend}</p>'
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}">{"".join(edges)}{"".join(boxes)}</svg>'
    )


def _short(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _wasted(report: InspectReport, limit: int = 50) -> str:
    if not report.wasted:
        return "<p>Nothing is wasted: no path is in more than one layer.</p>"
    rows = ["<table><tr><th>path</th><th>bytes</th><th>layers</th></tr>"]
    for item in report.wasted[:limit]:
        layers = ", ".join(f'<a href="#layer-{i}">{i}</a>' for i in item.layers)
        rows.append(
            f'<tr><td><code>{_e(item.path)}</code></td><td class="num">{_size(item.bytes)}</td>'
            f"<td>{layers}</td></tr>"
        )
    rows.append("</table>")
    if len(report.wasted) > limit:
        rows.append(f"<p>... and {len(report.wasted) - limit} more paths.</p>")
    return "\n".join(rows)


def _secrets(report: InspectReport) -> str:
    if not report.secrets:
        return "<p>No credentials found in any layer.</p>"
    rows = ["<table><tr><th>path</th><th>kind</th><th>layer</th><th>deleted later</th></tr>"]
    for secret in report.secrets:
        rows.append(
            f'<tr><td><code>{_e(secret.path)}</code></td><td><span class="secret">'
            f'{_e(secret.kind)}</span></td><td><a href="#layer-{secret.layer}">{secret.layer}'
            f"</a></td><td>{'yes: still in the layer' if secret.deleted_later else 'no'}</td></tr>"
        )
    rows.append("</table>")
    return "\n".join(rows)


def _source_lines(plan: Plan | None) -> Sequence[str]:
    if plan is None or plan.buildfile.startswith("<"):
        return ()
    try:
        return Path(plan.buildfile).read_text(encoding="utf-8").splitlines()
    except OSError:
        return ()


def _source(lines: Sequence[str]) -> str:
    body = "".join(
        f'<span id="L{n}"><a href="#L{n}">{n}</a>{_e(text)}</span>'
        for n, text in enumerate(lines, start=1)
    )
    return f'<pre class="source">{body}</pre>'
