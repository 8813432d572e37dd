"""Merge rules derived from the catalogue's OpenAPI schemas.

L{merge_rules} walks a kind's definition through its ``$ref``\\ s and turns the Kubernetes
extensions each field carries (``x-kubernetes-patch-strategy``, ``-patch-merge-key``,
``-list-type``, ``-list-map-keys``, ``-map-type``) into the L{RuleTable} the hand-written kinds
declare: dotted field paths, list levels adding no segment. Fields without such extensions get
no rule (lists are then atomic, objects merged). Map values (``additionalProperties``) are not
walked: a rule table cannot name the fields below a map key.

Each call parses one gzipped group-version document and drops it once the table is built; the
tables, not the documents, are cached.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from functools import cache

from k3stw.apiserver.catalogue import REF_PREFIX, Schema, group_version_schemas, reference
from k3stw.apiserver.patch.rules import FieldRule, join_path
from k3stw.apiserver.patch.values import JSONValue

#: Defaults the API server gives to list-map keys, which the published schemas do not carry
#: (their ``+default`` markers are absent from the 1.32 documents). A keyed list whose map keys
#: include one of these names gets it in its L{FieldRule.key_defaults}. Container and service
#: ports default ``protocol`` to ``TCP``. The other optional 1.32 list-map keys (the ``name``
#: of imagePullSecrets and ServiceAccount secrets, flowcontrol conditions' ``type``) get none,
#: as in the hand-written tables.
KEY_DEFAULTS: Mapping[str, JSONValue] = {"protocol": "TCP"}

#: How many definitions deep a walk goes before it stops.
MAX_DEPTH = 32

_NO_RULE = FieldRule()


@cache
def merge_rules(group: str, version: str, kind: str) -> dict[str, FieldRule]:
    """The merge rules of ``kind`` in ``group``/``version``; empty when the catalogue lacks it.

    Cached per kind and shared: do not mutate the result.
    """
    kinds, schemas = group_version_schemas(group, version)
    return schema_rules(schemas, kinds[kind]) if kind in kinds else {}


def schema_rules(schemas: Mapping[str, Schema], definition: str) -> dict[str, FieldRule]:
    """The merge rules of ``definition``, found with the others in ``schemas``.

    A definition met again below itself (a recursive type) is not walked again, nor is anything
    more than L{MAX_DEPTH} definitions deep.
    """
    table: dict[str, FieldRule] = {}
    _walk(schemas, {"$ref": REF_PREFIX + definition}, "", (), table)
    return table


def _rule(field: Schema, target: Schema) -> FieldRule:
    """The rule of ``field``, whose (referenced) definition is ``target``."""
    strategy = field.get("x-kubernetes-patch-strategy", "")
    merge_key = field.get("x-kubernetes-patch-merge-key", "")
    list_type = field.get("x-kubernetes-list-type", "")
    map_keys: tuple[str, ...] = tuple(field.get("x-kubernetes-list-map-keys", ()))
    if list_type == "atomic" or (list_type == "map" and not map_keys):
        list_type = ""
    if list_type != "map":
        map_keys = ()
    atomic = target.get("type") != "array" and "atomic" in (
        field.get("x-kubernetes-map-type"),
        target.get("x-kubernetes-map-type"),
    )
    return FieldRule(
        strategy=strategy,
        merge_key=merge_key,
        list_type=list_type,
        map_keys=map_keys,
        key_defaults=tuple((key, KEY_DEFAULTS[key]) for key in map_keys if key in KEY_DEFAULTS),
        atomic=atomic,
    )


@cache
def _interned(rule: FieldRule) -> FieldRule:
    """One shared instance per distinct rule, whichever tables and paths have it."""
    return rule


def _walk(
    schemas: Mapping[str, Schema],
    field: Schema,
    path: str,
    stack: tuple[str, ...],
    table: dict[str, FieldRule],
) -> None:
    """Add the rules of ``field`` at ``path`` and of every field below it to ``table``.

    :param stack: the definitions being walked; one already on it is not entered again.
    """
    name = reference(field)
    target = schemas.get(name, {}) if name is not None else field
    rule = _rule(field, target)
    if rule != _NO_RULE:
        table[path] = _interned(rule)
    if name is not None:
        if name in stack or len(stack) >= MAX_DEPTH:
            return
        stack = (*stack, name)
    _members(schemas, target, path, stack, table)


def _members(
    schemas: Mapping[str, Schema],
    target: Schema,
    path: str,
    stack: tuple[str, ...],
    table: dict[str, FieldRule],
) -> None:
    """Walk the fields of ``target``, or of its items when it is a list (at the same path)."""
    if target.get("type") == "array":
        items: Schema = target.get("items") or {}
        name = reference(items)
        if name is not None:
            if name in stack or len(stack) >= MAX_DEPTH:
                return
            items, stack = schemas.get(name, {}), (*stack, name)
        _members(schemas, items, path, stack, table)
        return
    for member, schema in (target.get("properties") or {}).items():
        _walk(schemas, schema, join_path(path, member), stack, table)


class LazyRules(Mapping[str, FieldRule]):
    """
    A kind's L{merge_rules}, derived when first read: a server serves every
    catalogue kind but patches few of them, and need not parse every schema at start.
    """

    def __init__(self, group: str, version: str, kind: str) -> None:
        self._kind = (group, version, kind)

    def _table(self) -> Mapping[str, FieldRule]:
        return merge_rules(*self._kind)

    def __getitem__(self, path: str) -> FieldRule:
        return self._table()[path]

    def __iter__(self) -> Iterator[str]:
        return iter(self._table())

    def __len__(self) -> int:
        return len(self._table())
