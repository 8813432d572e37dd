"""
Kubernetes objects as k3stw handles them: decoded JSON dictionaries, read
defensively (a stored object may lack any field) through these helpers.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Mapping
from typing import Any, TypeVar, cast

#: A Kubernetes object (or any JSON object in one), decoded.
Object = dict[str, Any]

# kube-apiserver's alphabet of generated names: no vowels, no look-alikes.
_SUFFIX_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"


T = TypeVar("T")


def generated_suffix() -> str:
    """Five random characters, as kube-apiserver ends a generated name."""
    return "".join(secrets.choice(_SUFFIX_ALPHABET) for _ in range(5))


def safe_encode(text: str) -> str:
    """C{text} in that alphabet, character by character (apimachinery's ``SafeEncodeString``)."""
    return "".join(_SUFFIX_ALPHABET[ord(c) % len(_SUFFIX_ALPHABET)] for c in text)


def copy_json(value: T) -> T:
    """
    A deep copy of a JSON value (dicts, lists, scalars): three times as fast as
    C{copy.deepcopy}, which the write path would otherwise spend much of a
    create in.
    """
    return cast(T, _copied(value))


def _copied(value: Any) -> Any:
    kind = type(value)
    if kind is dict:
        return {key: _copied(item) for key, item in value.items()}
    if kind is list:
        return [_copied(item) for item in value]
    return value


def get_path(obj: Any, *path: str | int) -> Any:
    """The value at C{path} in nested objects and lists, or None where any step is missing."""
    for step in path:
        if isinstance(step, int):
            if not isinstance(obj, list) or not -len(obj) <= step < len(obj):
                return None
            obj = obj[step]
        elif obj.__class__ is dict or isinstance(obj, Mapping):  # a dict is cheaper to ask
            obj = obj.get(step)
        else:
            return None
    return obj


def metadata(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    """The object's metadata (empty if it has none)."""
    found = obj.get("metadata")
    return found if isinstance(found, Mapping) else {}


def name_of(obj: Mapping[str, Any]) -> str:
    return str(metadata(obj).get("name") or "")


def namespace_of(obj: Mapping[str, Any]) -> str:
    """The object's namespace; "" for a cluster-scoped one."""
    return str(metadata(obj).get("namespace") or "")


def uid_of(obj: Mapping[str, Any]) -> str:
    return str(metadata(obj).get("uid") or "")


def resource_version(obj: Mapping[str, Any]) -> str:
    return str(metadata(obj).get("resourceVersion") or "")


def object_key(obj: Mapping[str, Any]) -> str:
    """client-go's key: ``namespace/name``, or ``name`` for a cluster-scoped object."""
    return join_key(namespace_of(obj), name_of(obj))


def join_key(namespace: str | None, name: str) -> str:
    return f"{namespace}/{name}" if namespace else name


def split_key(key: str) -> tuple[str | None, str]:
    """The namespace (None for a cluster-scoped object) and name of an L{object_key}."""
    namespace, slash, name = key.rpartition("/")
    return (namespace if slash else None), name


def owner_references(obj: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """The object's ownerReferences that are objects."""
    found = metadata(obj).get("ownerReferences") or ()
    return [ref for ref in found if isinstance(ref, Mapping)]


def set_owner_references(obj: Object, references: list[Any]) -> Object:
    """C{obj} with these ownerReferences (none: the field goes)."""
    if references:
        obj["metadata"]["ownerReferences"] = references
    else:
        obj["metadata"].pop("ownerReferences", None)
    return obj


def without_managed_fields(obj: Mapping[str, Any]) -> Object:
    """
    C{obj} without its managed fields (C{obj} itself has them still), as an
    informer of a client that never writes them keeps it: they are often
    half of a pod's size.
    """
    trimmed = {k: v for k, v in metadata(obj).items() if k != "managedFields"}
    return {**obj, "metadata": trimmed}


def metadata_only(obj: Mapping[str, Any]) -> Object:
    """
    The object's kind and metadata without its managed fields, as
    client-go's ``PartialObjectMetadata``: what a loop that acts on
    ownership and deletion needs, at a fraction of the memory.
    """
    trimmed = metadata(without_managed_fields(obj))
    return {"apiVersion": obj.get("apiVersion"), "kind": obj.get("kind"), "metadata": trimmed}


def is_deleting(obj: Mapping[str, Any]) -> bool:
    """Whether the object is marked for deletion (it waits for finalizers)."""
    return bool(metadata(obj).get("deletionTimestamp"))


def find_condition(obj: Mapping[str, Any], kind: str) -> Object | None:
    """The object's ``status.conditions`` entry of type C{kind}, if it has one."""
    for condition in get_path(obj, "status", "conditions") or ():
        if isinstance(condition, dict) and condition.get("type") == kind:
            return condition
    return None


def set_condition(status: Object, wanted: Object, now: str) -> None:
    """
    Put a condition into C{status}'s conditions, replacing the one of its type:
    its ``lastTransitionTime`` moves only when its status does.
    """
    conditions = status.setdefault("conditions", [])
    for condition in conditions:
        if condition.get("type") == wanted["type"]:
            if condition.get("status") != wanted["status"]:
                condition["lastTransitionTime"] = now
            condition.update(wanted)
            return
    conditions.append({**wanted, "lastTransitionTime": now})


def without(items: Iterable[Any], unwanted: Any) -> list[Any]:
    """C{items} less every one equal to C{unwanted} (a finalizer, say)."""
    return [item for item in items if item != unwanted]


def drop_finalizer(obj: Object, finalizer: str) -> Object:
    """C{obj} without C{finalizer} (and without an empty finalizers list), changed in place."""
    finalizers = without(obj["metadata"].get("finalizers") or [], finalizer)
    if finalizers:
        obj["metadata"]["finalizers"] = finalizers
    else:
        obj["metadata"].pop("finalizers", None)
    return obj
