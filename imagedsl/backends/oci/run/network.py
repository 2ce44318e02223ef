"""The network a RUN step sees: a namespace of its own behind user-mode NAT, as BuildKit gives.

``network="default"``: a new network namespace per RUN with ``lo`` and ``eth0``, and
slirp4netns (Debian's ``slirp4netns``) as its NAT gateway to the outside. slirp4netns runs on
the host's side and makes the RUN's outbound connections from the host's network namespace
with ordinary sockets, so the RUN reaches what the host reaches, except:

- the host's loopback: ``--disable-host-loopback`` refuses the gateway address that would
  map to ``127.0.0.1``, and the RUN's own ``127.0.0.1`` is its own namespace's;
- the host's abstract unix sockets and interfaces: they belong to the host's namespace, which
  the RUN is not in.

That is what a RUN in BuildKit's bridge reaches (Docker's bridge also lets a container reach
the host's other addresses, never its loopback). The namespace is a file bind-mounted in the
RUN's private directory (so runc joins it by path and slirp4netns attaches to it before the
command starts); slirp4netns exits when its exit pipe closes, which also happens when the
build process dies.

``network="host"``: the host's namespace, allowed only with the ``network.host`` entitlement
(``--allow network.host``); ``network="none"``: a new namespace with only ``lo`` (runc's).

``/etc/resolv.conf`` is BuildKit's: the host's (``systemd-resolved``'s upstream file when the
host's names only its local stub), without loopback nameservers for a namespace of its own,
Google's public servers when none is left.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import selectors
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Final

import attrs

from imagedsl.backends.oci.run.rootfs import unmount
from imagedsl.errors import EnvironmentFailure

#: An explicit slirp4netns binary (otherwise ``slirp4netns`` on PATH).
SLIRP_ENV: Final = "IMAGEDSL_SLIRP4NETNS"
#: The resolv.conf RUN steps start from (default ``/etc/resolv.conf``), as buildkitd's
#: ``[dns]`` settings let an operator choose the servers RUN steps use.
RESOLV_CONF_ENV: Final = "IMAGEDSL_RESOLV_CONF"
HOST_RESOLV_CONF: Final = Path("/etc/resolv.conf")
#: Where systemd-resolved keeps the real upstream servers behind its 127.0.0.53 stub.
SYSTEMD_RESOLV_CONF: Final = Path("/run/systemd/resolve/resolv.conf")
#: BuildKit's fallback when no usable nameserver is left.
DEFAULT_NAMESERVERS: Final = ("8.8.8.8", "8.8.4.4")
#: The interface inside the RUN, named as BuildKit's bridge names it.
INTERFACE: Final = "eth0"
#: slirp4netns's recommended MTU: far fewer packets through user-mode TCP than 1500.
MTU: Final = 65520
#: The file inside a RUN's private directory that holds its network namespace.
NETNS_FILE: Final = "netns"
_READY_TIMEOUT: Final = 10.0
_EXIT_GRACE: Final = 5.0


@attrs.define
class NetworkUnavailableError(EnvironmentFailure):
    """A RUN needs a network namespace of its own and this machine cannot make one:
    ``problem`` says what is missing or what failed."""

    stage: str
    instruction: str
    problem: str

    def __str__(self) -> str:
        return (
            f"{self.stage}: {self.instruction}: a RUN with network='default' gets its own "
            f"network namespace behind slirp4netns's NAT, and {self.problem}; install Debian's "
            f"slirp4netns package (or set ${SLIRP_ENV}), or give the step network='none'"
        )


def find_slirp4netns() -> str | None:
    """The slirp4netns binary: ``$IMAGEDSL_SLIRP4NETNS``, else ``slirp4netns`` on PATH."""
    explicit = os.environ.get(SLIRP_ENV)
    if explicit:
        return explicit if os.access(explicit, os.X_OK) else None
    return shutil.which("slirp4netns") or shutil.which(
        "slirp4netns", path="/usr/local/bin:/usr/bin:/usr/sbin"
    )


def network_problem() -> str | None:
    """Why a namespace behind NAT cannot be made here, or None when it can."""
    if find_slirp4netns() is None:
        return "slirp4netns is not on PATH"
    if shutil.which("unshare") is None:
        return "util-linux's unshare is not on PATH"
    return None


# -- resolv.conf -----------------------------------------------------------------------------


def _nameservers(text: str) -> list[str]:
    return [
        fields[1]
        for fields in (line.split() for line in text.splitlines())
        if len(fields) >= 2 and fields[0] == "nameserver"
    ]


def _is_loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address.partition("%")[0]).is_loopback
    except ValueError:
        return False


def _read(path: Path) -> str | None:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return None


def resolv_conf(network: str, host_file: Path | None = None) -> str:
    """The ``/etc/resolv.conf`` a RUN with ``network`` sees (see the module docstring)."""
    if host_file is None:
        explicit = os.environ.get(RESOLV_CONF_ENV)
        host_file = Path(explicit) if explicit else HOST_RESOLV_CONF
    text = _read(host_file)
    if text is None:
        return _fallback("")
    if network == "host":
        return text if _nameservers(text) else _fallback(text)
    servers = _nameservers(text)
    if servers and all(_is_loopback(s) for s in servers) and host_file == HOST_RESOLV_CONF:
        upstream = _read(SYSTEMD_RESOLV_CONF)
        if upstream is not None:
            text = upstream
    kept = [line for line in text.splitlines() if not _loopback_nameserver(line)]
    filtered = "".join(line + "\n" for line in kept)
    return filtered if _nameservers(filtered) else _fallback(filtered)


def _loopback_nameserver(line: str) -> bool:
    fields = line.split()
    return len(fields) >= 2 and fields[0] == "nameserver" and _is_loopback(fields[1])


def _fallback(rest: str) -> str:
    """``rest`` (its options and search domains) with the default nameservers."""
    lines = [line for line in rest.splitlines() if line.split()[:1] != ["nameserver"]]
    lines += [f"nameserver {server}" for server in DEFAULT_NAMESERVERS]
    return "".join(line + "\n" for line in lines)


# -- the namespace ---------------------------------------------------------------------------


@contextlib.contextmanager
def private_network(private: Path, stage: str, instruction: str) -> Iterator[str]:
    """A new network namespace behind slirp4netns, bound at ``private/netns``; yields its
    path (for runc's ``namespaces``). Everything is undone when the block ends."""
    slirp = find_slirp4netns()
    unshare = shutil.which("unshare")
    if slirp is None or unshare is None:
        problem = network_problem() or "slirp4netns is missing"
        raise NetworkUnavailableError(stage, instruction, problem)
    netns = private / NETNS_FILE
    netns.touch(mode=0o600)
    try:
        made = subprocess.run(
            [unshare, f"--net={netns}", "true"],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            check=False,
        )
        if made.returncode != 0:
            raise NetworkUnavailableError(
                stage, instruction, f"a network namespace cannot be made: {made.stderr.strip()}"
            )
        with _slirp4netns(slirp, unshare, netns, private / "slirp4netns.log", stage, instruction):
            yield str(netns)
    finally:
        release_namespace(netns)


@contextlib.contextmanager
def _slirp4netns(
    binary: str, unshare: str, netns: Path, log: Path, stage: str, instruction: str
) -> Iterator[None]:
    """slirp4netns attached to ``netns``, configured and ready, until the block ends. Its
    messages go to ``log`` (a file, never a pipe nobody reads while the RUN runs).

    It starts in a mount namespace of its own whose mounts are all private: its sandbox
    (``--enable-sandbox``) pivots to an empty root and detaches the old one, and where the
    old root's mounts are shared with the host's (systemd makes them so), that detach
    reached the host too and unmounted the root filesystems of containers other tools were
    starting at that moment (seen here: Docker's ``exec: "/bin/sh": stat /bin/sh: no such
    file or directory`` while a RUN with a network ran)."""
    ready_read, ready_write = os.pipe()
    exit_read, exit_write = os.pipe()
    try:
        with log.open("wb") as log_file:
            process = subprocess.Popen(
                [
                    unshare,
                    "--mount",
                    "--propagation=private",
                    binary,
                    "--configure",
                    f"--mtu={MTU}",
                    "--disable-host-loopback",
                    "--enable-sandbox",
                    "--enable-seccomp",
                    f"--ready-fd={ready_write}",
                    f"--exit-fd={exit_read}",
                    "--netns-type=path",
                    str(netns),
                    INTERFACE,
                ],
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                pass_fds=(ready_write, exit_read),
                start_new_session=True,  # a terminal's Ctrl-C is ours to handle
            )
    except OSError as error:
        for fd in (ready_read, ready_write, exit_read, exit_write):
            os.close(fd)
        raise NetworkUnavailableError(stage, instruction, f"{binary}: {error}") from None
    os.close(ready_write)
    os.close(exit_read)
    try:
        if not _wait_ready(ready_read, process):
            _stop(process, exit_write)
            exit_write = -1
            detail = log.read_text(errors="replace").strip().splitlines()
            raise NetworkUnavailableError(
                stage,
                instruction,
                "slirp4netns did not start" + (f": {detail[-1]}" if detail else ""),
            )
        yield
    finally:
        os.close(ready_read)
        if exit_write >= 0:
            _stop(process, exit_write)


def _wait_ready(fd: int, process: subprocess.Popen[bytes]) -> bool:
    """Wait for slirp4netns's ready byte (it writes ``1`` once the interface is up)."""
    deadline = time.monotonic() + _READY_TIMEOUT
    with selectors.DefaultSelector() as selector:
        selector.register(fd, selectors.EVENT_READ)
        while (left := deadline - time.monotonic()) > 0:
            if selector.select(left):
                return os.read(fd, 1) == b"1"
            if process.poll() is not None:
                return False
    return False


def _stop(process: subprocess.Popen[bytes], exit_write: int) -> None:
    """Close the exit pipe (slirp4netns's signal to leave), then reap it."""
    os.close(exit_write)
    try:
        process.wait(_EXIT_GRACE)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def release_namespace(netns: Path) -> None:
    """Unbind a namespace file (the namespace goes once nothing uses it) and remove it."""
    with contextlib.suppress(OSError):
        unmount(netns)
    with contextlib.suppress(OSError):
        netns.unlink()


__all__ = [
    "NETNS_FILE",
    "NetworkUnavailableError",
    "find_slirp4netns",
    "network_problem",
    "private_network",
    "release_namespace",
    "resolv_conf",
]
