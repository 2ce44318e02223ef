"""Errors form a tree by category, and the CLI's exit code follows the category."""

from __future__ import annotations

import importlib
import pkgutil

import pytest

import imagedsl
from imagedsl.errors import (
    BuildFailure,
    EnvironmentFailure,
    ImageDSLError,
    InputError,
    exit_code_of,
)

CATEGORIES = (InputError, BuildFailure, EnvironmentFailure)


def all_error_classes() -> list[type[ImageDSLError]]:
    """Every ImageDSLError subclass defined anywhere in the package (all modules imported)."""
    for module in pkgutil.walk_packages(imagedsl.__path__, "imagedsl."):
        if not module.name.endswith("__main__"):  # that one runs the CLI
            importlib.import_module(module.name)
    found: list[type[ImageDSLError]] = []
    pending: list[type[ImageDSLError]] = [ImageDSLError]
    while pending:
        for sub in pending.pop().__subclasses__():
            if sub not in found:
                found.append(sub)
                pending.append(sub)
    return [c for c in found if c not in CATEGORIES]


def test_every_error_has_exactly_one_category() -> None:
    """A new error class must say whether it is bad input, a failed build or the environment."""
    for error in all_error_classes():
        categories = [c for c in CATEGORIES if issubclass(error, c)]
        assert categories, f"{error.__module__}.{error.__qualname__} has no category"
        # Multiple inheritance may name two; the first in the MRO decides the exit code.
        first = next(c for c in error.__mro__ if c in CATEGORIES)
        assert error.exit_code == first.exit_code, error


@pytest.mark.parametrize(
    ("category", "code"),
    [
        pytest.param(InputError, 2, id="input"),
        pytest.param(BuildFailure, 1, id="build"),
        pytest.param(EnvironmentFailure, 1, id="environment"),
    ],
)
def test_exit_codes_follow_the_category(category: type[ImageDSLError], code: int) -> None:
    """The CLI maps a category to its exit code, by class."""
    members = [
        e for e in all_error_classes() if next(c for c in e.__mro__ if c in CATEGORIES) is category
    ]
    assert members
    assert {e.exit_code for e in members} == {code}
    assert exit_code_of(InputError()) == 2


def test_errors_keep_their_facts_as_attributes() -> None:
    """attrs-made errors carry their data, compare by identity, and pickle as exceptions."""
    from imagedsl.registry.errors import RegistryAuthError

    error = RegistryAuthError("reg.example", "denied", status=401, scopes=["repository:a:pull"])
    assert (error.host, error.status, error.scopes) == ("reg.example", 401, ("repository:a:pull",))
    assert "authentication failed" in str(error)
    assert error != RegistryAuthError("reg.example", "denied", status=401)
    assert exit_code_of(error) == 1
