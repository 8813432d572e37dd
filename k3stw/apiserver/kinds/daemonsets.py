"""
DaemonSets (apps/v1): defaults, merge rules and the Table kubectl prints.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from k3stw.apiserver.defaulting import child, fill
from k3stw.apiserver.kinds.podspec import (
    CONTAINERS_COLUMN,
    IMAGES_COLUMN,
    default_rolling_update,
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
    Column,
    Printed,
    Printer,
    age_cell,
    integer,
    mapping,
    name_cell,
)
from k3stw.machinery.labels import format_labels
from k3stw.machinery.objects import Object, get_path


def _daemon_set_cells(obj: Printed, now: datetime) -> list[Any]:
    spec, status, names, images = workload_parts(obj)
    return [
        name_cell(obj),
        integer(status.get("desiredNumberScheduled")),
        integer(status.get("currentNumberScheduled")),
        integer(status.get("numberReady")),
        integer(status.get("updatedNumberScheduled")),
        integer(status.get("numberAvailable")),
        format_labels(mapping(get_path(spec, "template", "spec", "nodeSelector"))),
        age_cell(obj, now),
        names,
        images,
        format_selector(spec.get("selector")),
    ]


PRINTER = Printer(
    (
        NAME_COLUMN,
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
        AGE_COLUMN,
        CONTAINERS_COLUMN,
        IMAGES_COLUMN,
        Column(
            "Selector",
            priority=1,
            description="A label query over pods that are managed by the daemon set.",
        ),
    ),
    _daemon_set_cells,
)


def _default(daemonset: Object) -> None:
    spec = daemonset["spec"]
    default_rolling_update(spec, "updateStrategy", maxUnavailable=1, maxSurge=0)
    fill(spec, revisionHistoryLimit=10)
    # Counts Go always writes, zero until the controller counts.
    fill(
        child(daemonset, "status"),
        currentNumberScheduled=0,
        numberMisscheduled=0,
        desiredNumberScheduled=0,
        numberReady=0,
    )


#: Where apps/v1 shows a DaemonSet's template generation (each change of the template counts).
TEMPLATE_GENERATION = "deprecated.daemonset.template.generation"


def _template_generation(daemonset: Object) -> int:
    value = (daemonset["metadata"].get("annotations") or {}).get(TEMPLATE_GENERATION)
    return int(value) if isinstance(value, str) and value.isdigit() else 0


def _set_template_generation(daemonset: Object, generation: int) -> None:
    daemonset["metadata"].setdefault("annotations", {})[TEMPLATE_GENERATION] = str(generation)


def _prepare_create(daemonset: Object, now: str) -> None:
    _set_template_generation(daemonset, max(1, _template_generation(daemonset)))


def _prepare_update(new: Object, old: Object) -> None:
    generation = max(1, _template_generation(old))
    if get_path(new, "spec", "template") != get_path(old, "spec", "template"):
        generation += 1
    _set_template_generation(new, generation)


RESOURCE = workload(
    "DaemonSet",
    "ds",
    PRINTER,
    workload_rules(),
    replicas=False,
    defaults=_default,
    prepare_create=_prepare_create,
    prepare_update=_prepare_update,
)
