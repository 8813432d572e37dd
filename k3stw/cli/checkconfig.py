"""
``k3s check-config``: a short honest subset of k3s's check script: the
iptables in use and its mode, swap, the cgroup hierarchy and controllers,
and the kernel options k3s calls generally necessary and optional, read
from ``/proc/config.gz`` or ``/boot/config-<release>`` (``enabled``,
``enabled (as module)`` or ``missing``).  Exit status 0 when nothing
necessary is missing (``STATUS: pass``), else 1 (``STATUS: <n> (fail)``).
"""

from __future__ import annotations

import gzip
import os
import subprocess
from collections.abc import Mapping
from pathlib import Path

NECESSARY = (
    "NAMESPACES", "NET_NS", "PID_NS", "IPC_NS", "UTS_NS", "CGROUPS", "CGROUP_PIDS",
    "CGROUP_CPUACCT", "CGROUP_DEVICE", "CGROUP_FREEZER", "CGROUP_SCHED", "CPUSETS", "MEMCG",
    "KEYS", "VETH", "BRIDGE", "BRIDGE_NETFILTER", "IP_NF_FILTER", "IP_NF_TARGET_MASQUERADE",
    "IP_NF_TARGET_REJECT", "NETFILTER_XT_MATCH_ADDRTYPE", "NETFILTER_XT_MATCH_CONNTRACK",
    "NETFILTER_XT_MATCH_IPVS", "NETFILTER_XT_MATCH_COMMENT", "NETFILTER_XT_MATCH_MULTIPORT",
    "IP_NF_NAT", "NF_NAT", "POSIX_MQUEUE",
)  # fmt: skip
OPTIONAL = (
    "USER_NS", "SECCOMP", "BLK_CGROUP", "BLK_DEV_THROTTLING", "CGROUP_PERF", "CGROUP_HUGETLB",
    "NET_CLS_CGROUP", "CGROUP_NET_PRIO", "CFS_BANDWIDTH", "FAIR_GROUP_SCHED", "RT_GROUP_SCHED",
    "IP_NF_TARGET_REDIRECT", "IP_SET", "IP_VS", "IP_VS_NFCT", "IP_VS_PROTO_TCP",
    "IP_VS_PROTO_UDP", "IP_VS_RR", "EXT4_FS", "EXT4_FS_POSIX_ACL", "EXT4_FS_SECURITY",
    "VXLAN", "CRYPTO", "CRYPTO_AEAD", "CRYPTO_GCM", "CRYPTO_SEQIV", "CRYPTO_GHASH",
    "XFRM", "XFRM_USER", "XFRM_ALGO", "INET_ESP", "NETFILTER_XT_MATCH_BPF", "OVERLAY_FS",
)  # fmt: skip


def kernel_config() -> tuple[str, str] | None:
    """Where the running kernel's config is, and its text (None: nowhere to read it)."""
    candidates = [Path("/proc/config.gz"), Path(f"/boot/config-{os.uname().release}")]
    candidates.append(Path(f"/usr/src/linux-{os.uname().release}/.config"))
    for path in candidates:
        try:
            data = path.read_bytes()
        except OSError:
            continue
        text = gzip.decompress(data) if path.suffix == ".gz" else data
        return str(path), text.decode(errors="replace")
    return None


def parse_config(text: str) -> dict[str, str]:
    """``CONFIG_X=y|m`` lines, by option name without ``CONFIG_``."""
    found = {}
    for line in text.splitlines():
        name, _, value = line.partition("=")
        if name.startswith("CONFIG_") and value:
            found[name.removeprefix("CONFIG_")] = value.strip()
    return found


def option_state(config: Mapping[str, str], name: str) -> str:
    value = config.get(name)
    if value == "y":
        return "enabled"
    if value == "m":
        return "enabled (as module)"
    return "missing"


def cgroup_summary(mounts: str, controllers: str | None) -> tuple[str, bool]:
    """k3s's cgroup hierarchy line for C{/proc/self/mounts} (and v2's controllers)."""
    if " /sys/fs/cgroup cgroup2 " in mounts:
        wanted = {"cpu", "cpuset", "memory"}
        present = set((controllers or "").split())
        good = wanted <= present
        state = "good" if good else "missing " + ",".join(sorted(wanted - present))
        return f"cgroups V2 mounted, cpu|cpuset|memory controllers status: {state}", good
    if " cgroup " in mounts:
        return "cgroups V1 mounted", True
    return "nothing mounted", False


def iptables_line() -> str:
    try:
        done = subprocess.run(["iptables", "--version"], capture_output=True, text=True, timeout=10)
    except OSError:
        return "iptables: not found (k3stw's kube-proxy and network policy need it)"
    version = done.stdout.strip() or done.stderr.strip()
    mode = "nft" if "nf_tables" in version else "legacy"
    return f"{version}: ok ({mode} mode)"


def swap_line(swaps: str) -> str:
    return "swap: should be disabled" if len(swaps.strip().splitlines()) > 1 else "swap: disabled"


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text()
    except OSError:
        return None


def report(
    config: Mapping[str, str] | None, config_source: str, mounts: str, controllers: str | None
) -> tuple[list[str], int]:
    """The lines k3s's check prints for what was read, and how many necessary items failed."""
    failures = 0
    lines = ["", "System:", f"- {iptables_line()}", f"- {swap_line(_read('/proc/swaps') or '')}"]
    lines += [
        "",
        f"info: reading kernel config from {config_source} ...",
        "",
        "Generally Necessary:",
    ]
    summary, good = cgroup_summary(mounts, controllers)
    failures += not good
    lines.append(f"- cgroup hierarchy: {summary}")
    if config is None:
        lines.append("- kernel config: not found, options not checked")
        failures += 1
        return lines, failures
    for name in NECESSARY:
        state = option_state(config, name)
        failures += state == "missing"
        lines.append(f"- CONFIG_{name}: {state}")
    lines += ["", "Optional Features:"]
    lines += [f"- CONFIG_{name}: {option_state(config, name)}" for name in OPTIONAL]
    return lines, failures


def main(argv: list[str], command: str = "check-config") -> int:
    from k3stw.cli.common import CommandParser

    CommandParser(prog="k3s check-config", description="Run config check").parse_args(argv)
    found = kernel_config()
    config = None if found is None else parse_config(found[1])
    source = "(nowhere: no /proc/config.gz or /boot/config-*)" if found is None else found[0]
    mounts = _read("/proc/self/mounts") or ""
    lines, failures = report(config, source, mounts, _read("/sys/fs/cgroup/cgroup.controllers"))
    print("\n".join(lines))
    print()
    print("STATUS: pass" if not failures else f"STATUS: {failures} (fail)")
    return 0 if not failures else 1
