"""
What the kinds' defaults are written with.  kube-apiserver's defaulting
functions fill a field only where the object leaves it unset (absent, null,
or "" for a string), never over what a user set; L{fill} does that, and
L{each} reaches the objects of a path through lists (``spec.ports[]``).
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import lru_cache
from typing import Any

from k3stw.machinery.objects import Object, copy_json


def unset(value: Any) -> bool:
    """Whether a field's value counts as not given (Go's zero string or a nil pointer)."""
    return value is None or value == ""


def fill(obj: Any, **defaults: Any) -> None:
    """Set each of C{defaults} on C{obj} (if an object) where it is L{unset}."""
    if isinstance(obj, dict):
        for key, value in defaults.items():
            current = obj.get(key)
            if current is None or current == "":  # unset(), inline: fill runs often
                # Only an object or a list is shared with the next object filled.
                obj[key] = copy_json(value) if isinstance(value, dict | list) else value


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
    for name, listed in _steps(path):
        reached: list[Any] = []
        for current in found:
            value = current.get(name) if isinstance(current, dict) else None
            if listed:
                reached.extend(value if isinstance(value, list) else ())
            else:
                reached.append(value)
        found = reached
    yield from (item for item in found if isinstance(item, dict))


@lru_cache(maxsize=256)
def _steps(path: str) -> tuple[tuple[str, bool], ...]:
    """A path of L{each} as its steps: each field's name, and whether it steps into a list."""
    steps = path.split(".") if path else ()
    return tuple((step.removesuffix("[]"), step.endswith("[]")) for step in steps)


def fill_at(obj: Any, path: str, **defaults: Any) -> None:
    """L{fill} each object at C{path} (see L{each})."""
    for found in each(obj, path):
        fill(found, **defaults)
