"""
StatefulSets (apps/v1): kube-apiserver's defaults and the Table kubectl prints;
merge rules from the schema.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from k3stw.apiserver.catalogue.rules import LazyRules
from k3stw.apiserver.defaulting import child, each, fill, unset
from k3stw.apiserver.kinds.podspec import (
    CONTAINERS_COLUMN,
    IMAGES_COLUMN,
    default_claim_spec,
    workload,
    workload_parts,
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


def _cells(obj: Printed, now: datetime) -> list[Any]:
    spec, status, names, images = workload_parts(obj)
    ready = f"{integer(status.get('readyReplicas'))}/{integer(spec.get('replicas'))}"
    return [name_cell(obj), ready, age_cell(obj, now), names, images]


PRINTER = Printer(
    (
        NAME_COLUMN,
        Column("Ready", description="Number of the pod with ready state"),
        AGE_COLUMN,
        CONTAINERS_COLUMN,
        IMAGES_COLUMN,
    ),
    _cells,
)


def _default(statefulset: Object) -> None:
    spec = statefulset["spec"]
    fill(spec, podManagementPolicy="OrderedReady", revisionHistoryLimit=10)
    strategy = child(spec, "updateStrategy")
    if strategy is not None and unset(strategy.get("type")):
        # Only a strategy left to the default gets a rollingUpdate of its own.
        strategy["type"] = "RollingUpdate"
        child(strategy, "rollingUpdate")
    if strategy is not None and strategy["type"] == "RollingUpdate":
        fill(strategy.get("rollingUpdate"), partition=0)
    fill(
        child(spec, "persistentVolumeClaimRetentionPolicy"),
        whenDeleted="Retain",
        whenScaled="Retain",
    )
    for claim in each(spec, "volumeClaimTemplates[]"):
        default_claim_spec(child(claim, "spec"))
        fill(child(claim, "status"), phase="Pending")
    fill(child(statefulset, "status"), replicas=0)


RESOURCE = workload(
    "StatefulSet", "sts", PRINTER, LazyRules("apps", "v1", "StatefulSet"), defaults=_default
)
