"""
ReplicaSets (apps/v1): defaults, merge rules and the Table kubectl prints.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

from k3stw.apiserver.defaulting import child, fill
from k3stw.apiserver.kinds.podspec import (
    CONTAINERS_COLUMN,
    IMAGES_COLUMN,
    format_selector,
    workload,
    workload_parts,
)
from k3stw.apiserver.patch.rules import (
    workload_rules,
)
from k3stw.apiserver.tables import (
    AGE_COLUMN,
    NAME_COLUMN,
    Cells,
    Column,
    Printed,
    Printer,
    age_cell,
    integer,
    name_cell,
)
from k3stw.machinery.objects import Object


def replica_cells(selector: Callable[[Any], str]) -> Cells:
    """
    A replicated pod set's cells (ReplicaSets, ReplicationControllers): desired,
    current and ready counts, and with ``-o wide`` its selector as C{selector} shows it.
    """

    def cells(obj: Printed, now: datetime) -> list[Any]:
        spec, status, names, images = workload_parts(obj)
        return [
            name_cell(obj),
            integer(spec.get("replicas")),
            integer(status.get("replicas")),
            integer(status.get("readyReplicas")),
            age_cell(obj, now),
            names,
            images,
            selector(spec.get("selector")),
        ]

    return cells


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
    replica_cells(format_selector),
)


def _default(replicaset: Object) -> None:
    fill(child(replicaset, "status"), replicas=0)


RESOURCE = workload("ReplicaSet", "rs", PRINTER, workload_rules(), defaults=_default)
