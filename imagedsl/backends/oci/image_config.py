"""The image config's ``config`` object, from the base image's and the config steps.

Config steps are applied in order, as BuildKit's Dockerfile frontend applies them: ENV
(through the build state), WORKDIR, USER, LABEL, EXPOSE, VOLUME, STOPSIGNAL, SHELL,
HEALTHCHECK (MAINTAINER sets the top-level ``author``: :func:`image_author`); CMD and ENTRYPOINT in shell form run through the SHELL in force; ``CMD []`` and
``ENTRYPOINT []`` reset; an ENTRYPOINT drops a CMD the stage did not set itself; ``ONBUILD``
appends a trigger. A base image's own ``OnBuild`` never carries over: a build ``FROM`` it runs
those triggers (:mod:`imagedsl.backends.oci.triggers`) and starts with none.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from imagedsl._validate import is_template, parse_signal
from imagedsl.buildstate import BuildState, expand
from imagedsl.errors import StepArgumentError
from imagedsl.steps import (
    Author,
    Cmd,
    Entrypoint,
    Expose,
    Healthcheck,
    Label,
    OnBuild,
    Shell,
    Step,
    StopSignal,
    User,
    Volume,
    Workdir,
)


def start_config(base: Mapping[str, Any]) -> dict[str, Any]:
    """A stage's config on a base: the base's, without its ONBUILD triggers (run, not kept)."""
    config = dict(base)
    config.pop("OnBuild", None)
    return config


def apply_config_step(
    config: dict[str, Any], step: Step, state: BuildState, *, cmd_set: bool
) -> bool:
    """Apply one step to ``config`` (``state`` is the state after it); return whether this
    stage has set CMD so far (an ENTRYPOINT keeps only a CMD the stage set)."""
    variables = state.variables
    if isinstance(step, Workdir):
        config["WorkingDir"] = state.workdir
    elif isinstance(step, User):
        config["User"] = state.user
    elif isinstance(step, Cmd):
        _set_command(config, "Cmd", state, step.command, step.shell_form)
        return True
    elif isinstance(step, Entrypoint):
        _set_command(config, "Entrypoint", state, step.command, step.shell_form)
        if not cmd_set:
            config.pop("Cmd", None)
    elif isinstance(step, Label):
        labels = dict(config.get("Labels") or {})
        for key, value in step.items:
            labels[expand(key, variables)] = expand(value, variables)
        config["Labels"] = labels
    elif isinstance(step, Expose):
        ports = dict(config.get("ExposedPorts") or {})
        for port in step.ports:  # a $VAR may hold several, as BuildKit splits it into words
            for word in expand(port, variables).split():
                ports.update({name: {} for name in _port_range(word)})
        config["ExposedPorts"] = ports
    elif isinstance(step, Volume):
        volumes = dict(config.get("Volumes") or {})
        for path in step.paths:
            volumes[expand(path, variables)] = {}
        config["Volumes"] = volumes
    elif isinstance(step, StopSignal):
        signal = step.signal
        if is_template(signal):  # checked once expanded, as BuildKit checks it
            try:
                signal = parse_signal("STOPSIGNAL", expand(signal, variables))
            except StepArgumentError as error:
                raise error.with_location(step.location) from None
        config["StopSignal"] = signal
    elif isinstance(step, Shell):
        config["Shell"] = list(step.command)
    elif isinstance(step, Healthcheck):
        config["Healthcheck"] = healthcheck_config(step)
    elif isinstance(step, OnBuild):
        config["OnBuild"] = [*(config.get("OnBuild") or []), step.instruction]
    return cmd_set


def _port_range(port: str) -> list[str]:
    """``8000-8002/tcp`` as BuildKit writes it: one entry per port."""
    span, _, proto = port.partition("/")
    proto = proto or "tcp"  # a port from a $VAR gets the protocol BuildKit gives it
    low, _, high = span.partition("-")
    if not (low.isdigit() and high.isdigit()):
        return [f"{span}/{proto}"]
    suffix = f"/{proto}"
    return [f"{n}{suffix}" for n in range(int(low), int(high) + 1)]


def _set_command(
    config: dict[str, Any], key: str, state: BuildState, command: tuple[str, ...], shell: bool
) -> None:
    if not command:
        config.pop(key, None)  # CMD [] / ENTRYPOINT []: BuildKit writes no such key
        return
    config[key] = list(state.argv(command, shell))


def container_config(
    steps: Sequence[Step],
    states: Sequence[BuildState],
    base: Mapping[str, Any],
    *,
    cmd_set: bool = False,
) -> dict[str, Any]:
    """The image's ``config``: ``base`` (a stage's start, see :func:`start_config`) with
    ``steps`` applied in order.

    ``states`` are the concrete states after each step (the base's Env already in the first,
    so ENV PATH=/x:$PATH extends the base's PATH); ``cmd_set`` says whether CMD was set
    before the first step (by a base's trigger)."""
    config = dict(base)
    # The config's Env is the base's with ENV applied in place (a FROM scratch stage starts
    # with Docker's default PATH); ARG values are not part of it.
    config["Env"] = [f"{name}={value}" for name, value in states[-1].config_env]
    for step, state in zip(steps, states, strict=True):
        cmd_set = apply_config_step(config, step, state, cmd_set=cmd_set)
    for key in ("WorkingDir", "User"):
        if key in config and not config[key]:
            del config[key]
    return {k: v for k, v in config.items() if v is not None}


def image_author(steps: Sequence[Step], base: Mapping[str, Any]) -> str | None:
    """The image config's ``author``: the last MAINTAINER's text, else the base image's (a
    build FROM an image keeps its author, as BuildKit keeps it), else none."""
    for step in reversed(steps):
        if isinstance(step, Author):
            return step.name
    author = base.get("author")
    return author if isinstance(author, str) and author else None


def healthcheck_config(step: Healthcheck) -> dict[str, Any]:
    """``HEALTHCHECK`` as the config holds it (durations in nanoseconds)."""
    if step.test is None:
        return {"Test": ["NONE"]}
    test = ["CMD-SHELL", step.test[0]] if step.shell_form else ["CMD", *step.test]
    check: dict[str, Any] = {"Test": test}
    for key, value in (
        ("Interval", step.interval),
        ("Timeout", step.timeout),
        ("StartPeriod", step.start_period),
    ):
        duration = duration_ns(value)
        if duration is not None:
            check[key] = duration
    if step.retries is not None:
        check["Retries"] = step.retries
    return check


def duration_ns(text: str | None) -> int | None:
    """A Go duration (``1m30s``) in nanoseconds."""
    if text is None:
        return None
    units = {"ns": 1, "us": 1_000, "ms": 1_000_000, "s": 10**9, "m": 60 * 10**9, "h": 3600 * 10**9}
    total = 0.0
    number = ""
    i = 0
    while i < len(text):
        char = text[i]
        if char.isdigit() or char == ".":
            number += char
            i += 1
            continue
        unit = text[i : i + 2] if text[i : i + 2] in units else char
        total += float(number) * units[unit]
        number = ""
        i += len(unit)
    return int(total)
