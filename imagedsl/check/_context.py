"""What every rule reads: the plan, the store, the build args, and facts about copied trees.

:class:`CheckContext` walks stage chains (a step, its parent, ... down to the FROM), makes
:class:`~imagedsl.check.model.Finding` values located at a step, and answers, per copied tree,
which files hold credentials and which are dependency manifests (:class:`TreeFacts`). Those
facts depend only on the files, so they are memoised in the store by the tree's digest and
selection: a warm ``plan`` reads one small file per copied tree instead of the files.
"""

from __future__ import annotations

import json
import os
import posixpath
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Final

import attrs
import blake3

from imagedsl import credentials
from imagedsl._layerparts import is_manifest
from imagedsl.check.catalogue import RULES
from imagedsl.check.model import Finding
from imagedsl.contexts import ContextSource
from imagedsl.steps import Add, Copy, Run
from imagedsl.treehash import Tree

if TYPE_CHECKING:
    from imagedsl.graph import StepNode
    from imagedsl.planner import Plan
    from imagedsl.store import Store

FACTS_VERSION: Final = 1
#: The memo of file contents read and found clean (not read again by later runs).
CLEAN_FILES: Final = f"clean-files-v{FACTS_VERSION}"
MAX_CLEAN_FILES: Final = 1 << 20


@attrs.frozen(kw_only=True)
class TreeFacts:
    """What a copied tree holds that the rules care about."""

    #: (source path in the context, placed path under the destination, credential kind).
    secrets: tuple[tuple[str, str, str], ...] = ()
    #: (source path, placed path) of dependency manifests placed at the destination's top.
    manifests: tuple[tuple[str, str], ...] = ()

    def to_json(self) -> bytes:
        """The memo's form."""
        payload = {
            "v": FACTS_VERSION,
            "secrets": [list(s) for s in self.secrets],
            "manifests": [list(m) for m in self.manifests],
        }
        return json.dumps(payload, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, data: bytes) -> TreeFacts | None:
        """Parse a memo; None if it is from another version or damaged."""
        try:
            payload = json.loads(data)
            if payload.get("v") != FACTS_VERSION:
                return None
            secrets = tuple((str(a), str(b), str(c)) for a, b, c in payload["secrets"])
            manifests = tuple((str(a), str(b)) for a, b in payload["manifests"])
        except (ValueError, KeyError, TypeError, AttributeError):
            return None
        return cls(secrets=secrets, manifests=manifests)


def scan_tree(
    tree: Tree,
    root: str,
    clean: set[bytes] | None = None,
    consulted: list[tuple[str, str]] | None = None,
) -> TreeFacts:
    """Read a tree's rows (and the bytes of its small key-like files) for :class:`TreeFacts`.

    ``clean`` holds digests of file contents already read and found to hold no credential:
    those are not read again, and the digests of files found clean now are added to it.
    ``consulted`` receives (source path, content digest) of every file whose content the
    facts depend on (read now or known clean): the rest depend on the rows' shape alone.
    """
    clean = set() if clean is None else clean
    secrets: list[tuple[str, str, str]] = []
    manifests: list[tuple[str, str]] = []
    git_reported = False
    for placed, source, kind, _, size, digest in tree.rows:
        found = credentials.path_kind(source)
        if found == "git-directory":
            if git_reported:
                continue
            git_reported = True
            parts = source.split("/")
            source = "/".join(parts[: parts.index(".git") + 1])
            placed_parts = placed.split("/")
            if ".git" in placed_parts:
                placed = "/".join(placed_parts[: placed_parts.index(".git") + 1])
        elif found is None and kind == "file" and credentials.needs_content(source, size):
            if consulted is not None:
                consulted.append((source, digest))
            known = _short_digest(digest)
            if known not in clean:
                found = _content_kind(root, source)
                if found is None:
                    clean.add(known)
        if found is not None:
            secrets.append((source, placed, found))
        if kind == "file" and "/" not in placed and is_manifest(posixpath.basename(source)):
            manifests.append((source, placed))
    return TreeFacts(secrets=tuple(secrets), manifests=tuple(manifests))


def _shaped_memo(facts: TreeFacts, consulted: list[tuple[str, str]]) -> bytes:
    """The memo of a tree's facts by its shape: the facts, and the content digests of the
    files they read (the shape fixes which files those are)."""
    return json.dumps([facts.to_json().decode(), consulted], separators=(",", ":")).encode()


def _shaped_facts(data: bytes | None, tree: Tree) -> TreeFacts | None:
    """The facts of a memo by shape, if every file they read still has the same content."""
    if data is None or tree.contents_of is None:
        return None
    try:
        facts_text, consulted = json.loads(data)
        now = tree.contents_of(path for path, _ in consulted)
        if any(now.get(path) != digest for path, digest in consulted):
            return None
        return TreeFacts.from_json(facts_text.encode())
    except (ValueError, TypeError, AttributeError):
        return None  # damaged: the files are read again


def _short_digest(digest: str) -> bytes:
    return bytes.fromhex(digest[:32]) if len(digest) >= 32 else digest.encode()


def _content_kind(root: str, source: str) -> str | None:
    try:
        with open(os.path.join(root, source), "rb") as handle:
            data = handle.read(credentials.CONTENT_LIMIT)
    except OSError:
        return None
    return credentials.content_kind(source, data)


@attrs.define
class CheckContext:
    """One check run: the plan, the store (None: no history, no memo) and the build args."""

    plan: Plan
    store: Store | None = None
    build_args: Mapping[str, str] = attrs.field(factory=dict)
    _facts: dict[tuple[str, ContextSource], TreeFacts] = attrs.field(factory=dict)
    #: Contents read and found clean (16-byte digest prefixes), loaded when first needed.
    _clean: set[bytes] | None = None
    _clean_size: int = 0

    @property
    def nodes(self) -> tuple[StepNode, ...]:
        """Every planned step, in plan order."""
        return self.plan.graph.nodes

    @property
    def output(self) -> StepNode:
        """The target's last step: the image the target is."""
        return self.plan.graph.output

    def chain(self, node: StepNode) -> list[StepNode]:
        """The steps of ``node``'s image from its FROM up to ``node``, in order."""
        found = [node]
        while found[-1].parent is not None:
            found.append(self.nodes[found[-1].parent])
        found.reverse()
        return found

    def instruction(self, node: StepNode) -> str:
        """The step as the plan shows it (secret-looking values masked)."""
        return self.plan.steps[node.index].instruction

    def finding(self, rule: str, node: StepNode, summary: str, advice: str) -> Finding:
        """A finding of ``rule`` at ``node`` (suppressed if the step allows the rule):
        ``summary`` says what is wrong in one line, ``advice`` why it matters and the fix."""
        location = node.location
        definition = RULES[rule]
        return Finding(
            rule=rule,
            severity=definition.severity,
            summary=summary,
            message=f"{summary}. {advice}",
            file=self.plan.buildfile if location is None else location.file,
            line=0 if location is None else location.line,
            stage=node.stage,
            step=node.position,
            row=node.index,
            suppressed=bool({rule, definition.category} & node.allowed),
        )

    def copied_trees(self, node: StepNode) -> Iterator[tuple[ContextSource, Tree, TreeFacts]]:
        """For a COPY/ADD from the context: its source, tree(s) and their facts."""
        step = node.step
        if not isinstance(step, Copy | Add) or not isinstance(step.source, ContextSource):
            return
        for tree in node.trees:
            yield step.source, tree, self.facts(tree, step.source)

    def facts(self, tree: Tree, source: ContextSource) -> TreeFacts:
        """The facts of a copied tree: from this run, the memo, or by reading the files."""
        known = self._facts.get((tree.digest, source))
        if known is not None:
            return known
        name = blake3.blake3(
            f"{FACTS_VERSION}\0{tree.digest}\0{source.selectors!r}".encode()
        ).hexdigest()
        saved = None if self.store is None else self.store.load_tree_facts(name)
        facts = None if saved is None else TreeFacts.from_json(saved)
        shaped = None
        if facts is None and tree.shape is not None and self.store is not None:
            # After a content-only edit the digest is new but the shape is not: the facts
            # are those of the shape if every file whose content they read is unchanged.
            shaped = blake3.blake3(
                f"{FACTS_VERSION}\0shape\0{tree.shape}\0{source.selectors!r}".encode()
            ).hexdigest()
            facts = _shaped_facts(self.store.load_tree_facts(shaped), tree)
        if facts is None:
            consulted: list[tuple[str, str]] = []
            facts = scan_tree(tree, source.context.root, self._clean_contents(), consulted)
            if self.store is not None:
                self.store.save_tree_facts(name, facts.to_json())
                if shaped is not None:
                    self.store.save_tree_facts(shaped, _shaped_memo(facts, consulted))
        self._facts[(tree.digest, source)] = facts
        return facts

    def _clean_contents(self) -> set[bytes]:
        if self._clean is None:
            data = None if self.store is None else self.store.load_tree_facts(CLEAN_FILES)
            data = data or b""
            if len(data) % 16:
                data = b""  # damaged: it only costs reading the files again
            self._clean = {data[i : i + 16] for i in range(0, len(data), 16)}
            self._clean_size = len(self._clean)
        return self._clean

    def save(self) -> None:
        """Keep what this run learnt of file contents (a bounded set: reset when full)."""
        if self.store is None or self._clean is None or len(self._clean) == self._clean_size:
            return
        kept = self._clean if len(self._clean) <= MAX_CLEAN_FILES else set()
        self.store.save_tree_facts(CLEAN_FILES, b"".join(sorted(kept)))

    def runs(self) -> Iterator[tuple[StepNode, Run]]:
        """Every RUN step of the plan."""
        for node in self.nodes:
            if isinstance(node.step, Run):
                yield node, node.step
