"""
ReplicaSets (apps/v1): defaults, merge rules and the Table kubectl prints.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from k3stw.apiserver.kinds.podspec import (
    CONTAINERS_COLUMN,
    IMAGES_COLUMN,
    format_selector,
    template_containers,
    template_owner_defaults,
)
from k3stw.apiserver.patch.rules import (
    workload_rules,
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
    mapping,
    name_cell,
)
from k3stw.machinery.objects import get_path


def _replica_set_cells(obj: Printed, now: datetime) -> list[Any]:
    spec = mapping(obj.get("spec"))
    status = mapping(obj.get("status"))
    names, images = template_containers(get_path(spec, "template", "spec"))
    return [
        name_cell(obj),
        integer(spec.get("replicas")),
        integer(status.get("replicas")),
        integer(status.get("readyReplicas")),
        age_cell(obj, now),
        names,
        images,
        format_selector(spec.get("selector")),
    ]


PRINTER = Printer(
    (
        NAME_COLUMN,
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
        AGE_COLUMN,
        CONTAINERS_COLUMN,
        IMAGES_COLUMN,
        Column(
            "Selector",
            priority=1,
            description="Selector is a label query over pods that should match the replica count.",
        ),
    ),
    _replica_set_cells,
)


RESOURCE = ResourceType(
    "apps",
    "v1",
    "ReplicaSet",
    "replicasets",
    "replicaset",
    namespaced=True,
    short_names=("rs",),
    categories=("all",),
    subresources=("status",),
    strategy=Strategy(
        printer=PRINTER,
        merge_rules=workload_rules(),
        counts_generation=True,
        default=template_owner_defaults(replicas=True),
    ),
)
