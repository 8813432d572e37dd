"""
The endpoints of Services with a selector, as kube-controller-manager's
endpoint and endpointslice controllers keep them: the pods a Service selects
(those with an IP that have not finished), each port resolved against the
pod's container ports, ready or not by the pod's Ready condition.

The Endpoints controller writes the legacy ``Endpoints`` named as the Service;
the EndpointSlice controller writes ``<service>-xxxxx`` slices of at most
L{MAX_ENDPOINTS_PER_SLICE} endpoints, owned by the Service (the garbage
collector removes them with it).  A Service without a selector, or of type
ExternalName, is left alone: its Endpoints are its user's (``default/kubernetes``
is the apiserver endpoints reconciler's).

Both follow Services, Pods (indexed by label, so a pod's change resyncs only
the Services that select it) and their own objects; the slices also follow
Nodes for the zone.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from k3stw.apiserver.informers import ServerInformers
from k3stw.apiserver.kinds import endpoints, endpointslices, nodes, pods, services
from k3stw.apiserver.status import StatusError
from k3stw.apiserver.storage import ObjectStore
from k3stw.controllers import TRANSIENT, delete_if_present
from k3stw.machinery.cache import LABEL, NAMESPACE, NODE_NAME, by_label, by_node_name
from k3stw.machinery.controller import Controller
from k3stw.machinery.informer import EventHandler, Informer, each_change
from k3stw.machinery.objects import (
    Object,
    copy_json,
    find_condition,
    get_path,
    is_deleting,
    join_key,
    metadata,
    name_of,
    namespace_of,
    object_key,
    split_key,
    uid_of,
)
from k3stw.machinery.times import parse_time, rfc3339

SERVICE_NAME = "kubernetes.io/service-name"
MANAGED_BY = "endpointslice.kubernetes.io/managed-by"
SLICE_CONTROLLER = "endpointslice-controller.k8s.io"
HEADLESS = "service.kubernetes.io/headless"
TRIGGER_TIME = "endpoints.kubernetes.io/last-change-trigger-time"
ZONE = "topology.kubernetes.io/zone"
#: ``--max-endpoints-per-slice``'s default.
MAX_ENDPOINTS_PER_SLICE = 100
#: The slices index: the managed slices of each Service, by ``namespace/service``.
_BY_SERVICE = "service"


# What a Service asks for


def selector_of(service: Object) -> Mapping[str, str] | None:
    """The selector of a Service whose endpoints the controllers keep, or None."""
    spec = service.get("spec") or {}
    selector = spec.get("selector")
    if spec.get("type") == "ExternalName" or not selector:
        return None
    return dict(selector)


def _headless(service: Object) -> bool:
    return bool(get_path(service, "spec", "clusterIP") == "None")


def _families(service: Object) -> list[str]:
    families = get_path(service, "spec", "ipFamilies") or ["IPv4"]
    return [str(family) for family in families]


def _family(address: str) -> str:
    return "IPv6" if ipaddress.ip_address(address).version == 6 else "IPv4"


# What a pod offers


def pod_ip(pod: Object, family: str | None = None) -> str | None:
    """The pod's IP of C{family} (its first IP if None), if it has one."""
    status = pod.get("status") or {}
    found = [str(ip["ip"]) for ip in status.get("podIPs") or [] if ip.get("ip")]
    if not found and status.get("podIP"):
        found = [str(status["podIP"])]
    for ip in found:
        if family is None or _family(ip) == family:
            return ip
    return None


def _published(pod: Object, include_terminating: bool) -> bool:
    """Whether the pod belongs in endpoints at all (kube's ShouldPodBeInEndpoints)."""
    if pod_ip(pod) is None or get_path(pod, "status", "phase") in ("Succeeded", "Failed"):
        return False
    return include_terminating or not is_deleting(pod)


def resolve_port(pod: Object, service_port: Mapping[str, Any]) -> int | None:
    """The pod's port for a Service port: its targetPort number, or the named container port."""
    target = service_port.get("targetPort", service_port.get("port"))
    if isinstance(target, int):
        return target
    protocol = service_port.get("protocol", "TCP")
    for container in get_path(pod, "spec", "containers") or []:
        for port in container.get("ports") or []:
            if port.get("name") == target and port.get("protocol", "TCP") == protocol:
                return int(port["containerPort"])
    return None


def _ports(pod: Object, service: Object) -> list[dict[str, Any]]:
    """The endpoint ports of the pod for the Service (those that resolve)."""
    found = []
    for service_port in get_path(service, "spec", "ports") or []:
        number = resolve_port(pod, service_port)
        if number is None:
            continue
        port: dict[str, Any] = {
            "name": service_port.get("name", ""),
            "port": number,
            "protocol": service_port.get("protocol", "TCP"),
        }
        if service_port.get("appProtocol"):
            port["appProtocol"] = service_port["appProtocol"]
        found.append(port)
    return found


def _hostname(pod: Object, service: Object) -> str | None:
    """The pod's hostname, when it names the Service as its subdomain."""
    spec = pod.get("spec") or {}
    if (
        spec.get("hostname")
        and spec.get("subdomain") == name_of(service)
        and namespace_of(pod) == namespace_of(service)
    ):
        return str(spec["hostname"])
    return None


def _target_ref(pod: Object) -> dict[str, str]:
    return {"kind": "Pod", "namespace": namespace_of(pod), "name": name_of(pod), "uid": uid_of(pod)}


def _trigger_time(service: Object, selected: Iterable[Object]) -> str | None:
    """The last change that moved the endpoints: a pod's readiness turning, the Service's birth."""
    times = [parse_time(metadata(service).get("creationTimestamp"))]
    for pod in selected:
        ready = find_condition(pod, "Ready") or {}
        times.append(parse_time(ready.get("lastTransitionTime")))
    known = [t for t in times if t is not None]
    return rfc3339(max(known)) if known else None


def _port_key(ports: Iterable[Mapping[str, Any]]) -> tuple[tuple[str, int, str, str], ...]:
    return tuple(
        sorted(
            (
                str(p.get("name", "")),
                int(p["port"]),
                str(p.get("protocol", "TCP")),
                str(p.get("appProtocol", "")),
            )
            for p in ports
        )
    )


# The shared shape of both controllers


class _ServiceEndpoints(Controller):
    """A controller keyed by Service, resynced by the pods its selector matches."""

    expected = TRANSIENT

    def __init__(
        self, informers: ServerInformers, store: ObjectStore, own: Iterable[Informer] = ()
    ) -> None:
        self.service_informer = informers.for_resource(services.RESOURCE)
        self.pod_informer = informers.for_resource(pods.RESOURCE)
        self.pod_informer.add_index(LABEL, by_label)
        self.pod_informer.add_index(NODE_NAME, by_node_name)
        super().__init__(store.clock, [self.service_informer, self.pod_informer, *own], workers=5)
        self.store = store
        self.add_handler(self.service_informer, self.enqueue_handler())
        self.add_handler(
            self.pod_informer,
            EventHandler(
                on_add=self._pod_changed,
                on_update=lambda old, new: self._pod_changed(new, old),
                on_delete=self._pod_changed,
            ),
        )

    def _pod_changed(self, pod: Object, old: Object | None = None) -> None:
        """Resync the Services that select the pod (before or after a change of labels)."""
        labels = [metadata(pod).get("labels") or {}]
        if old is not None and metadata(old).get("labels") != labels[0]:
            labels.append(metadata(old).get("labels") or {})
        for service in self.service_informer.cache.by_index(NAMESPACE, namespace_of(pod)):
            selector = selector_of(service)
            if selector is not None and any(
                all(found.get(k) == v for k, v in selector.items()) for found in labels
            ):
                self.enqueue(object_key(service))

    def selected(self, service: Object) -> list[Object]:
        """The pods in the Service's namespace its selector matches, from the label index."""
        selector = selector_of(service) or {}
        keys: set[str] | None = None
        for k, v in selector.items():
            found = self.pod_informer.cache.index_keys(LABEL, f"{k}={v}")
            keys = found if keys is None else keys & found
        prefix = namespace_of(service) + "/"
        chosen = sorted(key for key in keys or () if key.startswith(prefix))
        return [pod for key in chosen if (pod := self.pod_informer.get(key)) is not None]


# Endpoints


def desired_subsets(service: Object, selected: Iterable[Object]) -> list[dict[str, Any]]:
    """The Service's Endpoints subsets: one per distinct set of resolved ports."""
    tolerate = bool(get_path(service, "spec", "publishNotReadyAddresses"))
    headless_without_ports = _headless(service) and not get_path(service, "spec", "ports")
    family = (
        None
        if _headless(service) and not get_path(service, "spec", "ipFamilies")
        else _families(service)[0]
    )
    by_ports: dict[tuple[Any, ...], dict[str, Any]] = {}
    for pod in selected:
        ip = pod_ip(pod, family)
        if ip is None or not _published(pod, tolerate):
            continue
        ports = _ports(pod, service)
        if not ports and not headless_without_ports:
            continue
        address: dict[str, Any] = {"ip": ip}
        if (hostname := _hostname(pod, service)) is not None:
            address["hostname"] = hostname
        if node := get_path(pod, "spec", "nodeName"):
            address["nodeName"] = node
        address["targetRef"] = _target_ref(pod)
        key = _port_key(ports)
        subset = by_ports.setdefault(
            key, {"ports": [_endpoint_port(p) for p in sorted(ports, key=lambda p: _port_key([p]))]}
        )
        which = "addresses" if tolerate or pods.is_ready(pod) else "notReadyAddresses"
        subset.setdefault(which, []).append(address)
    subsets = []
    for key in sorted(by_ports):
        subset = by_ports[key]
        for which in ("addresses", "notReadyAddresses"):
            if which in subset:
                subset[which].sort(key=lambda a: (a["ip"], a["targetRef"]["uid"]))
        if not subset["ports"]:
            del subset["ports"]
        subsets.append(subset)
    return subsets


def _endpoint_port(port: Mapping[str, Any]) -> dict[str, Any]:
    """A slice port as an Endpoints port (which leaves out an empty name)."""
    return {k: v for k, v in port.items() if not (k == "name" and not v)}


def _endpoints_labels(service: Object) -> dict[str, str]:
    labels = dict(metadata(service).get("labels") or {})
    if _headless(service):
        labels[HEADLESS] = ""
    else:
        labels.pop(HEADLESS, None)
    return labels


class EndpointsController(_ServiceEndpoints):
    """kube-controller-manager's endpoint controller: one Endpoints per selecting Service."""

    label = "endpoint controller"

    def __init__(self, informers: ServerInformers, store: ObjectStore) -> None:
        self.endpoints_informer = informers.for_resource(endpoints.RESOURCE)
        super().__init__(informers, store, [self.endpoints_informer])
        self.add_handler(
            self.endpoints_informer,
            EventHandler(on_delete=lambda obj: self.enqueue(object_key(obj))),
        )

    async def sync(self, key: str) -> None:
        namespace, name = split_key(key)
        service = self.service_informer.get(key)
        if service is None:
            if self.endpoints_informer.get(key) is not None:
                await delete_if_present(self.store, endpoints.RESOURCE, namespace, name)
            return
        if selector_of(service) is None:
            return
        selected = self.selected(service)
        subsets = desired_subsets(service, selected)
        labels = _endpoints_labels(service)
        current = self.endpoints_informer.get(key)
        if (
            current is not None
            and current.get("subsets", []) == subsets
            and (metadata(current).get("labels") or {}) == labels
        ):
            return
        trigger = _trigger_time(service, selected)

        def replace(existing: Object) -> Object:
            existing["subsets"] = subsets
            existing["metadata"]["labels"] = labels
            if trigger is not None:
                existing["metadata"].setdefault("annotations", {})[TRIGGER_TIME] = trigger
            return existing

        wanted: Object = {"metadata": {"name": name, "namespace": namespace, "labels": labels}}
        if trigger is not None:
            wanted["metadata"]["annotations"] = {TRIGGER_TIME: trigger}
        wanted["subsets"] = subsets
        await _create_or_update(self.store, namespace, name, wanted, replace, current is None)


async def _create_or_update(
    store: ObjectStore, namespace: str | None, name: str, wanted: Object, replace: Any, create: bool
) -> None:
    """Create the Endpoints, or change the stored one; whichever the cache was wrong about next."""
    for attempt in (create, not create):
        try:
            if attempt:
                await store.create(endpoints.RESOURCE, namespace, wanted)
            else:
                await store.guaranteed_update(endpoints.RESOURCE, namespace, name, replace)
            return
        except StatusError as e:
            if e.code != (409 if attempt else 404):
                raise
    raise StatusError(409, f"Endpoints {namespace}/{name} changed while being written")


# EndpointSlices


def _slice_service(obj: Object) -> Iterable[str]:
    labels = metadata(obj).get("labels") or {}
    if labels.get(MANAGED_BY) != SLICE_CONTROLLER or not labels.get(SERVICE_NAME):
        return ()
    return (join_key(namespace_of(obj), str(labels[SERVICE_NAME])),)


def _slice_labels(service: Object) -> dict[str, str]:
    labels = {
        k: v
        for k, v in (metadata(service).get("labels") or {}).items()
        if k not in (SERVICE_NAME, MANAGED_BY)
    }
    if _headless(service):
        labels[HEADLESS] = ""
    else:
        labels.pop(HEADLESS, None)
    labels[SERVICE_NAME] = name_of(service)
    labels[MANAGED_BY] = SLICE_CONTROLLER
    return labels


def _endpoint_id(endpoint: Mapping[str, Any]) -> str:
    ref = endpoint.get("targetRef") or {}
    return str(ref.get("uid") or endpoint["addresses"][0])


#: Endpoints are sliced by address type and port set.
_Group = tuple[str, tuple[tuple[str, int, str, str], ...]]


@dataclass
class _Wanted:
    """A group's ports, and its endpoints by pod uid."""

    ports: list[dict[str, Any]]
    endpoints: dict[str, dict[str, Any]]


@dataclass
class _Slice:
    """A slice as the reconcile leaves it: its endpoints, and whether it must be written."""

    name: str | None
    address_type: str
    ports: list[dict[str, Any]]
    endpoints: list[dict[str, Any]]
    changed: bool


class EndpointSliceController(_ServiceEndpoints):
    """
    kube-controller-manager's endpointslice controller: each selecting Service's
    endpoints in slices of at most C{max_per_slice}, packed into the slices
    there are before new ones are made.
    """

    label = "endpointslice controller"

    def __init__(
        self,
        informers: ServerInformers,
        store: ObjectStore,
        max_per_slice: int = MAX_ENDPOINTS_PER_SLICE,
    ) -> None:
        self.slice_informer = informers.for_resource(endpointslices.RESOURCE)
        self.slice_informer.add_index(_BY_SERVICE, _slice_service)
        self.node_informer = informers.for_resource(nodes.RESOURCE)
        super().__init__(informers, store, [self.slice_informer, self.node_informer])
        self.max_per_slice = max_per_slice
        self.add_handler(
            self.slice_informer,
            each_change(self._slice_changed),
        )
        self.add_handler(
            self.node_informer,
            EventHandler(on_update=lambda old, new: self._node_changed(old, new)),
        )

    def _slice_changed(self, obj: Object) -> None:
        for key in _slice_service(obj):
            self.enqueue(key)

    def _node_changed(self, old: Object, new: Object) -> None:
        """A node's zone moved: resync the Services of the pods on it."""
        if (metadata(old).get("labels") or {}).get(ZONE) == (metadata(new).get("labels") or {}).get(
            ZONE
        ):
            return
        for pod in self.pod_informer.cache.by_index(NODE_NAME, name_of(new)):
            self._pod_changed(pod)

    def _endpoint(self, pod: Object, service: Object, ip: str) -> dict[str, Any]:
        serving = pods.is_ready(pod)
        terminating = is_deleting(pod)
        tolerate = bool(get_path(service, "spec", "publishNotReadyAddresses"))
        endpoint: dict[str, Any] = {
            "addresses": [ip],
            "conditions": {
                "ready": tolerate or (serving and not terminating),
                "serving": serving,
                "terminating": terminating,
            },
        }
        if (hostname := _hostname(pod, service)) is not None:
            endpoint["hostname"] = hostname
        endpoint["targetRef"] = _target_ref(pod)
        if node_name := get_path(pod, "spec", "nodeName"):
            endpoint["nodeName"] = node_name
            node = self.node_informer.get(str(node_name))
            if zone := (metadata(node).get("labels") or {}).get(ZONE) if node else None:
                endpoint["zone"] = zone
        return endpoint

    def desired(self, service: Object, selected: Iterable[Object]) -> dict[_Group, _Wanted]:
        """The ports and endpoints of each (address type, port set)."""
        wanted: dict[_Group, _Wanted] = {}
        for pod in selected:
            if not _published(pod, include_terminating=True):
                continue
            ports = sorted(_ports(pod, service), key=lambda p: _port_key([p]))
            for family in _families(service):
                ip = pod_ip(pod, family)
                if ip is None:
                    continue
                group = (family, _port_key(ports))
                wanted.setdefault(group, _Wanted(ports, {}))
                endpoint = self._endpoint(pod, service, ip)
                wanted[group].endpoints[_endpoint_id(endpoint)] = endpoint
        return wanted

    async def sync(self, key: str) -> None:
        service = self.service_informer.get(key)
        if service is None or selector_of(service) is None:
            return  # the garbage collector removes a gone Service's slices
        namespace, _ = split_key(key)
        selected = self.selected(service)
        wanted = self.desired(service, selected)
        existing = self.slice_informer.cache.by_index(_BY_SERVICE, key)
        planned = self._plan(service, existing, wanted)
        labels = _slice_labels(service)
        trigger = _trigger_time(service, selected)
        kept = {s.name for s in planned if s.name is not None}
        for current in existing:
            if name_of(current) not in kept:
                await delete_if_present(
                    self.store, endpointslices.RESOURCE, namespace, name_of(current)
                )
        for planned_slice in planned:
            if planned_slice.changed or (
                planned_slice.name is not None
                and (
                    metadata(
                        self.slice_informer.get(join_key(namespace, planned_slice.name)) or {}
                    ).get("labels")
                    or {}
                )
                != labels
            ):
                await self._write(service, planned_slice, labels, trigger)

    def _plan(
        self,
        service: Object,
        existing: list[Object],
        wanted: dict[_Group, _Wanted],
    ) -> list[_Slice]:
        """
        kube's reconcile by port set: keep each slice's endpoints that are still
        wanted, fill slices with room with the new ones, make new slices for
        the rest; a slice left empty goes, but a Service with no endpoints keeps
        one empty placeholder.
        """
        plan: list[_Slice] = []
        remaining = {group: dict(found.endpoints) for group, found in wanted.items()}
        for current in sorted(existing, key=name_of):
            group = (str(current.get("addressType")), _port_key(current.get("ports") or []))
            still = remaining.get(group, {})
            kept: list[dict[str, Any]] = []
            for endpoint in current.get("endpoints") or []:
                fresh = still.pop(_endpoint_id(endpoint), None)
                if fresh is not None:
                    kept.append(fresh)
            changed = kept != list(current.get("endpoints") or [])
            plan.append(
                _Slice(name_of(current), group[0], list(current.get("ports") or []), kept, changed)
            )
        for group, left in remaining.items():
            new = sorted(left.values(), key=lambda e: e["addresses"][0])
            for planned in sorted(plan, key=lambda s: not s.changed):
                if not new:
                    break
                same = (planned.address_type, _port_key(planned.ports)) == group
                room = self.max_per_slice - len(planned.endpoints)
                if same and room > 0 and planned.endpoints:
                    planned.endpoints += new[:room]
                    new = new[room:]
                    planned.changed = True
            while new:
                chunk, new = new[: self.max_per_slice], new[self.max_per_slice :]
                plan.append(_Slice(None, group[0], wanted[group].ports, chunk, True))
        plan = [s for s in plan if s.endpoints]
        if not plan:
            placeholder = next(
                (s for s in existing if not s.get("endpoints") and not s.get("ports")), None
            )
            if placeholder is not None:
                plan = [
                    _Slice(name_of(placeholder), str(placeholder.get("addressType")), [], [], False)
                ]
            else:
                plan = [_Slice(None, _families(service)[0], [], [], True)]
        return plan

    async def _write(
        self, service: Object, planned: _Slice, labels: dict[str, str], trigger: str | None
    ) -> None:
        namespace = namespace_of(service)
        annotations = {TRIGGER_TIME: trigger} if trigger is not None else {}
        if planned.name is None:
            created: Object = {
                "metadata": {
                    "generateName": f"{name_of(service)}-",
                    "namespace": namespace,
                    "labels": labels,
                    "annotations": annotations,
                    "ownerReferences": [
                        {
                            "apiVersion": "v1",
                            "kind": "Service",
                            "name": name_of(service),
                            "uid": uid_of(service),
                            "controller": True,
                            "blockOwnerDeletion": True,
                        }
                    ],
                },
                "addressType": planned.address_type,
                "endpoints": planned.endpoints,
                "ports": planned.ports,
            }
            await self.store.create(endpointslices.RESOURCE, namespace, created)
            return

        def replace(current: Object) -> Object:
            current["endpoints"] = copy_json(planned.endpoints)
            current["metadata"]["labels"] = labels
            current["metadata"].setdefault("annotations", {}).update(annotations)
            return current

        try:
            await self.store.guaranteed_update(
                endpointslices.RESOURCE, namespace, planned.name, replace
            )
        except StatusError as e:
            if e.code != 404:
                raise
