"""Which plan step a BuildKit vertex is: read from the vertex's stage and instruction text.

BuildKit names each vertex of a Dockerfile instruction ``[STAGE K/N] INSTRUCTION``, where the
instruction is the Dockerfile line with the variables it knows expanded (``RUN echo $V`` is
printed ``RUN echo 1``, a base image's ``$PATH`` too, unknown ones are kept) and K counts only
the instructions of the stage that made a vertex. K alone cannot name the step: ``WORKDIR /``
makes no vertex in BuildKit 0.8 (every later K is one less), a vertex identical to another
one is shown once, under the first stage that made it, and a build that fails early never
names the rest.

So each stage's printed vertices are aligned with the stage's instructions that may make one
(FROM an image, RUN, COPY, ADD, WORKDIR), in order: a vertex pairs with an instruction of the
same keyword whose text matches once variables are allowed to expand to anything and
punctuation is ignored (``COPY ["a b", "/d/"]`` is printed ``COPY [a b, /d/]``); K only breaks
ties, and pairs an instruction whose text could not be matched when everything else agrees.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Final

import attrs

#: Instructions that may make a vertex (FROM only when it names an image).
VERTEX_KEYWORDS: Final = frozenset({"FROM", "RUN", "COPY", "ADD", "WORKDIR"})
#: A variable reference BuildKit may expand in a vertex name, or an escaped character.
_REFERENCE: Final = re.compile(r"\\.|\$(?:[A-Za-z_][A-Za-z0-9_]*|\{[^}]*\})", re.DOTALL)
_SIGNIFICANT: Final = re.compile(r"[A-Za-z0-9]+")
_GAP: Final = "[^A-Za-z0-9]*"
#: Variables beyond this many make the rest of a pattern match anything (a bound on the cost
#: of matching; the text before them still tells instructions apart).
_MAX_WILDCARDS: Final = 6
_TEXT_MATCH: Final = 4
_NUMBER_MATCH: Final = 1


@attrs.frozen
class ExpectedVertex:
    """An instruction of the lowered Dockerfile that may make a vertex."""

    step: int
    keyword: str
    #: The instruction as the Dockerfile writes it, after the keyword.
    text: str
    #: False for the second vertex of a step written as two instructions (``link=True`` on a
    #: frontend without ``--link``: the COPY into a scratch stage is the primary one, the
    #: ``COPY --from=that / /`` that places it is not).
    primary: bool = True

    @property
    def pattern(self) -> re.Pattern[str]:
        """What BuildKit may print for it (after the keyword)."""
        return text_pattern(self.text) if self.keyword != "FROM" else _ANYTHING


_ANYTHING: Final = re.compile(r".*", re.DOTALL)


def text_pattern(text: str) -> re.Pattern[str]:
    """A regex matching ``text`` as BuildKit prints it: letters and digits as written, any
    punctuation and spacing in between, and anything where a variable is referenced."""
    parts: list[str] = []
    wildcards = 0
    position = 0
    for match in _REFERENCE.finditer(text):
        parts.append(_literal(text[position : match.start()]))
        position = match.end()
        token = match.group(0)
        if token.startswith("\\"):
            parts.append(_literal(token[1:]))
            continue
        wildcards += 1
        if wildcards > _MAX_WILDCARDS:
            parts.append(".*")
            position = len(text)
            break
        parts.append(".*?")
    parts.append(_literal(text[position:]))
    return re.compile(_GAP + "".join(parts) + _GAP + r"\Z", re.DOTALL)


def _literal(text: str) -> str:
    words = _SIGNIFICANT.findall(text)
    return _GAP.join(re.escape(word) for word in words) + (_GAP if words else "")


@attrs.frozen
class PrintedVertex:
    """A vertex as BuildKit named it: its number, K, and instruction text."""

    number: int
    position: int
    instruction: str

    @property
    def keyword(self) -> str:
        """The instruction's first word (``RUN``, ``COPY``, ...)."""
        return self.instruction.split(maxsplit=1)[0].upper() if self.instruction.strip() else ""

    @property
    def text(self) -> str:
        """The instruction after its keyword."""
        parts = self.instruction.split(maxsplit=1)
        return parts[1] if len(parts) > 1 else ""


def align(expected: Sequence[ExpectedVertex], printed: Sequence[PrintedVertex]) -> dict[int, int]:
    """Vertex number -> plan step, for one stage: the order-keeping pairing with the best
    score (a text match counts most; K agreeing with the instruction's place breaks ties)."""
    ordered = sorted(printed, key=lambda v: (v.position, v.number))
    rows, columns = len(ordered), len(expected)
    # best[i][j]: the best score pairing the first i vertices with the first j instructions.
    best = [[0] * (columns + 1) for _ in range(rows + 1)]
    for i in range(1, rows + 1):
        for j in range(1, columns + 1):
            score = _score(ordered[i - 1], expected[j - 1], j)
            paired = best[i - 1][j - 1] + score if score else 0
            best[i][j] = max(best[i - 1][j], best[i][j - 1], paired)
    pairs: dict[int, int] = {}
    i, j = rows, columns
    while i and j:
        score = _score(ordered[i - 1], expected[j - 1], j)
        if score and best[i][j] == best[i - 1][j - 1] + score:
            pairs[ordered[i - 1].number] = expected[j - 1].step
            i, j = i - 1, j - 1
        elif best[i][j] == best[i - 1][j]:
            i -= 1
        else:
            j -= 1
    return pairs


def _score(vertex: PrintedVertex, instruction: ExpectedVertex, place: int) -> int:
    if vertex.keyword != instruction.keyword:
        return 0
    score = _TEXT_MATCH if instruction.pattern.match(vertex.text) else 0
    if vertex.position == place:
        score += _NUMBER_MATCH
    return score


@attrs.define
class VertexMap:
    """Maps vertices to plan steps as their names arrive (each stage is aligned again when
    one of its vertices is named, so the order in which they are printed does not matter)."""

    #: Dockerfile stage name -> its instructions that may make a vertex, in order.
    stages: Mapping[str, Sequence[ExpectedVertex]]
    #: Whether BuildKit names the stage in labels (it does not in a one-stage Dockerfile).
    labelled: bool
    _printed: dict[str, list[PrintedVertex]] = attrs.field(factory=dict)
    _steps: dict[int, int] = attrs.field(factory=dict)
    _secondary: dict[int, bool] = attrs.field(factory=dict)

    def add(self, number: int, stage: str | None, position: int, instruction: str) -> None:
        """A vertex was named ``[stage position/N] instruction``."""
        name = stage if self.labelled else next(iter(self.stages), None)
        if name is None or name not in self.stages:
            return
        printed = self._printed.setdefault(name, [])
        printed.append(PrintedVertex(number, position, instruction))
        for vertex in printed:
            self._steps.pop(vertex.number, None)
        self._steps.update(align(self.stages[name], printed))
        primary = {e.step for e in self.stages[name] if e.primary}
        for vertex in printed:
            step = self._steps.get(vertex.number)
            if step is not None:
                self._secondary[vertex.number] = step not in primary

    def step_of(self, number: int) -> int | None:
        """The plan step of vertex ``number``, if it is one."""
        return self._steps.get(number)

    def steps(self) -> dict[int, int]:
        """Vertex number -> plan step, for every vertex mapped so far."""
        return dict(self._steps)

    def vertex_of_step(self) -> dict[int, int]:
        """Plan step -> the vertex that tells its status (the primary one when a step made
        two)."""
        chosen: dict[int, int] = {}
        for number, step in sorted(self._steps.items()):
            current = chosen.get(step)
            if current is None or (self._secondary[current] and not self._secondary[number]):
                chosen[step] = number
        return chosen
