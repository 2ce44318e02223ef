"""Secret values masked in RUN output: whole values, each line of a multi-line one, longest
first; values too short to mask safely are left alone."""

from __future__ import annotations

from imagedsl.backends._masking import MASK, MASK_MIN, masked, masks_for


def test_masks_cover_the_value_its_stripped_form_and_each_line() -> None:
    """A multi-line value is masked whole and line by line, since output arrives by line."""
    assert masks_for([b"  first-line\nsecond-line\n"]) == (
        "  first-line\nsecond-line\n",
        "first-line\nsecond-line",
        "  first-line",
        "second-line",
    )


def test_longest_mask_wins() -> None:
    """A value containing another is replaced whole, not as the shorter one plus a rest."""
    masks = masks_for([b"token", b"token-and-more"])
    assert masks == ("token-and-more", "token")
    assert masked("x token-and-more y token", masks) == f"x {MASK} y {MASK}"


def test_every_occurrence_is_masked_and_other_text_kept() -> None:
    """Every occurrence in a line is masked; a line without a secret is unchanged."""
    masks = masks_for([b"s3cr3t"])
    assert masked("s3cr3t=s3cr3t;", masks) == f"{MASK}={MASK};"
    assert masked("nothing here", masks) == "nothing here"
    assert masked("", masks) == ""


def test_short_values_are_not_masks() -> None:
    """Values shorter than MASK_MIN (after stripping) would mask everything: they are not."""
    assert MASK_MIN == 4
    assert masks_for([b"abc", b" ab \n", b""]) == ()
    assert masks_for([b"abcd"]) == ("abcd",)
    assert masks_for([b" abcd "]) == (" abcd ", "abcd")


def test_undecodable_bytes_still_mask_their_text() -> None:
    """A value that is not UTF-8 is masked as the replacement-decoded text output shows."""
    masks = masks_for([b"key-\xff-value"])
    assert masks == ("key-\ufffd-value",)
    assert masked("got key-\ufffd-value", masks) == f"got {MASK}"
