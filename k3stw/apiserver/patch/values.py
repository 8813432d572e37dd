"""JSON values as the patch forms see them, and as Go's ``encoding/json`` decodes them.

kube-apiserver's messages name Go types (``map[string]interface {}``, ``float64``), so the
patch modules classify values the way Go would decode them.
"""

from __future__ import annotations

from typing import Any, TypeAlias

JSONValue: TypeAlias = "dict[str, JSONValue] | list[JSONValue] | str | int | float | bool | None"
JSONObject: TypeAlias = "dict[str, JSONValue]"

#: What the public functions return: a Kubernetes object, indexable without narrowing.
KubeObject: TypeAlias = dict[str, Any]


def json_equal(left: JSONValue, right: JSONValue) -> bool:
    """JSON equality: numbers compare by value, booleans are not numbers, order of keys is free."""
    if isinstance(left, bool) or isinstance(right, bool):
        return type(left) is type(right) and left == right
    if isinstance(left, int | float) and isinstance(right, int | float):
        return left == right
    if isinstance(left, dict) and isinstance(right, dict):
        return left.keys() == right.keys() and all(json_equal(v, right[k]) for k, v in left.items())
    if isinstance(left, list) and isinstance(right, list):
        return len(left) == len(right) and all(map(json_equal, left, right))
    return type(left) is type(right) and left == right


def go_kind(value: JSONValue) -> str:
    """The Go kind ``encoding/json`` would decode ``value`` to, for type comparisons.

    :return: ``"map"``, ``"slice"``, ``"bool"``, ``"string"``, ``"nil"`` or ``"number"``.
    """
    if isinstance(value, dict):
        return "map"
    if isinstance(value, list):
        return "slice"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, str):
        return "string"
    if value is None:
        return "nil"
    return "number"


_JSON_TYPE_NAMES = {
    "map": "object",
    "slice": "array",
    "bool": "bool",
    "string": "string",
    "number": "number",
    "nil": "null",
}


def json_type_name(value: JSONValue) -> str:
    """The JSON type ``encoding/json`` names in an unmarshalling error (``object``, ``array``)."""
    return _JSON_TYPE_NAMES[go_kind(value)]
