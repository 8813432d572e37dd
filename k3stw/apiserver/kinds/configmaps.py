"""
ConfigMaps (core/v1): immutability and the Table kubectl prints.
"""

from __future__ import annotations

from k3stw.apiserver.registry import ResourceType
from k3stw.apiserver.strategy import Cause, Strategy
from k3stw.apiserver.tables import (
    AGE_COLUMN,
    NAME_COLUMN,
    Column,
    Printer,
    age_cell,
    mapping,
    name_cell,
)
from k3stw.machinery.objects import Object

PRINTER = Printer(
    (
        NAME_COLUMN,
        Column("Data", description="Data contains the configuration data."),
        AGE_COLUMN,
    ),
    lambda obj, now: [
        name_cell(obj),
        len(mapping(obj.get("data"))) + len(mapping(obj.get("binaryData"))),
        age_cell(obj, now),
    ],
)


def immutable_data(new: Object, old: Object) -> list[Cause]:
    """
    The update rule of a Secret or ConfigMap: once ``immutable`` is set, its
    data (and the flag itself) never change.
    """
    if not old.get("immutable"):
        return []
    return [
        (field, "Forbidden: field is immutable when `immutable` is set")
        for field in ("data", "binaryData", "stringData", "immutable")
        if new.get(field) != old.get(field)
    ]


RESOURCE = ResourceType(
    "",
    "v1",
    "ConfigMap",
    "configmaps",
    "configmap",
    namespaced=True,
    short_names=("cm",),
    strategy=Strategy(printer=PRINTER, validate_update=immutable_data),
)
