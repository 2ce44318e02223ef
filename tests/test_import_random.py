"""Random Dockerfiles against BuildKit: a seeded generator writes a Dockerfile full of what
real ones do with variables (global and stage ARGs, ENV in both forms, ``${V:-d}``,
``${V:+a}``, quotes, escaped dollars, variables in WORKDIR, COPY destinations, LABEL, USER,
EXPOSE) and of COPY, RUN and config; BuildKit builds it as written, ``imagedsl import``
turns it into a build.py, the OCI backend builds that, and the two images must hold the same
files (every RUN writes what it saw) and the same config.

Each seed is one Dockerfile, the same on every run; CI runs the seeds below, and
``IMAGEDSL_IMPORT_SEEDS=N`` (from ``IMAGEDSL_IMPORT_SEEDS_FROM``, else 1000) runs N more.
"""

from __future__ import annotations

import os
import random
import uuid
from pathlib import Path

import pytest

from tests.support.cli import imagedsl_on
from tests.support.docker import DockerEngine
from tests.support.equivalence import differences, export_listing, layout_listing
from tests.support.fidelity import docker_config, layout_config, tar_bytes

pytestmark = pytest.mark.docker

SEEDS = tuple(range(10))
EXTRA_SEEDS = int(os.environ.get("IMAGEDSL_IMPORT_SEEDS", "0") or 0)
EXTRA_FROM = int(os.environ.get("IMAGEDSL_IMPORT_SEEDS_FROM", "1000") or 1000)

FILES: dict[str, str | bytes] = {
    "bundle.tar": tar_bytes({"a.txt": b"one\n", "d/b.txt": b"two\n"}),
    "conf/app.conf": "level=1\n",
    "src/main.sh": "echo main\n",
    "src/lib/util.sh": "echo util\n",
    "req.txt": "dep==1\n",
}

#: Values a variable may be given (as Dockerfile words: quoting is the word's own).
WORDS = (
    "plain",
    "1.2.3",
    '"two words"',
    "'single $quoted'",
    '"$A0-x"',
    "${A0:-fallback}",
    "${A0:+alt}",
    "${E0:-none}/sub",
    "pre\\$dollar",
    '"a=b"',
    "${G0}",
    '"${E0} and ${A0}"',
    "x${A1:-}y",
    '""',
    '"${A0:-${E0:-deep}}"',
    "'$A0'\"$E0\"",
    "a\\ b",
    "${E0:+[$E0]}",
)


def _names(declared: list[str], prefix: str) -> str:
    name = f"{prefix}{len(declared)}"
    declared.append(name)
    return name


def dockerfile_of(seed: int, base: str) -> str:
    """The Dockerfile of one seed (``base`` is the FROM image)."""
    rng = random.Random(seed)
    lines: list[str] = []
    global_arg = rng.random() < 0.6
    if global_arg:
        lines.append(f"ARG G0={rng.choice(('g1', 'x.y', 'z'))}")
    stages = rng.random() < 0.5
    if stages:  # a build stage, named by a global ARG as many Dockerfiles name their base
        lines += [f"ARG BASE={base}", "FROM ${BASE} AS build"]
        if global_arg and rng.random() < 0.5:
            lines.append("ARG G0")
        lines += [
            f"ARG B0={rng.choice(('b1', 'two words', ''))}",
            "ENV BE=$B0-e",
            f"WORKDIR {rng.choice(('/b', '/b/$B0'))}",
            'RUN mkdir -p /out/d && echo "$B0|$BE|$G0" > /out/made && ln -s made /out/link'
            " && echo d > /out/d/f && pwd > /out/pwd",
        ]
    lines.append(f"FROM {rng.choice(('build', '$BASE')) if stages else base} AS app")
    if global_arg and rng.random() < 0.7:
        lines.append("ARG G0")
    args: list[str] = []
    envs: list[str] = []
    runs = 0
    for _ in range(rng.randint(4, 10)):
        kind = rng.choice(
            ("arg", "arg", "env", "env", "env-legacy", "workdir", "copy", "run", "run", "label",
             "user", "expose", "config", "add", "chmod", "volume", "shell", "path", "onbuild",
             *(("from", "from") if stages else ()))
        )  # fmt: skip
        if kind == "arg":
            name = _names(args, "A")
            lines.append(
                f"ARG {name}" if rng.random() < 0.25 else f"ARG {name}={rng.choice(WORDS)}"
            )
        elif kind == "env":
            pairs = [f"{_names(envs, 'E')}={rng.choice(WORDS)}"]
            if rng.random() < 0.4:
                pairs.append(f"{_names(envs, 'E')}={rng.choice(WORDS)}")
            lines.append("ENV " + " ".join(pairs))
        elif kind == "env-legacy":
            lines.append(
                f"ENV {_names(envs, 'E')} {rng.choice(('value with spaces', 'v', '$A0 x'))}"
            )
        elif kind == "workdir":
            lines.append(
                f"WORKDIR {rng.choice(('/w', '/w/$A0', 'rel', '/srv/${E0:-e}', '${A1:-/x}'))}"
            )
        elif kind == "copy":
            source = rng.choice(("conf", "src", "req.txt", "src/*.sh"))
            dest = rng.choice(("/etc/app/", "./", "/srv/$A0/", "dst", "/opt/${E0:-o}/"))
            chown = rng.choice(("", "", "--chown=1:1 "))
            lines.append(f"COPY {chown}{source} {dest}")
        elif kind == "run":
            runs += 1
            lines.append(
                rng.choice(
                    (
                        f"RUN env | grep -e ^A -e ^E -e ^G | sort > /tmp/env{runs}",
                        f"RUN pwd > /tmp/pwd{runs} && ls -1A . | sort >> /tmp/pwd{runs}",
                        f'RUN echo "$A0|$E0|${{E1:-u}}|$G0" > /tmp/vars{runs}',
                        f'RUN ["sh", "-c", "echo $E0 > /tmp/exec{runs}"]',
                        f"RUN find /etc/app /srv /opt 2>/dev/null | sort > /tmp/find{runs}",
                    )
                )
            )
        elif kind == "from":
            lines.append(
                rng.choice(
                    (
                        "COPY --from=build /out/made /srv/",
                        "COPY --from=build /out/d /srv/d2",
                        "COPY --from=build /out/link /srv/l",
                        "COPY --from=build /out/made /out/d /srv/m/",
                        "COPY --from=0 /out/pwd /srv/pwd",
                        "COPY --from=build --chown=1:1 /out /opt/all",
                        "COPY --from=build /out/* /srv/glob/",
                    )
                )
            )
        elif kind == "add":
            lines.append(f"ADD bundle.tar {rng.choice(('/x/', '/x/$A0/', 'unpacked'))}")
        elif kind == "chmod":
            lines.append(f"COPY --chmod={rng.choice(('0755', '600'))} src /s/")
        elif kind == "volume":
            lines.append(rng.choice(("VOLUME /v", 'VOLUME ["/v1", "/v2"]', "VOLUME /v/$A0")))
        elif kind == "shell":
            lines.append('SHELL ["/bin/sh", "-ec"]')
        elif kind == "path":
            lines.append("ENV PATH=$PATH:/opt/bin")
        elif kind == "onbuild":
            lines.append("ONBUILD RUN echo triggered")
        elif kind == "label":
            lines.append(f'LABEL l{len(lines)}={rng.choice(WORDS)} other="$E0"')
        elif kind == "user":
            lines.append(f"USER {rng.choice(('1:1', '0:0', '${NOPE:-1}:1'))}")
        elif kind == "expose":
            lines.append(f"EXPOSE {rng.choice(('80', '8080/tcp', '53/udp', '80 443'))}")
        else:
            lines.append(
                rng.choice(
                    (
                        'CMD ["sh", "-c", "echo $E0"]',
                        "CMD echo $E0",
                        'ENTRYPOINT ["/bin/sh"]',
                        "STOPSIGNAL SIGTERM",
                        "HEALTHCHECK --interval=5s CMD true",
                    )
                )
            )
    if not runs:
        lines.append("RUN env | grep -e ^A -e ^E -e ^G | sort > /tmp/env0")
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("seed", [*SEEDS, *range(EXTRA_FROM, EXTRA_FROM + EXTRA_SEEDS)])
def test_imported_dockerfile_builds_what_buildkit_builds(
    docker_engine: DockerEngine, busybox_image: str, tmp_path: Path, seed: int
) -> None:
    """BuildKit's image of the Dockerfile and the OCI backend's image of its import hold the
    same files and the same config."""
    project = tmp_path / "project"
    for name, data in FILES.items():
        (project / name).parent.mkdir(parents=True, exist_ok=True)
        if isinstance(data, bytes):
            (project / name).write_bytes(data)
        else:
            (project / name).write_text(data)
    dockerfile = dockerfile_of(seed, busybox_image)
    (project / "Dockerfile").write_text(dockerfile)
    tag = f"imagedsl-test/import-random-{uuid.uuid4().hex[:12]}"
    built = docker_engine.run("build", "-q", "-t", tag, str(project), check=False)
    if built.returncode != 0:
        pytest.fail(f"BuildKit refused the generated Dockerfile:\n{dockerfile}\n{built.stderr}")
    try:
        imported = imagedsl_on(docker_engine, "import", "Dockerfile", "-o", "build.py", cwd=project)
        assert imported.returncode == 0, f"{dockerfile}\n{imported.stderr}"
        build_py = project / "build.py"  # its base is found in the local engine
        layout = tmp_path / "layout"
        ours = imagedsl_on(
            docker_engine, "build", "build.py", "--backend", "oci", "--output", f"oci:{layout}:app",
            cwd=project, store=tmp_path / "store",
        )  # fmt: skip
        assert ours.returncode == 0, f"{dockerfile}\n{build_py.read_text()}\n{ours.stderr}"
        found = differences(
            export_listing(docker_engine, tag, tmp_path), layout_listing(layout, "app")
        )
        assert found == {}, f"{dockerfile}\n{build_py.read_text()}\n{found}"
        assert docker_config(docker_engine, tag) == layout_config(layout, "app"), dockerfile
    finally:
        docker_engine.run("image", "rm", "-f", tag, check=False)
