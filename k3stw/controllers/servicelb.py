"""
ServiceLB: the LoadBalancer of k3s's embedded cloud-controller-manager
(klipper-lb), with the upstream service controller's finalizer handling.

k3s runs a ``svclb-*`` DaemonSet per LoadBalancer Service whose pods hold the
Service's ports as hostPorts, and lists the addresses of the nodes running a
ready one in ``status.loadBalancer.ingress``.  k3stw runs no such pods: this
controller works out where they would run, writes those nodes' addresses,
and each node's kube-proxy answers on them (its load-balancer IP rules), so
``<nodeIP>:<port>`` answers on exactly the nodes listed.

Where a svclb pod would run (L{placements}): the nodes its DaemonSet would
place it on (the ``enablelb``/``lbpool`` node selector once any node carries
the ``enablelb`` label, the taints svclb pods tolerate), less those where a
pod's hostPort or an older LoadBalancer Service (first come, first served by
creation) already holds one of its ports.  The status lists the Ready ones
of those (with ``externalTrafficPolicy: Local``, only nodes with a ready
endpoint of the Service): their ExternalIPs if any has one, else their
InternalIPs, of the Service's families, sorted.

Only Services of type LoadBalancer without a ``loadBalancerClass``; a
Service that stops being one (or is deleted) has its status cleared and the
``service.kubernetes.io/load-balancer-cleanup`` finalizer removed.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from k3stw.apiserver.informers import ServerInformers
from k3stw.apiserver.kinds import endpointslices, nodes, pods, services
from k3stw.apiserver.status import StatusError
from k3stw.apiserver.storage import ObjectStore
from k3stw.controllers import TRANSIENT, update_status_if_present
from k3stw.controllers.daemonsets import should_run
from k3stw.controllers.events import NORMAL, WARNING, EventRecorder
from k3stw.machinery.cache import LABEL, NODE_NAME, by_label, by_node_name
from k3stw.machinery.controller import Controller
from k3stw.machinery.informer import EventHandler
from k3stw.machinery.objects import (
    Object,
    find_condition,
    get_path,
    is_deleting,
    join_key,
    metadata,
    name_of,
    namespace_of,
    object_key,
    split_key,
)

#: The CCM's service controller name, the Events' source (``--disable=servicelb`` turns it off).
COMPONENT = "service-controller"
#: ``--disable`` names it so.
DISABLE_NAME = "servicelb"
_PREFIX = "svccontroller.k3s.cattle.io/"
#: The node label that, once any node has it, limits ServiceLB to nodes where it is "true".
ENABLE_LB = _PREFIX + "enablelb"
#: The node and Service label that pairs Services with pools of nodes.
LB_POOL = _PREFIX + "lbpool"
#: The Service annotation with more tolerations for its svclb pods (a JSON list).
TOLERATIONS = _PREFIX + "tolerations"
#: The finalizer k3s's ServiceLB once put on Services, stripped at start.
LEGACY_FINALIZER = _PREFIX + "daemonset"
#: The upstream service controller's finalizer.
CLEANUP_FINALIZER = "service.kubernetes.io/load-balancer-cleanup"
SERVICE_NAME = "kubernetes.io/service-name"

#: What svclb pods tolerate besides what every daemon pod does.
SVCLB_TOLERATIONS: tuple[Object, ...] = (
    {"key": "node-role.kubernetes.io/master", "operator": "Exists", "effect": "NoSchedule"},
    {"key": "node-role.kubernetes.io/control-plane", "operator": "Exists", "effect": "NoSchedule"},
    {"key": "CriticalAddonsOnly", "operator": "Exists"},
)

#: A Service port as a hostPort: (port, protocol).
Port = tuple[int, str]


# What a Service asks for


def wants_load_balancer(service: Object) -> bool:
    """Whether ServiceLB serves the Service: type LoadBalancer, no ``loadBalancerClass``."""
    spec = service.get("spec") or {}
    return spec.get("type") == "LoadBalancer" and not spec.get("loadBalancerClass")


def _holds_ports(service: Object) -> bool:
    return wants_load_balancer(service) and not is_deleting(service)


def service_ports(service: Object) -> frozenset[Port]:
    """The (port, protocol) pairs the Service's svclb pod would hold as hostPorts."""
    return frozenset(
        (int(p["port"]), str(p.get("protocol") or "TCP"))
        for p in get_path(service, "spec", "ports") or []
        if p.get("port")
    )


def _local_only(service: Object) -> bool:
    return bool(get_path(service, "spec", "externalTrafficPolicy") == "Local")


def _extra_tolerations(service: Object) -> list[Object]:
    text = (metadata(service).get("annotations") or {}).get(TOLERATIONS)
    if not text:
        return []
    try:
        found = json.loads(text)
    except ValueError:
        return []
    if not isinstance(found, list):
        return []
    return [t for t in found if isinstance(t, dict)]


def svclb_pod_spec(service: Object, selective: bool) -> Object:
    """
    The scheduling half of the Service's svclb pod template.

    :param selective: whether any node carries the ``enablelb`` label.
    """
    spec: Object = {"tolerations": [*SVCLB_TOLERATIONS, *_extra_tolerations(service)]}
    if selective:
        selector = {ENABLE_LB: "true"}
        pool = (metadata(service).get("labels") or {}).get(LB_POOL)
        if pool:
            selector[LB_POOL] = pool
        spec["nodeSelector"] = selector
    return spec


def _first_come(service: Object) -> tuple[str, str, str]:
    return (
        str(metadata(service).get("creationTimestamp") or ""),
        namespace_of(service),
        name_of(service),
    )


def pod_host_ports(pod: Object) -> frozenset[Port]:
    """The hostPorts a pod that has not finished holds on its node."""
    if get_path(pod, "status", "phase") in ("Succeeded", "Failed"):
        return frozenset()
    return frozenset(
        (int(port["hostPort"]), str(port.get("protocol") or "TCP"))
        for container in get_path(pod, "spec", "containers") or []
        for port in container.get("ports") or []
        if port.get("hostPort")
    )


def placements(
    lb_services: Iterable[Object],
    all_nodes: Sequence[Object],
    held: Mapping[str, frozenset[Port]],
) -> dict[str, list[str]]:
    """
    The nodes each LoadBalancer Service's svclb pod would run on, by Service
    key: those its DaemonSet would place it on, oldest Service first, where
    none of its ports is held already (by C{held}, pods' hostPorts by node, or
    an older Service placed there).
    """
    selective = any(ENABLE_LB in (metadata(n).get("labels") or {}) for n in all_nodes)
    taken = {name_of(n): set(held.get(name_of(n), ())) for n in all_nodes}
    placed: dict[str, list[str]] = {}
    for service in sorted(lb_services, key=_first_come):
        template = {"spec": {"template": {"spec": svclb_pod_spec(service, selective)}}}
        ports = service_ports(service)
        chosen = []
        for node in all_nodes:
            name = name_of(node)
            if should_run(template, node)[0] and not ports & taken[name]:
                taken[name] |= ports
                chosen.append(name)
        placed[object_key(service)] = chosen
    return placed


# What a node offers


def is_ready(node: Object) -> bool:
    return (find_condition(node, "Ready") or {}).get("status") == "True"


def ingress_addresses(service: Object, chosen: Iterable[Object]) -> list[str]:
    """
    The Service's ingress IPs on the C{chosen} nodes: their ExternalIPs if any
    has one, else their InternalIPs, of the Service's families in order, each
    family sorted.
    """
    found: dict[str, set[str]] = {"ExternalIP": set(), "InternalIP": set()}
    for node in chosen:
        for address in get_path(node, "status", "addresses") or []:
            if address.get("type") in found and address.get("address"):
                found[str(address["type"])].add(str(address["address"]))
    ips = found["ExternalIP"] or found["InternalIP"]
    by_family: dict[str, list[str]] = {"IPv4": [], "IPv6": []}
    for ip in ips:
        try:
            version = ipaddress.ip_address(ip).version
        except ValueError:
            continue
        by_family["IPv4" if version == 4 else "IPv6"].append(ip)
    families = get_path(service, "spec", "ipFamilies") or ["IPv4"]
    return [ip for family in families for ip in sorted(by_family.get(str(family), []))]


def current_addresses(service: Object) -> list[str]:
    """The IPs (or hostnames) ``status.loadBalancer.ingress`` lists now."""
    return [
        str(point.get("ip") or point.get("hostname") or "")
        for point in get_path(service, "status", "loadBalancer", "ingress") or []
    ]


def _go_list(addresses: Sequence[str]) -> str:
    """A list as k3s's Events print it (Go's ``%v`` of a string slice)."""
    return "[" + " ".join(addresses) + "]"


class ServiceLBController(Controller):
    """
    Keeps each LoadBalancer Service's ``status.loadBalancer`` on the nodes
    ServiceLB would serve it from, and its cleanup finalizer.

    :param events: records as the CCM's ``service-controller``.
    """

    label = "servicelb controller"
    expected = TRANSIENT

    def __init__(
        self, informers: ServerInformers, store: ObjectStore, events: EventRecorder
    ) -> None:
        self.service_informer = informers.for_resource(services.RESOURCE)
        self.node_informer = informers.for_resource(nodes.RESOURCE)
        self.pod_informer = informers.for_resource(pods.RESOURCE)
        self.pod_informer.add_index(NODE_NAME, by_node_name)
        self.slice_informer = informers.for_resource(endpointslices.RESOURCE)
        self.slice_informer.add_index(LABEL, by_label)
        super().__init__(
            store.clock,
            [self.service_informer, self.node_informer, self.pod_informer, self.slice_informer],
        )
        self.store = store
        self.events = events
        self.add_handler(
            self.service_informer,
            EventHandler(
                on_add=lambda s: self._service_changed(None, s),
                on_update=self._service_changed,
                on_delete=lambda s: self._service_changed(s, None),
            ),
        )
        self.add_handler(
            self.node_informer,
            EventHandler(
                on_add=lambda n: self._enqueue_balancers(),
                on_update=self._node_changed,
                on_delete=lambda n: self._enqueue_balancers(),
            ),
        )
        self.add_handler(
            self.pod_informer,
            EventHandler(
                on_add=lambda p: self._pod_changed(None, p),
                on_update=self._pod_changed,
                on_delete=lambda p: self._pod_changed(p, None),
            ),
        )
        self.add_handler(
            self.slice_informer,
            EventHandler(
                on_add=self._slice_changed,
                on_update=lambda old, new: self._slice_changed(new),
                on_delete=self._slice_changed,
            ),
        )

    # Who to look at

    def _enqueue_balancers(self, ports: frozenset[Port] | None = None) -> None:
        """Enqueue the LoadBalancer Services (those using one of C{ports}, if given)."""
        for service in self.service_informer.cache:
            if _holds_ports(service) and (ports is None or ports & service_ports(service)):
                self.enqueue(object_key(service))

    def _service_changed(self, old: Object | None, new: Object | None) -> None:
        """The Service itself, and those it may take ports from or give them back to."""
        self.enqueue(object_key(new or old or {}))

        def claim(service: Object | None) -> tuple[Any, ...]:
            if service is None or not _holds_ports(service):
                return ()
            meta = metadata(service)
            return (
                service_ports(service),
                (meta.get("labels") or {}).get(LB_POOL),
                (meta.get("annotations") or {}).get(TOLERATIONS),
            )

        before, after = claim(old), claim(new)
        if before != after:
            ports = (before[0] if before else frozenset()) | (after[0] if after else frozenset())
            self._enqueue_balancers(ports)

    def _node_changed(self, old: Object, new: Object) -> None:
        def serving(node: Object) -> tuple[Any, ...]:
            return (
                metadata(node).get("labels"),
                get_path(node, "spec", "taints"),
                get_path(node, "spec", "unschedulable"),
                is_ready(node),
                get_path(node, "status", "addresses"),
            )

        if serving(old) != serving(new):
            self._enqueue_balancers()

    def _pod_changed(self, old: Object | None, new: Object | None) -> None:
        def holding(pod: Object | None) -> tuple[str | None, frozenset[Port]]:
            if pod is None:
                return None, frozenset()
            return get_path(pod, "spec", "nodeName"), pod_host_ports(pod)

        before, after = holding(old), holding(new)
        if before != after and (before[1] or after[1]):
            self._enqueue_balancers(before[1] | after[1])

    def _slice_changed(self, endpoint_slice: Object) -> None:
        service = (metadata(endpoint_slice).get("labels") or {}).get(SERVICE_NAME)
        if service:
            key = join_key(namespace_of(endpoint_slice), str(service))
            found = self.service_informer.get(key)
            if found is not None and _holds_ports(found) and _local_only(found):
                self.enqueue(key)

    # The work

    async def sync(self, key: str) -> None:
        service = self.service_informer.get(key)
        if service is None:
            return
        namespace, name = split_key(key)
        finalizers = metadata(service).get("finalizers") or []
        if LEGACY_FINALIZER in finalizers:
            await self._set_finalizer(namespace, name, LEGACY_FINALIZER, False)
        wanted = wants_load_balancer(service) and not is_deleting(service)
        if CLEANUP_FINALIZER in finalizers and not wanted:
            await self._clean_up(service)
            return
        if not wanted:
            return
        if CLEANUP_FINALIZER not in finalizers:
            self.events.emit(service, NORMAL, "EnsuringLoadBalancer", "Ensuring load balancer")
            await self._set_finalizer(namespace, name, CLEANUP_FINALIZER, True)
        previous, addresses = current_addresses(service), self.addresses(service)
        if previous == addresses:
            return
        if not await self._write_status(namespace, name, addresses):
            return
        if addresses:
            message = (
                f"Updated LoadBalancer with new IPs: {_go_list(previous)} -> {_go_list(addresses)}"
            )
            self.events.emit(service, NORMAL, "UpdatedLoadBalancer", message)
        else:
            self.events.emit(
                service,
                WARNING,
                "UnAvailableLoadBalancer",
                "There are no available nodes for LoadBalancer",
            )

    def addresses(self, service: Object) -> list[str]:
        """The ingress IPs the Service should have now."""
        all_nodes = sorted(self.node_informer.cache, key=name_of)
        balancers = [s for s in self.service_informer.cache if _holds_ports(s)]
        held = {
            name_of(node): frozenset().union(
                *(
                    pod_host_ports(p)
                    for p in self.pod_informer.cache.by_index(NODE_NAME, name_of(node))
                )
            )
            for node in all_nodes
        }
        chosen = set(placements(balancers, all_nodes, held).get(object_key(service), ()))
        if _local_only(service):
            chosen &= self._nodes_with_ready_endpoints(service)
        return ingress_addresses(
            service, [n for n in all_nodes if name_of(n) in chosen and is_ready(n)]
        )

    def _nodes_with_ready_endpoints(self, service: Object) -> set[str]:
        found = set()
        keys = self.slice_informer.cache.index_keys(LABEL, f"{SERVICE_NAME}={name_of(service)}")
        for key in keys:
            endpoint_slice = self.slice_informer.get(key)
            if endpoint_slice is None or namespace_of(endpoint_slice) != namespace_of(service):
                continue
            for endpoint in endpoint_slice.get("endpoints") or []:
                pod = (endpoint.get("targetRef") or {}).get("kind") == "Pod"
                ready = (endpoint.get("conditions") or {}).get("ready") is True
                if pod and ready and endpoint.get("nodeName"):
                    found.add(str(endpoint["nodeName"]))
        return found

    async def _clean_up(self, service: Object) -> None:
        """What the upstream controller does once a Service no longer wants its balancer."""
        namespace, name = namespace_of(service), name_of(service)
        self.events.emit(service, NORMAL, "DeletingLoadBalancer", "Deleting load balancer")
        if current_addresses(service) and not await self._write_status(namespace, name, []):
            return
        await self._set_finalizer(namespace, name, CLEANUP_FINALIZER, False)
        self.events.emit(service, NORMAL, "DeletedLoadBalancer", "Deleted load balancer")

    async def _write_status(self, namespace: str | None, name: str, addresses: list[str]) -> bool:
        def write(current: Object) -> Object:
            balancer: Object = {"ingress": [{"ip": ip} for ip in addresses]} if addresses else {}
            current.setdefault("status", {})["loadBalancer"] = balancer
            return current

        return await update_status_if_present(
            self.store, services.RESOURCE, namespace, name, write, COMPONENT
        )

    async def _set_finalizer(
        self, namespace: str | None, name: str, finalizer: str, present: bool
    ) -> None:
        def change(current: Object) -> Object:
            meta = current["metadata"]
            held = [f for f in meta.get("finalizers") or [] if f != finalizer]
            meta["finalizers"] = [*held, finalizer] if present else held
            return current

        try:
            await self.store.guaranteed_update(
                services.RESOURCE, namespace, name, change, COMPONENT
            )
        except StatusError as e:
            if e.code != 404:
                raise
