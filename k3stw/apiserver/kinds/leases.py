"""
Leases (coordination.k8s.io/v1): the Table kubectl prints.
"""

from __future__ import annotations

from k3stw.apiserver.registry import ResourceType
from k3stw.apiserver.strategy import Strategy
from k3stw.apiserver.tables import (
    AGE_COLUMN,
    NAME_COLUMN,
    Column,
    Printer,
    age_cell,
    name_cell,
    text,
)
from k3stw.machinery.objects import get_path

PRINTER = Printer(
    (
        NAME_COLUMN,
        Column(
            "Holder",
            description="holderIdentity contains the identity of the holder of a current lease.",
        ),
        AGE_COLUMN,
    ),
    lambda obj, now: [
        name_cell(obj),
        text(get_path(obj, "spec", "holderIdentity")),
        age_cell(obj, now),
    ],
)


RESOURCE = ResourceType(
    "coordination.k8s.io",
    "v1",
    "Lease",
    "leases",
    "lease",
    namespaced=True,
    strategy=Strategy(printer=PRINTER),
)
