"""Cache keys: canonical preimages, and the properties every key must have."""

from __future__ import annotations

import json
from typing import Any

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

import imagedsl as dsl
from imagedsl import api, keys

NAMES = st.sampled_from(["A", "B", "PATH", "HOME", "LANG", "X_1"])
SAFE_TEXT = st.characters(blacklist_characters="\x00", blacklist_categories=["Cs"])
VALUES = st.text(SAFE_TEXT, max_size=12)
COMMANDS = st.text(SAFE_TEXT, min_size=1, max_size=20)


@attrs.frozen
class Spec:
    """A small build, described by plain data so Hypothesis can vary one input at a time."""

    tag: str
    env: tuple[tuple[str, str], ...]
    workdir: str
    user: str
    commands: tuple[str, ...]
    network: str

    def stage(self) -> dsl.Stage:
        stage = dsl.image(f"alpine:{self.tag}")
        if self.env:
            stage = stage.env(dict(self.env))
        stage = stage.workdir(self.workdir).user(self.user)
        for command in self.commands:
            stage = stage.run(command, network=self.network)
        return stage


SPECS = st.builds(
    Spec,
    tag=st.sampled_from(["3.19", "3.20", "edge"]),
    env=st.dictionaries(NAMES, VALUES, max_size=3).map(lambda d: tuple(d.items())),
    workdir=st.sampled_from(["/", "/app", "/srv/app"]),
    user=st.sampled_from(["root", "1000", "app:app"]),
    commands=st.lists(COMMANDS, min_size=1, max_size=3).map(tuple),
    network=st.sampled_from(["default", "none"]),
)


def keys_of(stage: dsl.Stage) -> list[str]:
    """Every step key of a stage, in plan order, with no store."""
    return [step.key for step in api.plan(stage).steps]


def test_canonical_form_ignores_insertion_order() -> None:
    """Two preimages with the same items in different order have one byte form."""
    first: dict[str, Any] = {"b": 1, "a": {"y": [1, 2], "x": None}}
    second: dict[str, Any] = {"a": {"x": None, "y": [1, 2]}, "b": 1}
    assert keys.canonical(first) == keys.canonical(second)
    assert keys.key_of(first) == keys.key_of(second)


def test_key_is_64_lowercase_hex_and_versioned() -> None:
    """Keys are 64 hex digits, and every preimage carries the key format version."""
    step = api.plan(dsl.scratch()).steps[0]
    assert keys.is_key(step.key)
    assert step.node.preimage["v"] == keys.KEY_VERSION


@given(SPECS)
def test_equal_specs_give_equal_keys(spec: Spec) -> None:
    """Building the same spec twice gives identical keys for every step."""
    assert keys_of(spec.stage()) == keys_of(spec.stage())


MUTATIONS = {
    "tag": lambda s: attrs.evolve(s, tag=s.tag + "-other"),
    "env": lambda s: attrs.evolve(s, env=(*s.env, ("ZZ_EXTRA", "1"))),
    "env-value": lambda s: attrs.evolve(
        s, env=(("CHANGED", "a"),) if not s.env else ((s.env[0][0], s.env[0][1] + "x"), *s.env[1:])
    ),
    "workdir": lambda s: attrs.evolve(s, workdir=s.workdir.rstrip("/") + "/sub"),
    "user": lambda s: attrs.evolve(s, user="nobody"),
    "command": lambda s: attrs.evolve(s, commands=(s.commands[0] + " ", *s.commands[1:])),
    "network": lambda s: attrs.evolve(s, network="none" if s.network == "default" else "default"),
}


@pytest.mark.parametrize("mutation", sorted(MUTATIONS))
@given(spec=SPECS)
def test_any_single_input_change_changes_the_run_key(spec: Spec, mutation: str) -> None:
    """Changing any one input a RUN can observe gives the final RUN a different key."""
    changed = MUTATIONS[mutation](spec)
    assert keys_of(spec.stage())[-1] != keys_of(changed.stage())[-1]


def test_env_change_keeps_copy_and_workdir_keys(tmp_path: Any) -> None:
    """ENV is config: later COPY and WORKDIR keys do not move, RUN keys do (as in BuildKit)."""
    (tmp_path / "f.txt").write_text("x")
    src = dsl.context(tmp_path)

    def build(value: str) -> list[str]:
        stage = (
            dsl.image("alpine:3.20")
            .env(MODE=value)
            .workdir("/w")
            .copy(src.file("f.txt"), "/w/")
            .run("true")
        )
        return keys_of(stage)

    first, second = build("a"), build("b")
    assert first[0] == second[0]  # FROM
    assert first[1] != second[1]  # ENV itself
    assert first[2:4] == second[2:4]  # WORKDIR, COPY
    assert first[4] != second[4]  # RUN sees the environment


def test_pinned_digest_replaces_the_tag_in_the_key() -> None:
    """With a digest, retagging the same manifest keeps the key; the digest decides."""
    digest = "sha256:" + "a" * 64
    one = keys_of(dsl.image(f"alpine:3.20@{digest}"))
    other = keys_of(dsl.image(f"alpine:latest@{digest}"))
    moved = keys_of(dsl.image(f"alpine:3.20@sha256:{'b' * 64}"))
    assert one == other
    assert one != moved


def test_secret_mount_keys_hold_the_id_but_no_value() -> None:
    """A secret mount enters the key by id and options only; there is no value to hash."""
    stage = dsl.image("alpine:3.20").run(
        "cat /run/secrets/token", mounts=[dsl.secret("token", required=True)]
    )
    preimage = api.plan(stage).steps[-1].node.preimage
    assert preimage["mounts"] == [
        {
            "type": "secret",
            "id": "token",
            "target": "/run/secrets/token",
            "env": None,
            "required": True,
            "mode": 0o400,
            "uid": 0,
            "gid": 0,
        }
    ]
    assert "value" not in json.dumps(preimage)


def test_cache_mount_id_changes_key_but_contents_cannot() -> None:
    """Cache mounts key by their spec; there is no field for their contents."""
    base = dsl.image("alpine:3.20")
    one = keys_of(base.run("make", mounts=[dsl.cache("/c", id="a")]))
    two = keys_of(base.run("make", mounts=[dsl.cache("/c", id="b")]))
    assert one[-1] != two[-1]
    assert set(api.plan(base.run("make", mounts=[dsl.cache("/c")])).steps[-1].node.preimage["mounts"][0]) == {
        "type", "target", "id", "sharing", "mode", "uid", "gid", "readonly"
    }  # fmt: skip


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("0123456789abcdef" * 4, True, id="key"),
        pytest.param("abc", False, id="short-hex"),
        pytest.param("0123456789ABCDEF" * 4, False, id="upper"),
        pytest.param("X" * 64, False, id="not-hex"),
        pytest.param("a" * 65, False, id="long"),
        pytest.param(12, False, id="not-text"),
        pytest.param(None, False, id="none"),
    ],
)
def test_is_key_accepts_64_lowercase_hex_digits_only(text: object, expected: bool) -> None:
    """Only a 64-digit lowercase hex string looks like a key."""
    assert keys.is_key(text) is expected


def test_canonical_form_refuses_nan_and_infinity() -> None:
    """NaN and infinities have no JSON spelling (and NaN != NaN): no preimage may hold one."""
    for value in (float("nan"), float("inf"), -float("inf")):
        with pytest.raises(ValueError, match="not JSON compliant"):
            keys.canonical({"x": value})


def test_same_meaning_same_key_for_the_new_forms(tmp_path: Any) -> None:
    """A heredoc script keys as the same string in shell form; a file written in build.py
    keys as a context file of the same bytes and mode copied to the same place under the
    name a heredoc's file has (``EOF``): BuildKit's COPY key holds a source's own name, so
    ``app.conf`` of the same bytes is another key (as BuildKit rebuilds it)."""
    (tmp_path / "app.conf").write_text("a = 1\n")
    (tmp_path / "EOF").write_text("a = 1\n")
    src = dsl.context(tmp_path)
    base = dsl.image("alpine:3.20")
    assert keys_of(base.run(dsl.script("echo a\necho b\n"))) == keys_of(
        base.run("echo a\necho b\n")
    )
    inline = keys_of(base.copy(dsl.inline("a = 1\n"), "/etc/app.conf"))
    assert inline == keys_of(base.copy(src.file("EOF"), "/etc/app.conf"))
    assert inline != keys_of(base.copy(src.file("app.conf"), "/etc/app.conf"))


def test_every_new_input_enters_its_key(tmp_path: Any) -> None:
    """Inline content and mode, --parents, the URL's file name, an ONBUILD trigger, a reset
    and USER each change the step's key."""
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "f.txt").write_text("x")
    src = dsl.context(tmp_path)
    base = dsl.image("alpine:3.20")
    checksum = "sha256:" + "0" * 64
    other = dsl.image("busybox:1").run("make")
    pairs = [
        (base.copy(dsl.inline("x"), "/f"), base.copy(dsl.inline("y"), "/f")),
        (base.copy(dsl.inline("x"), "/f"), base.copy(dsl.inline("x", mode=0o600), "/f")),
        (base.copy(src.dir("a"), "/d/"), base.copy(src.dir("a"), "/d/", parents=True)),
        (
            base.add(dsl.url("https://e.com/a.tgz", checksum=checksum), "/d/"),
            base.add(dsl.url("https://e.com/b.tgz", checksum=checksum), "/d/"),
        ),
        (base.onbuild("RUN make"), base.onbuild("RUN make install")),
        (base.cmd("x"), base.cmd()),
        (base.cmd("x"), base.cmd(["x"])),
        (base.user(1000), base.user(1000, 1000)),
        (base.author("a"), base.author("b")),
        # every path of a COPY --from of several paths, and their order (BuildKit's own key
        # holds the order: its copies are chained in it)
        (base.copy(other.paths("/a", "/b"), "/d/"), base.copy(other.paths("/a", "/c"), "/d/")),
        (base.copy(other.paths("/a", "/b"), "/d/"), base.copy(other.paths("/b", "/a"), "/d/")),
        (base.copy(other.paths("/a", "/b"), "/d/"), base.copy(other.paths("/a"), "/d/")),
        (base.author("$X"), base.author("${X}")),  # kept as written: BuildKit expands none
    ]
    for first, second in pairs:
        assert keys_of(first)[-1] != keys_of(second)[-1], (first.step, second.step)
    # MAINTAINER changes the image config only: the RUN after it keeps its key (BuildKit's
    # RUN is not rebuilt either), the config step after it does not.
    for kind in ("run", "env"):
        one, two = (
            keys_of(
                base.author(name).run("true") if kind == "run" else base.author(name).env(A="1")
            )
            for name in ("a", "b")
        )
        assert (one[-1] == two[-1]) is (kind == "run")
    # One path given to paths() is that path: the same key as path() (and as before paths()).
    single = base.copy(other.paths("/a"), "/d/")
    assert keys_of(single) == keys_of(base.copy(other.path("/a"), "/d/"))
    link = keys_of(base.run("true").copy(src.dir("a"), "/d/", link=True))
    assert link[-1] == keys_of(base.copy(src.dir("a"), "/d/", link=True))[-1]  # no parent


def _last_key(stage: dsl.Stage) -> str:
    return api.plan({"s": stage}, "s").steps[-1].key


@pytest.mark.parametrize(
    ("escaped", "plain"),
    [
        (dsl.scratch().env(A="\\$", B="x\\$ y"), dsl.scratch().env(A="$", B="x$ y")),
        (dsl.scratch().arg("A", "${A:-\\$}"), dsl.scratch().arg("A", "${A:-$}")),
        (dsl.scratch().label({"k": "\\$"}), dsl.scratch().label({"k": "$"})),
        (dsl.scratch().user("u\\$"), dsl.scratch().user("u$")),
    ],
)
def test_an_escape_of_nothing_keys_as_the_plain_dollar(
    escaped: dsl.Stage, plain: dsl.Stage
) -> None:
    """In the words the Dockerfile expands, ``\\$`` before neither ``{`` nor a name is a
    plain ``$``: one key, however it was spelled."""
    assert _last_key(escaped) == _last_key(plain)


@pytest.mark.parametrize(
    ("escaped", "plain"),
    [
        (dsl.scratch().env(A="\\$A"), dsl.scratch().env(A="$A")),  # a literal "$A", not A's value
        (dsl.scratch().cmd("echo \\$ x"), dsl.scratch().cmd("echo $ x")),  # a command, as written
        (dsl.scratch().entrypoint("a\\$"), dsl.scratch().entrypoint("a$")),
    ],
)
def test_other_spellings_keep_their_keys(escaped: dsl.Stage, plain: dsl.Stage) -> None:
    """An escape that means something, and the text of a command (which no Dockerfile lexer
    reads), key as written."""
    assert _last_key(escaped) != _last_key(plain)


def test_a_trigger_key_holds_its_parent_base_and_text() -> None:
    """A base's ONBUILD trigger is keyed by the key before it, the base's manifest digest and
    its text: changing any one changes the key, and the kind is its own."""
    fields = {"parent": "a" * 64, "base": "sha256:" + "b" * 64, "instruction": "RUN make"}
    preimage = keys.trigger_preimage(**fields)
    assert preimage["kind"] == "onbuild-trigger"
    assert {name: preimage[name] for name in fields} == fields
    assert preimage["v"] == keys.KEY_VERSION
    key = keys.key_of(preimage)
    for name, other in [
        ("parent", "c" * 64),
        ("base", "sha256:" + "d" * 64),
        ("instruction", "RUN x"),
    ]:
        assert keys.key_of(keys.trigger_preimage(**{**fields, name: other})) != key
