"""The OCI backend's RUN sandbox: what a RUN cannot reach, and the ordinary work it still does.

Escapes, each refused in the sandbox and possible with the allowance where one exists
(``--allow network.host``, ``--no-seccomp``): a TCP server and an abstract unix socket on the
host's loopback, system calls Docker's default seccomp profile forbids, the host's interfaces.
Ordinary work: DNS and connections to a server outside (a network namespace the tests make,
:mod:`netns_support`), ``pip install`` from an index there, file capabilities that a RUN sets
and that later RUN steps and ``COPY --from`` keep.

Most tests use the busybox base of :mod:`tests.support.oci`; those that need Python in the image
use the Debian test base through the engine (``docker-daemon:``), read into one store for the
module. Without root, runc, slirp4netns or ``ip`` the tests are skipped (failed under
``IMAGEDSL_REQUIRE_DOCKER=1``).
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import tarfile
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import imagedsl as dsl
from imagedsl.backends import BuildRequest, EntitlementError, UnknownEntitlementError
from imagedsl.backends.oci.backend import OCIBackend, OCIBuild
from imagedsl.backends.oci.run.network import NetworkUnavailableError
from imagedsl.backends.oci.run.rootfs import mounts_below
from imagedsl.backends.oci.run.runc import missing_requirements
from imagedsl.backends.oci.run.seccomp import SeccompUnavailableError
from imagedsl.dsl import Stage
from imagedsl.errors import exit_code_of
from imagedsl.planner import plan
from imagedsl.reporting import Reporter
from imagedsl.store import Store
from tests.support import oci as oci_support
from tests.support.cli import imagedsl
from tests.support.docker import DockerEngine
from tests.support.equivalence import ensure_nodev_image
from tests.support.netns import DNS_NAME, GREETING, PACKAGE, PACKAGE_TEXT, Outside, outside_network
from tests.support.skips import NO_TOOL, unavailable

NETWORK_HOST = frozenset({"network.host"})
#: What a Python probe prints for a connection or call that the sandbox refused.
PY_TRY = (
    "import ctypes, errno, socket, sys\n"
    "def attempt(label, call):\n"
    "    try:\n"
    "        call()\n"
    "        print(label, 'ok')\n"
    "    except OSError as error:\n"
    "        print(label, errno.errorcode.get(error.errno, error.errno))\n"
)


@pytest.fixture(autouse=True)
def _sandbox_available() -> None:
    """Root, runc, slirp4netns and ``ip``, or a skip (a failure in CI)."""
    missing = list(missing_requirements())
    missing += [tool for tool in ("slirp4netns", "ip", "unshare") if _tool(tool) is None]
    if missing:
        unavailable(NO_TOOL, f"the RUN sandbox tests need {', '.join(missing)}")


def _tool(name: str) -> str | None:
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")


@pytest.fixture(name="base", scope="module")
def fixture_base(tmp_path_factory: pytest.TempPathFactory) -> str:
    """``oci:DIR:1``: busybox, /etc/passwd with root and app (1000), /tmp."""
    return oci_support.make_busybox_layout(tmp_path_factory.mktemp("base"))


@pytest.fixture(name="store")
def fixture_store(tmp_path: Path) -> Store:
    """A fresh store."""
    return Store(tmp_path / "store")


@pytest.fixture(name="python_base", scope="module")
def fixture_python_base(docker_engine: DockerEngine, debian_python_image: str) -> str:
    """``docker-daemon:`` the Debian python base (without device nodes)."""
    return f"docker-daemon:{ensure_nodev_image(docker_engine, debian_python_image)}"


@pytest.fixture(name="python_store", scope="module")
def fixture_python_store(tmp_path_factory: pytest.TempPathFactory) -> Store:
    """One store for the module's builds on the Python base (read and extracted once)."""
    return Store(tmp_path_factory.mktemp("python-store"))


@pytest.fixture(name="outside", scope="module")
def fixture_outside(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Outside]:
    """A network namespace with web, DNS and package index servers; removed afterwards."""
    with outside_network(tmp_path_factory.mktemp("outside")) as made:
        yield made


@pytest.fixture(name="outside_dns")
def fixture_outside_dns(
    outside: Outside, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Outside:
    """RUN steps resolve names with the outside namespace's DNS server."""
    monkeypatch.setenv("IMAGEDSL_RESOLV_CONF", str(outside.resolv_conf(tmp_path)))
    return outside


class Recorder(Reporter):
    """Keeps every output line."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def step_output(self, label: str, line: str) -> None:  # noqa: ARG002 - the hook's signature
        self.lines.append(line)

    def after(self, marker: str) -> list[str]:
        """The lines printed after the line ``marker``."""
        return self.lines[self.lines.index(marker) + 1 :]


def run_build(
    stage: Stage,
    store: Store,
    *,
    allow: frozenset[str] = frozenset(),
    seccomp: bool = True,
    stages: dict[str, Stage] | None = None,
) -> tuple[OCIBuild, Recorder]:
    """Plan and build ``stage`` (target ``img``), keeping the output lines."""
    recorder = Recorder()
    planned = plan({**(stages or {}), "img": stage}, "img", store=store, project="sandbox")
    request = BuildRequest(allow=allow, seccomp=seccomp)
    built = OCIBackend().build_image(planned, request, store=store, reporter=recorder)
    return built, recorder


def nonce() -> str:
    """A comment that makes a command's key new (the sandbox's answer must be fresh)."""
    return f" # {uuid.uuid4().hex[:12]}"


# -- what the host keeps to itself -----------------------------------------------------------


class LoopbackServer:
    """A TCP server on 127.0.0.1 that counts the connections it accepts."""

    def __init__(self) -> None:
        self.socket = socket.socket()
        self.socket.bind(("127.0.0.1", 0))
        self.socket.listen(16)
        self.port = self.socket.getsockname()[1]
        self.accepted = 0
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                connection, _ = self.socket.accept()
            except OSError:
                return
            self.accepted += 1
            with connection:
                connection.sendall(b"host loopback\n")

    def close(self) -> None:
        self.socket.close()
        self._thread.join(5)


@pytest.fixture(name="loopback_server")
def fixture_loopback_server() -> Iterator[LoopbackServer]:
    """A TCP server on the host's loopback."""
    server = LoopbackServer()
    yield server
    server.close()


def test_host_loopback_is_out_of_reach(
    base: str, store: Store, loopback_server: LoopbackServer
) -> None:
    """A RUN reaches no TCP server on the host's loopback, by the NAT gateway's address or
    by 127.0.0.1; with ``network="host"`` and its allowance it does."""
    port = loopback_server.port
    probe = "echo ::probe; " + "; ".join(
        f"if nc {target} {port} </dev/null >/dev/null 2>&1; then echo {target} reached; "
        f"else echo {target} refused; fi"
        for target in ("10.0.2.2", "127.0.0.1")
    )
    _, recorder = run_build(dsl.image(base).run(probe), store)
    assert recorder.after("::probe") == ["10.0.2.2 refused", "127.0.0.1 refused"]
    assert loopback_server.accepted == 0
    host_probe = f"echo ::probe; nc 127.0.0.1 {port} </dev/null"
    _, allowed = run_build(
        dsl.image(base).run(host_probe, network="host"), store, allow=NETWORK_HOST
    )
    assert allowed.after("::probe") == ["host loopback"]
    assert loopback_server.accepted == 1


def test_network_host_needs_its_entitlement(base: str, store: Store) -> None:
    """``network="host"`` without ``network.host`` stops before anything runs: an input
    error (exit 2) at the RUN's line."""
    stage = dsl.image(base).run("echo ran", network="host")
    with pytest.raises(EntitlementError) as caught:
        run_build(stage, store)
    assert caught.value.entitlement == "network.host"
    assert exit_code_of(caught.value) == 2
    assert caught.value.location is not None
    assert caught.value.location.file == __file__
    assert "--allow network.host" in str(caught.value)


def test_host_interfaces_are_hidden(base: str, store: Store) -> None:
    """A RUN sees ``lo`` and ``eth0`` with the NAT's address, none of the host's
    interfaces or addresses; with ``network="host"`` it sees the host's."""
    probe = "echo ::probe; ip -o -4 addr | awk '{print $2, $4}'"
    _, recorder = run_build(dsl.image(base).run(probe), store)
    assert recorder.after("::probe") == ["lo 127.0.0.1/8", "eth0 10.0.2.100/24"]
    host = {
        line.split()[3]
        for line in oci_support.run("ip", "-o", "-4", "addr").splitlines()
        if "127.0.0.1" not in line
    }
    _, shared = run_build(dsl.image(base).run(probe, network="host"), store, allow=NETWORK_HOST)
    assert host <= {line.split()[1] for line in shared.after("::probe")}


def test_forbidden_system_calls_fail_unless_opted_out(base: str, store: Store) -> None:
    """Under Docker's default profile a RUN cannot make a user namespace (it can as root
    without the profile: ``--no-seccomp``); ``/proc`` says the filter is on."""
    probe = (
        "echo ::probe; grep '^Seccomp:' /proc/self/status; "
        "if unshare -U true 2>/dev/null; then echo userns made; else echo userns refused; fi"
    )
    _, recorder = run_build(dsl.image(base).run(probe), store)
    assert recorder.after("::probe") == ["Seccomp:\t2", "userns refused"]
    _, unconfined = run_build(dsl.image(base).run(probe + nonce()), store, seccomp=False)
    assert unconfined.after("::probe") == ["Seccomp:\t0", "userns made"]


# -- ordinary work ---------------------------------------------------------------------------


def test_dns_and_an_outbound_connection(base: str, store: Store, outside_dns: Outside) -> None:
    """A RUN resolves a name through the DNS server resolv.conf names and fetches a page
    from a server in another network namespace, through the NAT."""
    probe = (
        f"echo ::probe; cat /etc/resolv.conf; nslookup {DNS_NAME} | grep -A1 '^Name:' | tail -1; "
        f"wget -q -O- {outside_dns.named_url}/hello.txt"
    )
    _, recorder = run_build(dsl.image(base).run(probe), store)
    assert recorder.after("::probe") == [
        f"nameserver {outside_dns.address}",
        f"Address: {outside_dns.address}",
        GREETING.strip(),
    ]


# -- what cannot be set up ---------------------------------------------------------------------


def test_missing_seccomp_profile_is_an_environment_failure(
    base: str, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No profile to apply fails the RUN before it starts (exit 1), naming the opt-out,
    which then builds."""
    monkeypatch.setenv("IMAGEDSL_SECCOMP_PROFILE", "/nonexistent/seccomp.json")
    stage = dsl.image(base).run("echo ::probe; echo ran")
    with pytest.raises(SeccompUnavailableError) as caught:
        run_build(stage, store)
    assert exit_code_of(caught.value) == 1
    assert "/nonexistent/seccomp.json" in caught.value.problem
    assert "--no-seccomp" in str(caught.value)
    assert caught.value.location is not None
    _, recorder = run_build(stage, store, seccomp=False)
    assert recorder.after("::probe") == ["ran"]


def test_missing_slirp4netns_is_an_environment_failure(
    base: str, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without slirp4netns a RUN on the default network fails before it starts (exit 1);
    ``network="none"`` needs none."""
    monkeypatch.setenv("IMAGEDSL_SLIRP4NETNS", "/nonexistent/slirp4netns")
    with pytest.raises(NetworkUnavailableError) as caught:
        run_build(dsl.image(base).run("true"), store)
    assert exit_code_of(caught.value) == 1
    assert "slirp4netns" in str(caught.value)
    monkeypatch.setenv("IMAGEDSL_SLIRP4NETNS", shutil.which("false") or "/bin/false")
    with pytest.raises(NetworkUnavailableError, match="did not start"):
        run_build(dsl.image(base).run("true"), store)
    assert _bound_namespaces(store) == []
    _, recorder = run_build(
        dsl.image(base).run("echo ::probe; echo offline", network="none"), store
    )
    assert recorder.after("::probe") == ["offline"]


def test_nothing_of_the_sandbox_is_left(base: str, store: Store) -> None:
    """After RUN steps that succeed and fail, no slirp4netns runs for them and no network
    namespace stays bound."""
    run_build(dsl.image(base).run("true" + nonce()), store)
    with pytest.raises(Exception, match="exit code 3"):
        run_build(dsl.image(base).run("exit 3"), store)
    assert _slirp_processes(store) == []
    assert _bound_namespaces(store) == []


def _private_prefix(store: Store) -> str:
    """The start of the private directories' names of this store's RUN steps (other tests
    may be running RUN steps of their own stores meanwhile)."""
    from imagedsl.backends.oci.run.executor import RunExecutor
    from imagedsl.oci.blobs import BlobStore

    executor = RunExecutor(BlobStore(store), secrets=(), epoch=0, timeout=None, on_output=print)
    return executor._private_name("")


def _bound_namespaces(store: Store) -> list[str]:
    """Mount points of this store's RUN steps still in the mount table."""
    prefix = _private_prefix(store)
    with open("/proc/self/mountinfo") as handle:
        return [line for line in handle if prefix in line]


def _slirp_processes(store: Store) -> list[int]:
    """slirp4netns processes attached to a namespace of this store's RUN steps."""
    prefix = _private_prefix(store)
    found = []
    for proc in Path("/proc").iterdir():
        with contextlib.suppress(OSError):
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            if "slirp4netns" in cmdline and prefix in cmdline:
                found.append(int(proc.name))
    return found


# -- the command line ------------------------------------------------------------------------

_HOST_BUILD = """\
import imagedsl as dsl

app = dsl.image({base!r}).run("echo on the host network", network="host")
"""


def test_cli_plan_says_which_steps_need_an_entitlement(base: str, tmp_path: Path) -> None:
    """``plan`` notes the RUN that needs ``--allow network.host`` (and that it is allowed
    when it is); ``build`` refuses it without the allowance (exit 2) and builds it with it;
    an unknown entitlement is a usage error."""
    (tmp_path / "build.py").write_text(_HOST_BUILD.format(base=base))
    store = tmp_path / "store"
    refused = imagedsl("plan", cwd=tmp_path, store=store)
    assert refused.returncode == 0, refused.stderr
    assert "needs --allow network.host" in refused.stdout
    allowed = imagedsl("plan", "--allow", "network.host", "--json", cwd=tmp_path, store=store)
    assert "allowed by --allow network.host" in allowed.stdout
    failed = imagedsl("build", "--backend", "oci", cwd=tmp_path, store=store)
    assert failed.returncode == 2
    assert "build.py:3" in failed.stderr
    assert "network.host" in failed.stderr
    built = imagedsl(
        "build", "--backend", "oci", "--allow", "network.host", cwd=tmp_path, store=store
    )
    assert built.returncode == 0, built.stderr
    typo = imagedsl("plan", "--allow", "network.hots", cwd=tmp_path, store=store)
    assert typo.returncode == 2
    assert "unknown entitlement" in typo.stderr


def test_cli_no_seccomp_is_the_opt_out(
    base: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without a usable profile ``build`` fails with exit 1 and says how to opt out;
    ``--no-seccomp`` builds."""
    (tmp_path / "build.py").write_text(
        f"import imagedsl as dsl\n\napp = dsl.image({base!r}).run('echo unfiltered')\n"
    )
    monkeypatch.setenv("IMAGEDSL_SECCOMP_PROFILE", str(tmp_path / "missing.json"))
    store = tmp_path / "store"
    failed = imagedsl("build", "--backend", "oci", cwd=tmp_path, store=store)
    assert failed.returncode == 1
    assert "--no-seccomp" in failed.stderr
    built = imagedsl("build", "--backend", "oci", "--no-seccomp", cwd=tmp_path, store=store)
    assert built.returncode == 0, built.stderr


def test_unknown_entitlement_is_refused_by_the_library() -> None:
    """BuildSession refuses an entitlement it does not know before loading anything."""
    from imagedsl.api import BuildSession

    with pytest.raises(UnknownEntitlementError):
        BuildSession("does-not-matter.py", allow=["network.hots"])


# -- on the Python base ------------------------------------------------------------------------


@pytest.mark.slow
def test_abstract_unix_socket_is_out_of_reach(python_base: str, python_store: Store) -> None:
    """A RUN cannot connect to an abstract unix socket of the host's network namespace;
    on the host's network (allowed) it can."""
    name = f"imagedsl-sandbox-{uuid.uuid4().hex[:12]}"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind("\0" + name)
    listener.listen(4)
    try:
        probe = (
            PY_TRY + "s = socket.socket(socket.AF_UNIX)\n"
            f"attempt('abstract', lambda: s.connect('\\0{name}'))\n"
        )
        command = f"echo ::probe; python3 -c {_quote(probe)}"
        _, recorder = run_build(dsl.image(python_base).run(command), python_store)
        assert recorder.after("::probe") == ["abstract ECONNREFUSED"]
        _, shared = run_build(
            dsl.image(python_base).run(command, network="host"), python_store, allow=NETWORK_HOST
        )
        assert shared.after("::probe") == ["abstract ok"]
    finally:
        listener.close()


@pytest.mark.slow
def test_keyring_and_namespaces_are_refused_unless_opted_out(
    python_base: str, python_store: Store
) -> None:
    """``keyctl`` and ``unshare(CLONE_NEWUSER)`` fail with EPERM under the profile, as under
    BuildKit; ``--no-seccomp`` lets them through (the process is root)."""
    probe = (
        PY_TRY + "libc = ctypes.CDLL(None, use_errno=True)\n"
        "def checked(result):\n"
        "    if result < 0:\n"
        "        raise OSError(ctypes.get_errno(), 'refused')\n"
        "attempt('keyctl', lambda: checked(libc.syscall(250, 0, -3, 0)))\n"
        "attempt('unshare', lambda: checked(libc.unshare(0x10000000)))\n"
    )
    command = f"echo ::probe; python3 -c {_quote(probe)}"
    _, recorder = run_build(dsl.image(python_base).run(command), python_store)
    assert recorder.after("::probe") == ["keyctl EPERM", "unshare EPERM"]
    _, unconfined = run_build(
        dsl.image(python_base).run(command + nonce()), python_store, seccomp=False
    )
    assert unconfined.after("::probe") == ["keyctl ok", "unshare ok"]


@pytest.mark.slow
def test_pip_install_from_an_index_outside(
    python_base: str, python_store: Store, outside_dns: Outside
) -> None:
    """``pip install`` resolves the index's name and installs from it, through the NAT."""
    command = (
        f"pip install --quiet --no-cache-dir --break-system-packages "
        f"--index-url {outside_dns.index_url} --trusted-host {DNS_NAME} {PACKAGE} && "
        f"echo ::probe && python3 -c 'import {PACKAGE}; print({PACKAGE}.TEXT)'"
    )
    built, recorder = run_build(dsl.image(python_base).run(command + nonce()), python_store)
    assert recorder.after("::probe") == [PACKAGE_TEXT]
    names = [m.name for m in _layer(python_store, built, -1)]
    assert any(f"/{PACKAGE}/__init__.py" in name for name in names)


BIND_LOW_PORT = (
    "import socket; s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); "
    "s.bind(('127.0.0.1', 80)); print('bound port 80')"
)


@pytest.mark.slow
def test_file_capabilities_and_xattrs_are_kept(
    python_base: str, python_store: Store, tmp_path: Path
) -> None:
    """A capability ``setcap`` gives in a RUN is in its layer (``SCHILY.xattr``), works for a
    later RUN as another user, and survives ``COPY --from`` into another image (whose RUN
    stands on the COPY layer extracted from its tar); so does a ``user.*`` attribute."""
    setcap = _tool("setcap")
    if setcap is None:
        unavailable(NO_TOOL, "setcap (Debian's libcap2-bin)")
    context = tmp_path / "ctx"
    context.mkdir()
    shutil.copy(setcap, context / "setcap")
    ctx = dsl.context(context)
    base = dsl.image(python_base)
    tagged = base.copy(ctx.file("setcap"), "/usr/local/sbin/setcap").run(
        "cp /usr/bin/python3 /usr/local/bin/lowport && "
        "setcap cap_net_bind_service=+ep /usr/local/bin/lowport && "
        "python3 -c \"import os; os.setxattr('/usr/local/bin/lowport', 'user.origin', b'run')\""
    )
    probe = f"echo ::probe; lowport -c {_quote(BIND_LOW_PORT)}"
    read_attr = "os.getxattr('/usr/local/bin/lowport', 'user.origin')"
    later = tagged.user("nobody").run(f'{probe}; python3 -c "import os; print({read_attr})"')
    built, recorder = run_build(later, python_store, stages={"tagged": tagged})
    assert recorder.after("::probe") == ["bound port 80", "b'run'"]
    records = _member(python_store, built, "usr/local/bin/lowport").pax_headers
    capability = records["SCHILY.xattr.security.capability"].encode("utf-8", "surrogateescape")
    assert capability[:4] == bytes.fromhex("01000002")  # vfs_cap_data revision 2, effective
    assert records["SCHILY.xattr.user.origin"] == "run"

    without = base.user("nobody").run(f"echo ::probe; python3 -c {_quote(BIND_LOW_PORT)} || true")
    _, refused = run_build(without, python_store)
    assert any("Permission denied" in line for line in refused.after("::probe"))

    copied = (
        dsl.image(python_base)
        .copy(tagged.path("/usr/local/bin/lowport"), "/usr/local/bin/lowport")
        .user("nobody")
        .run(probe + nonce())
    )
    built_copy, from_copy = run_build(copied, python_store, stages={"tagged": tagged})
    assert from_copy.after("::probe") == ["bound port 80"]
    copied_records = _member(python_store, built_copy, "usr/local/bin/lowport").pax_headers
    assert (
        copied_records["SCHILY.xattr.security.capability"]
        == (records["SCHILY.xattr.security.capability"])
    )


def _layer(store: Store, built: OCIBuild, index: int) -> list[tarfile.TarInfo]:
    layer = built.image.layers[index]
    descriptor: dict[str, Any] = {"mediaType": layer.media_type, "digest": layer.digest}
    return oci_support.layer_members(store.root, descriptor)


def _member(store: Store, built: OCIBuild, name: str) -> tarfile.TarInfo:
    """The entry ``name`` of the topmost layer that holds it."""
    for index in range(len(built.image.layers) - 1, -1, -1):
        for member in _layer(store, built, index):
            if member.name == name:
                return member
    raise AssertionError(f"no layer holds {name}")


def _quote(text: str) -> str:
    return "'" + text.replace("'", "'\"'\"'") + "'"


def test_a_run_with_a_network_leaves_the_hosts_shared_mounts_alone(
    base: str, store: Store, tmp_path: Path
) -> None:
    """slirp4netns's sandbox pivots away from the old root and detaches it. Started in the
    host's mount namespace, that detach reached every mount shared with the host (systemd makes
    ``/`` shared) and unmounted, for example, the root filesystems of the containers Docker was
    starting at that moment. Here a shared mount with a mount below it stands in for them: both
    are still there after a RUN with the default network."""
    shared = tmp_path / "shared"
    below = shared / "below"
    shared.mkdir()
    mounted: list[Path] = []
    try:
        for where, extra in ((shared, ["--make-shared"]), (below, [])):
            where.mkdir(exist_ok=True)
            subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(where)], check=True)
            mounted.append(where)
            if extra:
                subprocess.run(["mount", *extra, str(where)], check=True)
        (below / "marker").write_text("still here")
        built, recorder = run_build(dsl.image(base).run("echo networked"), store)
        assert "networked" in recorder.lines
        assert built.result.digest is not None
        assert mounts_below(shared) == [below, shared]
        assert (below / "marker").read_text() == "still here"
    finally:
        for where in reversed(mounted):
            subprocess.run(["umount", "-l", str(where)], check=False)
