"""The one skip helper: skips on a developer's machine, fails where everything must be there."""

from __future__ import annotations

import pytest

from tests.support import skips


def test_missing_tool_skips_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without IMAGEDSL_REQUIRE_DOCKER, a missing tool is a skip whose reason the banner counts."""
    monkeypatch.delenv(skips.REQUIRE_ENV, raising=False)
    with pytest.raises(pytest.skip.Exception) as caught:
        skips.require_tool("imagedsl-no-such-tool", "for this test")
    assert str(caught.value).startswith(skips.NO_TOOL)
    assert "imagedsl-no-such-tool (for this test)" in str(caught.value)


def test_missing_tool_fails_when_required(monkeypatch: pytest.MonkeyPatch) -> None:
    """With IMAGEDSL_REQUIRE_DOCKER=1 (CI), the same check fails the test."""
    monkeypatch.setenv(skips.REQUIRE_ENV, "1")
    with pytest.raises(pytest.fail.Exception) as caught:
        skips.require_tool("imagedsl-no-such-tool")
    assert skips.REQUIRE_ENV in str(caught.value)
    with pytest.raises(pytest.fail.Exception):
        skips.unavailable(skips.NO_DOCKER, "nothing answered")


def test_present_tool_is_found() -> None:
    """A tool that is there is returned by path, whatever the environment says."""
    assert skips.require_tool("sh").endswith("/sh")
