"""The RUN sandbox's configuration, without running anything: Docker's default seccomp
profile made from the system's, its resolution for a RUN, resolv.conf, and the runtime
config's namespaces."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest

from imagedsl.backends.oci.run.network import resolv_conf
from imagedsl.backends.oci.run.runc import CAPABILITIES, ContainerSpec, runtime_config
from imagedsl.backends.oci.run.seccomp import (
    ALLOW,
    CLONE_NAMESPACE_FLAGS,
    ERRNO,
    SYSTEM_PROFILE,
    docker_default,
    names_in,
    read_profile,
    runtime_seccomp,
)
from tests.support.skips import NO_TOOL, unavailable

if TYPE_CHECKING:
    from pathlib import Path

#: What Docker's default profile refuses a RUN (it has none of CAP_SYS_ADMIN, CAP_SYS_BOOT,
#: CAP_SYSLOG, CAP_SYS_NICE, CAP_SYS_MODULE, CAP_SYS_TIME, CAP_SYS_PTRACE).
REFUSED = (
    "unshare",
    "setns",
    "mount",
    "umount2",
    "pivot_root",
    "keyctl",
    "add_key",
    "request_key",
    "reboot",
    "syslog",
    "bpf",
    "init_module",
    "settimeofday",
    "kexec_load",
    "open_tree",
    "fsopen",
    "userfaultfd",
)
#: What an ordinary build needs.
ALLOWED = ("read", "write", "openat", "execve", "fork", "vfork", "chown", "setxattr", "socket")


@pytest.fixture(name="docker_profile", scope="module")
def fixture_docker_profile() -> dict[str, Any]:
    """Docker's default profile, resolved for a RUN on an x86-64 6.1 kernel."""
    if not SYSTEM_PROFILE.is_file():
        unavailable(NO_TOOL, f"{SYSTEM_PROFILE} (Debian: golang-github-containers-common)")
    profile = docker_default(read_profile(SYSTEM_PROFILE))
    return runtime_seccomp(profile, CAPABILITIES, machine="x86_64", kernel="6.1.0-13-amd64")


def test_docker_default_refuses_what_docker_refuses(docker_profile: dict[str, Any]) -> None:
    """New namespaces, mounts, the keyring, reboot and the other calls Docker keeps from a
    container without extra capabilities are refused; ordinary calls are allowed."""
    allowed = names_in(docker_profile, ALLOW)
    assert not allowed & set(REFUSED)
    assert set(ALLOWED) <= allowed | _conditional(docker_profile)
    assert docker_profile["defaultAction"] == ERRNO
    assert docker_profile["defaultErrnoRet"] == 1
    assert docker_profile["architectures"][0] == "SCMP_ARCH_X86_64"


def test_clone_is_allowed_without_namespace_flags(docker_profile: dict[str, Any]) -> None:
    """``clone`` passes only without namespace flags; ``clone3`` answers ENOSYS, so the C
    library falls back to ``clone``."""
    (clone,) = [rule for rule in docker_profile["syscalls"] if "clone" in rule["names"]]
    assert clone["action"] == ALLOW
    assert clone["args"] == [
        {"index": 0, "value": CLONE_NAMESPACE_FLAGS, "valueTwo": 0, "op": "SCMP_CMP_MASKED_EQ"}
    ]
    (clone3,) = [rule for rule in docker_profile["syscalls"] if "clone3" in rule["names"]]
    assert (clone3["action"], clone3["errnoRet"]) == (ERRNO, 38)


def test_no_call_has_two_unconditional_rules(docker_profile: dict[str, Any]) -> None:
    """Every call has at most one rule without argument checks (libseccomp refuses a call
    given two actions)."""
    seen: dict[str, str] = {}
    for rule in docker_profile["syscalls"]:
        if rule.get("args"):
            continue
        for name in rule["names"]:
            assert name not in seen, f"{name}: {seen[name]} and {rule['action']}"
            seen[name] = rule["action"]


def _conditional(profile: dict[str, Any]) -> set[str]:
    return {n for rule in profile["syscalls"] if rule.get("args") for n in rule["names"]}


def test_rules_resolve_by_capability_architecture_and_kernel() -> None:
    """A rule holds when the process has all of its ``includes.caps``, none of its
    ``excludes.caps``, runs on one of its arches and a kernel at least its ``minKernel``."""
    profile = {
        "defaultAction": ERRNO,
        "archMap": [
            {"architecture": "SCMP_ARCH_AARCH64", "subArchitectures": ["SCMP_ARCH_ARM"]},
        ],
        "syscalls": [
            {"names": ["a"], "action": ALLOW, "includes": {"caps": ["CAP_SYS_ADMIN"]}},
            {"names": ["b"], "action": ALLOW, "excludes": {"caps": ["CAP_SYS_ADMIN"]}},
            {"names": ["c"], "action": ALLOW, "includes": {"arches": ["amd64"]}},
            {"names": ["d"], "action": ALLOW, "includes": {"arches": ["arm64"]}},
            {"names": ["e"], "action": ALLOW, "includes": {"minKernel": "4.8"}},
            {"names": ["f"], "action": ALLOW, "includes": {"minKernel": "6.2"}},
            {"names": ["g"], "action": ERRNO, "errnoRet": 38, "args": [{"index": 0, "value": 1,
             "valueTwo": 0, "op": "SCMP_CMP_EQ"}]},
        ],
    }  # fmt: skip
    resolved = runtime_seccomp(profile, ["CAP_CHOWN"], machine="aarch64", kernel="6.1.55")
    assert [rule["names"] for rule in resolved["syscalls"]] == [["b"], ["d"], ["e"], ["g"]]
    assert resolved["syscalls"][-1]["errnoRet"] == 38
    assert resolved["architectures"] == ["SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"]
    assert "defaultErrnoRet" not in resolved


def test_runtime_config_namespaces_and_seccomp() -> None:
    """The default network joins the namespace the executor made; ``none`` gets a new one;
    ``host`` none at all. The profile goes to ``linux.seccomp`` unless opted out."""

    def namespaces(spec: ContainerSpec) -> list[dict[str, str]]:
        return [n for n in runtime_config(spec)["linux"]["namespaces"] if n["type"] == "network"]

    common: dict[str, Any] = {"rootfs": "/r", "args": ("true",), "env": {}, "cwd": "/"}
    joined = ContainerSpec(uid=0, gid=0, network_namespace="/dev/shm/x/netns", **common)
    assert namespaces(joined) == [{"type": "network", "path": "/dev/shm/x/netns"}]
    assert namespaces(ContainerSpec(uid=0, gid=0, network="none", **common)) == [
        {"type": "network"}
    ]
    assert namespaces(ContainerSpec(uid=0, gid=0, network="host", **common)) == []
    profile = {"defaultAction": ERRNO, "syscalls": []}
    with_profile = ContainerSpec(uid=0, gid=0, seccomp=profile, **common)
    assert runtime_config(with_profile)["linux"]["seccomp"] == profile
    assert "seccomp" not in runtime_config(joined)["linux"]


def test_resolv_conf_is_buildkits(tmp_path: Path) -> None:
    """The host's resolv.conf without loopback nameservers (for a namespace of its own),
    Google's servers when none is left; the host's as it is for ``network="host"``."""
    host = tmp_path / "resolv.conf"
    host.write_text("search corp.example\nnameserver 127.0.0.53\nnameserver 10.1.2.3\n")
    assert resolv_conf("default", host) == "search corp.example\nnameserver 10.1.2.3\n"
    assert resolv_conf("host", host) == host.read_text()
    host.write_text("nameserver 127.0.0.1\nnameserver ::1\noptions edns0\n")
    assert resolv_conf("none", host) == ("options edns0\nnameserver 8.8.8.8\nnameserver 8.8.4.4\n")
    assert resolv_conf("default", tmp_path / "missing") == (
        "nameserver 8.8.8.8\nnameserver 8.8.4.4\n"
    )
