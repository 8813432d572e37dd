"""
The JSON types a kind's 1.32 schema gives its fields, and the values of an
object that do not have them (``replicas: "three"``): such a value is refused,
as kube-apiserver's decoder refuses it, instead of being stored where every
typed client reading it back would fail.

Compiled like L{k3stw.apiserver.catalogue.unknown}: once per group version,
into a tree of the declared types only (``integer``, ``number``, ``string``,
``boolean``, objects, maps and lists); free-form values, int-or-string,
quantities and whatever lies more than L{MAX_DEPTH} definitions deep are not
checked.  ``null`` is accepted anywhere (the decoder reads it as unset).
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import cache
from typing import Any, TypeAlias

from k3stw.apiserver.catalogue import Schema, group_version_schemas, reference
from k3stw.apiserver.catalogue.unknown import MAX_DEPTH


class Fields(dict[str, "Typed"]):
    """An object: its declared fields' types (undeclared ones are another check's concern)."""


class MapOf:
    __slots__ = ("value",)

    def __init__(self, value: Typed) -> None:
        self.value = value


class ListOf:
    __slots__ = ("item",)

    def __init__(self, item: Typed) -> None:
        self.item = item


#: A compiled type: a scalar type's name, an object, a map, a list, or None (not checked).
Typed: TypeAlias = "str | Fields | MapOf | ListOf | None"

#: What each scalar type accepts (bools are not numbers, whatever Python says).
_SCALARS: dict[str, tuple[type, ...]] = {
    "integer": (int,),
    "number": (int, float),
    "string": (str,),
    "boolean": (bool,),
}


@cache
def _group_version_types(group: str, version: str) -> Mapping[str, Typed]:
    kinds, schemas = group_version_schemas(group, version)
    compiler = _Compiler(schemas)
    return {kind: compiler.definition(name, 0) for kind, name in kinds.items()}


def wrong_types(
    group: str, version: str, kind: str, obj: Mapping[str, Any]
) -> list[tuple[str, str, Any]]:
    """
    Each value of C{obj} whose JSON type its kind's schema does not allow:
    ``(path, the type wanted, the value)``, in document order; [] for a kind
    the catalogue lacks.
    """
    found: list[tuple[str, str, Any]] = []
    _check(_group_version_types(group, version).get(kind), obj, "", found)
    return found


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


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def _check(typed: Typed, value: Any, path: str, found: list[tuple[str, str, Any]]) -> None:
    if typed is None or value is None:
        return
    if isinstance(typed, str):
        accepted = _SCALARS[typed]
        if not isinstance(value, accepted) or (typed != "boolean" and isinstance(value, bool)):
            found.append((path, typed, value))
        return
    if isinstance(typed, ListOf):
        if not isinstance(value, list):
            found.append((path, "array", value))
            return
        for index, item in enumerate(value):
            _check(typed.item, item, f"{path}[{index}]", found)
        return
    if not isinstance(value, dict):
        found.append((path, "object", value))
        return
    if isinstance(typed, MapOf):
        for key, item in value.items():
            _check(typed.value, item, _join(path, key), found)
        return
    for key, item in value.items():
        if key in typed:
            _check(typed[key], item, _join(path, key), found)


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
        typed = self.schema(self._schemas.get(name, {}), depth + 1)
        self._done[name] = typed
        return typed

    def field(self, field: Schema, depth: int) -> Typed:
        name = reference(field)
        if name is not None:
            return self.definition(name, depth)
        return self.schema(field, depth)

    def schema(self, schema: Schema, depth: int) -> Typed:
        if schema.get("x-kubernetes-preserve-unknown-fields") or "oneOf" in schema:
            return None  # free-form, int-or-string, quantity
        kind = schema.get("type")
        if kind in _SCALARS:
            return str(kind)
        if kind == "array":
            return ListOf(self.field(schema.get("items") or {}, depth))
        properties: Mapping[str, Schema] = schema.get("properties") or {}
        additional = schema.get("additionalProperties")
        if properties:
            return Fields({k: self.field(v, depth) for k, v in properties.items()})
        if isinstance(additional, Mapping):
            return MapOf(self.field(additional, depth))
        return None
