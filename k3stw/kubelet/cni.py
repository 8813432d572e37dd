"""
The node's pod network as CNI config: once the server's node IPAM controller
has given the Node its ``spec.podCIDR``, the conflist goes where k3s writes
its flannel one (``agent/etc/cni/net.d/10-flannel.conflist``) and the runtime
is told the CIDR (CRI UpdateRuntimeConfig).  It is a bridge (``cni0``) with
host-local addresses from the node's range and portmap for hostPorts, from
Debian's containernetworking-plugins: flannel's delegate without flannel's
CNI plugin.  Routes between nodes are L{k3stw.network.flannel}'s; as
flannel's plugin does, the bridge takes the MTU flannel wrote in
``/run/flannel/subnet.env`` (vxlan's is the interface's - 50), and the
conflist is written again when it appears or changes
(``--flannel-backend=none`` writes nothing and leaves CNI to the user).
containerd adds loopback itself.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from k3stw.logs import Logger
from k3stw.machinery.objects import Object
from k3stw.network.flannel import SUBNET_ENV, read_subnet_mtu

if TYPE_CHECKING:
    from k3stw.kubelet.cri.runtime import Runtime

__all__ = ["CONFLIST_NAME", "NodeNetwork", "pod_cidrs", "render_conflist"]

#: k3s's file name, so that what replaces flannel finds it where k3s users expect it.
CONFLIST_NAME = "10-flannel.conflist"
#: The network's name (flannel's) and the bridge the bridge plugin makes.
NETWORK_NAME = "cbr0"
BRIDGE = "cni0"


def pod_cidrs(node: Object) -> tuple[str, ...]:
    """The Node's pod ranges: ``spec.podCIDRs``, else ``spec.podCIDR``; () before assignment."""
    spec = node.get("spec") or {}
    cidrs = spec.get("podCIDRs") or ([spec["podCIDR"]] if spec.get("podCIDR") else [])
    return tuple(str(c) for c in cidrs)


def render_conflist(cidrs: Sequence[str], mtu: int | None = None) -> str:
    """
    The conflist for a node with the pod ranges C{cidrs} (one per family):
    the bridge as gateway (its address is the range's first), hairpin mode so
    that a pod reaches itself through a Service, a default route per family,
    the pods' MTU (C{mtu}; None: the bridge plugin's default), and portmap
    with SNAT for hostPorts.
    """
    ranges = [[{"subnet": cidr}] for cidr in cidrs]
    routes = [
        {"dst": "0.0.0.0/0" if ipaddress.ip_network(cidr, strict=False).version == 4 else "::/0"}
        for cidr in cidrs
    ]
    bridge: dict[str, object] = {
        "type": "bridge",
        "bridge": BRIDGE,
        "isGateway": True,
        "hairpinMode": True,
        "forceAddress": True,
    }
    if mtu is not None:
        bridge["mtu"] = mtu
    bridge["ipam"] = {"type": "host-local", "ranges": ranges, "routes": routes}
    conflist = {
        "name": NETWORK_NAME,
        "cniVersion": "1.0.0",
        "plugins": [
            bridge,
            {"type": "portmap", "capabilities": {"portMappings": True}, "snat": True},
        ],
    }
    return json.dumps(conflist, indent=2) + "\n"


class NodeNetwork:
    """
    Keeps the node's CNI config in step with its Node: the conflist written
    (only when its text changes) and the runtime told the pod CIDR, each time
    the Node's ranges change.  Called with every Node the kubelet sees.

    :param conf_dir: the CNI conf dir (``agent/etc/cni/net.d``).
    :param runtime: the node's CRI runtime.
    :param write_conflist: False with ``--flannel-backend=none``: the user's
        CNI writes its own config; the runtime is still told the CIDR.
    :param subnet_file: flannel's subnet file, for the pods' MTU.
    """

    _log = Logger()

    def __init__(
        self,
        conf_dir: Path,
        runtime: Runtime,
        write_conflist: bool = True,
        subnet_file: Path = SUBNET_ENV,
    ) -> None:
        self.conf_dir = conf_dir
        self.runtime = runtime
        self.write_conflist = write_conflist
        self.subnet_file = subnet_file
        #: The ranges the runtime was last told (() before).
        self.cidrs: tuple[str, ...] = ()
        #: The MTU the conflist was last written with.
        self.mtu: int | None = None

    @property
    def conflist(self) -> Path:
        return self.conf_dir / CONFLIST_NAME

    async def update(self, node: Object) -> None:
        """Write the conflist and tell the runtime, if C{node}'s ranges or flannel's MTU are new."""
        cidrs = pod_cidrs(node)
        mtu = read_subnet_mtu(self.subnet_file) if self.write_conflist else None
        if not cidrs or (cidrs, mtu) == (self.cidrs, self.mtu):
            return
        self.mtu = mtu
        if self.write_conflist:
            text = render_conflist(cidrs, mtu)
            if not self.conflist.exists() or self.conflist.read_text() != text:
                self.conf_dir.mkdir(parents=True, exist_ok=True)
                temporary = self.conflist.with_suffix(".tmp")
                temporary.write_text(text)
                temporary.replace(self.conflist)
        if cidrs == self.cidrs:
            return
        # The kubelet sends every family's range, comma-separated.
        await self.runtime.update_runtime_config(",".join(cidrs))
        self.cidrs = cidrs
        self._log.info("Node pod CIDRs {cidrs}: CNI config ready", cidrs=",".join(cidrs))
