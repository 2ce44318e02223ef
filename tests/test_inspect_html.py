"""``imagedsl inspect --html``: one self-contained page that a real browser renders cleanly.

Headless Chromium (Debian's ``chromium``, installed by ``.ci/run``) loads the page from a
file with the network off: its console must stay silent (the check is shown to catch an
error on a page that has one), and its screenshot must not be blank.
"""

from __future__ import annotations

import re
import shutil
import struct
import subprocess
import zlib
from pathlib import Path

import pytest

from imagedsl.api import BuildSession, inspect_image, write_html
from imagedsl.inspect.html import render
from tests.support.oci import member, tar_bytes, write_layout
from tests.support.skips import NO_TOOL, unavailable

PEM = b"-----BEGIN RSA PRIVATE KEY-----\nMIIBOgIBAAJBAKj34GkxFhD90vcNLYLInFEX6Ppy1tPf9Cnzj4p4WGeKLs1Pt8Qu\n"


def chromium() -> str:
    """The chromium binary; CI must have it (IMAGEDSL_REQUIRE_DOCKER=1), elsewhere skip."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        unavailable(NO_TOOL, "chromium (apt-get install -y chromium; .ci/run installs it)")
    return found


def browse(page: Path, screenshot: Path) -> list[str]:
    """Load ``page`` in headless chromium, save a screenshot; return its console messages."""
    result = subprocess.run(
        [
            chromium(), "--headless=new", "--no-sandbox", "--disable-gpu",
            "--disable-dev-shm-usage", "--no-first-run", "--enable-logging=stderr", "--v=0",
            "--proxy-server=127.0.0.1:9", "--window-size=1200,900",
            f"--screenshot={screenshot}", page.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )  # fmt: skip
    assert screenshot.is_file(), result.stderr[-2000:]
    return [line for line in result.stderr.splitlines() if re.search(r":CONSOLE[:(]", line)]


def distinct_pixels(png: Path) -> int:
    """How many different pixel values a PNG has (8-bit RGB or RGBA, any filter)."""
    data = png.read_bytes()
    position, chunks, width, height, channels = 8, [], 0, 0, 0
    while position < len(data):
        (length,) = struct.unpack(">I", data[position : position + 4])
        chunk = data[position + 4 : position + 8]
        body = data[position + 8 : position + 8 + length]
        if chunk == b"IHDR":
            width, height, _, colour = struct.unpack(">IIBB", body[:10])
            channels = {2: 3, 6: 4}[colour]
        elif chunk == b"IDAT":
            chunks.append(body)
        position += 12 + length
    raw = zlib.decompress(b"".join(chunks))
    stride = width * channels
    previous = bytearray(stride)
    seen: set[bytes] = set()
    for row in range(height):
        start = row * (stride + 1)
        kind, line = raw[start], bytearray(raw[start + 1 : start + 1 + stride])
        for i in range(stride):
            left = line[i - channels] if i >= channels else 0
            up = previous[i]
            corner = previous[i - channels] if i >= channels else 0
            if kind == 1:
                line[i] = (line[i] + left) & 0xFF
            elif kind == 2:
                line[i] = (line[i] + up) & 0xFF
            elif kind == 3:
                line[i] = (line[i] + (left + up) // 2) & 0xFF
            elif kind == 4:
                estimate = left + up - corner
                pa, pb, pc = abs(estimate - left), abs(estimate - up), abs(estimate - corner)
                best = left if pa <= pb and pa <= pc else up if pb <= pc else corner
                line[i] = (line[i] + best) & 0xFF
        if row % 8 == 0:
            seen.update(bytes(line[i : i + channels]) for i in range(0, stride, channels * 4))
        previous = line
    return len(seen)


@pytest.fixture(name="page")
def fixture_page(tmp_path: Path) -> Path:
    """The HTML report of an image with waste and a secret, with its build file's graph."""
    layers = [
        tar_bytes([member("app/", kind=b"5", mode=0o755), member("app/data", data=b"d" * 4096),
                   member("app/key.pem", data=PEM)]),
        tar_bytes([member("app/data", data=b"e" * 2048), member("app/.wh.key.pem", data=b"")]),
    ]  # fmt: skip
    history = [
        {"created_by": "COPY app /app", "comment": "imagedsl app[1] build.py:4"},
        {"created_by": "RUN rm", "comment": "imagedsl app[2] build.py:5"},
    ]
    write_layout(tmp_path / "layout", layers, history=history)
    (tmp_path / "ctx").mkdir()
    (tmp_path / "ctx" / "data").write_text("x")
    build = tmp_path / "build.py"
    build.write_text(
        "import imagedsl as dsl\n"
        'src = dsl.context("ctx")\n'
        'base = dsl.image("alpine:3.20")\n'
        'app = base.copy(src, "/app")\n'
        'app2 = app.run("rm /app/key.pem").user("1").cmd("sh")\n'
    )
    plan = BuildSession(build, store=tmp_path / "store").plan()
    report = inspect_image(f"oci:{tmp_path / 'layout'}:1")
    write_html(tmp_path / "report.html", report, plan)
    return tmp_path / "report.html"


def test_page_is_self_contained(page: Path) -> None:
    """No script, stylesheet, image or font is fetched: everything is in the file."""
    text = page.read_text()
    assert not re.search(r"<(script|link|img|iframe)\b|url\(|@import", text)
    assert "http" not in text.replace('xmlns="http://www.w3.org/2000/svg"', "")
    assert 'id="L4"' in text  # the build file, numbered, for the links
    assert 'href="#L4"' in text
    assert "private-key" in text


def test_page_renders_in_chromium_without_console_errors(page: Path, tmp_path: Path) -> None:
    """The page loads with a silent console, and its screenshot is not blank."""
    shot = tmp_path / "report.png"
    assert browse(page, shot) == []
    blank = tmp_path / "blank.html"
    blank.write_text("<!DOCTYPE html><html><body></body></html>")
    blank_shot = tmp_path / "blank.png"
    browse(blank, blank_shot)
    assert shot.read_bytes() != blank_shot.read_bytes()
    assert distinct_pixels(blank_shot) <= 2
    assert distinct_pixels(shot) > 20


def test_console_check_catches_errors(tmp_path: Path) -> None:
    """The console check is real: a page that logs an error and throws is caught."""
    broken = tmp_path / "broken.html"
    broken.write_text("<html><body><script>console.error('x'); nope();</script></body></html>")
    messages = browse(broken, tmp_path / "broken.png")
    assert any("Uncaught ReferenceError" in m for m in messages)


def test_render_without_a_plan(tmp_path: Path) -> None:
    """Without a build file the page has the layers, the waste and the secrets."""
    write_layout(tmp_path / "layout", [tar_bytes([member("f", data=b"x")])])
    text = render(inspect_image(f"oci:{tmp_path / 'layout'}:1"))
    assert "<h2>Layers</h2>" in text
    assert "Build graph" not in text
