"""
StatefulSets (apps/v1): kube-apiserver's defaults and the Table kubectl prints;
merge rules from the schema.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from k3stw.apiserver.catalogue.rules import LazyRules
from k3stw.apiserver.kinds.podspec import (
    CONTAINERS_COLUMN,
    IMAGES_COLUMN,
    default_rolling_update,
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
    spec.setdefault("podManagementPolicy", "OrderedReady")
    default_rolling_update(spec, "updateStrategy", partition=0)
    retention = spec.setdefault("persistentVolumeClaimRetentionPolicy", {})
    if isinstance(retention, dict):
        retention.setdefault("whenDeleted", "Retain")
        retention.setdefault("whenScaled", "Retain")
    for claim in spec.get("volumeClaimTemplates") or []:
        if isinstance(claim, dict):
            claim.setdefault("spec", {}).setdefault("volumeMode", "Filesystem")


RESOURCE = workload(
    "StatefulSet", "sts", PRINTER, LazyRules("apps", "v1", "StatefulSet"), defaults=_default
)
