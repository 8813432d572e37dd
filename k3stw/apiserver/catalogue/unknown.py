"""Fields an object names that its kind's schema does not declare.

kube-apiserver's ``fieldValidation`` (``Strict`` or ``Warn``) reports every such field by the
path its strict JSON decoder prints: dotted field names, list items as ``[index]``, map keys as
one more dotted segment (``spec.template.spec.containers[0].imagez``, ``metadata.labelz``).
L{unknown_fields} gives those paths, in document order.

The schemas are compiled once into L{Node}\\ s, with nothing of the parsed document kept: an
object's declared fields as a dict of field name to node, L{MapOf} for maps (any key, each
value checked), L{ListOf} for lists, and None wherever anything goes: scalars,
``x-kubernetes-preserve-unknown-fields``, free-form objects (RawExtension, JSON, FieldsV1,
IntOrString, Quantity, any object with neither ``properties`` nor ``additionalProperties``), and
whatever lies more than L{MAX_DEPTH} definitions deep (recursive definitions, as CRD schemas'
JSONSchemaProps, are unrolled to that depth). Checking an object is then a single walk of the
object. Values of the wrong JSON type are not reported (the decoder's type errors are another
matter); their contents are not walked.

A group-version's kinds are compiled together from one parse of its document, so that kinds
sharing definitions (the pod template of every workload, ObjectMeta) share nodes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeAlias

from k3stw.apiserver.catalogue import Schema, group_version_schemas, reference

#: How many definitions deep a compiled node goes; below it, anything is accepted.
MAX_DEPTH = 32

#: The fields every kind's object has at its top level, whatever its schema says.
TYPE_FIELDS = ("apiVersion", "kind")


class MapOf:
    """A map: any key, each value checked against L{value}."""

    __slots__ = ("value",)

    def __init__(self, value: Node) -> None:
        self.value = value


class ListOf:
    """A list, each item checked against L{item}."""

    __slots__ = ("item",)

    def __init__(self, item: Node) -> None:
        self.item = item


#: A compiled schema: the declared fields of an object, a map, a list, or None (anything goes).
Node: TypeAlias = "dict[str, Node] | MapOf | ListOf | None"


#: The compiled group versions, each compiled once (L{compile_once}).
_COMPILED: dict[tuple[str, str], Mapping[str, Node]] = {}


def group_version_nodes(group: str, version: str) -> Mapping[str, Node]:
    """The compiled schema of every kind the catalogue serves in ``group``/``version``.

    Cached and shared: do not mutate.
    """
    nodes = _COMPILED.get((group, version))
    if nodes is None:
        kinds, schemas = group_version_schemas(group, version)
        nodes = compile_once(group, version, kinds, schemas)
    return nodes


def compile_once(
    group: str, version: str, kinds: Mapping[str, str], schemas: Mapping[str, Schema]
) -> Mapping[str, Node]:
    """
    The nodes of ``group``/``version``, compiled from its parsed C{schemas}
    unless they are already: the other schema checks hand over the document
    they parse, so that a group version's is parsed once.
    """
    nodes = _COMPILED.get((group, version))
    if nodes is None:
        nodes = _COMPILED[(group, version)] = schema_nodes(schemas, kinds)
    return nodes


def kind_node(group: str, version: str, kind: str) -> Node:
    """The compiled schema of ``kind``; None (anything goes) when the catalogue lacks it."""
    return group_version_nodes(group, version).get(kind)


def schema_nodes(schemas: Mapping[str, Schema], kinds: Mapping[str, str]) -> dict[str, Node]:
    """Compile each kind's definition (``kinds`` maps kind to definition name) from ``schemas``.

    A kind's node also accepts L{TYPE_FIELDS}.
    """
    compiler = _Compiler(schemas)
    nodes: dict[str, Node] = {}
    for kind, definition in kinds.items():
        node, _ = compiler.definition(definition, 0)
        if isinstance(node, dict) and not all(name in node for name in TYPE_FIELDS):
            node = {**node, **dict.fromkeys(TYPE_FIELDS)}
        nodes[kind] = node
    return nodes


def unknown_fields(
    group: str, version: str, kind: str, obj: Mapping[str, Any], prune: bool = False
) -> list[str]:
    """The paths of the fields of ``obj`` that the schema of ``kind`` does not declare.

    In document order, as kube-apiserver's strict decoding errors name them; [] for a kind the
    catalogue lacks.

    :param prune: also remove them from ``obj`` (which must then be made of dicts and lists),
        as kube-apiserver's decoder drops what its types do not hold.
    """
    found: list[str] = []
    node = kind_node(group, version, kind)
    if isinstance(node, dict):
        _check_fields(node, obj, "", found, prune)
    return found


def check(node: Node, value: Any) -> list[str]:
    """The paths below ``value`` that ``node`` does not declare."""
    found: list[str] = []
    check_node(node, value, "", found, False)
    return found


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def check_node(node: Node, value: Any, path: str, found: list[str], prune: bool) -> None:
    """Add to ``found`` the undeclared fields of ``value``, found at ``path``."""
    if isinstance(node, dict):
        if isinstance(value, Mapping):
            _check_fields(node, value, path, found, prune)
    elif isinstance(node, ListOf):
        if isinstance(value, list | tuple):
            item = node.item
            for index, entry in enumerate(value):
                if entry is not None:
                    check_node(item, entry, f"{path}[{index}]", found, prune)
    elif isinstance(node, MapOf) and isinstance(value, Mapping):
        member = node.value
        for key, entry in value.items():
            if entry is not None:
                check_node(member, entry, _join(path, key), found, prune)


def _check_fields(
    fields: dict[str, Node], value: Mapping[str, Any], path: str, found: list[str], prune: bool
) -> None:
    """Add to ``found`` the keys of ``value`` that ``fields`` lacks, and those found below."""
    undeclared = []
    for key, entry in value.items():
        if key not in fields:
            found.append(_join(path, key))
            undeclared.append(key)
            continue
        child = fields[key]
        if child is not None and entry is not None:
            check_node(child, entry, _join(path, key), found, prune)
    if prune and undeclared:
        assert isinstance(value, dict)
        for key in undeclared:
            del value[key]


class _Compiler:
    """Compiles definitions of one document, each once per depth at most.

    A definition whose node nothing cut short (it is I{complete}) is compiled once and shared
    wherever it occurs; one cut short by L{MAX_DEPTH} (a recursive one) once per depth.
    """

    def __init__(self, schemas: Mapping[str, Schema]) -> None:
        self._schemas = schemas
        self._complete: dict[str, Node] = {}
        self._cut: dict[tuple[str, int], Node] = {}

    def definition(self, name: str, depth: int) -> tuple[Node, bool]:
        """The node of definition ``name`` entered ``depth`` definitions deep; and whether it is
        complete."""
        if name in self._complete:
            return self._complete[name], True
        if (name, depth) in self._cut:
            return self._cut[(name, depth)], False
        if depth >= MAX_DEPTH:
            return None, False
        node, complete = self.schema(self._schemas.get(name, {}), depth + 1)
        if complete:
            self._complete[name] = node
        else:
            self._cut[(name, depth)] = node
        return node, complete

    def field(self, field: Schema, depth: int) -> tuple[Node, bool]:
        """The node of ``field``, inline or a reference, ``depth`` definitions deep."""
        if field.get("x-kubernetes-preserve-unknown-fields") is True:
            return None, True
        name = reference(field)
        if name is not None:
            return self.definition(name, depth)
        return self.schema(field, depth)

    def schema(self, schema: Schema, depth: int) -> tuple[Node, bool]:
        """The node of the inline ``schema``, ``depth`` definitions deep."""
        if schema.get("x-kubernetes-preserve-unknown-fields") is True:
            return None, True
        if schema.get("type") == "array":
            item, complete = self.field(schema.get("items") or {}, depth)
            return (None if item is None else ListOf(item)), complete
        properties: Mapping[str, Schema] = schema.get("properties") or {}
        additional = schema.get("additionalProperties")
        if properties and additional in (None, False):
            fields: dict[str, Node] = {}
            complete = True
            for member, member_schema in properties.items():
                fields[member], member_complete = self.field(member_schema, depth)
                complete = complete and member_complete
            return fields, complete
        if not properties and isinstance(additional, Mapping):
            value, complete = self.field(additional, depth)
            return (None if value is None else MapOf(value)), complete
        return None, True
