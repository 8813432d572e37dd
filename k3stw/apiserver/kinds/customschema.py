"""
A CustomResourceDefinition's ``openAPIV3Schema`` as kube-apiserver uses it:
whether it is structural (checked when the CRD is written), and, for each
custom object, the fields it does not declare (pruned, unless
``x-kubernetes-preserve-unknown-fields``), its ``default``\\ s, and what it
breaks (types, ``required``, ``enum``, bounds, lengths, ``pattern``,
formats), in kube's words.  ``x-kubernetes-int-or-string`` and
``x-kubernetes-embedded-resource`` are honoured.

Not checked: ``allOf``/``anyOf``/``oneOf``/``not`` and CEL rules
(``x-kubernetes-validations``).
"""

from __future__ import annotations

import copy
import ipaddress
import re
import uuid
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from k3stw.apiserver.catalogue.types import json_type
from k3stw.apiserver.strategy import Cause
from k3stw.machinery.objects import Object

Schema = Mapping[str, Any]

PRESERVE = "x-kubernetes-preserve-unknown-fields"
INT_OR_STRING = "x-kubernetes-int-or-string"
EMBEDDED = "x-kubernetes-embedded-resource"

#: What every object (and embedded resource) has whatever its schema says.
_TYPE_META = ("apiVersion", "kind", "metadata")


# Structural schemas


def structural_causes(schema: Any, path: str) -> list[Cause]:
    """
    Why C{schema} (a version's ``openAPIV3Schema`` at C{path}) is not
    structural, in kube-apiserver's words; [] when it is.
    """
    if not isinstance(schema, Mapping):
        return [(path, "Required value: schemas are required")]
    causes: list[Cause] = []
    if schema.get("type") not in (None, "object"):
        causes.append(
            (f"{path}.type", f'Invalid value: "{schema["type"]}": must be object at the root')
        )
    metadata = (schema.get("properties") or {}).get("metadata")
    if isinstance(metadata, Mapping) and set(metadata.get("properties") or {}) - {
        "name",
        "generateName",
    }:
        causes.append(
            (
                f"{path}.properties[metadata]",
                "Forbidden: must not specify anything other than name and generateName, but "
                "metadata is implicitly specified",
            )
        )
    _structural(schema, path, "at the root", causes)
    return causes


def _structural(schema: Schema, path: str, level: str, causes: list[Cause]) -> None:
    kind = schema.get("type")
    if not kind and not (schema.get(INT_OR_STRING) or schema.get(PRESERVE) or schema.get(EMBEDDED)):
        causes.append((f"{path}.type", f"Required value: must not be empty {level}"))
    if schema.get(PRESERVE) is False:
        causes.append((f"{path}.{PRESERVE}", "Invalid value: false: must be true or undefined"))
    if schema.get(INT_OR_STRING) and kind:
        causes.append(
            (f"{path}.type", f'Invalid value: "{kind}": must be empty if {INT_OR_STRING} is true')
        )
    if schema.get(EMBEDDED) and kind != "object":
        causes.append(
            (f"{path}.type", f'Invalid value: "{kind or ""}": must be object if {EMBEDDED} is true')
        )
    properties = schema.get("properties") or {}
    additional = schema.get("additionalProperties")
    if properties and isinstance(additional, Mapping):
        causes.append(
            (
                f"{path}.additionalProperties",
                "Forbidden: additionalProperties and properties are mutual exclusive",
            )
        )
    for name, field in properties.items():
        if isinstance(field, Mapping):
            _structural(field, f"{path}.properties[{name}]", "for specified object fields", causes)
    if isinstance(additional, Mapping):
        _structural(
            additional, f"{path}.additionalProperties", "for specified object fields", causes
        )
    items = schema.get("items")
    if kind == "array" and not isinstance(items, Mapping):
        causes.append((f"{path}.items", "Required value: must be specified"))
    elif isinstance(items, Mapping):
        _structural(items, f"{path}.items", "for specified array items", causes)


# Pruning and defaults


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def prune(schema: Schema, obj: Object) -> list[str]:
    """
    Drop, in place, the fields of C{obj} its C{schema} does not declare; their
    paths (``spec.foo``), as kube's strict decoding names them.
    """
    found: list[str] = []
    _prune(schema, obj, "", found, root=True)
    return found


def unknown_fields(schema: Schema, obj: Object) -> list[str]:
    """The paths of the fields L{prune} would drop, leaving C{obj} as it is."""
    return prune(schema, copy.deepcopy(obj))


def _prune(schema: Schema, value: Any, path: str, found: list[str], root: bool = False) -> None:
    if isinstance(value, list):
        items = schema.get("items")
        for index, item in enumerate(value):
            if isinstance(items, Mapping):
                _prune(items, item, f"{path}[{index}]", found)
        return
    if not isinstance(value, dict):
        return
    properties: Mapping[str, Schema] = schema.get("properties") or {}
    additional = schema.get("additionalProperties")
    kept = _TYPE_META if root or schema.get(EMBEDDED) else ()
    for key in list(value):
        field = properties.get(key)
        if key == "metadata" and kept:
            # ObjectMeta is the server's, whatever the schema says of it (often a bare
            # ``type: object``, as controller-gen writes it): never pruned.
            continue
        if field is not None:
            _prune(field, value[key], _join(path, key), found)
        elif isinstance(additional, Mapping):
            _prune(additional, value[key], _join(path, key), found)
        elif key in kept or schema.get(PRESERVE) or additional is True:
            continue
        else:
            found.append(_join(path, key))
            del value[key]


def apply_defaults(schema: Schema, value: Any) -> None:
    """Fill in, in place, each ``default`` of C{schema} where C{value} leaves the field out."""
    if isinstance(value, list):
        items = schema.get("items")
        if isinstance(items, Mapping):
            for item in value:
                apply_defaults(items, item)
        return
    if not isinstance(value, dict):
        return
    properties: Mapping[str, Schema] = schema.get("properties") or {}
    for key, field in properties.items():
        if value.get(key) is None and not (key in value and field.get("nullable")):
            if "default" in field:
                value[key] = copy.deepcopy(field["default"])
            elif key in value:
                del value[key]  # A null a non-nullable field may not hold is dropped.
        if key in value:
            apply_defaults(field, value[key])
    additional = schema.get("additionalProperties")
    if isinstance(additional, Mapping):
        for key, item in value.items():
            if key not in properties:
                apply_defaults(additional, item)


# Validation


def _go(value: Any) -> str:
    """A value as kube's messages print it (strings quoted, numbers bare)."""
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    return str(value)


_TYPES: dict[str, tuple[type, ...]] = {
    "object": (dict,),
    "array": (list,),
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
}


def _is_date_time(text: str) -> bool:
    try:
        datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return False
    return True


def _is_uuid(text: str) -> bool:
    try:
        uuid.UUID(text)
    except ValueError:
        return False
    return True


def _is_ip(text: str, version: int) -> bool:
    try:
        return ipaddress.ip_address(text).version == version
    except ValueError:
        return False


#: The formats checked, as kube-openapi's strfmt names them.
_FORMATS = {
    "date-time": _is_date_time,
    "datetime": _is_date_time,
    "date": lambda text: re.fullmatch(r"\d{4}-\d{2}-\d{2}", text) is not None,
    "uuid": _is_uuid,
    "ipv4": lambda text: _is_ip(text, 4),
    "ipv6": lambda text: _is_ip(text, 6),
    "email": lambda text: re.fullmatch(r"[^@\s]+@[^@\s]+\.[^@\s]+", text) is not None,
    "hostname": lambda text: (
        re.fullmatch(
            r"(?=.{1,253}$)[A-Za-z0-9]([-A-Za-z0-9]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([-A-Za-z0-9]{0,61}[A-Za-z0-9])?)*",
            text,
        )
        is not None
    ),
}


def schema_causes(schema: Schema, obj: Object) -> list[Cause]:
    """What C{obj} breaks of its version's C{schema} (its metadata is the server's concern)."""
    causes: list[Cause] = []
    body = {k: v for k, v in obj.items() if k not in _TYPE_META}
    _validate(schema, body, "", causes)
    return causes


def _validate(schema: Schema, value: Any, path: str, causes: list[Cause]) -> None:
    if value is None:
        if not schema.get("nullable") and schema.get("type"):
            message = f'{path} in body must be of type {schema["type"]}: "null"'
            causes.append((path, f'Invalid value: "null": {message}'))
        return
    kind = schema.get("type")
    if schema.get(INT_OR_STRING):
        if isinstance(value, bool) or not isinstance(value, int | str):
            given = json_type(value)
            message = f'{path} in body must be of type integer,string: "{given}"'
            causes.append((path, f'Invalid value: "{given}": {message}'))
            return
    elif kind in _TYPES:
        wanted = _TYPES[kind]
        if not isinstance(value, wanted) or (kind != "boolean" and isinstance(value, bool)):
            given = json_type(value)
            message = f'{path} in body must be of type {kind}: "{given}"'
            causes.append((path, f'Invalid value: "{given}": {message}'))
            return
    enum = schema.get("enum")
    if isinstance(enum, list) and value not in enum:
        supported = ", ".join(_go(v) for v in enum)
        causes.append((path, f"Unsupported value: {_go(value)}: supported values: {supported}"))
    if isinstance(value, str):
        _validate_string(schema, value, path, causes)
    elif isinstance(value, int | float) and not isinstance(value, bool):
        _validate_number(schema, value, path, causes)
    elif isinstance(value, list):
        _validate_array(schema, value, path, causes)
    elif isinstance(value, dict):
        _validate_object(schema, value, path, causes)


def _validate_string(schema: Schema, value: str, path: str, causes: list[Cause]) -> None:
    shown = _go(value)
    if "maxLength" in schema and len(value) > schema["maxLength"]:
        causes.append((path, f"Too long: may not be more than {schema['maxLength']} bytes"))
    if "minLength" in schema and len(value) < schema["minLength"]:
        message = f"{path} in body should be at least {schema['minLength']} chars long"
        causes.append((path, f"Invalid value: {shown}: {message}"))
    pattern = schema.get("pattern")
    if isinstance(pattern, str) and re.search(pattern, value) is None:
        causes.append((path, f"Invalid value: {shown}: {path} in body should match '{pattern}'"))
    check = _FORMATS.get(str(schema.get("format")))
    if check is not None and not check(value):
        message = f"{path} in body must be of type {schema['format']}: {shown}"
        causes.append((path, f"Invalid value: {shown}: {message}"))


def _validate_number(schema: Schema, value: float, path: str, causes: list[Cause]) -> None:
    prefix = f"Invalid value: {_go(value)}: {path} in body should be"
    if "maximum" in schema:
        if schema.get("exclusiveMaximum") and value >= schema["maximum"]:
            causes.append((path, f"{prefix} less than {schema['maximum']}"))
        elif value > schema["maximum"]:
            causes.append((path, f"{prefix} less than or equal to {schema['maximum']}"))
    if "minimum" in schema:
        if schema.get("exclusiveMinimum") and value <= schema["minimum"]:
            causes.append((path, f"{prefix} greater than {schema['minimum']}"))
        elif value < schema["minimum"]:
            causes.append((path, f"{prefix} greater than or equal to {schema['minimum']}"))
    step = schema.get("multipleOf")
    if step and (value / step) != int(value / step):
        causes.append((path, f"{prefix} a multiple of {step}"))


def _count(
    schema: Schema, value: list[Any] | dict[str, Any], path: str, noun: str, causes: list[Cause]
) -> None:
    """``max``/``min`` ``Items`` or ``Properties``: how many a list or object holds."""
    most, least = schema.get("max" + noun.title()), schema.get("min" + noun.title())
    if most is not None and len(value) > most:
        causes.append((path, f"Too many: {len(value)}: must have at most {most} items"))
    if least is not None and len(value) < least:
        message = f"{path} in body should have at least {least} {noun}"
        causes.append((path, f"Invalid value: {len(value)}: {message}"))


def _validate_array(schema: Schema, value: list[Any], path: str, causes: list[Cause]) -> None:
    _count(schema, value, path, "items", causes)
    if schema.get("uniqueItems"):
        for index, item in enumerate(value):
            if item in value[:index]:
                causes.append((f"{path}[{index}]", f"Duplicate value: {_go(item)}"))
    items = schema.get("items")
    if isinstance(items, Mapping):
        for index, item in enumerate(value):
            _validate(items, item, f"{path}[{index}]", causes)


def _validate_object(schema: Schema, value: dict[str, Any], path: str, causes: list[Cause]) -> None:
    for name in schema.get("required") or ():
        if name not in value:
            causes.append((_join(path, name), "Required value"))
    _count(schema, value, path, "properties", causes)
    properties: Mapping[str, Schema] = schema.get("properties") or {}
    additional = schema.get("additionalProperties")
    embedded = schema.get(EMBEDDED)
    for key, item in value.items():
        if embedded and key in _TYPE_META:
            continue
        field = properties.get(key)
        if field is None and isinstance(additional, Mapping):
            field = additional
        if field is not None:
            _validate(field, item, _join(path, key), causes)
    if embedded:
        for key in ("apiVersion", "kind"):
            if not value.get(key):
                causes.append((_join(path, key), "Required value: must not be empty"))
