"""
Services (core/v1): defaults, merge rules, the Table kubectl prints and
the fields a selector may name.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

from k3stw.apiserver.defaulting import child, each, fill
from k3stw.apiserver.fielderrors import (
    PROTOCOLS,
    Cause,
    invalid,
    label_causes,
    not_supported,
    once,
    port_number_causes,
    port_or_name_causes,
    required,
)
from k3stw.apiserver.fields import (
    NAME,
    NAMESPACE,
    FieldTable,
    field_path,
)
from k3stw.apiserver.kinds.podspec import (
    default_ports,
)
from k3stw.apiserver.objectmeta import dns1035_label_name
from k3stw.apiserver.patch.rules import (
    ATOMIC,
    METADATA_ONLY_RULES,
    STATUS_CONDITIONS_RULES,
    keyed_list,
)
from k3stw.apiserver.registry import ResourceType
from k3stw.apiserver.strategy import Strategy
from k3stw.apiserver.tables import (
    AGE_COLUMN,
    NAME_COLUMN,
    Column,
    Printed,
    Printer,
    age_cell,
    integer,
    items,
    mapping,
    mappings,
    name_cell,
    text,
)
from k3stw.machinery.labels import dns_subdomain_errors, format_labels
from k3stw.machinery.objects import Object, get_path


def load_balancer_addresses(obj: Printed) -> str:
    """
    The addresses in a Service's or an Ingress's ``status.loadBalancer``: each point's IP,
    else its hostname, sorted and once each, as kube's printers show them (the whole
    list: kube-apiserver prints "wide").
    """
    found = set()
    for point in mappings(get_path(obj, "status", "loadBalancer", "ingress")):
        address = text(point.get("ip")) or text(point.get("hostname"))
        if address:
            found.add(address)
    return ",".join(sorted(found))


def _service_external_ip(service: Printed) -> str:
    spec = mapping(service.get("spec"))
    kind = spec.get("type")
    external = [text(ip) for ip in items(spec.get("externalIPs"))]
    if kind in ("ClusterIP", "NodePort"):
        return ",".join(external) or "<none>"
    if kind == "LoadBalancer":
        balancer = load_balancer_addresses(service)
        if external:
            return ",".join(([balancer] if balancer else []) + external)
        return balancer or "<pending>"
    if kind == "ExternalName":
        return text(spec.get("externalName"))
    return "<unknown>"


def _service_ports(ports: Iterable[Mapping[str, Any]]) -> str:
    pieces = []
    for port in ports:
        protocol = text(port.get("protocol"))
        node_port = integer(port.get("nodePort"))
        if node_port > 0:
            pieces.append(f"{integer(port.get('port'))}:{node_port}/{protocol}")
        else:
            pieces.append(f"{integer(port.get('port'))}/{protocol}")
    return ",".join(pieces)


def _service_cells(service: Printed, now: datetime) -> list[Any]:
    spec = mapping(service.get("spec"))
    cluster_ips = items(spec.get("clusterIPs"))
    cluster_ip = text(cluster_ips[0]) if cluster_ips else text(spec.get("clusterIP"))
    return [
        name_cell(service),
        text(spec.get("type")),
        cluster_ip or "<none>",
        _service_external_ip(service),
        _service_ports(mappings(spec.get("ports"))) or "<none>",
        age_cell(service, now),
        format_labels(mapping(spec.get("selector"))),
    ]


PRINTER = Printer(
    (
        NAME_COLUMN,
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
        AGE_COLUMN,
        Column(
            "Selector",
            priority=1,
            description="Route service traffic to pods with label keys and values matching "
            "this selector.",
        ),
    ),
    _service_cells,
)


FIELDS = FieldTable(
    {
        "metadata.name": NAME,
        "metadata.namespace": NAMESPACE,
        "spec.clusterIP": field_path("spec", "clusterIP"),
        "spec.type": field_path("spec", "type"),
    }
)


def _default(service: Object) -> None:
    spec = child(service, "spec")
    if spec is None:
        return
    fill(spec, type="ClusterIP", sessionAffinity="None")
    default_ports(spec.get("ports"))
    for port in each(spec, "ports[]"):
        if port.get("targetPort") in (None, "", 0):
            port["targetPort"] = port.get("port")
    if spec.get("clusterIP") and not spec.get("clusterIPs"):
        spec["clusterIPs"] = [spec["clusterIP"]]
    kind = spec["type"]
    if kind in ("ClusterIP", "NodePort", "LoadBalancer"):
        fill(spec, internalTrafficPolicy="Cluster")
    if kind in ("NodePort", "LoadBalancer") or (kind == "ClusterIP" and spec.get("externalIPs")):
        fill(spec, externalTrafficPolicy="Cluster")
    if kind == "LoadBalancer":
        fill(spec, allocateLoadBalancerNodePorts=True)
    if spec["sessionAffinity"] == "None":
        spec.pop("sessionAffinityConfig", None)
    elif spec["sessionAffinity"] == "ClientIP":
        fill(child(child(spec, "sessionAffinityConfig"), "clientIP"), timeoutSeconds=10800)
    balancer = child(child(service, "status"), "loadBalancer")
    if kind == "LoadBalancer":
        for ingress in each(balancer, "ingress[]"):
            if ingress.get("ip"):
                fill(ingress, ipMode="VIP")


SERVICE_TYPES = ("ClusterIP", "ExternalName", "LoadBalancer", "NodePort")


def validate_service(service: Object) -> list[Cause]:
    """
    A Service: a known type; ports (unless headless or ExternalName), named
    when more than one, each name once, numbers in range; an ExternalName's name.
    """
    spec = service.get("spec")
    if not isinstance(spec, Mapping):
        return []
    causes: list[Cause] = []
    kind = spec.get("type")
    if kind not in SERVICE_TYPES:
        causes.append(not_supported("spec.type", kind or "", SERVICE_TYPES))
    ports = [p for p in spec.get("ports") or [] if isinstance(p, Mapping)]
    if not ports and spec.get("clusterIP") != "None" and kind != "ExternalName":
        causes.append(required("spec.ports"))
    names: set[str] = set()
    for index, port in enumerate(ports):
        at = f"spec.ports[{index}]"
        name = port.get("name")
        if len(ports) > 1 and not name:
            causes.append(required(f"{at}.name"))
        elif name:
            causes += label_causes(f"{at}.name", name) + once(f"{at}.name", name, names)
        causes += port_number_causes(f"{at}.port", port.get("port", 0))
        protocol = port.get("protocol")
        if protocol not in PROTOCOLS:
            causes.append(not_supported(f"{at}.protocol", protocol or "", PROTOCOLS))
        target = port.get("targetPort")
        if target != 0:
            causes += port_or_name_causes(f"{at}.targetPort", target)
    if kind == "ExternalName":
        external = spec.get("externalName")
        if not external:
            causes.append(required("spec.externalName"))
        elif isinstance(external, str):
            errors = dns_subdomain_errors(external.removesuffix("."))
            causes += [invalid("spec.externalName", external, m) for m in errors]
    return causes


RESOURCE = ResourceType(
    "",
    "v1",
    "Service",
    "services",
    "service",
    namespaced=True,
    short_names=("svc",),
    categories=("all",),
    subresources=("status", "proxy"),
    strategy=Strategy(
        printer=PRINTER,
        fields=FIELDS,
        merge_rules={
            **METADATA_ONLY_RULES,
            "spec.ports": keyed_list("port", "port", "protocol"),
            "spec.selector": ATOMIC,
            **STATUS_CONDITIONS_RULES,
        },
        default=_default,
        names=dns1035_label_name,
        validate=validate_service,
        returns_deleted_object=True,
    ),
)
