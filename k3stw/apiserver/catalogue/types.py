"""
What a kind's 1.32 schema says of its values, beyond which fields exist:

- their JSON types (``replicas: "three"`` is refused, as kube-apiserver's
  decoder refuses it, instead of being stored where every typed client
  reading it back would fail);
- their formats: int-or-string, quantities (``cpu: "2 cpus"``) and
  date-times, which kube-apiserver's decoder parses;
- the fields they require (``spec.containers: Required value``).

Compiled like L{k3stw.apiserver.catalogue.unknown}: once per group version,
into a tree of the declared types only (``integer``, ``number``, ``string``,
``boolean``, the formats above, objects, maps and lists); free-form values
and whatever lies more than L{MAX_DEPTH} definitions deep are not checked.
``null`` is accepted anywhere (the decoder reads it as unset).

A schema's ``required`` is kept where kube-apiserver's own validation says
``Required value`` of a missing field: strings and lists, but not numbers,
booleans or structs (Go's zero value, which kube checks with other words),
nor L{NOT_REQUIRED}, nor anything under a kind's ``status``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cache
from typing import Any, TypeAlias

from k3stw.apiserver.catalogue import Schema, group_version_schemas, reference, unknown
from k3stw.apiserver.catalogue.unknown import MAX_DEPTH, compile_once
from k3stw.machinery.quantity import quantity_error
from k3stw.machinery.times import parse_datetime

#: Fields the schemas require that kube-apiserver 1.32 accepts missing, or
#: refuses in other words (the kind's module says which).
NOT_REQUIRED = frozenset(
    {
        "io.k8s.api.apps.v1.StatefulSetSpec.serviceName",
        "io.k8s.api.discovery.v1.EndpointSlice.endpoints",
        "io.k8s.api.rbac.v1.RoleRef.apiGroup",
        "io.k8s.api.rbac.v1.RoleRef.kind",
    }
)

#: kube-apiserver's detail for some missing fields.
REQUIRED_DETAIL = {"io.k8s.api.rbac.v1.PolicyRule.verbs": "verbs must contain at least one value"}


class Fields(dict[str, "Typed"]):
    """An object: its declared fields' types (undeclared ones are another check's concern)."""

    #: The fields it requires, each with kube-apiserver's detail ("" for none).
    required: tuple[tuple[str, str], ...] = ()


class MapOf:
    __slots__ = ("value",)

    def __init__(self, value: Typed) -> None:
        self.value = value


class ListOf:
    __slots__ = ("item",)

    def __init__(self, item: Typed) -> None:
        self.item = item


#: A compiled type: a scalar type's or a format's name, an object, a map, a list, or None
#: (not checked).
Typed: TypeAlias = "str | Fields | MapOf | ListOf | None"

#: What each scalar type accepts (bools are not numbers, whatever Python says).
_SCALARS: dict[str, tuple[type, ...]] = {
    "integer": (int,),
    "number": (int, float),
    "string": (str,),
    "boolean": (bool,),
}
#: The formats the decoder parses, and the JSON types each accepts.
INT_OR_STRING = "integer,string"
QUANTITY = "quantity"
DATE_TIME = "date-time"
_FORMATS: dict[str, tuple[type, ...]] = {
    INT_OR_STRING: (int, str),
    QUANTITY: (int, float, str),
    DATE_TIME: (str,),
}
_ACCEPTS = {**_SCALARS, **_FORMATS}
#: The formats whose strings the decoder parses.
_PARSED = frozenset({QUANTITY, DATE_TIME})
#: The exact Python types the JSON decoder gives each type's values (the fast path).
_EXACT = {name: frozenset(types) for name, types in _ACCEPTS.items()}
#: The type a format's value of the wrong JSON type is said to need.
_FORMAT_TYPES = {QUANTITY: "string", DATE_TIME: "string"}


@dataclass
class SchemaErrors:
    """
    What a kind's schema finds wrong with an object, each list in document order.

    :ivar wrong_types: ``(path, the type wanted, the value)``.
    :ivar missing: ``(path, kube-apiserver's detail)`` of each required field missing.
    :ivar bad_formats: ``(path, the decoder's message)`` of each value it cannot parse.
    :ivar unknown: the paths of the fields the schema does not declare (only
        L{decoder_errors} looks for them; they do not make these errors true).
    """

    wrong_types: list[tuple[str, str, Any]] = field(default_factory=list)
    missing: list[tuple[str, str]] = field(default_factory=list)
    bad_formats: list[tuple[str, str]] = field(default_factory=list)
    unknown: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.wrong_types or self.missing or self.bad_formats)


@cache
def _group_version_types(group: str, version: str) -> Mapping[str, Typed]:
    kinds, schemas = group_version_schemas(group, version)
    compile_once(group, version, kinds, schemas)  # The unknown-field check's, from this parse.
    compiler = _Compiler(schemas)
    return {kind: compiler.definition(name, 0) for kind, name in kinds.items()}


def schema_errors(group: str, version: str, kind: str, obj: Mapping[str, Any]) -> SchemaErrors:
    """What the schema of C{kind} finds wrong with C{obj} (nothing for a kind it lacks)."""
    found = SchemaErrors()
    typed = _group_version_types(group, version).get(kind)
    if typed is not None and obj is not None:
        _check(typed, obj, "", found, True)
    return found


def decoder_errors(
    group: str, version: str, kind: str, obj: Mapping[str, Any], prune: bool = False
) -> SchemaErrors:
    """
    L{schema_errors} and the L{unknown.unknown_fields} of C{obj} (pruned with
    C{prune}) in one walk of it: what kube-apiserver's decoder checks of a body.
    """
    found = SchemaErrors()
    typed = _group_version_types(group, version).get(kind)
    if typed is None:
        found.unknown = unknown.unknown_fields(group, version, kind, obj, prune)
    elif obj is not None:
        _walk(typed, unknown.kind_node(group, version, kind), obj, "", found, True, prune)
    return found


def wrong_types(
    group: str, version: str, kind: str, obj: Mapping[str, Any]
) -> list[tuple[str, str, Any]]:
    """
    Each value of C{obj} whose JSON type its kind's schema does not allow:
    ``(path, the type wanted, the value)``, in document order; [] for a kind
    the catalogue lacks.
    """
    return schema_errors(group, version, kind, obj).wrong_types


def json_type(value: Any) -> str:
    """The JSON name of a value's type, as kube-apiserver's messages print it."""
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number" if isinstance(value, float) else "integer"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def _check(typed: Typed, value: Any, path: str, found: SchemaErrors, required: bool) -> None:
    """Check a value that is not null against a type that is not None."""
    if typed.__class__ is str:
        _check_scalar(typed, value, path, found)
    elif typed.__class__ is ListOf:
        if not isinstance(value, list):
            found.wrong_types.append((path, "array", value))
            return
        item_type = typed.item
        if item_type is None:
            return
        for index, item in enumerate(value):
            if item is not None:
                _check(item_type, item, f"{path}[{index}]", found, required)
    elif not isinstance(value, dict):
        found.wrong_types.append((path, "object", value))
    elif typed.__class__ is MapOf:
        member = typed.value
        if member is None:
            return
        prefix = f"{path}." if path else ""
        scalar = _EXACT.get(member) if member.__class__ is str and member not in _PARSED else None
        for key, item in value.items():
            if item is not None and (scalar is None or item.__class__ not in scalar):
                _check(member, item, prefix + key, found, required)
    else:
        _check_fields(typed, value, path, found, required)  # type: ignore[arg-type]


def _check_fields(
    fields: Fields, value: dict[str, Any], path: str, found: SchemaErrors, required: bool
) -> None:
    prefix = f"{path}." if path else ""
    if required:
        _check_required(fields, value, prefix, found)
    for key, item in value.items():
        child = fields.get(key)
        if child is None or item is None:
            continue
        if child.__class__ is str:
            # The common case, inline: a scalar of the right type.
            if item.__class__ in _EXACT[child] and child not in _PARSED:
                continue
            _check_scalar(child, item, prefix + key, found)
        else:
            # A kind's status is the server's to write: what it requires is not asked of clients.
            asks = required and (bool(path) or key != "status")
            _check(child, item, prefix + key, found, asks)


def _walk(
    typed: Typed,
    node: unknown.Node,
    value: Any,
    path: str,
    found: SchemaErrors,
    required: bool,
    prune: bool,
) -> None:
    """
    L{_check} and unknown's check of a value that is not null, at once where
    both trees hold an object or a list, each on its own elsewhere (the trees
    part where one stops checking: free-form values, recursion, scalars).
    """
    if typed is None:
        unknown.check_node(node, value, path, found.unknown, prune)
    elif node is None:
        _check(typed, value, path, found, required)
    elif typed.__class__ is Fields and node.__class__ is dict and value.__class__ is dict:
        _walk_fields(typed, node, value, path, found, required, prune)
    elif (
        typed.__class__ is ListOf
        and node.__class__ is unknown.ListOf
        and value.__class__ is list
        and typed.item is not None
    ):
        item_type, item_node = typed.item, node.item
        for index, item in enumerate(value):
            if item is not None:
                _walk(item_type, item_node, item, f"{path}[{index}]", found, required, prune)
    else:
        _check(typed, value, path, found, required)
        unknown.check_node(node, value, path, found.unknown, prune)


#: What a missing key of an object's unknown node is: an undeclared field.
_UNDECLARED = object()


def _walk_fields(
    fields: Fields,
    node: dict[str, unknown.Node],
    value: dict[str, Any],
    path: str,
    found: SchemaErrors,
    required: bool,
    prune: bool,
) -> None:
    """L{_check_fields} and unknown's check of an object's fields, in one pass."""
    prefix = f"{path}." if path else ""
    if required:
        _check_required(fields, value, prefix, found)
    undeclared = []
    for key, item in value.items():
        member = node.get(key, _UNDECLARED)
        if member is _UNDECLARED:
            found.unknown.append(prefix + key)
            undeclared.append(key)
            continue
        if item is None:
            continue
        child = fields.get(key)
        if child.__class__ is str and member is None:
            # The common case, inline: a scalar of the right type.
            if item.__class__ in _EXACT[child] and child not in _PARSED:
                continue
            _check_scalar(child, item, prefix + key, found)
        elif child is not None or member is not None:
            # A kind's status is the server's to write: what it requires is not asked of clients.
            asks = required and (bool(path) or key != "status")
            _walk(child, member, item, prefix + key, found, asks, prune)  # type: ignore[arg-type]
    if prune:
        for key in undeclared:
            del value[key]


def _check_required(
    fields: Fields, value: dict[str, Any], prefix: str, found: SchemaErrors
) -> None:
    for name, detail in fields.required:
        if value.get(name) is None:
            found.missing.append((prefix + name, detail))


def _check_scalar(typed: str, value: Any, path: str, found: SchemaErrors) -> None:
    accepted = _ACCEPTS[typed]
    if not isinstance(value, accepted) or (typed != "boolean" and isinstance(value, bool)):
        found.wrong_types.append((path, _FORMAT_TYPES.get(typed, typed), value))
    elif typed in _PARSED:
        _check_format(typed, value, path, found)


def _check_format(kind: str, value: Any, path: str, found: SchemaErrors) -> None:
    if kind == QUANTITY:
        error = quantity_error(value)
        if error is not None:
            found.bad_formats.append((path, error))
    elif kind == DATE_TIME and (not _RFC3339_TEXT.match(value) or parse_datetime(value) is None):
        found.bad_formats.append((path, time_error(value)))


#: Go's RFC 3339 layout, in the chunks its parser reports.
_LAYOUT = (
    ("2006", 4),
    ("-", 0),
    ("01", 2),
    ("-", 0),
    ("02", 2),
    ("T", 0),
    ("15", 2),
    (":", 0),
    ("04", 2),
    (":", 0),
    ("05", 2),
)
_RFC3339 = "2006-01-02T15:04:05Z07:00"
_RFC3339_TEXT = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)\Z")


def time_error(text: str) -> str:
    """Go's ``time.Parse(time.RFC3339, text)`` error, as kube-apiserver's decoder returns it."""
    rest = text
    for chunk, digits in _LAYOUT:
        if (digits and not rest[:digits].isdigit()) or len(rest) < len(chunk):
            break
        if not digits and not rest.startswith(chunk):
            break
        rest = rest[len(chunk) :]
    else:
        zone = rest.lstrip(".0123456789") if rest.startswith(".") else rest
        if zone[:1] in ("Z", "+", "-"):
            return f'parsing time "{text}": value out of range'
        rest, chunk = zone, "Z07:00"
    return f'parsing time "{text}" as "{_RFC3339}": cannot parse "{rest}" as "{chunk}"'


class _Compiler:
    """Compiles each definition once (a recursive one only down to L{MAX_DEPTH})."""

    def __init__(self, schemas: Mapping[str, Schema]) -> None:
        self._schemas = schemas
        self._done: dict[str, Typed] = {}

    def definition(self, name: str, depth: int) -> Typed:
        if name in self._done:
            return self._done[name]
        if depth >= MAX_DEPTH:
            return None
        self._done[name] = None  # A definition that refers to itself is not checked below.
        typed = self.schema(self._schemas.get(name, {}), depth + 1, name)
        self._done[name] = typed
        return typed

    def field(self, field: Schema, depth: int) -> Typed:
        name = reference(field)
        if name is not None:
            return self.definition(name, depth)
        return self.schema(field, depth, "")

    def schema(self, schema: Schema, depth: int, name: str) -> Typed:
        if schema.get("x-kubernetes-preserve-unknown-fields"):
            return None  # free-form
        choices = {choice.get("type") for choice in schema.get("oneOf", ())}
        if choices == {"string", "integer"} or schema.get("x-kubernetes-int-or-string"):
            return INT_OR_STRING
        if choices == {"string", "number"}:
            return QUANTITY
        if choices:
            return None
        kind = schema.get("type")
        if kind == "string" and schema.get("format") == DATE_TIME:
            return DATE_TIME
        if kind in _SCALARS:
            return str(kind)
        if kind == "array":
            return ListOf(self.field(schema.get("items") or {}, depth))
        properties: Mapping[str, Schema] = schema.get("properties") or {}
        additional = schema.get("additionalProperties")
        if properties:
            fields = Fields({k: self.field(v, depth) for k, v in properties.items()})
            required = tuple(
                (member, REQUIRED_DETAIL.get(f"{name}.{member}", ""))
                for member in schema.get("required", ())
                if (fields.get(member) == "string" or isinstance(fields.get(member), ListOf))
                and f"{name}.{member}" not in NOT_REQUIRED
            )
            if required:
                fields.required = required
            return fields
        if isinstance(additional, Mapping):
            return MapOf(self.field(additional, depth))
        return None
