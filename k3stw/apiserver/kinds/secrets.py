"""
Secrets (core/v1): defaults, immutability, the Table kubectl prints and
the fields a selector may name.
"""

from __future__ import annotations

import base64

from k3stw.apiserver.defaulting import fill
from k3stw.apiserver.fielderrors import IMMUTABLE, invalid, required
from k3stw.apiserver.fields import (
    NAME,
    NAMESPACE,
    FieldTable,
    field_path,
)
from k3stw.apiserver.kinds.configmaps import data_causes, immutable_data
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
    fill(secret, type="Opaque")
    # stringData is write-only, as in kube-apiserver: each key is written into
    # data (encoded), over what data held, and stringData itself is never stored.
    string_data = secret.get("stringData")
    if isinstance(string_data, dict) and all(isinstance(v, str) for v in string_data.values()):
        del secret["stringData"]
        data = secret.get("data")
        if not isinstance(data, dict):
            data = secret["data"] = {}
        for key, value in string_data.items():
            data[key] = base64.b64encode(value.encode("utf-8")).decode("ascii")


#: The keys each type of Secret must hold.
REQUIRED_KEYS = {
    "kubernetes.io/tls": ("tls.crt", "tls.key"),
    "kubernetes.io/dockerconfigjson": (".dockerconfigjson",),
    "kubernetes.io/dockercfg": (".dockercfg",),
    "kubernetes.io/ssh-auth": ("ssh-privatekey",),
}


def _validate(secret: Object) -> list[Cause]:
    if "stringData" in secret:
        # Only a stringData _default could not merge is left.
        return [("stringData", "Invalid value: must be a map of keys to string values")]
    causes = data_causes(secret, ("data", "stringData"), "data")
    data = mapping(secret.get("data"))
    for key in REQUIRED_KEYS.get(str(secret.get("type")), ()):
        if key not in data:
            causes.append(required(f"data[{key}]"))
    return causes


def _validate_update(new: Object, old: Object) -> list[Cause]:
    """A Secret's type never changes; nor, once immutable, its data."""
    causes = []
    if new.get("type") != old.get("type"):
        causes.append(invalid("type", new.get("type"), IMMUTABLE))
    return causes + immutable_data(new, old)


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
        validate=_validate,
        validate_update=_validate_update,
    ),
)
