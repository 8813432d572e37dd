"""
Deployments (apps/v1): defaults, merge rules and the Table kubectl prints.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from k3stw.apiserver.defaulting import child, fill
from k3stw.apiserver.kinds.podspec import (
    CONTAINERS_COLUMN,
    IMAGES_COLUMN,
    default_rolling_update,
    selector_text,
    workload,
    workload_parts,
)
from k3stw.apiserver.patch.rules import (
    FieldRule,
    workload_rules,
)
from k3stw.apiserver.tables import (
    AGE_COLUMN,
    NAME_COLUMN,
    Column,
    Printed,
    Printer,
    age_cell,
    integer,
    name_cell,
)
from k3stw.machinery.objects import Object


def _deployment_cells(obj: Printed, now: datetime) -> list[Any]:
    spec, status, names, images = workload_parts(obj)
    return [
        name_cell(obj),
        f"{integer(status.get('readyReplicas'))}/{integer(spec.get('replicas'))}",
        integer(status.get("updatedReplicas")),
        integer(status.get("availableReplicas")),
        age_cell(obj, now),
        names,
        images,
        selector_text(spec.get("selector")),
    ]


_SELECTOR = Column(
    "Selector",
    priority=1,
    description="Label selector for pods. Existing ReplicaSets whose pods are selected by "
    "this will be the ones affected by this deployment.",
)
PRINTER = Printer(
    (
        NAME_COLUMN,
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
        AGE_COLUMN,
        CONTAINERS_COLUMN,
        IMAGES_COLUMN,
        _SELECTOR,
    ),
    _deployment_cells,
)


def _default(deployment: Object) -> None:
    spec = deployment["spec"]
    default_rolling_update(spec, "strategy", maxUnavailable="25%", maxSurge="25%")
    fill(spec, revisionHistoryLimit=10, progressDeadlineSeconds=600)
    child(deployment, "status")


RESOURCE = workload(
    "Deployment",
    "deploy",
    PRINTER,
    workload_rules({"spec.strategy": FieldRule(strategy="retainKeys")}),
    defaults=_default,
)
