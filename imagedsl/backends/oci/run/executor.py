"""Executing one RUN step: its root filesystem, its mounts, its user, the runtime, its change.

:class:`RunExecutor` does, for one RUN: make sure the layers below are extracted
(:class:`~imagedsl.backends.oci.run.rootfs.Snapshots`), mount them as an overlay with a fresh
upper directory (or copy them), create the working directory if it is missing, prepare the
mounts the step asks for and its sandbox (a network namespace behind NAT,
:mod:`~imagedsl.backends.oci.run.network`; Docker's default seccomp profile,
:mod:`~imagedsl.backends.oci.run.seccomp`; ``network="host"`` only with the ``network.host``
entitlement), run the command in runc (:mod:`imagedsl.backends.oci.run.runc`), and give back
the change as layer entries. Everything it mounts or creates is undone when it is
done, whether the command succeeded, failed, timed out or was interrupted.

Mounts, as BuildKit makes them:

- **cache**: ``<store>/cache-mounts/<blake3(id)>/data``, created with the mount's mode and owner
  the first time. ``shared`` binds it as is; ``locked`` holds an exclusive ``flock`` on it for
  the whole RUN (other builds wait); ``private`` takes the lock if it is free, and otherwise
  works on a copy that is dropped afterwards.
- **secret**: the value (read through :class:`~imagedsl.backends.SecretSource`) goes to a file
  on a private tmpfs directory with the mount's mode and owner, bound read-only at the target,
  and/or to an environment variable. It never reaches a layer, a key, a record or a log line
  (lines that contain a secret value are masked).
- **bind** from the context: exactly the planned files (checked against their digests as they
  are copied) in a temporary directory; one selected file is mounted as that file. From a
  stage: an overlay of that stage's layers, the path resolved inside it. Writes to
  ``readwrite`` binds are dropped afterwards.
- **tmpfs**: a new tmpfs (``size`` in bytes).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import stat
import tempfile
import time
import uuid
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import attrs
import blake3

from imagedsl.backends._masking import masked, masks_for
from imagedsl.backends.oci.filesystem import Filesystem, PathResolutionError
from imagedsl.backends.oci.run.bytecode import settle_bytecode
from imagedsl.backends.oci.run.network import (
    NETNS_FILE,
    NetworkUnavailableError,
    network_problem,
    private_network,
    release_namespace,
    resolv_conf,
)
from imagedsl.backends.oci.run.rootfs import (
    Change,
    RootfsError,
    Snapshots,
    apply_snapshot,
    copy_change,
    mount_overlay,
    open_dir,
    remove_tree,
    seal_upper,
    snapshotter,
    unmount,
    upper_change,
)
from imagedsl.backends.oci.run.runc import (
    CAPABILITIES,
    HOSTS,
    ContainerSpec,
    MountSpec,
    Runc,
    RunFailedError,
    RunTimeoutError,
    RuntimeUnavailableError,
    bind,
    find_runc,
    missing_requirements,
)
from imagedsl.backends.oci.run.seccomp import load_profile
from imagedsl.buildstate import BuildState
from imagedsl.contexts import ContextSource
from imagedsl.errors import ImageDSLError, InputError, SourceLocation
from imagedsl.steps import (
    BindMount,
    CacheMount,
    Run,
    SecretMount,
    StagePath,
    TmpfsMount,
)
from imagedsl.store import StoreArea
from imagedsl.treehash import Tree, sole_file

if TYPE_CHECKING:
    from imagedsl.backends import SecretSource
    from imagedsl.oci.blobs import BlobStore
    from imagedsl.oci.image import LayerBlob

_SHM: Final = Path("/dev/shm")
#: An unfinished extraction this old was left by a killed build.
_STALE_EXTRACTION: Final = 3600.0
#: Deeper stacks are copied: an overlay's options must fit in a page (and overlayfs stops at 500).
_MAX_LOWERS: Final = 128
#: A run directory younger than this is never swept (its build may be taking the lock).
_SWEEP_AGE: Final = 60.0


@attrs.define
class RunInputError(InputError):
    """A RUN cannot start as written: an unknown USER, a required secret not given, a bind
    source missing from its stage."""

    instruction: str
    stage: str
    problem: str
    location: SourceLocation | None = attrs.field(default=None)

    def __str__(self) -> str:
        return f"{self.stage}: {self.instruction}: {self.problem}"


@attrs.frozen(kw_only=True)
class StageSource:
    """A stage a bind mount reads: its layers and what they hold."""

    layers: tuple[LayerBlob, ...]
    fs: Filesystem = attrs.field(eq=False, repr=False)


@attrs.frozen(kw_only=True)
class RunInputs:
    """One RUN to execute, with the concrete state it starts from."""

    step: Run
    #: ``stage[position]``, for messages.
    stage: str
    instruction: str
    label: str
    state: BuildState
    layers: tuple[LayerBlob, ...]
    lower: Filesystem = attrs.field(eq=False, repr=False)
    #: The stages of the step's stage bind mounts, in mount order.
    stages: tuple[StageSource, ...] = ()
    #: The context trees of the step's context bind mounts, in mount order.
    trees: tuple[Tree, ...] = ()
    #: The proxy ``--build-arg`` values (:func:`~imagedsl.buildstate.proxy_env`), never keyed.
    proxy_env: Mapping[str, str] = attrs.field(factory=dict, repr=False)

    @property
    def location(self) -> SourceLocation | None:
        """The build-file line of the RUN."""
        return self.step.location


@attrs.frozen(kw_only=True)
class Owner:
    """Who a RUN's process runs as."""

    uid: int
    gid: int
    groups: tuple[int, ...] = ()


def resolve_user(user: str, files: Mapping[str, str]) -> Owner:
    """``USER`` (``name``, ``uid``, ``name:group``, ``uid:gid``) to ids, as BuildKit does: two
    ids (``root`` counts as 0) are taken as they are; any other form reads the image's
    ``/etc/passwd``, which must exist (even for a bare uid), and ``/etc/group``, which must
    exist too once a user was found there or a group is given. A user's primary group comes
    from ``/etc/passwd`` (0 for an unknown numeric uid); its other groups from
    ``/etc/group`` unless a group is given. Raises LookupError naming what is not found."""
    if not user:
        return Owner(uid=0, gid=0)
    name, colon, group = user.partition(":")
    if colon and _an_id(name) and _an_id(group):
        return Owner(uid=_id(name), gid=_id(group))
    if "etc/passwd" not in files:
        raise LookupError(f"unable to find user {name}: the image has no /etc/passwd")
    passwd = [line.split(":") for line in files.get("etc/passwd", "").splitlines()]
    passwd = [fields for fields in passwd if len(fields) >= 4]
    if name.isdigit():
        uid = int(name)
        match = next((f for f in passwd if f[2] == name), None)
    else:
        match = next((f for f in passwd if f[0] == name), None)
        if match is None or not match[2].isdigit():
            raise LookupError(f"user {name!r} is not in the image's /etc/passwd")
        uid = int(match[2])
    gid = int(match[3]) if match is not None and match[3].isdigit() else 0
    if (match is not None or group) and "etc/group" not in files:
        found_name = match[0] if match is not None else ""
        raise LookupError(f"unable to find groups for user {found_name!r}: no /etc/group")
    groups_file = [line.split(":") for line in files.get("etc/group", "").splitlines()]
    groups_file = [fields for fields in groups_file if len(fields) >= 4]
    if group:
        if group.isdigit():
            return Owner(uid=uid, gid=int(group))
        found = next((f for f in groups_file if f[0] == group and f[2].isdigit()), None)
        if found is None:
            raise LookupError(f"group {group!r} is not in the image's /etc/group")
        return Owner(uid=uid, gid=int(found[2]))
    user_name = match[0] if match is not None else None
    extra = sorted(
        {
            int(f[2])
            for f in groups_file
            if user_name and f[2].isdigit() and user_name in f[3].split(",") and int(f[2]) != gid
        }
    )
    return Owner(uid=uid, gid=gid, groups=tuple(extra))


def _an_id(text: str) -> bool:
    return text.isdigit() or text == "root"


def _id(text: str) -> int:
    return 0 if text == "root" else int(text)


@attrs.frozen(kw_only=True)
class Finished:
    """A RUN that succeeded: the change it made, and (overlay only) the upper directory
    that :meth:`keep` turns into the snapshot of the layer written from the change."""

    change: Change
    upper: Path | None
    removed: tuple[str, ...]


class RunExecutor:
    """Executes RUN steps for one build (see the module docstring)."""

    def __init__(
        self,
        blobs: BlobStore,
        *,
        secrets: Sequence[SecretSource],
        epoch: int,
        timeout: float | None,
        on_output: Callable[[str, str], None],
        allow: Collection[str] = frozenset(),
        seccomp: bool = True,
    ) -> None:
        self.blobs = blobs
        #: Entitlements granted to the build (``network.host``).
        self.allow = frozenset(allow)
        #: False: no seccomp profile (the explicit opt-out).
        self.seccomp = seccomp
        self.store_root = blobs.store.root
        self.snapshots = Snapshots(blobs)
        self.runs = blobs.store.area(StoreArea.OCI_RUNS)
        self.secrets = {s.id: s for s in secrets}
        self._secret_values: dict[str, bytes | None] = {}
        self.epoch = epoch
        self.timeout = timeout
        self.on_output = on_output
        self._swept = False

    # -- one RUN -----------------------------------------------------------------------------

    @contextlib.contextmanager
    def execute(self, run: RunInputs) -> Iterator[Finished]:
        """Run the step; yield its change. On success the caller writes the layer and then
        calls :meth:`keep`; everything temporary is removed when the block ends."""
        missing = missing_requirements()
        if missing:
            error = RuntimeUnavailableError(missing, run.instruction, run.stage)
            raise error.with_location(run.location)
        runc = find_runc()
        assert runc is not None
        profile = self._sandbox(run, runc)
        if not self._swept:
            self._sweep()
            self._swept = True
        owner = self._owner(run)
        # Exactly BuildKit's: no SOURCE_DATE_EPOCH unless the stage declares it (see bytecode).
        env = dict(run.state.run_env())
        env.update(run.proxy_env)  # last, as BuildKit appends them (it overrides an ENV)
        secret_values = self._check_secrets(run)
        snapshots = self.snapshots.ensure(run.layers)
        run_id = uuid.uuid4().hex[:20]
        with contextlib.ExitStack() as stack:
            workdir = stack.enter_context(self._run_dir(run_id))
            private = stack.enter_context(_private_dir(self._private_name(run_id)))
            netns = None
            if run.step.network == "default":
                netns = stack.enter_context(private_network(private, run.stage, run.instruction))
            lowers = _lowers(snapshots)
            if self._snapshotter(lowers) == "overlay":
                upper, root = workdir / "upper", workdir / "merged"
                for name in ("upper", "work", "merged", "empty"):
                    (workdir / name).mkdir(mode=0o755)
                    os.chmod(workdir / name, 0o755)
                mount_overlay(root, lowers or [workdir / "empty"], upper, workdir / "work")
                stack.callback(unmount, root)
            else:
                upper, root = None, workdir / "root"
                root.mkdir()
                os.chmod(root, 0o755)
                for snapshot in snapshots:
                    apply_snapshot(snapshot, root)
            cwd = run.state.absolute_workdir()
            self._make_workdir(root, run, cwd)
            mounts = [
                bind(private / "hosts", "/etc/hosts", readonly=True),
                bind(private / "resolv.conf", "/etc/resolv.conf", readonly=True),
            ]
            (private / "hosts").write_text(HOSTS)
            (private / "resolv.conf").write_text(resolv_conf(run.step.network))
            mounts += self._mounts(run, stack, workdir, private, secret_values, env)
            stubs = _stub_paths(run.lower, [m.destination for m in mounts])
            spec = ContainerSpec(
                rootfs=str(root),
                args=run.state.argv(run.step.command, run.step.shell_form),
                env=env,
                cwd=cwd,
                uid=owner.uid,
                gid=owner.gid,
                additional_gids=owner.groups,
                network=run.step.network,
                network_namespace=netns,
                mounts=tuple(mounts),
                seccomp=profile,
            )
            masks = masks_for(secret_values.values())

            def output(line: str) -> None:
                self.on_output(run.label, masked(line, masks))

            def timed_out(tail: tuple[str, ...]) -> BaseException:
                assert self.timeout is not None
                lines = [masked(line, masks) for line in tail]
                return RunTimeoutError(
                    run.instruction, run.stage, self.timeout, lines, run.location
                )

            engine = Runc(runc, private / "state")
            engine.write_bundle(private, spec)
            outcome = engine.run(
                private, f"imagedsl-{run_id}", on_line=output, timeout=self.timeout,
                on_timeout=timed_out,
            )  # fmt: skip
            if outcome.status != 0:
                tail = [masked(line, masks) for line in outcome.tail]
                raise RunFailedError(run.instruction, run.stage, outcome.status, tail, run.location)
            removed: list[str] = []
            if upper is not None:
                unmount(root)
                change, removed = upper_change(upper, run.lower, stubs)
            else:
                change = copy_change(root, run.lower, snapshots, stubs)
            settle_bytecode(change.entries, self.epoch)
            yield Finished(change=change, upper=upper, removed=tuple(removed))

    def keep(self, finished: Finished, layer: LayerBlob) -> None:
        """Make the RUN's upper directory the snapshot of the layer written from it."""
        if finished.upper is None:
            return
        final = self.snapshots.path(layer.diff_id)
        if final.exists():
            return
        seal_upper(finished.upper, finished.removed, self.epoch)
        self.snapshots.root.mkdir(parents=True, exist_ok=True)
        self.snapshots.adopt(finished.upper, final)

    # -- preparation -------------------------------------------------------------------------

    def _sandbox(self, run: RunInputs, runc: str) -> dict[str, Any] | None:
        """Check, before any work, that the RUN's sandbox can be made: its entitlement
        (``network="host"``), slirp4netns (``network="default"``); return its seccomp
        profile (None when the build opted out)."""
        from imagedsl.backends import NETWORK_HOST, EntitlementError

        network = run.step.network
        if network == "host" and NETWORK_HOST not in self.allow:
            raise EntitlementError(NETWORK_HOST, run.stage, run.instruction, run.location)
        if network == "default":
            problem = network_problem()
            if problem is not None:
                error = NetworkUnavailableError(run.stage, run.instruction, problem)
                raise error.with_location(run.location)
        if not self.seccomp:
            return None
        try:
            return load_profile(runc, CAPABILITIES, run.stage, run.instruction)
        except ImageDSLError as error:
            raise error.with_location(run.location) from None

    def _owner(self, run: RunInputs) -> Owner:
        try:
            return resolve_user(run.state.user, run.lower.files)
        except LookupError as error:
            raise RunInputError(
                run.instruction, run.stage, f"USER {run.state.user}: {error}", run.location
            ) from None

    def _secret(self, secret_id: str) -> bytes | None:
        if secret_id not in self._secret_values:
            source = self.secrets.get(secret_id)
            self._secret_values[secret_id] = None if source is None else source.read()
        return self._secret_values[secret_id]

    def _check_secrets(self, run: RunInputs) -> dict[str, bytes]:
        values: dict[str, bytes] = {}
        for mount in run.step.mounts:
            if not isinstance(mount, SecretMount):
                continue
            value = self._secret(mount.id)
            if value is None:
                if mount.required:
                    raise RunInputError(
                        run.instruction,
                        run.stage,
                        f"secret {mount.id!r} is required but was not given "
                        f"(--secret id={mount.id},src=PATH or id={mount.id},env=VAR)",
                        run.location,
                    )
                continue
            values[mount.id] = value
        return values

    def _make_workdir(self, root: Path, run: RunInputs, cwd: str) -> None:
        """Create the working directory when the image lacks it (it stays in the layer)."""
        try:
            real = run.lower.resolve(cwd.strip("/"))
        except PathResolutionError as error:
            raise RunInputError(
                run.instruction, run.stage, f"WORKDIR {cwd}: {error}", run.location
            ) from None
        if not real or run.lower.get(real) is not None:
            return
        root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.close(open_dir(root_fd, real, create=True))
        except RootfsError as error:
            raise RunInputError(
                run.instruction, run.stage, f"WORKDIR {cwd}: {error}", run.location
            ) from None
        finally:
            os.close(root_fd)

    def _mounts(
        self,
        run: RunInputs,
        stack: contextlib.ExitStack,
        workdir: Path,
        private: Path,
        secret_values: Mapping[str, bytes],
        env: dict[str, str],
    ) -> list[MountSpec]:
        mounts: list[MountSpec] = []
        stages = iter(run.stages)
        trees = iter(run.trees)
        for number, mount in enumerate(run.step.mounts):
            if isinstance(mount, CacheMount):
                source = self._cache_dir(mount, stack, workdir / f"cache-{number}")
                mounts.append(bind(source, mount.target, readonly=mount.readonly))
            elif isinstance(mount, SecretMount):
                value = secret_values.get(mount.id)
                if value is None:
                    continue
                if mount.env is not None:
                    env[mount.env] = value.decode("utf-8", "surrogateescape")
                if mount.target is not None:
                    path = private / f"secret-{number}"
                    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                    try:
                        os.write(fd, value)
                        os.fchown(fd, mount.uid, mount.gid)
                        os.fchmod(fd, mount.mode)
                    finally:
                        os.close(fd)
                    mounts.append(bind(path, mount.target, readonly=True))
            elif isinstance(mount, BindMount):
                if isinstance(mount.source, StagePath):
                    source = self._stage_source(
                        run, next(stages), mount.source.path, stack, workdir / f"stage-{number}"
                    )
                else:
                    assert isinstance(mount.source, ContextSource)
                    source = _materialise(mount.source, next(trees), workdir / f"ctx-{number}")
                mounts.append(bind(source, mount.target, readonly=not mount.readwrite))
            else:
                assert isinstance(mount, TmpfsMount)
                options = ("nosuid",) + (() if mount.size is None else (f"size={mount.size}",))
                mounts.append(
                    MountSpec(
                        destination=mount.target, type="tmpfs", source="tmpfs", options=options
                    )
                )
        return mounts

    def _cache_dir(self, mount: CacheMount, stack: contextlib.ExitStack, spare: Path) -> Path:
        """The directory a cache mount binds (see the module docstring for sharing)."""
        caches = self.blobs.store.area(StoreArea.CACHE_MOUNTS)
        home = caches / blake3.blake3(mount.id.encode()).hexdigest()[:32]
        data = home / "data"
        if not data.is_dir():
            home.mkdir(parents=True, exist_ok=True)
            os.chmod(caches, 0o700)  # what RUNs leave there (setuid files too) is root's
            (home / "id").write_text(mount.id + "\n")
            fresh = Path(tempfile.mkdtemp(prefix=".new-", dir=home))
            os.chown(fresh, mount.uid, mount.gid)
            os.chmod(fresh, mount.mode)
            try:
                os.rename(fresh, data)
            except OSError:
                fresh.rmdir()  # another build made it first
        if mount.sharing == "shared":
            return data
        handle = stack.enter_context(open(home / "lock", "a"))  # noqa: SIM115 - closed by the stack
        if mount.sharing == "locked":
            fcntl.flock(handle, fcntl.LOCK_EX)
            return data
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            spare.mkdir(mode=0o755)
            apply_snapshot(data, spare)  # in use elsewhere: a copy of its own, dropped after
            st = os.lstat(data)
            os.chown(spare, st.st_uid, st.st_gid)
            os.chmod(spare, stat.S_IMODE(st.st_mode))
            return spare
        return data

    def _stage_source(
        self,
        run: RunInputs,
        stage: StageSource,
        path: str,
        stack: contextlib.ExitStack,
        workdir: Path,
    ) -> Path:
        try:
            real = stage.fs.resolve(path.strip("/"))
        except PathResolutionError as error:
            raise RunInputError(
                run.instruction, run.stage, f"bind mount: {error}", run.location
            ) from None
        if real and stage.fs.get(real) is None:
            raise RunInputError(
                run.instruction,
                run.stage,
                f"bind mount: {path} does not exist in its stage",
                run.location,
            )
        snapshots = self.snapshots.ensure(stage.layers)
        for name in ("upper", "work", "merged", "empty"):
            (workdir / name).mkdir(parents=True, mode=0o755)
        root = workdir / "merged"
        lowers = _lowers(snapshots)
        if self._snapshotter(lowers) == "overlay":
            mount_overlay(root, lowers or [workdir / "empty"], workdir / "upper", workdir / "work")
            stack.callback(unmount, root)
        else:
            for snapshot in snapshots:
                apply_snapshot(snapshot, root)
        return root / real if real else root

    def _snapshotter(self, lowers: Sequence[Path]) -> str:
        """Overlay where it works, unless the stack is deeper than an overlay mount takes."""
        return "copy" if len(lowers) > _MAX_LOWERS else snapshotter(self.runs)

    # -- temporary places --------------------------------------------------------------------

    def _private_name(self, run_id: str) -> str:
        """``imagedsl-run-<store tag>-<run id>``: which store a private directory belongs to."""
        tag = blake3.blake3(os.fsencode(self.store_root.resolve())).hexdigest()[:12]
        return f"imagedsl-run-{tag}-{run_id}"

    @contextlib.contextmanager
    def _run_dir(self, run_id: str) -> Iterator[Path]:
        """``<store>/oci/runs/<id>``, locked while the RUN lives; unmounted and removed after."""
        self.runs.mkdir(parents=True, exist_ok=True)
        os.chmod(self.runs, 0o700)  # roots of RUNs in progress: only root may walk into them
        path = self.runs / run_id
        path.mkdir(mode=0o700)
        lock = open(path / "lock", "a")  # noqa: SIM115 - closed below
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield path
        finally:
            try:
                remove_tree(path)
            finally:
                lock.close()

    def _sweep(self) -> None:
        """Remove what killed builds left: run directories nobody holds the lock of (their
        mounts, their containers, their private directories), and extractions an hour old."""
        now = time.time()
        if self.snapshots.root.is_dir():
            for staging in self.snapshots.root.glob(".extract-*"):
                with contextlib.suppress(OSError):
                    if now - staging.stat().st_mtime > _STALE_EXTRACTION:
                        shutil.rmtree(staging)
        if not self.runs.is_dir():
            return
        for path in self.runs.iterdir():
            try:
                if now - path.stat().st_mtime < _SWEEP_AGE:
                    continue  # just made: its build may not hold the lock yet
                with open(path / "lock", "a") as lock:
                    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    _forget_container(private_parent() / self._private_name(path.name), path.name)
                    remove_tree(path)
            except (OSError, RootfsError):
                continue  # alive, or not ours to remove


def _lowers(snapshots: Sequence[Path]) -> list[Path]:
    """Overlay lower directories, top first. A layer that appears twice in a stack is kept
    at its upper place only: applying it again there gives the same tree (its files and its
    deletions are applied over everything below either way), and overlayfs refuses one
    directory twice."""
    lowers: list[Path] = []
    for path in reversed(snapshots):
        if path not in lowers:
            lowers.append(path)
    return lowers


def private_parent() -> Path:
    """Where private run directories go: ``/dev/shm`` (tmpfs), else the temporary directory."""
    return _SHM if _SHM.is_dir() and os.access(_SHM, os.W_OK) else Path(tempfile.gettempdir())


@contextlib.contextmanager
def _private_dir(name: str) -> Iterator[Path]:
    """Where config.json, secrets and runc's state live: a root-only directory on tmpfs
    (``/dev/shm``), so secret values never reach a disk."""
    path = private_parent() / name
    path.mkdir(mode=0o700)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _forget_container(private: Path, run_id: str) -> None:
    """Delete the container and private directory of a run whose build was killed."""
    import subprocess

    if private.is_dir():
        release_namespace(private / NETNS_FILE)
        runc = find_runc()
        if runc is not None:
            subprocess.run(
                [runc, "--root", str(private / "state"), "delete", "--force", f"imagedsl-{run_id}"],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                check=False,
            )
        shutil.rmtree(private, ignore_errors=True)


def _stub_paths(lower: Filesystem, destinations: Sequence[str]) -> set[str]:
    """Paths the runtime creates in the root for mounts (each mount point and its parents),
    resolved through the image's symlinks as the runtime resolves them."""
    from imagedsl.backends.oci.run.runc import SYSTEM_MOUNTS

    stubs: set[str] = set()
    for destination in [*(m.destination for m in SYSTEM_MOUNTS), *destinations]:
        try:
            real = lower.resolve(destination.strip("/"))
        except PathResolutionError:
            continue
        parts = real.split("/") if real else []
        for i in range(1, len(parts) + 1):
            stubs.add("/".join(parts[:i]))
    return stubs


def _materialise(source: ContextSource, tree: Tree, dest: Path) -> Path:
    """The planned files of a context bind mount, copied into ``dest`` (checked against the
    digests the plan hashed, so an edit since planning fails instead of being mounted)."""
    root = source.context.root
    dest.mkdir(mode=0o755)
    os.chmod(dest, 0o755)
    entries = tree.entries
    for entry in entries:
        target = dest / entry.placed
        host = os.path.join(root, entry.source)
        if entry.type == "dir":
            target.mkdir(parents=True, exist_ok=True)
            os.chmod(target, entry.mode)
        elif entry.type == "symlink":
            target.parent.mkdir(parents=True, exist_ok=True)
            link = os.readlink(host)
            if blake3.blake3(link.encode("utf-8", "surrogateescape")).hexdigest() != entry.digest:
                raise _changed(host)
            target.symlink_to(link)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            hasher = blake3.blake3()
            with open(host, "rb") as src, open(target, "wb") as out:
                while data := src.read(1 << 20):
                    hasher.update(data)
                    out.write(data)
            if hasher.hexdigest() != entry.digest:
                raise _changed(host)
            os.chmod(target, entry.mode)
    single = sole_file(source, tree)
    return dest if single is None else dest / single.placed


def _changed(host: str) -> ImageDSLError:
    from imagedsl.backends.oci.layer import LayerError

    return LayerError(host, "changed since it was planned (bind mount source)")


__all__ = ["Finished", "RunExecutor", "RunInputError", "RunInputs", "StageSource", "resolve_user"]
