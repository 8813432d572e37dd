"""
ConfigMaps (core/v1): immutability and the Table kubectl prints.
"""

from __future__ import annotations

import re

from k3stw.apiserver.fielderrors import invalid
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


#: The most data a ConfigMap or Secret may hold, in bytes.
MAX_SIZE = 1024 * 1024
_KEY = re.compile(r"[-._a-zA-Z0-9]+")
KEY_MESSAGE = (
    "a valid config key must consist of alphanumeric characters, '-', '_' or '.' (e.g. "
    "'key.name', or 'KEY_NAME', or 'key-name', regex used for validation is '[-._a-zA-Z0-9]+')"
)


def key_errors(key: str) -> list[str]:
    """What is wrong with a ConfigMap's or Secret's key (``validation.IsConfigMapKey``)."""
    if len(key) <= 253 and key[:1] != "." and _KEY.fullmatch(key):
        return []
    errors = ["must be no more than 253 characters"] if len(key) > 253 else []
    if not _KEY.fullmatch(key):
        errors.append(KEY_MESSAGE)
    if key in (".", ".."):
        errors.append(f"must not be '{key}'")
    elif key.startswith(".."):
        errors.append("must not start with '..'")
    return errors


def data_causes(obj: Object, fields: tuple[str, str], encoded: str) -> list[Cause]:
    """
    The keys of C{fields}' maps (each in one of them only) and their total size.

    :param encoded: which of them holds base64 (its decoded bytes count).
    """
    causes: list[Cause] = []
    total = 0
    first, second = (mapping(obj.get(field)) for field in fields)
    for field, data in ((fields[0], first), (fields[1], second)):
        for key in data:
            if errors := key_errors(key):
                causes += [invalid(f"{field}[{key}]", key, m) for m in errors]
        values = [value for value in data.values() if isinstance(value, str)]
        # Bytes as stored: base64's decoded, text's UTF-8 (its characters, when ASCII).
        text = "".join(values)
        total += len(text) * 3 // 4 if field == encoded else len(text.encode())
    for key in first.keys() & second.keys():
        detail = f"duplicate of key present in {fields[1]}"
        causes.append(invalid(f"{fields[0]}[{key}]", key, detail))
    if total > MAX_SIZE:
        causes.append(("", f"Too long: may not be more than {MAX_SIZE} bytes"))
    return causes


def validate_configmap(configmap: Object) -> list[Cause]:
    """Keys that can be file names, each once, and at most 1 MiB of data."""
    return data_causes(configmap, ("data", "binaryData"), "binaryData")


RESOURCE = ResourceType(
    "",
    "v1",
    "ConfigMap",
    "configmaps",
    "configmap",
    namespaced=True,
    short_names=("cm",),
    strategy=Strategy(printer=PRINTER, validate=validate_configmap, validate_update=immutable_data),
)
