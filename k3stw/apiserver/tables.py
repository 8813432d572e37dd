"""
Server-side printing: the ``meta.k8s.io/v1`` Tables that ``kubectl get`` shows.

Pure functions over JSON-like objects.  The columns and the cell of every row follow
kube-apiserver 1.32's printers (``pkg/printers/internalversion/printers.go``), its default
Table convertor (``Name``, ``Created At``) and the custom resource convertor of
apiextensions-apiserver (``additionalPrinterColumns``, or ``Age`` when there are none).
As in kube-apiserver, every row is computed with the ``-o wide`` columns included;
kubectl hides those of priority 1 unless asked.

Printers read objects as stored and treat an absent field as Go's zero value, so a
sparse object prints without error; defaulting (``Secret.type``, ``Service.spec.type``,
port protocols, ``replicas``) is the storage layer's job, as it is kube-apiserver's.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from k3stw.machinery.objects import get_path
from k3stw.machinery.quantity import go_float
from k3stw.machinery.times import TIME_FORMAT, parse_datetime, utc

#: An object as the printers read it.
Printed = Mapping[str, Any]
Now = datetime | float
"""The time rows are printed at: an aware datetime, or POSIX seconds (``clock.seconds()``)."""

TABLE_API_VERSION = "meta.k8s.io/v1"

# Time


def human_duration(delta: timedelta) -> str:
    """
    A duration as kube-apiserver prints ages (``duration.HumanDuration``): about two
    significant figures, ``45s``, ``2m30s``, ``15m``, ``7h5m``, ``30h``, ``3d4h``,
    ``45d``, ``2y30d``, ``9y``; ``0s`` for a clock up to two seconds behind,
    ``<invalid>`` beyond.
    """
    seconds = int(delta.total_seconds())  # truncates toward zero, as Go's int() does
    if seconds < -1:
        return "<invalid>"
    if seconds < 0:
        return "0s"
    if seconds < 60 * 2:
        return f"{seconds}s"
    micro = delta // timedelta(microseconds=1)
    minutes = micro // 60_000_000
    if minutes < 10:
        rest = seconds % 60
        return f"{minutes}m{rest}s" if rest else f"{minutes}m"
    if minutes < 60 * 3:
        return f"{minutes}m"
    hours = micro // 3_600_000_000
    if hours < 8:
        rest = minutes % 60
        return f"{hours}h{rest}m" if rest else f"{hours}h"
    if hours < 48:
        return f"{hours}h"
    if hours < 24 * 8:
        rest = hours % 24
        return f"{hours // 24}d{rest}h" if rest else f"{hours // 24}d"
    if hours < 24 * 365 * 2:
        return f"{hours // 24}d"
    if hours < 24 * 365 * 8:
        rest = (hours // 24) % 365
        return f"{hours // 24 // 365}y{rest}d" if rest else f"{hours // 24 // 365}y"
    return f"{hours // 24 // 365}y"


def _now(now: Now) -> datetime:
    return now if isinstance(now, datetime) else utc(now)


def since(value: Any, now: datetime) -> str:
    """The age of a timestamp (``translateTimestampSince``): ``<unknown>`` when unset."""
    moment = parse_datetime(value)
    return "<unknown>" if moment is None else human_duration(now - moment)


# Reading objects, with Go's zero values for what is absent


def text(value: Any) -> str:
    return value if isinstance(value, str) else ""


def integer(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def items(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def mappings(value: Any) -> list[Mapping[str, Any]]:
    return [item for item in items(value) if isinstance(item, Mapping)]


def mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def name_cell(obj: Printed) -> str:
    return text(get_path(obj, "metadata", "name"))


def age_cell(obj: Printed, now: datetime) -> str:
    return since(get_path(obj, "metadata", "creationTimestamp"), now)


# Columns and printers


@dataclass(frozen=True)
class Column:
    """One ``TableColumnDefinition``; priority 1 columns show with ``-o wide`` only."""

    name: str
    type: str = "string"
    format: str = ""
    description: str = ""
    priority: int = 0

    def definition(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "type": self.type,
            "format": self.format,
            "description": self.description,
            "priority": self.priority,
        }


Cells = Callable[[Printed, datetime], list[Any]]
Conditions = Callable[[Printed], list[dict[str, str]]]


def _no_conditions(obj: Printed) -> list[dict[str, str]]:
    return []


@dataclass(frozen=True)
class Printer:
    """The columns of one kind and how to compute a row's cells from an object."""

    columns: tuple[Column, ...]
    cells: Cells
    conditions: Conditions = _no_conditions

    def column_definitions(self) -> list[dict[str, Any]]:
        return [column.definition() for column in self.columns]

    def row(self, obj: Printed, now: Now, include_object: str = "Metadata") -> dict[str, Any]:
        """One ``TableRow``: its cells and, per ``includeObject``, the object."""
        row: dict[str, Any] = {"cells": self.cells(obj, _now(now))}
        conditions = self.conditions(obj)
        if conditions:
            row["conditions"] = conditions
        row["object"] = _row_object(obj, include_object)
        return row


# ObjectMeta's swagger documentation, which every Name and Age column carries.
NAME_DESCRIPTION = (
    "Name must be unique within a namespace. Is required when creating resources, although "
    "some resources may allow a client to request the generation of an appropriate name "
    "automatically. Name is primarily intended for creation idempotence and configuration "
    "definition. Cannot be updated. More info: "
    "https://kubernetes.io/docs/concepts/overview/working-with-objects/names#names"
)
CREATION_DESCRIPTION = (
    "CreationTimestamp is a timestamp representing the server time when this object was "
    "created. It is not guaranteed to be set in happens-before order across separate "
    "operations. Clients may not set this value. It is represented in RFC3339 form and is "
    "in UTC.\n\nPopulated by the system. Read-only. Null for lists. More info: "
    "https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#metadata"
)
NAME_COLUMN = Column("Name", format="name", description=NAME_DESCRIPTION)
AGE_COLUMN = Column("Age", description=CREATION_DESCRIPTION)
# Everything else: kube-apiserver's default convertor, and custom resources


def _created_at(obj: Printed) -> str:
    moment = parse_datetime(get_path(obj, "metadata", "creationTimestamp"))
    if moment is None:
        return "0001-01-01T00:00:00Z"  # Go's zero time, as the default convertor prints it
    return moment.astimezone(UTC).strftime(TIME_FORMAT)


#: Built-in kinds without a printer of their own (CustomResourceDefinitions among them).
DEFAULT_PRINTER = Printer(
    (NAME_COLUMN, Column("Created At", "date", description=CREATION_DESCRIPTION)),
    lambda obj, now: [name_cell(obj), _created_at(obj)],
)

_PATH_STEP = re.compile(r"\.([^.\[\]]+)|\[(-?\d+)\]|\[\s*'([^']*)'\s*\]|\[\s*\"([^\"]*)\"\s*\]")


def compile_json_path(path: str) -> tuple[str | int, ...] | None:
    """
    The steps of a simple JSONPath (``.spec.replicas``, ``.status.conditions[0].type``,
    ``.metadata.labels['app.kubernetes.io/name']``), optionally in ``{}``; None if it is
    not that simple.
    """
    path = path.strip()
    if path.startswith("{") and path.endswith("}"):
        path = path[1:-1].strip()
    steps: list[str | int] = []
    position = 0
    while position < len(path):
        match = _PATH_STEP.match(path, position)
        if match is None:
            return None
        name, index, single, double = match.groups()
        if index is not None:
            steps.append(int(index))
        else:
            steps.append(next(part for part in (name, single, double) if part is not None))
        position = match.end()
    return tuple(steps) if steps else None


_MISSING = object()


def _follow(obj: Any, steps: Sequence[str | int]) -> Any:
    for step in steps:
        if isinstance(step, int):
            if not isinstance(obj, list) or not -len(obj) <= step < len(obj):
                return _MISSING
            obj = obj[step]
        else:
            if not isinstance(obj, Mapping) or step not in obj:
                return _MISSING
            obj = obj[step]
    return obj


def _json_path_text(value: Any) -> str:
    """How kubectl's JSONPath printer renders a value (``PrintResults``)."""
    if isinstance(value, Mapping | list):
        return json.dumps(value, separators=(",", ":"), sort_keys=True, ensure_ascii=False)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return go_float(value)
    return str(value)


def _custom_cell(kind: str, value: Any, now: datetime) -> Any:
    """A custom column's cell (``cellForJSONValue``); None when the value does not fit."""
    if value is None:
        return None
    if kind == "string":
        return _json_path_text(value)
    if isinstance(value, bool):
        return value if kind == "boolean" else None
    if kind == "integer" and isinstance(value, int | float):
        return int(value)
    if kind == "number" and isinstance(value, int | float):
        return float(value)
    if kind == "date" and isinstance(value, str):
        if value in ("", "null"):
            return "<unknown>"
        moment = parse_datetime(value)
        return "<invalid>" if moment is None else human_duration(now - moment)
    return None


def custom_resource_printer(printer_columns: Sequence[Mapping[str, Any]] = ()) -> Printer:
    """
    The printer of a custom resource version: ``Name`` and the CRD version's
    ``additionalPrinterColumns`` (JSONPath cells typed ``string``, ``integer``,
    ``number``, ``boolean`` or ``date``), or ``Name`` and ``Age`` when it declares none.
    """
    if not printer_columns:
        printer_columns = (
            {
                "name": "Age",
                "type": "date",
                "description": CREATION_DESCRIPTION,
                "jsonPath": ".metadata.creationTimestamp",
            },
        )
    columns = [NAME_COLUMN]
    paths: list[tuple[str, tuple[str | int, ...] | None]] = []
    for spec in printer_columns:
        json_path = text(spec.get("jsonPath"))
        description = text(spec.get("description")) or (
            f"Custom resource definition column (in JSONPath format): {json_path}"
        )
        kind = text(spec.get("type"))
        columns.append(
            Column(
                text(spec.get("name")),
                kind,
                text(spec.get("format")),
                description,
                integer(spec.get("priority")),
            )
        )
        paths.append((kind, compile_json_path(json_path)))

    def cells(obj: Printed, now: datetime) -> list[Any]:
        row: list[Any] = [name_cell(obj)]
        for kind, steps in paths:
            value = _MISSING if steps is None else _follow(obj, steps)
            row.append(None if value is _MISSING else _custom_cell(kind, value, now))
        return row

    return Printer(tuple(columns), cells)


# Tables


INCLUDE_OBJECT_VALUES = ("None", "Metadata", "Object")


class TableOptionError(ValueError):
    """A Table request option the API rejects with ``400 BadRequest``."""

    code = 400


def parse_include_object(value: str | None) -> str:
    """
    The ``includeObject`` query value: ``None``, ``Metadata`` (the default) or ``Object``.

    :raises TableOptionError: for anything else, with kube-apiserver's message.
    """
    if not value:
        return "Metadata"
    if value not in INCLUDE_OBJECT_VALUES:
        raise TableOptionError(f"unrecognized includeObject value: {json.dumps(value)}")
    return value


def _row_object(obj: Printed, include_object: str) -> Any:
    if include_object == "None":
        return None
    if include_object == "Object":
        return obj
    return {
        "kind": "PartialObjectMetadata",
        "apiVersion": TABLE_API_VERSION,
        "metadata": dict(mapping(obj.get("metadata"))),
    }


def table(
    printer: Printer,
    objects: Iterable[Printed],
    now: Now,
    resource_version: str = "",
    continue_token: str = "",
    include_object: str | None = "Metadata",
    remaining_item_count: int | None = None,
    with_columns: bool = True,
) -> dict[str, Any]:
    """
    A whole ``Table``, as kube-apiserver answers a get or list asked for
    ``as=Table;g=meta.k8s.io;v=v1``.

    :param now: the time ages are counted to.
    :param include_object: ``None``, ``Metadata`` (rows carry ``PartialObjectMetadata``)
        or ``Object`` (rows carry the whole object).
    :param with_columns: False leaves ``columnDefinitions`` null, as in all but the
        first event of a watch.
    :raises TableOptionError: for an unknown ``include_object``.
    """
    include = parse_include_object(include_object)
    at = _now(now)
    metadata: dict[str, Any] = {}
    if resource_version:
        metadata["resourceVersion"] = resource_version
    if continue_token:
        metadata["continue"] = continue_token
    if remaining_item_count is not None:
        metadata["remainingItemCount"] = remaining_item_count
    return {
        "kind": "Table",
        "apiVersion": TABLE_API_VERSION,
        "metadata": metadata,
        "columnDefinitions": printer.column_definitions() if with_columns else None,
        "rows": [printer.row(obj, at, include) for obj in objects],
    }


def watch_event_table(
    printer: Printer,
    obj: Printed,
    now: Now,
    with_columns: bool,
    include_object: str | None = "Metadata",
) -> dict[str, Any]:
    """
    The one-row ``Table`` a watch event carries in place of the object; kube-apiserver
    sends ``columnDefinitions`` in the first event of a stream only.
    """
    version = text(get_path(obj, "metadata", "resourceVersion"))
    return table(printer, [obj], now, version, "", include_object, with_columns=with_columns)
