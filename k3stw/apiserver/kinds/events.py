"""
Events (core/v1): merge rules, the Table kubectl prints and the fields a
selector may name; and the same events as events.k8s.io/v1 shows them.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from k3stw.apiserver.fields import (
    NAME,
    NAMESPACE,
    FieldGetter,
    FieldTable,
    field_path,
    field_text,
)
from k3stw.apiserver.patch.rules import (
    ATOMIC,
    METADATA_ONLY_RULES,
)
from k3stw.apiserver.registry import Conversion, ResourceType
from k3stw.apiserver.strategy import Cause, Strategy
from k3stw.apiserver.tables import (
    NAME_DESCRIPTION,
    Column,
    Printed,
    Printer,
    integer,
    mapping,
    name_cell,
    since,
    text,
)
from k3stw.machinery.objects import Object, get_path
from k3stw.machinery.times import parse_datetime


def _event_cells(event: Printed, now: datetime) -> list[Any]:
    first_seen = since(event.get("firstTimestamp"), now)
    if parse_datetime(event.get("firstTimestamp")) is None:
        first_seen = since(event.get("eventTime"), now)
    last_seen = since(event.get("lastTimestamp"), now)
    if parse_datetime(event.get("lastTimestamp")) is None:
        last_seen = first_seen
    count = integer(event.get("count"))
    series = event.get("series")
    if isinstance(series, Mapping):
        last_seen = since(series.get("lastObservedTime"), now)
        count = integer(series.get("count"))
    elif count == 0:
        count = 1  # singleton events of the events.k8s.io API carry no count
    involved = mapping(event.get("involvedObject"))
    kind = text(involved.get("kind")).lower()
    target = f"{kind}/{text(involved.get('name'))}" if involved.get("name") else kind
    source = mapping(event.get("source"))
    component = text(source.get("component")) or text(event.get("reportingComponent"))
    instance = text(source.get("host")) or text(event.get("reportingInstance"))
    return [
        last_seen,
        text(event.get("type")),
        text(event.get("reason")),
        target,
        text(involved.get("fieldPath")),
        f"{component}, {instance}" if instance else component,
        text(event.get("message")).strip(),
        first_seen,
        count,
        name_cell(event),
    ]


PRINTER = Printer(
    (
        Column(
            "Last Seen",
            description="The time at which the most recent occurrence of this event was recorded.",
        ),
        Column(
            "Type",
            description="Type of this event (Normal, Warning), new types could be added in "
            "the future",
        ),
        Column(
            "Reason",
            description="This should be a short, machine understandable string that gives "
            "the reason for the transition into the object's current status.",
        ),
        Column("Object", description="The object that this event is about."),
        Column(
            "Subobject",
            priority=1,
            description="If referring to a piece of an object instead of an entire object, "
            "this string should contain a valid JSON/Go field access statement.",
        ),
        Column(
            "Source",
            priority=1,
            description="The component reporting this event. Should be a short machine "
            "understandable string.",
        ),
        Column(
            "Message", description="A human-readable description of the status of this operation."
        ),
        Column(
            "First Seen",
            priority=1,
            description="The time at which the event was first recorded. (Time of server "
            "receipt is in TypeMeta.)",
        ),
        Column("Count", priority=1, description="The number of times this event has occurred."),
        Column("Name", priority=1, format="name", description=NAME_DESCRIPTION),
    ),
    _event_cells,
)


def _event_source(obj: Mapping[str, Any]) -> str:
    return field_text(get_path(obj, "source", "component") or get_path(obj, "reportingComponent"))


FIELDS = FieldTable(
    {
        "metadata.name": NAME,
        "metadata.namespace": NAMESPACE,
        **{
            f"involvedObject.{name}": field_path("involvedObject", name)
            for name in (
                "kind",
                "namespace",
                "name",
                "uid",
                "apiVersion",
                "resourceVersion",
                "fieldPath",
            )
        },
        "reason": field_path("reason"),
        "reportingComponent": field_path("reportingComponent"),
        "source": _event_source,
        "type": field_path("type"),
    }
)

RESOURCE = ResourceType(
    "",
    "v1",
    "Event",
    "events",
    "event",
    namespaced=True,
    short_names=("ev",),
    strategy=Strategy(
        printer=PRINTER,
        fields=FIELDS,
        merge_rules={**METADATA_ONLY_RULES, "involvedObject": ATOMIC, "related": ATOMIC},
    ),
)


# events.k8s.io/v1: the same events, stored as core ones (kube-apiserver keeps one storage
# version), with newer names for some fields and stricter rules for new events.

#: Each events.k8s.io/v1 field named otherwise in core/v1.
_CORE_NAMES = {
    "regarding": "involvedObject",
    "note": "message",
    "reportingController": "reportingComponent",
    "deprecatedSource": "source",
    "deprecatedFirstTimestamp": "firstTimestamp",
    "deprecatedLastTimestamp": "lastTimestamp",
    "deprecatedCount": "count",
}
_NEW_NAMES = {core: new for new, core in _CORE_NAMES.items()}


def _renamed(event: Object, names: Mapping[str, str], api_version: str) -> Object:
    """A new object (C{event} may be a shared, read-only one) with C{names} applied."""
    renamed = {names.get(key, key): value for key, value in event.items()}
    renamed.update(apiVersion=api_version, kind="Event")
    return renamed


def to_core(event: Object) -> Object:
    """An events.k8s.io/v1 Event as core/v1 stores it."""
    return _renamed(event, _CORE_NAMES, "v1")


def from_core(event: Object) -> Object:
    """A stored core/v1 Event as events.k8s.io/v1 shows it."""
    return _renamed(event, _NEW_NAMES, "events.k8s.io/v1")


def _validate_new_api_event(event: Object) -> list[Cause]:
    """What events.k8s.io/v1 requires of a new event besides core's rules (ValidateEventCreate)."""
    causes: list[Cause] = [
        (name, "Required value")
        for name in ("eventTime", "reportingController", "reportingInstance", "action", "reason")
        if not event.get(name)
    ]
    if event.get("type") not in ("Normal", "Warning"):
        causes.append(("type", f'Invalid value: "": has invalid value: {event.get("type") or ""}'))
    for deprecated in ("deprecatedFirstTimestamp", "deprecatedLastTimestamp", "deprecatedCount"):
        if event.get(deprecated):
            causes.append((deprecated, 'Invalid value: "": needs to be unset'))
    source = event.get("deprecatedSource")
    if isinstance(source, Mapping) and (source.get("component") or source.get("host")):
        causes.append(("deprecatedSource", 'Invalid value: "": needs to be unset'))
    return causes


def _new_api_cells(event: Printed, now: datetime) -> list[Any]:
    return _event_cells(to_core(dict(event)), now)


def _new_api_label(label: str) -> str:
    """A core field label as events.k8s.io names it (involvedObject.kind: regarding.kind)."""
    head, dot, rest = label.partition(".")
    return _NEW_NAMES.get(head, head) + dot + rest


def _of_core(read: FieldGetter) -> FieldGetter:
    return lambda event: read(to_core(dict(event)))


NEW_API_FIELDS = FieldTable(
    {_new_api_label(label): _of_core(read) for label, read in FIELDS.fields.items()}
)

NEW_API_RESOURCE = ResourceType(
    "events.k8s.io",
    "v1",
    "Event",
    "events",
    "event",
    namespaced=True,
    short_names=("ev",),
    strategy=Strategy(
        printer=Printer(PRINTER.columns, _new_api_cells),
        fields=NEW_API_FIELDS,
        merge_rules={**METADATA_ONLY_RULES, "regarding": ATOMIC, "related": ATOMIC},
        validate=_validate_new_api_event,
    ),
    conversion=Conversion(RESOURCE, to_core, from_core),
)
