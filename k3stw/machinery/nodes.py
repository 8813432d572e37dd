"""
What both halves know about Nodes: the conditions a kubelet owns (which the
node lifecycle controller turns Unknown), taints, where node Leases live, and
what a node that runs no pods reports as its runtime.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from k3stw.machinery.objects import Object, get_path, metadata

LEASE_NAMESPACE = "kube-node-lease"
#: The kubelet API's port, as upstream's ``--port`` default.
KUBELET_PORT = 10250
TAINT_EFFECTS = ("NoSchedule", "PreferNoSchedule", "NoExecute")
#: ``nodeInfo.containerRuntimeVersion`` of a node that runs no pods (``--container-runtime none``).
NO_RUNTIME = "runc://unknown"

#: The conditions the kubelet owns: (type, healthy status, reason, message), in kubelet order.
KUBELET_CONDITIONS: tuple[tuple[str, str, str, str], ...] = (
    (
        "MemoryPressure",
        "False",
        "KubeletHasSufficientMemory",
        "kubelet has sufficient memory available",
    ),
    ("DiskPressure", "False", "KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
    ("PIDPressure", "False", "KubeletHasSufficientPID", "kubelet has sufficient PID available"),
    ("Ready", "True", "KubeletReady", "kubelet is posting ready status"),
)


@dataclass(frozen=True)
class Taint:
    """A node taint: ``key=value:Effect``."""

    key: str
    value: str
    effect: str

    def to_object(self, now: str | None = None) -> Object:
        """
        The taint as the API writes it.

        :param now: ``timeAdded``, which NoExecute taints carry.
        """
        obj: Object = {"key": self.key, "effect": self.effect}
        if self.value:
            obj["value"] = self.value
        if self.effect == "NoExecute" and now is not None:
            obj["timeAdded"] = now
        return obj


def without_taints(taints: Iterable[Object], unwanted: Iterable[Taint]) -> list[Object]:
    """C{taints} less any with the key and effect of one in C{unwanted}."""
    drop = {(t.key, t.effect) for t in unwanted}
    return [t for t in taints if (t.get("key"), t.get("effect")) not in drop]


def has_taint(taints: Iterable[Object], taint: Taint) -> bool:
    return any(t.get("key") == taint.key and t.get("effect") == taint.effect for t in taints)


def runs_pods(node: Mapping[str, Any] | None) -> bool:
    """Whether the Node is there and runs pods (it reported a container runtime)."""
    runtime = get_path(node, "status", "nodeInfo", "containerRuntimeVersion")
    return node is not None and runtime not in (None, "", NO_RUNTIME)


def node_host_entries(node: Mapping[str, Any]) -> list[tuple[str, list[str]]]:
    """
    The NodeHosts lines k3s writes for a Node: its first IPv4 and first IPv6
    InternalIP, each followed by the node's name and its Hostname address
    when that differs.
    """
    name = str(metadata(node).get("name", ""))
    addresses = get_path(node, "status", "addresses") or ()
    names = [name]
    ips: dict[int, str] = {}
    for address in addresses:
        kind, value = address.get("type"), str(address.get("address", ""))
        if kind == "Hostname" and value and value not in names:
            names.append(value)
        elif kind == "InternalIP":
            try:
                version = ipaddress.ip_address(value).version
            except ValueError:
                continue
            ips.setdefault(version, value)
    return [(ip, list(names)) for _, ip in sorted(ips.items())]
