"""Reading BuildKit's ``--progress=plain`` output: which vertex ran, was cached, or failed.

Plain progress prints, for each vertex ``#N``, its name once (``#5 [deps 2/3] RUN make``),
then output lines (``#5 0.312 compiling``), progress lines, and one final status:
``#5 CACHED``, ``#5 DONE 0.3s``, ``#5 ERROR: ...`` or ``#5 CANCELED``. Vertices that come
from a Dockerfile instruction are named ``[STAGE K/N] INSTRUCTION`` (no stage in a one-stage
Dockerfile; K is padded with spaces to the width of N: ``[base  7/12]``). Which step a vertex
is, is read from its stage and instruction text (:mod:`~imagedsl.backends.dockerfile._vertices`),
not from K: BuildKit numbers only the instructions that make a vertex (``WORKDIR /`` makes
none). Lines that do not start with ``#N`` belong to the build as a whole (the error summary
at the end).

Output that does not end with a newline (``RUN printf x``) gets the vertex's status glued to
it: ``#5 0.192 x#5 DONE 0.2s``; the parser splits it back into the output and the status.

The format is the same from BuildKit 0.8 (Docker 20.10) to today's buildx; the only variation
handled here is that some versions print a ``#N sha256:...`` line after the name.
"""

from __future__ import annotations

import re
from typing import Final

import attrs

_LINE: Final = re.compile(r"#(?P<number>\d+) (?P<rest>.*)\Z", re.DOTALL)
_LABEL: Final = re.compile(
    r"\[(?:(?P<stage>[^\s\]]+) )? *(?P<k>\d+)/(?P<n>\d+)\] (?P<text>.*)\Z", re.DOTALL
)
_OUTPUT: Final = re.compile(r"(?P<seconds>\d+\.\d+) ?(?P<text>.*)\Z", re.DOTALL)
_DONE: Final = re.compile(r"DONE(?: \d+(?:\.\d+)?s)?\Z")
#: A status glued to the end of output that had no newline: ``x#5 DONE 0.2s``.
_GLUED_STATUS: Final = re.compile(
    r"#(?P<number>\d+) (?P<status>CACHED|CANCELED|DONE(?: \d+(?:\.\d+)?s)?|ERROR(?::.*)?)\Z",
    re.DOTALL,
)

#: Final statuses of a vertex.
CACHED, DONE, ERROR, CANCELED, RUNNING = "cached", "done", "error", "canceled", "running"


@attrs.define
class Vertex:
    """One vertex of the BuildKit solve, as the progress output told it."""

    number: int
    name: str
    status: str = RUNNING
    error: str | None = None
    output: list[str] = attrs.field(factory=list)
    #: How long BuildKit took to make it (``DONE 12.3s``); None when cached or not said.
    seconds: float | None = None

    @property
    def label(self) -> str | None:
        """``[STAGE K/N]`` for a Dockerfile instruction's vertex (padding dropped), else None."""
        match = _LABEL.match(self.name)
        if match is None:
            return None
        stage = f"{match['stage']} " if match["stage"] else ""
        return f"[{stage}{match['k']}/{match['n']}]"

    @property
    def stage(self) -> str | None:
        """The Dockerfile stage named in the label (None: unlabelled, or a one-stage file)."""
        match = _LABEL.match(self.name)
        return None if match is None else match["stage"]

    @property
    def number_in_stage(self) -> int | None:
        """K of ``[STAGE K/N]``: the vertex's place among its stage's vertices."""
        match = _LABEL.match(self.name)
        return None if match is None else int(match["k"])

    @property
    def instruction(self) -> str:
        """The instruction text after the label (the whole name for other vertices)."""
        match = _LABEL.match(self.name)
        return self.name if match is None else match["text"]

    @property
    def completed(self) -> bool:
        """Whether the vertex's result exists (built now or found in the cache)."""
        return self.status in (CACHED, DONE)


@attrs.frozen
class ProgressLine:
    """One parsed line: the vertex it belongs to (None: the build's own) and what it says."""

    vertex: Vertex | None
    kind: str  # "name", "status", "output", "progress" or "build"
    text: str


@attrs.define
class ProgressParser:
    """Feed it lines of plain progress; it keeps every vertex's name, output and status."""

    vertices: dict[int, Vertex] = attrs.field(factory=dict)
    build_lines: list[str] = attrs.field(factory=list)

    def feed(self, line: str) -> ProgressLine:
        """Parse one line (without its newline)."""
        match = _LINE.match(line)
        if match is None:
            self.build_lines.append(line)
            return ProgressLine(None, "build", line)
        number, rest = int(match["number"]), match["rest"]
        vertex = self.vertices.get(number)
        if vertex is None:
            vertex = self.vertices[number] = Vertex(number, rest)
            return ProgressLine(vertex, "name", rest)
        if rest == "CACHED":
            vertex.status = CACHED
        elif _DONE.match(rest):
            # A vertex reported CACHED stays cached (BuildKit may print DONE for it later).
            if vertex.status != CACHED:
                vertex.status = DONE
                took = rest.removeprefix("DONE").strip().removesuffix("s")
                vertex.seconds = float(took) if took else None
        elif rest.startswith("ERROR"):
            vertex.status = ERROR
            vertex.error = rest.removeprefix("ERROR").lstrip(":").strip() or None
        elif rest == "CANCELED":
            vertex.status = CANCELED
        elif (output := _OUTPUT.match(rest)) is not None:
            text = output["text"]
            glued = _GLUED_STATUS.search(text)
            if glued is not None and int(glued["number"]) == number:
                # Output without a final newline: the status line was printed after it.
                text = text[: glued.start()]
                if text:
                    vertex.output.append(text)
                return self.feed(f"#{number} {glued['status']}")
            vertex.output.append(text)
            return ProgressLine(vertex, "output", text)
        else:
            # The name again, "...", a digest, "transferring context: 2B done", ...
            return ProgressLine(vertex, "progress", rest)
        return ProgressLine(vertex, "status", rest)

    def by_label(self) -> dict[str, Vertex]:
        """Instruction vertices by their ``[STAGE K/N]`` label."""
        return {v.label: v for v in self.vertices.values() if v.label is not None}

    def failed(self) -> Vertex | None:
        """The first vertex that reported an error, if any."""
        return next((v for v in self.vertices.values() if v.status == ERROR), None)
