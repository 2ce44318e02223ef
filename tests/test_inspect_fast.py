"""The fast paths of ``imagedsl inspect`` give what the plain ones give: the column reader
against :class:`TarReader`, the forked worker against reading in one process, the JSON
writer against :mod:`json`, the credential hints against :func:`credentials.path_kind`."""

from __future__ import annotations

import io
import json
import random
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

from imagedsl import credentials
from imagedsl._jsontext import dumps
from imagedsl.inspect._tar import TarReader, list_at, list_chunks
from tests.support.oci import Member, member, tar_bytes, write_layout
from tests.test_inspect import PEM, TOKEN, write_docker_archive

NAMES = ["a", "b", ".env", ".git", "id_rsa", "x.py", "X.PY", "conf.json", "credentials",
         ".aws", ".wh.a", ".wh..wh..opq", "d", "k.p12", ".npmrc", "-x", ".wh.-x", "é"]  # fmt: skip
DATA = [b"", b"x" * 700, PEM, TOKEN, b"//r/:_authToken=abc\n", b"\0" * 70_000]


def random_members(rng: random.Random) -> list[Member]:
    """Up to 25 members: files, directories, links, whiteouts, long and odd names."""
    members = []
    for _ in range(rng.randint(0, 25)):
        path = "/".join(rng.choice(NAMES) for _ in range(rng.randint(1, 4)))
        path = rng.choice(["", "", "", "./", "/", "L" * 120 + "/"]) + path
        path += rng.choice(["", "", "", "/"])
        roll = rng.random()
        if roll < 0.25:
            members.append(member(path, kind=tarfile.DIRTYPE, mode=0o755))
        elif roll < 0.35:
            members.append(member(path, kind=tarfile.SYMTYPE, linkname="t" * rng.choice([1, 120])))
        else:
            members.append(member(path, data=rng.choice(DATA)))
    return members


def test_columns_are_what_the_tar_reader_reads(tmp_path: Path) -> None:
    """list_at and list_chunks give TarReader's entries and bytes, in PAX, GNU and ustar."""
    rng = random.Random(7)
    unread = credentials.UNREAD_SUFFIXES
    for round_ in range(60):
        members = random_members(rng)
        fmt = rng.choice([tarfile.PAX_FORMAT, tarfile.GNU_FORMAT])
        path = tmp_path / f"{round_}.tar"
        with tarfile.open(path, "w", format=fmt) as archive:
            for info, data in members:
                archive.addfile(info, None if data is None else io.BytesIO(data))
        data = path.read_bytes()

        def wants(name: str, _size: int) -> bool:
            return not credentials.source_or_media(name)

        reader = TarReader.of_chunks(iter([data[i : i + 999] for i in range(0, len(data), 999)]))
        expected = [
            (e.path, e.type, e.size, e.data) for e in reader.entries(wants, data_limit=65536)
        ]
        with path.open("rb") as handle:
            columns = list_at(handle.fileno(), 0, len(data), data_limit=65536, unread=unread)
        chunked = list_chunks(iter([data]), data_limit=65536, unread=unread)
        for listing in (columns, chunked):
            found = [
                (p, chr(k), s, listing.data.get(i))
                for i, (p, k, s) in enumerate(
                    zip(listing.paths, listing.kinds, listing.sizes, strict=True)
                )
            ]
            assert found == expected
        assert columns.total == len(data)


def test_the_worker_process_reads_what_one_process_reads(tmp_path: Path) -> None:
    """Random layered images report the same JSON read by two processes and by one (in a
    fresh interpreter: a process with threads, as a test worker may be, does not fork)."""
    rng = random.Random(11)
    sources = []
    for n in range(12):
        layers = [tar_bytes(random_members(rng)) for _ in range(rng.randint(2, 5))]
        layout = tmp_path / f"layout{n}"
        write_layout(layout, layers, history=[{"created_by": "x"}] * len(layers))
        sources.append(f"oci:{layout}")
        archive = write_docker_archive(layout, tmp_path / f"image{n}.tar")
        sources.append(f"docker-archive:{archive}")
    script = (
        "import json, os, sys\n"
        "from imagedsl.inspect import analysis\n"
        "from imagedsl.inspect.sources import open_image\n"
        "analysis.cores = lambda: 2  # a machine of one CPU forks too, here\n"
        "forks = []\n"
        "fork = os.fork\n"
        "os.fork = lambda: forks.append(1) or fork()\n"
        "out = []\n"
        "for source in sys.argv[1:]:\n"
        "    texts = []\n"
        "    for limit in (1 << 62, 0):\n"
        "        analysis._FORK_BYTES = limit\n"
        "        with open_image(source) as image:\n"
        "            texts.append(json.dumps(analysis.analyse(image).to_json()))\n"
        "    out.append(texts)\n"
        "print(json.dumps({'forks': len(forks), 'reports': out}))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, *sources], capture_output=True, text=True, check=True
    )
    result = json.loads(done.stdout)
    assert result["forks"] == len(sources)
    for one, two in result["reports"]:
        assert one == two


def test_json_text_is_jsons() -> None:
    """The indented JSON writer writes what json.dumps(indent=2, ensure_ascii=False) does."""
    rng = random.Random(3)
    scalars: list[Any] = [None, True, False, 0, -5, 10**30, 1.5, 0.1, 1e300, float("nan"),
                          float("inf"), "", "ü", "s\u2028\x00\\\"\n"]  # fmt: skip

    def value(depth: int) -> Any:
        roll = rng.random()
        if depth < 4 and roll < 0.2:
            return {rng.choice(["a", "é", '\n"', ""]) + str(rng.randint(0, 5)): value(depth + 1)
                    for _ in range(rng.randint(0, 4))}  # fmt: skip
        if depth < 4 and roll < 0.4:
            return [value(depth + 1) for _ in range(rng.randint(0, 4))]
        if depth < 4 and roll < 0.45:
            return tuple(value(depth + 1) for _ in range(rng.randint(0, 3)))
        if roll < 0.47:
            return {1: "a key that is not a string"}
        return rng.choice(scalars)

    for _ in range(5000):
        shown = value(0)
        assert dumps(shown) == json.dumps(shown, indent=2, ensure_ascii=False)


def test_every_credential_path_holds_a_hint() -> None:
    """A path path_kind names always holds one of PATH_HINTS (what lets inspect skip the
    others)."""
    names = [*credentials._SECRET_FILES, ".env", ".env.prod", "credentials", "a.p12", "b.pfx",
             "c.jks", "d.keystore", "e.ppk", ".git"]  # fmt: skip
    for name in names:
        for path in (name, f"x/{name}", f"x/.aws/{name}", f"x/.git/{name}"):
            if credentials.path_kind(path) is not None:
                assert any(hint in path for hint in credentials.PATH_HINTS), path
