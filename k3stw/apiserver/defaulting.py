"""
What the kinds' defaults are written with.  kube-apiserver's defaulting
functions fill a field only where the object leaves it unset (absent, null,
or "" for a string), never over what a user set; L{fill} does that, and
L{each} reaches the objects of a path through lists (``spec.ports[]``).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from k3stw.machinery.objects import Object, copy_json


def unset(value: Any) -> bool:
    """Whether a field's value counts as not given (Go's zero string or a nil pointer)."""
    return value is None or value == ""


def fill(obj: Any, **defaults: Any) -> None:
    """Set each of C{defaults} on C{obj} (if an object) where it is L{unset}."""
    if isinstance(obj, dict):
        for key, value in defaults.items():
            if unset(obj.get(key)):
                obj[key] = copy_json(value)


def child(obj: Any, key: str) -> Object | None:
    """C{obj}'s object at C{key}, made empty if unset; None if either is not an object."""
    if not isinstance(obj, dict):
        return None
    if unset(obj.get(key)):
        obj[key] = {}
    found = obj[key]
    return found if isinstance(found, dict) else None


def each(obj: Any, path: str) -> Iterator[Object]:
    """
    Every object at C{path} in C{obj}: dotted field names, a name ending in
    ``[]`` stepping into each item of its list (``spec.ingress[].ports[]``).
    """
    found: list[Any] = [obj]
    for step in path.split(".") if path else ():
        name, listed = step.removesuffix("[]"), step.endswith("[]")
        reached: list[Any] = []
        for current in found:
            value = current.get(name) if isinstance(current, dict) else None
            if listed:
                reached.extend(value if isinstance(value, list) else ())
            else:
                reached.append(value)
        found = reached
    yield from (item for item in found if isinstance(item, dict))


def fill_at(obj: Any, path: str, **defaults: Any) -> None:
    """L{fill} each object at C{path} (see L{each})."""
    for found in each(obj, path):
        fill(found, **defaults)
