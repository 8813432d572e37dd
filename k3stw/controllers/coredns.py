"""
k3s's packaged cluster DNS (``coredns``), server side: what k3s's
``coredns.yaml`` manifest creates, less the Deployment (every node serves
the cluster DNS itself, L{k3stw.network.dns}), and k3s's node controller,
which keeps the ``coredns`` ConfigMap's ``NodeHosts`` in step with the Nodes.

- Service ``kube-system/kube-dns`` at ``--cluster-dns``, with the manifest's
  labels, annotations and ports (``dns`` 53/UDP, ``dns-tcp`` 53/TCP,
  ``metrics`` 9153/TCP), but no selector: there are no CoreDNS pods.  Its
  Endpoints and EndpointSlice list, instead, the InternalIP of every Ready
  node that runs pods (only those run the cluster DNS), on ``dns`` and
  ``dns-tcp``; kube-proxy sends the ClusterIP's traffic there.
- ConfigMap ``kube-system/coredns``: the ``Corefile`` k3s ships (for
  reading: the nodes' servers behave as it says) and ``NodeHosts``, one
  ``<ip> <node name>[ <hostname>]`` line per address, sorted by address, as
  k3s's node controller writes it.

Left out: the ServiceAccount, ClusterRole and binding of the Deployment's pods
(there are none), ``coredns-custom``, the metrics port's endpoints.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from typing import Any

from k3stw.apiserver.informers import Selection, ServerInformers
from k3stw.apiserver.kinds import configmaps, endpoints, endpointslices, nodes, services
from k3stw.apiserver.registry import ResourceType
from k3stw.apiserver.storage import ObjectStore
from k3stw.controllers import TRANSIENT, create_if_absent, write_fields
from k3stw.machinery.controller import Controller
from k3stw.machinery.informer import each_change
from k3stw.machinery.nodes import node_host_entries, runs_pods
from k3stw.machinery.objects import Object, get_path, metadata, name_of

COMPONENT = "coredns"
NAMESPACE = "kube-system"
SERVICE = "kube-dns"
CONFIG_MAP = "coredns"
MANAGED_BY_LABEL = "endpointslice.kubernetes.io/managed-by"
MANAGED_BY = "cluster-dns.k3stw.io"
#: The key of the kube-dns endpoints; every other key is a Node's name (which has no slash).
ENDPOINTS_KEY = f"{NAMESPACE}/{SERVICE}"
LABELS = {
    "k8s-app": "kube-dns",
    "kubernetes.io/cluster-service": "true",
    "kubernetes.io/name": "CoreDNS",
}
ANNOTATIONS = {"prometheus.io/port": "9153", "prometheus.io/scrape": "true"}
DNS_PORTS = [
    {"name": "dns", "port": 53, "protocol": "UDP"},
    {"name": "dns-tcp", "port": 53, "protocol": "TCP"},
]
COREFILE = """\
.:53 {{
    errors
    health
    ready
    kubernetes {domain} in-addr.arpa ip6.arpa {{
      pods insecure
      fallthrough in-addr.arpa ip6.arpa
    }}
    hosts /etc/coredns/NodeHosts {{
      ttl 60
      reload 15s
      fallthrough
    }}
    prometheus :9153
    forward . /etc/resolv.conf
    cache 30
    loop
    reload
    loadbalance
    import /etc/coredns/custom/*.override
}}
import /etc/coredns/custom/*.server
"""


def _in_namespace(name: str) -> Selection:
    return Selection(
        f"kube-system-{name}", namespace=NAMESPACE, predicate=lambda obj: name_of(obj) == name
    )


KUBE_DNS = _in_namespace(SERVICE)
COREDNS = _in_namespace(CONFIG_MAP)


def service(cluster_dns: str) -> Object:
    """``kube-dns`` as k3s's manifest has it, without the selector."""
    ips = [ip.strip() for ip in cluster_dns.split(",") if ip.strip()]
    spec: dict[str, Any] = {
        "type": "ClusterIP",
        "clusterIP": ips[0],
        "clusterIPs": ips,
        "ports": [*DNS_PORTS, {"name": "metrics", "port": 9153, "protocol": "TCP"}],
    }
    if len(ips) > 1:
        spec["ipFamilyPolicy"] = "PreferDualStack"
    return {
        "metadata": {
            "name": SERVICE,
            "namespace": NAMESPACE,
            "labels": dict(LABELS),
            "annotations": dict(ANNOTATIONS),
        },
        "spec": spec,
    }


def config_map(domain: str) -> Object:
    return {
        "metadata": {"name": CONFIG_MAP, "namespace": NAMESPACE},
        "data": {"Corefile": COREFILE.format(domain=domain), "NodeHosts": ""},
    }


async def deploy(store: ObjectStore, cluster_dns: str, domain: str) -> None:
    """
    Create the Service and the ConfigMap, or put back the manifest's parts of
    them (k3s applies its manifests again at every start; NodeHosts stays).
    """
    wanted = service(cluster_dns)
    if not await create_if_absent(store, services.RESOURCE, NAMESPACE, wanted):

        def put_back_service(current: Object) -> Object:
            meta = current["metadata"]
            meta.setdefault("labels", {}).update(LABELS)
            meta.setdefault("annotations", {}).update(ANNOTATIONS)
            current["spec"]["ports"] = wanted["spec"]["ports"]
            current["spec"].pop("selector", None)
            return current

        await store.guaranteed_update(services.RESOURCE, NAMESPACE, SERVICE, put_back_service)
    corefile = config_map(domain)
    if not await create_if_absent(store, configmaps.RESOURCE, NAMESPACE, corefile):

        def put_back_corefile(current: Object) -> Object:
            current.setdefault("data", {})["Corefile"] = corefile["data"]["Corefile"]
            return current

        await store.guaranteed_update(configmaps.RESOURCE, NAMESPACE, CONFIG_MAP, put_back_corefile)


def parse_node_hosts(text: str) -> dict[str, list[str]]:
    """NodeHosts lines as address -> names (text after ``#`` ignored, short lines skipped)."""
    entries: dict[str, list[str]] = {}
    for line in text.splitlines():
        fields = line.split("#", 1)[0].split()
        if len(fields) >= 2:
            entries.setdefault(fields[0], []).extend(fields[1:])
    return entries


def _address_key(ip: str) -> bytes:
    try:
        return ipaddress.ip_address(ip).packed
    except ValueError:
        return ip.encode()


def updated_node_hosts(text: str, node: Mapping[str, Any], removing: bool) -> str | None:
    """
    NodeHosts with C{node}'s lines set (or, C{removing}, gone), as k3s's node
    controller writes it: lines of the node at addresses it no longer has are
    dropped, the rest kept; None when the text already says so.
    """
    name = name_of(node)
    entries = parse_node_hosts(text)
    wanted = {} if removing else dict(node_host_entries(node))
    result = {ip: names for ip, names in entries.items() if names[:1] != [name] or ip in wanted}
    result.update(wanted)
    if result == entries:
        return None
    return "".join(f"{ip} {' '.join(result[ip])}\n" for ip in sorted(result, key=_address_key))


def _ready(node: Object) -> bool:
    conditions = get_path(node, "status", "conditions") or ()
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def dns_endpoints(all_nodes: list[Object]) -> dict[str, list[tuple[str, str]]]:
    """The (address, node name) of every Ready node that runs pods, by address type."""
    found: dict[str, list[tuple[str, str]]] = {"IPv4": [], "IPv6": []}
    for node in sorted(all_nodes, key=name_of):
        if not (_ready(node) and runs_pods(node)):
            continue
        for ip, _ in node_host_entries(node):
            family = "IPv6" if ":" in ip else "IPv4"
            found[family].append((ip, name_of(node)))
    return found


class ClusterDNSController(Controller):
    """
    Keeps NodeHosts in step with the Nodes (keys: node names) and the
    ``kube-dns`` Endpoints and EndpointSlices on the Ready nodes that serve
    the cluster DNS (key L{ENDPOINTS_KEY}).
    """

    label = "cluster DNS controller"
    expected = TRANSIENT

    def __init__(self, informers: ServerInformers, store: ObjectStore) -> None:
        self.nodes = informers.for_resource(nodes.RESOURCE)
        self.config_maps = informers.for_resource(configmaps.RESOURCE, COREDNS)
        self.endpoints = informers.for_resource(endpoints.RESOURCE, KUBE_DNS)
        self.slices = informers.for_resource(
            endpointslices.RESOURCE,
            Selection(
                "kube-dns-slices",
                namespace=NAMESPACE,
                predicate=lambda obj: (
                    (metadata(obj).get("labels") or {}).get("kubernetes.io/service-name") == SERVICE
                ),
            ),
        )
        cached = [self.nodes, self.config_maps, self.endpoints, self.slices]
        super().__init__(store.clock, cached)
        self.store = store
        self.add_handler(self.nodes, each_change(self._node_changed))
        self.add_handler(self.config_maps, each_change(self._all_nodes))
        for informer in (self.endpoints, self.slices):
            self.add_handler(informer, each_change(lambda _: self.enqueue(ENDPOINTS_KEY)))
        #: Nodes seen deleted, whose NodeHosts lines are to go.
        self._gone: dict[str, Object] = {}

    def _node_changed(self, node: Object) -> None:
        if self.nodes.get(name_of(node)) is None:
            self._gone[name_of(node)] = node
        self.enqueue(name_of(node))
        self.enqueue(ENDPOINTS_KEY)

    def _all_nodes(self, _: Object) -> None:
        for node in self.nodes.cache.list():
            self.enqueue(name_of(node))

    async def sync(self, key: str) -> None:
        if key == ENDPOINTS_KEY:
            await self._sync_endpoints()
        else:
            await self._sync_node_hosts(key)

    async def _sync_node_hosts(self, name: str) -> None:
        current = self.config_maps.get(f"{NAMESPACE}/{CONFIG_MAP}")
        if current is None:
            return
        node = self.nodes.get(name)
        removing = node is None or bool(metadata(node).get("deletionTimestamp"))
        subject = node or self._gone.get(name) or {"metadata": {"name": name}}
        text = str((current.get("data") or {}).get("NodeHosts") or "")
        if updated_node_hosts(text, subject, removing) is None:
            self._gone.pop(name, None)
            return

        def rewrite(stored: Object) -> Object:
            data = stored.setdefault("data", {})
            value = updated_node_hosts(str(data.get("NodeHosts") or ""), subject, removing)
            if value is not None:
                data["NodeHosts"] = value
            return stored

        await self.store.guaranteed_update(configmaps.RESOURCE, NAMESPACE, CONFIG_MAP, rewrite)
        self._gone.pop(name, None)
        self._log.info(
            "{what} coredns NodeHosts entries for {node}",
            what="Removed" if removing else "Synced",
            node=name,
        )

    async def _sync_endpoints(self) -> None:
        found = dns_endpoints(self.nodes.cache.list())
        addresses = found["IPv4"] + found["IPv6"]
        subsets = (
            [{"addresses": [_address(ip, node) for ip, node in addresses], "ports": DNS_PORTS}]
            if addresses
            else []
        )
        await self._write(
            endpoints.RESOURCE,
            {
                "metadata": _object_meta(
                    SERVICE, {"endpointslice.kubernetes.io/skip-mirror": "true"}
                ),
                "subsets": subsets,
            },
            ("subsets",),
        )
        for family, members in found.items():
            if family == "IPv6" and not members:
                continue
            await self._write(
                endpointslices.RESOURCE,
                {
                    "metadata": _object_meta(
                        f"{SERVICE}-{family.lower()}",
                        {"kubernetes.io/service-name": SERVICE, MANAGED_BY_LABEL: MANAGED_BY},
                    ),
                    "addressType": family,
                    "endpoints": [
                        {"addresses": [ip], "conditions": {"ready": True}, "nodeName": node}
                        for ip, node in members
                    ],
                    "ports": DNS_PORTS,
                },
                ("addressType", "endpoints", "ports"),
            )

    async def _write(self, resource: ResourceType, wanted: Object, fields: tuple[str, ...]) -> None:
        informer = self.endpoints if resource is endpoints.RESOURCE else self.slices
        current = informer.get(f"{NAMESPACE}/{wanted['metadata']['name']}")
        await write_fields(self.store, resource, NAMESPACE, current, wanted, fields)


def _object_meta(name: str, labels: dict[str, str]) -> dict[str, Any]:
    return {"name": name, "namespace": NAMESPACE, "labels": labels}


def _address(ip: str, node: str) -> dict[str, Any]:
    return {"ip": ip, "nodeName": node}
