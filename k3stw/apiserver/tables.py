"""
Server-side printing: the ``meta.k8s.io/v1`` Tables that ``kubectl get`` shows.

Pure functions over JSON-like objects.  The columns and the cell of every row follow
kube-apiserver 1.32's printers (``pkg/printers/internalversion/printers.go``), its default
Table convertor (``Name``, ``Created At``) and the custom resource convertor of
apiextensions-apiserver (``additionalPrinterColumns``, or ``Age`` when there are none).
As in kube-apiserver, every row is computed with the ``-o wide`` columns included;
kubectl hides those of priority 1 unless asked.

Printers read objects as stored and treat an absent field as Go's zero value, so a
sparse object prints without error; defaulting (``Secret.type``, ``Service.spec.type``,
port protocols, ``replicas``) is the storage layer's job, as it is kube-apiserver's.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from types import MappingProxyType
from typing import Any, Protocol

from k3stw.apiserver.selectors import LabelSelectorError, format_label_selector, format_labels
from k3stw.apiserver.selectors import label_selector_from_spec as _label_selector
from k3stw.hostport import join_host_port

Object = Mapping[str, Any]
Now = datetime | float
"""The time rows are printed at: an aware datetime, or POSIX seconds (``clock.seconds()``)."""

TABLE_API_VERSION = "meta.k8s.io/v1"

# Time


def human_duration(delta: timedelta) -> str:
    """
    A duration as kube-apiserver prints ages (``duration.HumanDuration``): about two
    significant figures, ``45s``, ``2m30s``, ``15m``, ``7h5m``, ``30h``, ``3d4h``,
    ``45d``, ``2y30d``, ``9y``; ``0s`` for a clock up to two seconds behind,
    ``<invalid>`` beyond.
    """
    seconds = int(delta.total_seconds())  # truncates toward zero, as Go's int() does
    if seconds < -1:
        return "<invalid>"
    if seconds < 0:
        return "0s"
    if seconds < 60 * 2:
        return f"{seconds}s"
    micro = delta // timedelta(microseconds=1)
    minutes = micro // 60_000_000
    if minutes < 10:
        rest = seconds % 60
        return f"{minutes}m{rest}s" if rest else f"{minutes}m"
    if minutes < 60 * 3:
        return f"{minutes}m"
    hours = micro // 3_600_000_000
    if hours < 8:
        rest = minutes % 60
        return f"{hours}h{rest}m" if rest else f"{hours}h"
    if hours < 48:
        return f"{hours}h"
    if hours < 24 * 8:
        rest = hours % 24
        return f"{hours // 24}d{rest}h" if rest else f"{hours // 24}d"
    if hours < 24 * 365 * 2:
        return f"{hours // 24}d"
    if hours < 24 * 365 * 8:
        rest = (hours // 24) % 365
        return f"{hours // 24 // 365}y{rest}d" if rest else f"{hours // 24 // 365}y"
    return f"{hours // 24 // 365}y"


_FRACTION = re.compile(r"(\.\d{6})\d+")


def parse_time(value: Any) -> datetime | None:
    """An RFC 3339 timestamp (``Time`` or ``MicroTime``) as an aware datetime, or None."""
    if not isinstance(value, str) or not value or value == "null":
        return None
    try:
        parsed = datetime.fromisoformat(_FRACTION.sub(r"\1", value))
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


def _now(now: Now) -> datetime:
    return now if isinstance(now, datetime) else datetime.fromtimestamp(now, UTC)


def since(value: Any, now: datetime) -> str:
    """The age of a timestamp (``translateTimestampSince``): ``<unknown>`` when unset."""
    moment = parse_time(value)
    return "<unknown>" if moment is None else human_duration(now - moment)


# Reading objects, with Go's zero values for what is absent


def _get(obj: Any, *path: str) -> Any:
    for step in path:
        if not isinstance(obj, Mapping):
            return None
        obj = obj.get(step)
    return obj


def _str(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _maps(value: Any) -> list[Mapping[str, Any]]:
    return [item for item in _list(value) if isinstance(item, Mapping)]


def _dict(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _name(obj: Object) -> str:
    return _str(_get(obj, "metadata", "name"))


def _age(obj: Object, now: datetime) -> str:
    return since(_get(obj, "metadata", "creationTimestamp"), now)


# Columns and printers


@dataclass(frozen=True)
class Column:
    """One ``TableColumnDefinition``; priority 1 columns show with ``-o wide`` only."""

    name: str
    type: str = "string"
    format: str = ""
    description: str = ""
    priority: int = 0

    def definition(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "type": self.type,
            "format": self.format,
            "description": self.description,
            "priority": self.priority,
        }


Cells = Callable[[Object, datetime], list[Any]]
Conditions = Callable[[Object], list[dict[str, str]]]


def _no_conditions(obj: Object) -> list[dict[str, str]]:
    return []


@dataclass(frozen=True)
class Printer:
    """The columns of one kind and how to compute a row's cells from an object."""

    columns: tuple[Column, ...]
    cells: Cells
    conditions: Conditions = _no_conditions

    def column_definitions(self) -> list[dict[str, Any]]:
        return [column.definition() for column in self.columns]

    def row(self, obj: Object, now: Now, include_object: str = "Metadata") -> dict[str, Any]:
        """One ``TableRow``: its cells and, per ``includeObject``, the object."""
        row: dict[str, Any] = {"cells": self.cells(obj, _now(now))}
        conditions = self.conditions(obj)
        if conditions:
            row["conditions"] = conditions
        row["object"] = _row_object(obj, include_object)
        return row


# ObjectMeta's swagger documentation, which every Name and Age column carries.
NAME_DESCRIPTION = (
    "Name must be unique within a namespace. Is required when creating resources, although "
    "some resources may allow a client to request the generation of an appropriate name "
    "automatically. Name is primarily intended for creation idempotence and configuration "
    "definition. Cannot be updated. More info: "
    "https://kubernetes.io/docs/concepts/overview/working-with-objects/names#names"
)
CREATION_DESCRIPTION = (
    "CreationTimestamp is a timestamp representing the server time when this object was "
    "created. It is not guaranteed to be set in happens-before order across separate "
    "operations. Clients may not set this value. It is represented in RFC3339 form and is "
    "in UTC.\n\nPopulated by the system. Read-only. Null for lists. More info: "
    "https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#metadata"
)
_NAME = Column("Name", format="name", description=NAME_DESCRIPTION)
_AGE = Column("Age", description=CREATION_DESCRIPTION)
_CONTAINERS = Column(
    "Containers", priority=1, description="Names of each container in the template."
)
_IMAGES = Column(
    "Images", priority=1, description="Images referenced by each container in the template."
)


def _containers(template_spec: Any) -> tuple[str, str]:
    containers = _maps(_get(template_spec, "containers"))
    return (
        ",".join(_str(c.get("name")) for c in containers),
        ",".join(_str(c.get("image")) for c in containers),
    )


# Pods


def _is_restartable_init(container: Mapping[str, Any] | None) -> bool:
    return container is not None and container.get("restartPolicy") == "Always"


def _has_condition(status: Any, kind: str) -> bool:
    return any(
        c.get("type") == kind and c.get("status") == "True"
        for c in _maps(_get(status, "conditions"))
    )


def _finished_at(container_status: Mapping[str, Any]) -> datetime | None:
    return parse_time(_get(container_status, "lastState", "terminated", "finishedAt"))


def _later(current: datetime | None, candidate: datetime | None) -> datetime | None:
    if candidate is None or (current is not None and current >= candidate):
        return current
    return candidate


def _pod_cells(pod: Object, now: datetime) -> list[Any]:
    spec = _dict(pod.get("spec"))
    status = _dict(pod.get("status"))
    restarts = 0
    restartable_restarts = 0
    total = len(_list(spec.get("containers")))
    ready = 0
    last_restart: datetime | None = None
    last_restartable_restart: datetime | None = None

    phase = _str(status.get("phase"))
    reason = _str(status.get("reason")) or phase
    for condition in _maps(status.get("conditions")):
        if condition.get("type") == "PodScheduled" and condition.get("reason") == "SchedulingGated":
            reason = "SchedulingGated"

    init_specs = _maps(spec.get("initContainers"))
    init_containers = {_str(c.get("name")): c for c in init_specs}
    total += sum(1 for c in init_specs if _is_restartable_init(c))

    initializing = False
    for index, container in enumerate(_maps(status.get("initContainerStatuses"))):
        count = _int(container.get("restartCount"))
        restarts += count
        last_restart = _later(last_restart, _finished_at(container))
        restartable = _is_restartable_init(init_containers.get(_str(container.get("name"))))
        if restartable:
            restartable_restarts += count
            last_restartable_restart = _later(last_restartable_restart, _finished_at(container))
        terminated = _get(container, "state", "terminated")
        waiting = _get(container, "state", "waiting")
        if isinstance(terminated, Mapping) and _int(terminated.get("exitCode")) == 0:
            continue
        if restartable and container.get("started") is True:
            if container.get("ready") is True:
                ready += 1
            continue
        if isinstance(terminated, Mapping):
            if _str(terminated.get("reason")):
                reason = "Init:" + _str(terminated.get("reason"))
            elif _int(terminated.get("signal")):
                reason = f"Init:Signal:{_int(terminated.get('signal'))}"
            else:
                reason = f"Init:ExitCode:{_int(terminated.get('exitCode'))}"
        elif isinstance(waiting, Mapping) and _str(waiting.get("reason")) not in (
            "",
            "PodInitializing",
        ):
            reason = "Init:" + _str(waiting.get("reason"))
        else:
            reason = f"Init:{index}/{len(init_specs)}"
        initializing = True
        break

    if not initializing or _has_condition(status, "Initialized"):
        restarts = restartable_restarts
        last_restart = last_restartable_restart
        has_running = False
        for container in reversed(_maps(status.get("containerStatuses"))):
            restarts += _int(container.get("restartCount"))
            last_restart = _later(last_restart, _finished_at(container))
            state = _dict(container.get("state"))
            waiting = state.get("waiting")
            terminated = state.get("terminated")
            if isinstance(waiting, Mapping) and _str(waiting.get("reason")):
                reason = _str(waiting.get("reason"))
            elif isinstance(terminated, Mapping) and _str(terminated.get("reason")):
                reason = _str(terminated.get("reason"))
            elif isinstance(terminated, Mapping):
                if _int(terminated.get("signal")):
                    reason = f"Signal:{_int(terminated.get('signal'))}"
                else:
                    reason = f"ExitCode:{_int(terminated.get('exitCode'))}"
            elif container.get("ready") is True and state.get("running") is not None:
                has_running = True
                ready += 1
        # A completed container next to one still running: the pod is not done.
        if reason == "Completed" and has_running:
            reason = "Running" if _has_condition(status, "Ready") else "NotReady"

    if _get(pod, "metadata", "deletionTimestamp"):
        if status.get("reason") == "NodeLost":
            reason = "Unknown"
        elif phase not in ("Succeeded", "Failed"):
            reason = "Terminating"

    restarts_text = str(restarts)
    if restarts and last_restart is not None:
        restarts_text = f"{restarts} ({human_duration(now - last_restart)} ago)"

    pod_ips = _maps(status.get("podIPs"))
    pod_ip = _str(pod_ips[0].get("ip")) if pod_ips else _str(status.get("podIP"))
    gates = "<none>"
    readiness_gates = _maps(spec.get("readinessGates"))
    if readiness_gates:
        conditions = {}
        for condition in reversed(_maps(status.get("conditions"))):
            conditions[condition.get("type")] = condition.get("status")
        met = sum(1 for g in readiness_gates if conditions.get(g.get("conditionType")) == "True")
        gates = f"{met}/{len(readiness_gates)}"
    return [
        _name(pod),
        f"{ready}/{total}",
        reason,
        restarts_text,
        _age(pod, now),
        pod_ip or "<none>",
        _str(spec.get("nodeName")) or "<none>",
        _str(status.get("nominatedNodeName")) or "<none>",
        gates,
    ]


def _pod_conditions(pod: Object) -> list[dict[str, str]]:
    phase = _get(pod, "status", "phase")
    if phase == "Succeeded":
        message = "The pod has completed successfully."
    elif phase == "Failed":
        message = "The pod failed."
    else:
        return []
    return [{"type": "Completed", "status": "True", "reason": phase, "message": message}]


POD_PRINTER = Printer(
    (
        _NAME,
        Column(
            "Ready", description="The aggregate readiness state of this pod for accepting traffic."
        ),
        Column("Status", description="The aggregate status of the containers in this pod."),
        Column(
            "Restarts",
            description="The number of times the containers in this pod have been restarted "
            "and when the last container in this pod has restarted.",
        ),
        _AGE,
        Column(
            "IP",
            priority=1,
            description="podIP address allocated to the pod. Routable at least within the "
            "cluster. Empty if not yet allocated.",
        ),
        Column(
            "Node",
            priority=1,
            description="NodeName indicates in which node this pod is scheduled.",
        ),
        Column(
            "Nominated Node",
            priority=1,
            description="nominatedNodeName is set only when this pod preempts other pods on "
            "the node, but it cannot be scheduled right away as preemption victims receive "
            "their graceful termination periods.",
        ),
        Column(
            "Readiness Gates",
            priority=1,
            description="If specified, all readiness gates will be evaluated for pod readiness.",
        ),
    ),
    _pod_cells,
    _pod_conditions,
)


# Nodes


def _node_roles(labels: Mapping[str, Any]) -> list[str]:
    roles = set()
    for key, value in labels.items():
        if key.startswith("node-role.kubernetes.io/"):
            role = key.removeprefix("node-role.kubernetes.io/")
            if role:
                roles.add(role)
        elif key == "kubernetes.io/role" and value:
            roles.add(str(value))
    return sorted(roles)


def _node_address(node: Object, kind: str) -> str:
    for address in _maps(_get(node, "status", "addresses")):
        if address.get("type") == kind:
            return _str(address.get("address"))
    return "<none>"


def _node_cells(node: Object, now: datetime) -> list[Any]:
    conditions = {c.get("type"): c for c in _maps(_get(node, "status", "conditions"))}
    status = []
    if "Ready" in conditions:
        status.append("Ready" if conditions["Ready"].get("status") == "True" else "NotReady")
    else:
        status.append("Unknown")
    if _get(node, "spec", "unschedulable") is True:
        status.append("SchedulingDisabled")
    info = _dict(_get(node, "status", "nodeInfo"))
    return [
        _name(node),
        ",".join(status),
        ",".join(_node_roles(_dict(_get(node, "metadata", "labels")))) or "<none>",
        _age(node, now),
        _str(info.get("kubeletVersion")),
        _node_address(node, "InternalIP"),
        _node_address(node, "ExternalIP"),
        _str(info.get("osImage")) or "<unknown>",
        _str(info.get("kernelVersion")) or "<unknown>",
        _str(info.get("containerRuntimeVersion")) or "<unknown>",
    ]


_ADDRESSES = "List of addresses reachable to the node."
NODE_PRINTER = Printer(
    (
        _NAME,
        Column("Status", description="The status of the node"),
        Column("Roles", description="The roles of the node"),
        _AGE,
        Column("Version", description="Kubelet Version reported by the node."),
        Column("Internal-IP", priority=1, description=_ADDRESSES),
        Column("External-IP", priority=1, description=_ADDRESSES),
        Column(
            "OS-Image",
            priority=1,
            description="OS Image reported by the node from /etc/os-release "
            "(e.g. Debian GNU/Linux 7 (wheezy)).",
        ),
        Column(
            "Kernel-Version",
            priority=1,
            description="Kernel Version reported by the node from 'uname -r' "
            "(e.g. 3.16.0-0.bpo.4-amd64).",
        ),
        Column(
            "Container-Runtime",
            priority=1,
            description="ContainerRuntime Version reported by the node through runtime "
            "remote API (e.g. containerd://1.4.2).",
        ),
    ),
    _node_cells,
)


# Services, Endpoints, EndpointSlices


def _load_balancer_ips(service: Object) -> str:
    seen: dict[str, None] = {}
    for ingress in _maps(_get(service, "status", "loadBalancer", "ingress")):
        address = _str(ingress.get("ip")) or _str(ingress.get("hostname"))
        if address:
            seen[address] = None
    # kube-apiserver prints the whole list server-side (the printers run "wide").
    return ",".join(seen)


def _service_external_ip(service: Object) -> str:
    spec = _dict(service.get("spec"))
    kind = spec.get("type")
    external = [_str(ip) for ip in _list(spec.get("externalIPs"))]
    if kind in ("ClusterIP", "NodePort"):
        return ",".join(external) or "<none>"
    if kind == "LoadBalancer":
        balancer = _load_balancer_ips(service)
        if external:
            return ",".join(([balancer] if balancer else []) + external)
        return balancer or "<pending>"
    if kind == "ExternalName":
        return _str(spec.get("externalName"))
    return "<unknown>"


def _service_ports(ports: Iterable[Mapping[str, Any]]) -> str:
    pieces = []
    for port in ports:
        protocol = _str(port.get("protocol"))
        node_port = _int(port.get("nodePort"))
        if node_port > 0:
            pieces.append(f"{_int(port.get('port'))}:{node_port}/{protocol}")
        else:
            pieces.append(f"{_int(port.get('port'))}/{protocol}")
    return ",".join(pieces)


def _service_cells(service: Object, now: datetime) -> list[Any]:
    spec = _dict(service.get("spec"))
    cluster_ips = _list(spec.get("clusterIPs"))
    cluster_ip = _str(cluster_ips[0]) if cluster_ips else _str(spec.get("clusterIP"))
    return [
        _name(service),
        _str(spec.get("type")),
        cluster_ip or "<none>",
        _service_external_ip(service),
        _service_ports(_maps(spec.get("ports"))) or "<none>",
        _age(service, now),
        format_labels(_dict(spec.get("selector"))),
    ]


SERVICE_PRINTER = Printer(
    (
        _NAME,
        Column("Type", description="type determines how the Service is exposed."),
        Column(
            "Cluster-IP",
            description="clusterIP is the IP address of the service and is usually assigned "
            "randomly.",
        ),
        Column(
            "External-IP",
            description="externalIPs is a list of IP addresses for which nodes in the cluster "
            "will also accept traffic for this service.",
        ),
        Column("Port(s)", description="The list of ports that are exposed by this service."),
        _AGE,
        Column(
            "Selector",
            priority=1,
            description="Route service traffic to pods with label keys and values matching "
            "this selector.",
        ),
    ),
    _service_cells,
)


def _endpoints_text(endpoints: Object) -> str:
    subsets = _maps(endpoints.get("subsets"))
    if not subsets:
        return "<none>"
    shown: list[str] = []
    maximum = 3
    more = False
    count = 0
    for subset in subsets:
        addresses = [_str(a.get("ip")) for a in _maps(subset.get("addresses"))]
        ports = _maps(subset.get("ports"))
        if not ports:
            # Headless services may have no ports.
            count += len(addresses)
            for ip in addresses:
                if len(shown) == maximum:
                    more = True
                    break
                shown.append(ip)
            continue
        for port in ports:
            count += len(addresses)
            for ip in addresses:
                if len(shown) == maximum:
                    more = True
                    break
                shown.append(join_host_port(ip, _int(port.get("port"))))
    text = ",".join(shown)
    return f"{text} + {count - maximum} more..." if more else text


ENDPOINTS_PRINTER = Printer(
    (
        _NAME,
        Column(
            "Endpoints",
            description="The set of all endpoints is the union of all subsets.",
        ),
        _AGE,
    ),
    lambda obj, now: [_name(obj), _endpoints_text(obj), _age(obj, now)],
)


def _list_with_more(shown: list[str], more: bool, count: int, maximum: int) -> str:
    text = ",".join(shown)
    if more:
        return f"{text} + {count - maximum} more..."
    return text or "<unset>"


def _slice_ports(ports: Iterable[Mapping[str, Any]]) -> str:
    shown: list[str] = []
    more = False
    count = 0
    for port in ports:
        if len(shown) < 3:
            number = port.get("port")
            if isinstance(number, int):
                shown.append(str(number))
            elif port.get("name") is not None:
                shown.append(_str(port.get("name")))
            else:
                shown.append("*")
        elif len(shown) == 3:
            more = True
        count += 1
    return _list_with_more(shown, more, count, 3)


def _slice_endpoints(endpoints: Iterable[Mapping[str, Any]]) -> str:
    shown: list[str] = []
    more = False
    count = 0
    for endpoint in endpoints:
        for address in _list(endpoint.get("addresses")):
            if len(shown) < 3:
                shown.append(_str(address))
            elif len(shown) == 3:
                more = True
            count += 1
    return _list_with_more(shown, more, count, 3)


ENDPOINT_SLICE_PRINTER = Printer(
    (
        _NAME,
        Column(
            "AddressType",
            description="addressType specifies the type of address carried by this EndpointSlice.",
        ),
        Column(
            "Ports",
            description="ports specifies the list of network ports exposed by each endpoint "
            "in this slice.",
        ),
        Column("Endpoints", description="endpoints is a list of unique endpoints in this slice."),
        _AGE,
    ),
    lambda obj, now: [
        _name(obj),
        _str(obj.get("addressType")),
        _slice_ports(_maps(obj.get("ports"))),
        _slice_endpoints(_maps(obj.get("endpoints"))),
        _age(obj, now),
    ],
)


# Workloads


def _selector_text(spec: Any) -> str:
    # The Deployment printer shows the bare selector string, "" when empty.
    try:
        return str(_label_selector(spec if isinstance(spec, Mapping) else None))
    except LabelSelectorError:
        return "<invalid>"


def _format_selector(spec: Any) -> str:
    return format_label_selector(spec if isinstance(spec, Mapping) else None)


def _deployment_cells(obj: Object, now: datetime) -> list[Any]:
    spec = _dict(obj.get("spec"))
    status = _dict(obj.get("status"))
    names, images = _containers(_get(spec, "template", "spec"))
    return [
        _name(obj),
        f"{_int(status.get('readyReplicas'))}/{_int(spec.get('replicas'))}",
        _int(status.get("updatedReplicas")),
        _int(status.get("availableReplicas")),
        _age(obj, now),
        names,
        images,
        _selector_text(spec.get("selector")),
    ]


_SELECTOR = Column(
    "Selector",
    priority=1,
    description="Label selector for pods. Existing ReplicaSets whose pods are selected by "
    "this will be the ones affected by this deployment.",
)
DEPLOYMENT_PRINTER = Printer(
    (
        _NAME,
        Column("Ready", description="Number of the pod with ready state"),
        Column(
            "Up-to-date",
            description="Total number of non-terminating pods targeted by this deployment "
            "that have the desired template spec.",
        ),
        Column(
            "Available",
            description="Total number of available non-terminating pods (ready for at least "
            "minReadySeconds) targeted by this deployment.",
        ),
        _AGE,
        _CONTAINERS,
        _IMAGES,
        _SELECTOR,
    ),
    _deployment_cells,
)


def _replica_set_cells(obj: Object, now: datetime) -> list[Any]:
    spec = _dict(obj.get("spec"))
    status = _dict(obj.get("status"))
    names, images = _containers(_get(spec, "template", "spec"))
    return [
        _name(obj),
        _int(spec.get("replicas")),
        _int(status.get("replicas")),
        _int(status.get("readyReplicas")),
        _age(obj, now),
        names,
        images,
        _format_selector(spec.get("selector")),
    ]


REPLICA_SET_PRINTER = Printer(
    (
        _NAME,
        Column("Desired", "integer", description="Replicas is the number of desired pods."),
        Column(
            "Current",
            "integer",
            description="Replicas is the most recently observed number of non-terminating pods.",
        ),
        Column(
            "Ready",
            "integer",
            description="The number of non-terminating pods targeted by this ReplicaSet with "
            "a Ready Condition.",
        ),
        _AGE,
        _CONTAINERS,
        _IMAGES,
        Column(
            "Selector",
            priority=1,
            description="Selector is a label query over pods that should match the replica count.",
        ),
    ),
    _replica_set_cells,
)


def _daemon_set_cells(obj: Object, now: datetime) -> list[Any]:
    spec = _dict(obj.get("spec"))
    status = _dict(obj.get("status"))
    template_spec = _get(spec, "template", "spec")
    names, images = _containers(template_spec)
    return [
        _name(obj),
        _int(status.get("desiredNumberScheduled")),
        _int(status.get("currentNumberScheduled")),
        _int(status.get("numberReady")),
        _int(status.get("updatedNumberScheduled")),
        _int(status.get("numberAvailable")),
        format_labels(_dict(_get(template_spec, "nodeSelector"))),
        _age(obj, now),
        names,
        images,
        _format_selector(spec.get("selector")),
    ]


DAEMON_SET_PRINTER = Printer(
    (
        _NAME,
        Column(
            "Desired",
            "integer",
            description="The total number of nodes that should be running the daemon pod.",
        ),
        Column(
            "Current",
            "integer",
            description="The number of nodes that are running at least 1 daemon pod and are "
            "supposed to run the daemon pod.",
        ),
        Column(
            "Ready",
            "integer",
            description="The number of nodes that should be running the daemon pod and have "
            "one or more of the daemon pod running with a Ready Condition.",
        ),
        Column(
            "Up-to-date",
            "integer",
            description="The total number of nodes that are running updated daemon pod",
        ),
        Column(
            "Available",
            "integer",
            description="The number of nodes that should be running the daemon pod and have "
            "one or more of the daemon pod running and available.",
        ),
        Column(
            "Node Selector",
            description="NodeSelector is a selector which must be true for the pod to fit on "
            "a node.",
        ),
        _AGE,
        _CONTAINERS,
        _IMAGES,
        Column(
            "Selector",
            priority=1,
            description="A label query over pods that are managed by the daemon set.",
        ),
    ),
    _daemon_set_cells,
)


# Configuration, namespaces, accounts, leases


SECRET_PRINTER = Printer(
    (
        _NAME,
        Column("Type", description="Used to facilitate programmatic handling of secret data."),
        Column("Data", description="Data contains the secret data."),
        _AGE,
    ),
    lambda obj, now: [
        _name(obj),
        _str(obj.get("type")),
        len(_dict(obj.get("data"))),
        _age(obj, now),
    ],
)

CONFIG_MAP_PRINTER = Printer(
    (
        _NAME,
        Column("Data", description="Data contains the configuration data."),
        _AGE,
    ),
    lambda obj, now: [
        _name(obj),
        len(_dict(obj.get("data"))) + len(_dict(obj.get("binaryData"))),
        _age(obj, now),
    ],
)

NAMESPACE_PRINTER = Printer(
    (_NAME, Column("Status", description="The status of the namespace"), _AGE),
    lambda obj, now: [_name(obj), _str(_get(obj, "status", "phase")), _age(obj, now)],
)

SERVICE_ACCOUNT_PRINTER = Printer(
    (
        _NAME,
        Column(
            "Secrets",
            description="Secrets is a list of the secrets in the same namespace that pods "
            "running using this ServiceAccount are allowed to use.",
        ),
        _AGE,
    ),
    lambda obj, now: [_name(obj), len(_list(obj.get("secrets"))), _age(obj, now)],
)

LEASE_PRINTER = Printer(
    (
        _NAME,
        Column(
            "Holder",
            description="holderIdentity contains the identity of the holder of a current lease.",
        ),
        _AGE,
    ),
    lambda obj, now: [_name(obj), _str(_get(obj, "spec", "holderIdentity")), _age(obj, now)],
)


# Events


def _event_cells(event: Object, now: datetime) -> list[Any]:
    first_seen = since(event.get("firstTimestamp"), now)
    if parse_time(event.get("firstTimestamp")) is None:
        first_seen = since(event.get("eventTime"), now)
    last_seen = since(event.get("lastTimestamp"), now)
    if parse_time(event.get("lastTimestamp")) is None:
        last_seen = first_seen
    count = _int(event.get("count"))
    series = event.get("series")
    if isinstance(series, Mapping):
        last_seen = since(series.get("lastObservedTime"), now)
        count = _int(series.get("count"))
    elif count == 0:
        count = 1  # singleton events of the events.k8s.io API carry no count
    involved = _dict(event.get("involvedObject"))
    kind = _str(involved.get("kind")).lower()
    target = f"{kind}/{_str(involved.get('name'))}" if involved.get("name") else kind
    source = _dict(event.get("source"))
    component = _str(source.get("component")) or _str(event.get("reportingComponent"))
    instance = _str(source.get("host")) or _str(event.get("reportingInstance"))
    return [
        last_seen,
        _str(event.get("type")),
        _str(event.get("reason")),
        target,
        _str(involved.get("fieldPath")),
        f"{component}, {instance}" if instance else component,
        _str(event.get("message")).strip(),
        first_seen,
        count,
        _name(event),
    ]


EVENT_PRINTER = Printer(
    (
        Column(
            "Last Seen",
            description="The time at which the most recent occurrence of this event was recorded.",
        ),
        Column(
            "Type",
            description="Type of this event (Normal, Warning), new types could be added in "
            "the future",
        ),
        Column(
            "Reason",
            description="This should be a short, machine understandable string that gives "
            "the reason for the transition into the object's current status.",
        ),
        Column("Object", description="The object that this event is about."),
        Column(
            "Subobject",
            priority=1,
            description="If referring to a piece of an object instead of an entire object, "
            "this string should contain a valid JSON/Go field access statement.",
        ),
        Column(
            "Source",
            priority=1,
            description="The component reporting this event. Should be a short machine "
            "understandable string.",
        ),
        Column(
            "Message", description="A human-readable description of the status of this operation."
        ),
        Column(
            "First Seen",
            priority=1,
            description="The time at which the event was first recorded. (Time of server "
            "receipt is in TypeMeta.)",
        ),
        Column("Count", priority=1, description="The number of times this event has occurred."),
        Column("Name", priority=1, format="name", description=NAME_DESCRIPTION),
    ),
    _event_cells,
)


# Everything else: kube-apiserver's default convertor, and custom resources


def _created_at(obj: Object) -> str:
    moment = parse_time(_get(obj, "metadata", "creationTimestamp"))
    if moment is None:
        return "0001-01-01T00:00:00Z"  # Go's zero time, as the default convertor prints it
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


#: Built-in kinds without a printer of their own (CustomResourceDefinitions among them).
DEFAULT_PRINTER = Printer(
    (_NAME, Column("Created At", "date", description=CREATION_DESCRIPTION)),
    lambda obj, now: [_name(obj), _created_at(obj)],
)

#: The printers of the built-in kinds, keyed by (API group, kind).
BUILTIN_PRINTERS: Mapping[tuple[str, str], Printer] = MappingProxyType(
    {
        ("", "Pod"): POD_PRINTER,
        ("", "Node"): NODE_PRINTER,
        ("", "Service"): SERVICE_PRINTER,
        ("", "Endpoints"): ENDPOINTS_PRINTER,
        ("", "Secret"): SECRET_PRINTER,
        ("", "ConfigMap"): CONFIG_MAP_PRINTER,
        ("", "Namespace"): NAMESPACE_PRINTER,
        ("", "Event"): EVENT_PRINTER,
        ("", "ServiceAccount"): SERVICE_ACCOUNT_PRINTER,
        ("coordination.k8s.io", "Lease"): LEASE_PRINTER,
        ("discovery.k8s.io", "EndpointSlice"): ENDPOINT_SLICE_PRINTER,
        ("apps", "Deployment"): DEPLOYMENT_PRINTER,
        ("apps", "ReplicaSet"): REPLICA_SET_PRINTER,
        ("apps", "DaemonSet"): DAEMON_SET_PRINTER,
        ("apiextensions.k8s.io", "CustomResourceDefinition"): DEFAULT_PRINTER,
    }
)


_PATH_STEP = re.compile(r"\.([^.\[\]]+)|\[(-?\d+)\]|\[\s*'([^']*)'\s*\]|\[\s*\"([^\"]*)\"\s*\]")


def compile_json_path(path: str) -> tuple[str | int, ...] | None:
    """
    The steps of a simple JSONPath (``.spec.replicas``, ``.status.conditions[0].type``,
    ``.metadata.labels['app.kubernetes.io/name']``), optionally in ``{}``; None if it is
    not that simple.
    """
    path = path.strip()
    if path.startswith("{") and path.endswith("}"):
        path = path[1:-1].strip()
    steps: list[str | int] = []
    position = 0
    while position < len(path):
        match = _PATH_STEP.match(path, position)
        if match is None:
            return None
        name, index, single, double = match.groups()
        if index is not None:
            steps.append(int(index))
        else:
            steps.append(next(part for part in (name, single, double) if part is not None))
        position = match.end()
    return tuple(steps) if steps else None


_MISSING = object()


def _follow(obj: Any, steps: Sequence[str | int]) -> Any:
    for step in steps:
        if isinstance(step, int):
            if not isinstance(obj, list) or not -len(obj) <= step < len(obj):
                return _MISSING
            obj = obj[step]
        else:
            if not isinstance(obj, Mapping) or step not in obj:
                return _MISSING
            obj = obj[step]
    return obj


def _go_float(value: float) -> str:
    # fmt.Sprint of a float64: the shortest digits, in %e form outside [1e-4, 1e6).
    if value != value:
        return "NaN"
    if value in (float("inf"), float("-inf")):
        return "+Inf" if value > 0 else "-Inf"
    if value == 0:
        return "0"
    sign, digit_tuple, exponent = Decimal(repr(value)).normalize().as_tuple()
    digits = "".join(str(d) for d in digit_tuple)
    power = int(exponent) + len(digits) - 1
    minus = "-" if sign else ""
    if power < -4 or power >= 6:
        mantissa = digits[0] + ("." + digits[1:] if len(digits) > 1 else "")
        return f"{minus}{mantissa}e{'+' if power >= 0 else '-'}{abs(power):02d}"
    if power >= len(digits) - 1:
        return minus + digits + "0" * (power - len(digits) + 1)
    if power >= 0:
        return minus + digits[: power + 1] + "." + digits[power + 1 :]
    return minus + "0." + "0" * (-power - 1) + digits


def _json_path_text(value: Any) -> str:
    """How kubectl's JSONPath printer renders a value (``PrintResults``)."""
    if isinstance(value, Mapping | list):
        return json.dumps(value, separators=(",", ":"), sort_keys=True, ensure_ascii=False)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return _go_float(value)
    return str(value)


def _custom_cell(kind: str, value: Any, now: datetime) -> Any:
    """A custom column's cell (``cellForJSONValue``); None when the value does not fit."""
    if value is None:
        return None
    if kind == "string":
        return _json_path_text(value)
    if isinstance(value, bool):
        return value if kind == "boolean" else None
    if kind == "integer" and isinstance(value, int | float):
        return int(value)
    if kind == "number" and isinstance(value, int | float):
        return float(value)
    if kind == "date" and isinstance(value, str):
        if value in ("", "null"):
            return "<unknown>"
        moment = parse_time(value)
        return "<invalid>" if moment is None else human_duration(now - moment)
    return None


def custom_resource_printer(printer_columns: Sequence[Mapping[str, Any]] = ()) -> Printer:
    """
    The printer of a custom resource version: ``Name`` and the CRD version's
    ``additionalPrinterColumns`` (JSONPath cells typed ``string``, ``integer``,
    ``number``, ``boolean`` or ``date``), or ``Name`` and ``Age`` when it declares none.
    """
    if not printer_columns:
        printer_columns = (
            {
                "name": "Age",
                "type": "date",
                "description": CREATION_DESCRIPTION,
                "jsonPath": ".metadata.creationTimestamp",
            },
        )
    columns = [_NAME]
    paths: list[tuple[str, tuple[str | int, ...] | None]] = []
    for spec in printer_columns:
        json_path = _str(spec.get("jsonPath"))
        description = _str(spec.get("description")) or (
            f"Custom resource definition column (in JSONPath format): {json_path}"
        )
        kind = _str(spec.get("type"))
        columns.append(
            Column(
                _str(spec.get("name")),
                kind,
                _str(spec.get("format")),
                description,
                _int(spec.get("priority")),
            )
        )
        paths.append((kind, compile_json_path(json_path)))

    def cells(obj: Object, now: datetime) -> list[Any]:
        row: list[Any] = [_name(obj)]
        for kind, steps in paths:
            value = _MISSING if steps is None else _follow(obj, steps)
            row.append(None if value is _MISSING else _custom_cell(kind, value, now))
        return row

    return Printer(tuple(columns), cells)


def printer_for(
    group: str,
    kind: str,
    custom_resource: bool = False,
    printer_columns: Sequence[Mapping[str, Any]] = (),
) -> Printer:
    """The printer kube-apiserver would use for objects of ``group``/``kind``."""
    if custom_resource:
        return custom_resource_printer(printer_columns)
    return BUILTIN_PRINTERS.get((group, kind), DEFAULT_PRINTER)


# Tables


INCLUDE_OBJECT_VALUES = ("None", "Metadata", "Object")


class TableOptionError(ValueError):
    """A Table request option the API rejects with ``400 BadRequest``."""

    code = 400


def parse_include_object(value: str | None) -> str:
    """
    The ``includeObject`` query value: ``None``, ``Metadata`` (the default) or ``Object``.

    :raises TableOptionError: for anything else, with kube-apiserver's message.
    """
    if not value:
        return "Metadata"
    if value not in INCLUDE_OBJECT_VALUES:
        raise TableOptionError(f"unrecognized includeObject value: {json.dumps(value)}")
    return value


def _row_object(obj: Object, include_object: str) -> Any:
    if include_object == "None":
        return None
    if include_object == "Object":
        return obj
    return {
        "kind": "PartialObjectMetadata",
        "apiVersion": TABLE_API_VERSION,
        "metadata": dict(_dict(obj.get("metadata"))),
    }


def table(
    printer: Printer,
    objects: Iterable[Object],
    now: Now,
    resource_version: str = "",
    continue_token: str = "",
    include_object: str | None = "Metadata",
    remaining_item_count: int | None = None,
    with_columns: bool = True,
) -> dict[str, Any]:
    """
    A whole ``Table``, as kube-apiserver answers a get or list asked for
    ``as=Table;g=meta.k8s.io;v=v1``.

    :param now: the time ages are counted to.
    :param include_object: ``None``, ``Metadata`` (rows carry ``PartialObjectMetadata``)
        or ``Object`` (rows carry the whole object).
    :param with_columns: False leaves ``columnDefinitions`` null, as in all but the
        first event of a watch.
    :raises TableOptionError: for an unknown ``include_object``.
    """
    include = parse_include_object(include_object)
    at = _now(now)
    metadata: dict[str, Any] = {}
    if resource_version:
        metadata["resourceVersion"] = resource_version
    if continue_token:
        metadata["continue"] = continue_token
    if remaining_item_count is not None:
        metadata["remainingItemCount"] = remaining_item_count
    return {
        "kind": "Table",
        "apiVersion": TABLE_API_VERSION,
        "metadata": metadata,
        "columnDefinitions": printer.column_definitions() if with_columns else None,
        "rows": [printer.row(obj, at, include) for obj in objects],
    }


def watch_event_table(
    printer: Printer,
    obj: Object,
    now: Now,
    with_columns: bool,
    include_object: str | None = "Metadata",
) -> dict[str, Any]:
    """
    The one-row ``Table`` a watch event carries in place of the object; kube-apiserver
    sends ``columnDefinitions`` in the first event of a stream only.
    """
    version = _str(_get(obj, "metadata", "resourceVersion"))
    return table(printer, [obj], now, version, "", include_object, with_columns=with_columns)


class PrintedResource(Protocol):
    """What :func:`render` needs to know of a served resource (``registry.ResourceType``)."""

    @property
    def group(self) -> str: ...

    @property
    def kind(self) -> str: ...

    @property
    def crd(self) -> str | None: ...

    @property
    def printer_columns(self) -> Sequence[Mapping[str, Any]]: ...


def _resource_printer(resource: PrintedResource) -> Printer:
    return printer_for(
        resource.group, resource.kind, resource.crd is not None, resource.printer_columns
    )


def render(
    resource: PrintedResource,
    objects: Iterable[Object],
    now: Now,
    resource_version: str = "",
    continue_token: str = "",
    include_object: str | None = None,
) -> dict[str, Any]:
    """:func:`table` for the objects of a served resource."""
    return table(
        _resource_printer(resource), objects, now, resource_version, continue_token, include_object
    )


def render_event(
    resource: PrintedResource,
    obj: Object,
    now: Now,
    *,
    with_columns: bool,
    include_object: str | None = None,
) -> dict[str, Any]:
    """:func:`watch_event_table` for an object of a served resource."""
    return watch_event_table(_resource_printer(resource), obj, now, with_columns, include_object)
