"""Development sessions: ``nox -s tests``, ``nox -s lint``, ``nox -s docs``, ``nox -s bench``,
``nox -s mutation``."""

from __future__ import annotations

import os

import nox

nox.options.sessions = ["tests", "lint"]
nox.options.reuse_existing_virtualenvs = True


@nox.session
def tests(session: nox.Session) -> None:
    """Install the package with its test extras and run the whole test suite."""
    session.install("-e", ".[test]")
    # Tests wait on the Docker engine, runc and registries far more than on the CPU: two
    # workers per core keep CI well inside its time (pytest-xdist; pass -n 0 to run serially).
    workers = ["-n", str(2 * (os.cpu_count() or 1))]
    args = (
        session.posargs
        if any(a.startswith("-n") for a in session.posargs)
        else [*workers, *session.posargs]
    )
    session.run("python", "-m", "pytest", "-p", "no:benchmark", "-p", "no:cacheprovider", *args)


@nox.session
def lint(session: nox.Session) -> None:
    """ruff format --check, ruff check, and mypy --strict."""
    session.install("-e", ".[lint,test]")
    session.run("ruff", "format", "--check", ".")
    session.run("ruff", "check", ".")
    session.run("mypy", "--strict")


@nox.session
def docs(session: nox.Session) -> None:
    """Check that every example in docs/ and examples/ plans (the docs stay true to the code)."""
    session.install("-e", ".[test]")
    session.run("python", "-m", "pytest", "-p", "no:benchmark", "tests/test_docs.py", "-q")


@nox.session(default=False)
def bench(session: nox.Session) -> None:
    """Every benchmark, then the README's table rewritten from their rows
    (``benchmarks/readme.py``); ``nox -s bench -- benchmarks/NAME.py [ARGS]`` runs one."""
    session.install("-e", ".")
    args = session.posargs or ["benchmarks/readme.py"]
    session.run("python", *args)


@nox.session(default=False)
def mutation(session: nox.Session) -> None:
    """Mutation testing with mutmut: keys.py, the OCI layer/whiteout model and secret masking
    against the fast tests that pin them (``[tool.mutmut]`` in pyproject.toml); prints each
    module's kill rate and survivors, and fails under 90%. Needs root and runc for the RUN
    whiteout test; ``nox -s mutation -- --max-children 2`` limits the workers."""
    session.install("-e", ".[test]", "mutmut==3.8.1")
    session.run("mutmut", "run", *session.posargs)
    session.run("python", "-m", "tests.support.mutation")
