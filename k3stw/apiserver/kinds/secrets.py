"""
Secrets (core/v1): defaults, immutability, the Table kubectl prints and
the fields a selector may name.
"""

from __future__ import annotations

from k3stw.apiserver.fields import (
    NAME,
    NAMESPACE,
    FieldTable,
    field_path,
)
from k3stw.apiserver.kinds.configmaps import immutable_data
from k3stw.apiserver.registry import ResourceType
from k3stw.apiserver.strategy import Strategy
from k3stw.apiserver.tables import (
    AGE_COLUMN,
    NAME_COLUMN,
    Column,
    Printer,
    age_cell,
    mapping,
    name_cell,
    text,
)
from k3stw.machinery.objects import Object

PRINTER = Printer(
    (
        NAME_COLUMN,
        Column("Type", description="Used to facilitate programmatic handling of secret data."),
        Column("Data", description="Data contains the secret data."),
        AGE_COLUMN,
    ),
    lambda obj, now: [
        name_cell(obj),
        text(obj.get("type")),
        len(mapping(obj.get("data"))),
        age_cell(obj, now),
    ],
)


FIELDS = FieldTable(
    {"metadata.name": NAME, "metadata.namespace": NAMESPACE, "type": field_path("type")}
)


def _default(secret: Object) -> None:
    secret.setdefault("type", "Opaque")


RESOURCE = ResourceType(
    "",
    "v1",
    "Secret",
    "secrets",
    "secret",
    namespaced=True,
    strategy=Strategy(
        printer=PRINTER,
        fields=FIELDS,
        default=_default,
        validate_update=immutable_data,
    ),
)
