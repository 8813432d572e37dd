"""Field ownership: field sets, their ``fieldsV1`` encoding, and ``metadata.managedFields``.

A field set is a set of L{FieldPath}\\ s in structured-merge-diff's notation. An object's
field values are found under a L{k3stw.apiserver.patch.rules.RuleTable}: keyed lists and
sets contribute one path per item, atomic values one path for the whole.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, TypeAlias

from k3stw.apiserver.patch.errors import PatchNotApplicable
from k3stw.apiserver.patch.rules import FieldRule, RuleTable, join_path, rule_at
from k3stw.apiserver.patch.values import JSONObject, JSONValue, json_equal

#: A field path in managedFields notation: one ``f:<name>``, ``k:<json>`` or ``v:<json>``
#: element per step, exactly the keys a ``fieldsV1`` document nests.
FieldPath: TypeAlias = tuple[str, ...]

_UNOWNED_METADATA = (
    "name",
    "namespace",
    "creationTimestamp",
    "selfLink",
    "uid",
    "clusterName",
    "generation",
    "managedFields",
    "resourceVersion",
)


#: One encoder for every canonical text: json.dumps with options builds one per call.
_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _canonical(value: JSONValue) -> str:
    return _CANONICAL.encode(value)


_ITEM: Any = object()  # the value recorded for a keyed list item: compared by its members


def strip_unowned(obj: JSONObject) -> JSONObject:
    """``obj`` without the fields field ownership ignores."""
    owned = {key: value for key, value in obj.items() if key not in ("apiVersion", "kind")}
    metadata = owned.get("metadata")
    if isinstance(metadata, dict):
        owned["metadata"] = {k: v for k, v in metadata.items() if k not in _UNOWNED_METADATA}
        if not owned["metadata"]:
            del owned["metadata"]
    return owned


def _item_element(item: dict[str, JSONValue], rule: FieldRule) -> str | None:
    key: dict[str, JSONValue] = {}
    defaults = dict(rule.key_defaults)
    for name in rule.map_keys:
        if name in item:
            key[name] = item[name]
        elif name in defaults:
            key[name] = defaults[name]
    return "k:" + _canonical(key) if key else None


def element_of(item: JSONValue, rule: FieldRule) -> str | None:
    """The path element naming ``item`` in a map- or set-typed list."""
    if rule.list_type == "set":
        return "v:" + _canonical(item)
    return _item_element(item, rule) if isinstance(item, dict) else None


def field_values(
    value: JSONObject, rules: RuleTable, *, strict: bool = False
) -> dict[FieldPath, JSONValue]:
    """Every owned path in ``value`` with its leaf value (L{_ITEM} for keyed list items).

    :param strict: raise when a keyed list item lacks its keys (applied configurations).
    """
    found: dict[FieldPath, JSONValue] = {}

    def walk_object(obj: dict[str, JSONValue], dotted: str, path: FieldPath) -> None:
        for name, member in obj.items():
            child = join_path(dotted, name)
            walk_value(member, rule_at(rules, child), child, (*path, "f:" + name))

    def walk_value(value: JSONValue, rule: FieldRule, dotted: str, path: FieldPath) -> None:
        if isinstance(value, dict) and value and not rule.atomic:
            walk_object(value, dotted, path)
        elif isinstance(value, list) and rule.list_type in ("map", "set"):
            for item in value:
                element = element_of(item, rule)
                if element is None:
                    if strict:
                        raise PatchNotApplicable(
                            ".".join(("", *dotted.split("."))) + ": associative list with keys "
                            "has an element that omits key field "
                            + ", ".join(f'"{key}"' for key in rule.map_keys)
                        )
                    found[path] = value
                    return
                if rule.list_type == "set":
                    found[(*path, element)] = item
                else:
                    assert isinstance(item, dict)
                    found[(*path, element)] = _ITEM
                    walk_object(item, dotted, (*path, element))
        else:
            found[path] = value

    walk_object(value, "", ())
    return found


def owned_fields(value: JSONObject, rules: RuleTable) -> JSONObject:
    """
    The ``fieldsV1`` document of every owned path in ``value``: what
    C{encode_fields(field_values(value, rules))} makes, in one walk and without
    the paths between, for a create (where the writer owns every field it sets).
    """

    def of_object(obj: dict[str, JSONValue], dotted: str) -> JSONObject:
        out: JSONObject = {}
        for name in sorted(obj):
            value = obj[name]
            if value.__class__ is not dict and value.__class__ is not list:
                out["f:" + name] = {}  # A scalar (most fields): owned whatever its rule.
                continue
            child = join_path(dotted, name)
            of_value(value, rule_at(rules, child), child, "f:" + name, out)
        return out

    def of_value(
        value: JSONValue, rule: FieldRule, dotted: str, element: str, out: JSONObject
    ) -> None:
        if isinstance(value, dict) and value and not rule.atomic:
            inner = of_object(value, dotted)
            if inner:
                out[element] = inner
        elif isinstance(value, list) and rule.list_type in ("map", "set"):
            items: JSONObject = {}
            for item in value:
                key = element_of(item, rule)
                if key is None:
                    # An item without its keys: the list is owned whole (and what came before).
                    items["."] = {}
                    break
                if rule.list_type == "set":
                    items[key] = {}
                else:
                    assert isinstance(item, dict)
                    items[key] = {".": {}, **of_object(item, dotted)}
            if items:
                out[element] = {k: items[k] for k in sorted(items)}
        else:
            out[element] = {}

    return of_object(value, "")


def encode_fields(paths: Iterable[FieldPath]) -> JSONObject:
    """A field set as a ``fieldsV1`` document."""
    tree: dict[str, Any] = {}
    members: set[FieldPath] = set(paths)
    for path in members:
        node = tree
        for element in path:
            node = node.setdefault(element, {})

    def encode(node: dict[str, Any], path: FieldPath) -> JSONObject:
        out: JSONObject = {}
        if node and path in members:
            out["."] = {}
        for element in sorted(node):
            out[element] = encode(node[element], (*path, element))
        return out

    return encode(tree, ())


def decode_fields(document: JSONValue) -> set[FieldPath]:
    """The field set a ``fieldsV1`` document describes."""
    found: set[FieldPath] = set()

    def decode(node: JSONValue, path: FieldPath) -> None:
        if not isinstance(node, dict):
            return
        for element, child in node.items():
            if element == ".":
                found.add(path)
            elif isinstance(child, dict) and child:
                decode(child, (*path, element))
            else:
                found.add((*path, element))

    decode(document, ())
    return found


def path_string(path: FieldPath) -> str:
    """``path`` in structured-merge-diff's notation: ``.spec.ports[port=80,protocol="TCP"]``."""
    parts = []
    for element in path:
        kind, text = element[:2], element[2:]
        if kind == "f:":
            parts.append("." + text)
        elif kind == "k:":
            key = json.loads(text)
            inner = ",".join(f"{name}={_canonical(key[name])}" for name in sorted(key))
            parts.append(f"[{inner}]")
        else:
            parts.append(f"[={text}]")
    return "".join(parts)


def ancestors(paths: Iterable[FieldPath]) -> set[FieldPath]:
    """Every proper ancestor of every path."""
    return {path[:end] for path in paths for end in range(len(path))}


@dataclass
class ManagedFieldsEntry:
    """One ``managedFields`` entry, decoded."""

    manager: str
    operation: str
    api_version: str
    time: str | None
    subresource: str
    fields: set[FieldPath] = field(default_factory=set)

    @property
    def identity(self) -> tuple[str, str, str, str]:
        """What tells entries apart: manager, operation, apiVersion (updates only), subresource."""
        # Appliers keep one entry whatever apiVersion they apply with; updaters get one per
        # apiVersion, as kube-apiserver's manager identifiers do.
        version = "" if self.operation == "Apply" else self.api_version
        return (self.manager, self.operation, version, self.subresource)

    def printed(self) -> str:
        """The manager as kube-apiserver names it in conflict messages."""
        text = json.dumps(self.manager)
        if self.subresource:
            text += f" with subresource {json.dumps(self.subresource)}"
        if self.operation == "Update":
            text += f" using {self.api_version}"
            if self.time:
                text += f" at {self.time}"
        return text

    def encode(self, document: JSONObject | None = None) -> JSONObject:
        """
        The entry as ``metadata.managedFields`` stores it.

        :param document: its ``fieldsV1``, if already made (L{owned_fields}).
        """
        entry: JSONObject = {
            "manager": self.manager,
            "operation": self.operation,
            "apiVersion": self.api_version,
        }
        if self.time is not None:
            entry["time"] = self.time
        entry["fieldsType"] = "FieldsV1"
        entry["fieldsV1"] = encode_fields(self.fields) if document is None else document
        if self.subresource:
            entry["subresource"] = self.subresource
        return entry


def decode_managed_fields(obj: JSONObject) -> dict[tuple[str, str, str, str], ManagedFieldsEntry]:
    """``obj``'s managedFields entries by :attr:`ManagedFieldsEntry.identity`."""
    metadata = obj.get("metadata")
    entries = metadata.get("managedFields") if isinstance(metadata, dict) else None
    managers: dict[tuple[str, str, str, str], ManagedFieldsEntry] = {}
    for entry in entries if isinstance(entries, list) else []:
        if not isinstance(entry, dict):
            continue
        decoded = ManagedFieldsEntry(
            manager=str(entry.get("manager", "")),
            operation=str(entry.get("operation", "")),
            api_version=str(entry.get("apiVersion", "")),
            time=_string_or_none(entry.get("time")),
            subresource=str(entry.get("subresource", "")),
            fields=decode_fields(entry.get("fieldsV1")),
        )
        managers[decoded.identity] = decoded
    return managers


def _string_or_none(value: JSONValue) -> str | None:
    return value if isinstance(value, str) else None


def with_managed_fields(obj: JSONObject, managers: Iterable[ManagedFieldsEntry]) -> JSONObject:
    """``obj`` (modified in place and returned) carrying ``managers`` as its managedFields."""
    kept = [manager for manager in managers if manager.fields]
    kept.sort(key=lambda m: (m.operation, m.time or "", m.manager, m.api_version, m.subresource))
    metadata = obj.setdefault("metadata", {})
    assert isinstance(metadata, dict)
    if kept:
        metadata["managedFields"] = [manager.encode() for manager in kept]
    else:
        metadata.pop("managedFields", None)
    return obj


@dataclass(frozen=True)
class Comparison:
    """The field paths whose values a write modified, added and removed."""

    modified: set[FieldPath]
    added: set[FieldPath]
    removed: set[FieldPath]


def compare(old: JSONObject | None, new: JSONObject, rules: RuleTable) -> Comparison:
    """What changed, by owned field path, from ``old`` (``None``: nothing) to ``new``."""
    before = field_values(strip_unowned(old), rules) if old is not None else {}
    after = field_values(strip_unowned(new), rules)
    return Comparison(
        modified={
            path
            for path in before.keys() & after.keys()
            if before[path] is not after[path] and not json_equal(before[path], after[path])
        },
        added=set(after.keys() - before.keys()),
        removed=set(before.keys() - after.keys()),
    )
