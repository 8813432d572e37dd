"""
Deployments (apps/v1): defaults, merge rules and the Table kubectl prints.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from k3stw.apiserver.defaulting import child, fill
from k3stw.apiserver.fielderrors import (
    Cause,
    forbidden,
    int_or_percent,
    int_or_percent_causes,
    nonnegative_causes,
    not_supported,
)
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


STRATEGY_TYPES = ("Recreate", "RollingUpdate")


def validate_deployment(deployment: Object) -> list[Cause]:
    """Replicas and minReadySeconds not negative; a strategy that can make progress."""
    spec = deployment.get("spec")
    if not isinstance(spec, Mapping):
        return []
    causes = nonnegative_causes("spec.replicas", spec.get("replicas"))
    causes += nonnegative_causes("spec.minReadySeconds", spec.get("minReadySeconds"))
    strategy = spec.get("strategy")
    if isinstance(strategy, Mapping):
        kind = strategy.get("type")
        rolling = strategy.get("rollingUpdate")
        if kind not in STRATEGY_TYPES:
            causes.append(not_supported("spec.strategy.type", kind or "", STRATEGY_TYPES))
        elif kind == "Recreate" and rolling is not None:
            causes.append(
                forbidden(
                    "spec.strategy.rollingUpdate",
                    "may not be specified when strategy `type` is 'Recreate'",
                )
            )
        elif isinstance(rolling, Mapping):
            path = "spec.strategy.rollingUpdate"
            unavailable, surge = rolling.get("maxUnavailable"), rolling.get("maxSurge")
            causes += int_or_percent_causes(f"{path}.maxUnavailable", unavailable)
            causes += int_or_percent_causes(f"{path}.maxSurge", surge)
            if int_or_percent(unavailable) == 0 and int_or_percent(surge) == 0:
                causes.append(
                    (
                        f"{path}.maxUnavailable",
                        f"Invalid value: {unavailable}: may not be 0 when `maxSurge` is 0",
                    )
                )
    return causes


RESOURCE = workload(
    "Deployment",
    "deploy",
    PRINTER,
    workload_rules({"spec.strategy": FieldRule(strategy="retainKeys")}),
    defaults=_default,
    validate=validate_deployment,
)
