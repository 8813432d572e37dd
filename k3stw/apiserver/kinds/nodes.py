"""
Nodes (core/v1): merge rules, the Table kubectl prints and the fields a
selector may name.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from k3stw.apiserver.fields import (
    NAME,
    FieldTable,
    boolean_field,
)
from k3stw.apiserver.patch.rules import (
    MERGED_SET,
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
    mapping,
    mappings,
    name_cell,
    text,
)
from k3stw.machinery.objects import get_path


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


def _node_address(node: Printed, kind: str) -> str:
    for address in mappings(get_path(node, "status", "addresses")):
        if address.get("type") == kind:
            return text(address.get("address"))
    return "<none>"


def _node_cells(node: Printed, now: datetime) -> list[Any]:
    conditions = {c.get("type"): c for c in mappings(get_path(node, "status", "conditions"))}
    status = []
    if "Ready" in conditions:
        status.append("Ready" if conditions["Ready"].get("status") == "True" else "NotReady")
    else:
        status.append("Unknown")
    if get_path(node, "spec", "unschedulable") is True:
        status.append("SchedulingDisabled")
    info = mapping(get_path(node, "status", "nodeInfo"))
    return [
        name_cell(node),
        ",".join(status),
        ",".join(_node_roles(mapping(get_path(node, "metadata", "labels")))) or "<none>",
        age_cell(node, now),
        text(info.get("kubeletVersion")),
        _node_address(node, "InternalIP"),
        _node_address(node, "ExternalIP"),
        text(info.get("osImage")) or "<unknown>",
        text(info.get("kernelVersion")) or "<unknown>",
        text(info.get("containerRuntimeVersion")) or "<unknown>",
    ]


_ADDRESSES = "List of addresses reachable to the node."
PRINTER = Printer(
    (
        NAME_COLUMN,
        Column("Status", description="The status of the node"),
        Column("Roles", description="The roles of the node"),
        AGE_COLUMN,
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


FIELDS = FieldTable(
    {"metadata.name": NAME, "spec.unschedulable": boolean_field("spec", "unschedulable")}
)

RESOURCE = ResourceType(
    "",
    "v1",
    "Node",
    "nodes",
    "node",
    namespaced=False,
    short_names=("no",),
    subresources=("status", "proxy"),
    strategy=Strategy(
        printer=PRINTER,
        fields=FIELDS,
        merge_rules={
            **METADATA_ONLY_RULES,
            "spec.podCIDRs": MERGED_SET,
            **STATUS_CONDITIONS_RULES,
            "status.addresses": keyed_list("type"),
        },
    ),
)
