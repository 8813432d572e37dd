"""
An informer's cache: the objects of one resource by key (client-go's
``namespace/name``), with indexes that answer "which objects have this
namespace / owner / node / label" without a scan.

The objects are shared with every reader: treat them as read-only, and copy
one before changing it for a write.
"""

from __future__ import annotations

import builtins
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from k3stw.machinery.objects import Object, get_path, metadata, object_key, owner_references

#: The values an object is indexed under, for one index.
IndexFunc = Callable[[Object], Iterable[str]]

NAMESPACE = "namespace"
UID = "uid"
OWNER_UID = "owner-uid"
NODE_NAME = "node-name"
LABEL = "label"


def by_namespace(obj: Object) -> Iterable[str]:
    """The object's namespace ("" for a cluster-scoped object)."""
    return (str(metadata(obj).get("namespace") or ""),)


def by_uid(obj: Object) -> Iterable[str]:
    """The object's own uid."""
    uid = metadata(obj).get("uid")
    return (str(uid),) if uid else ()


def by_owner_uid(obj: Object) -> Iterable[str]:
    """The uid of each owner in the object's ownerReferences."""
    return [str(ref["uid"]) for ref in owner_references(obj) if ref.get("uid")]


def by_node_name(obj: Object) -> Iterable[str]:
    """A pod's ``spec.nodeName``, if it is bound."""
    node = get_path(obj, "spec", "nodeName")
    return (node,) if isinstance(node, str) and node else ()


def by_label(obj: Object) -> Iterable[str]:
    """Each of the object's labels as ``key=value``."""
    labels = metadata(obj).get("labels")
    if not isinstance(labels, Mapping):
        return ()
    return [f"{key}={value}" for key, value in labels.items()]


#: The indexes an informer keeps unless told otherwise.
DEFAULT_INDEXES: Mapping[str, IndexFunc] = {NAMESPACE: by_namespace}


@dataclass
class Changes:
    """What a L{Indexer.replace} changed: new objects, updated ones (old, new), and removed ones."""

    added: list[Object] = field(default_factory=list)
    updated: list[tuple[Object, Object]] = field(default_factory=list)
    removed: list[Object] = field(default_factory=list)


class Indexer:
    """Objects by key, and by the values each index function gives them."""

    def __init__(self, indexes: Mapping[str, IndexFunc] = DEFAULT_INDEXES) -> None:
        self._objects: dict[str, Object] = {}
        self._functions: dict[str, IndexFunc] = dict(indexes)
        # index name -> value -> keys; and what each key was indexed under, to unindex it.
        self._indexes: dict[str, dict[str, set[str]]] = {name: {} for name in indexes}
        self._values: dict[str, dict[str, tuple[str, ...]]] = {name: {} for name in indexes}

    # Reading

    def get(self, key: str) -> Object | None:
        return self._objects.get(key)

    def __contains__(self, key: object) -> bool:
        return key in self._objects

    def __len__(self) -> int:
        return len(self._objects)

    def __iter__(self) -> Iterator[Object]:
        return iter(list(self._objects.values()))

    def keys(self) -> builtins.list[str]:
        return sorted(self._objects)

    def list(self) -> builtins.list[Object]:
        """Every object, in key order."""
        return [self._objects[key] for key in sorted(self._objects)]

    def by_index(self, index: str, value: str) -> builtins.list[Object]:
        """The objects that C{index} puts under C{value}, in key order."""
        return [self._objects[key] for key in sorted(self.index_keys(index, value))]

    def index_keys(self, index: str, value: str) -> set[str]:
        try:
            return set(self._indexes[index].get(value, ()))
        except KeyError:
            raise KeyError(f"no index {index!r}") from None

    def add_index(self, name: str, function: IndexFunc) -> None:
        """Keep another index (of the objects held now, too); adding one twice is harmless."""
        if name in self._functions:
            return
        self._functions[name] = function
        self._indexes[name] = {}
        self._values[name] = {}
        for key, obj in self._objects.items():
            self._index_one(name, key, obj)

    # Writing (the informer's alone)

    def upsert(self, obj: Object) -> Object | None:
        """Hold C{obj} under its key; the object it replaces, if any."""
        key = object_key(obj)
        old = self._objects.get(key)
        if old is not None:
            self._unindex(key)
        self._objects[key] = obj
        for name in self._functions:
            self._index_one(name, key, obj)
        return old

    def remove(self, key: str) -> Object | None:
        """Forget the object under C{key}; the object, if there was one."""
        old = self._objects.pop(key, None)
        if old is not None:
            self._unindex(key)
        return old

    def replace(self, objects: Iterable[Object]) -> Changes:
        """Hold exactly C{objects} (a fresh list); what changed, by resourceVersion."""
        changes = Changes()
        seen: set[str] = set()
        for obj in objects:
            key = object_key(obj)
            seen.add(key)
            old = self.upsert(obj)
            if old is None:
                changes.added.append(obj)
            elif _version(old) != _version(obj):
                changes.updated.append((old, obj))
        for key in sorted(self._objects.keys() - seen):
            removed = self.remove(key)
            if removed is not None:
                changes.removed.append(removed)
        return changes

    def _index_one(self, name: str, key: str, obj: Object) -> None:
        values = tuple(dict.fromkeys(self._functions[name](obj)))
        self._values[name][key] = values
        index = self._indexes[name]
        for value in values:
            index.setdefault(value, set()).add(key)

    def _unindex(self, key: str) -> None:
        for name, values_of in self._values.items():
            index = self._indexes[name]
            for value in values_of.pop(key, ()):
                keys = index.get(value)
                if keys is not None:
                    keys.discard(key)
                    if not keys:
                        del index[value]


def _version(obj: Mapping[str, Any]) -> object:
    return metadata(obj).get("resourceVersion")
