"""
The few protobuf request bodies kubectl's typed commands send
(``kubectl create namespace|configmap|secret|serviceaccount``, ``kubectl auth
can-i``), read into the JSON objects the rest of the API works with.

Strict by design: a field this reader does not know, holding anything but a
zero value, is refused (415) rather than dropped, so no user data is lost.
Everything else in protobuf stays a 415 too; kubectl's ``-f`` paths send JSON.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import Any

#: ``application/vnd.kubernetes.protobuf`` bodies start with this, then a runtime.Unknown.
MAGIC = b"k8s\x00"


class UnsupportedProtobuf(ValueError):
    """A protobuf body this server cannot read; answered with 415."""


def _varint(data: bytes, at: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if at >= len(data) or shift > 63:
            raise UnsupportedProtobuf("truncated or malformed varint")
        byte = data[at]
        at += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, at
        shift += 7


def fields(data: bytes) -> list[tuple[int, int, Any]]:
    """Every ``(field number, wire type, value)`` of one message, in order."""
    found = []
    at = 0
    while at < len(data):
        key, at = _varint(data, at)
        number, wire = key >> 3, key & 7
        value: int | bytes
        if wire == 0:
            value, at = _varint(data, at)
        elif wire == 2:
            length, at = _varint(data, at)
            if at + length > len(data):
                raise UnsupportedProtobuf("truncated length-delimited field")
            value, at = data[at : at + length], at + length
        elif wire in (1, 5):
            size = 8 if wire == 1 else 4
            if at + size > len(data):
                raise UnsupportedProtobuf("truncated fixed-width field")
            value, at = data[at : at + size], at + size
        else:
            raise UnsupportedProtobuf(f"unsupported wire type {wire}")
        found.append((number, wire, value))
    return found


def _is_zero(wire: int, value: Any, depth: int = 0) -> bool:
    if wire == 0:
        return bool(value == 0)
    if wire == 2:
        if not value:
            return True
        if depth >= 8:
            # Deeper than any zero value gogo writes: treat it as data, and refuse it.
            return False
        # A message whose every field is zero, as gogo writes empty structs.
        try:
            return all(_is_zero(w, v, depth + 1) for _, w, v in fields(value))
        except UnsupportedProtobuf:
            return False
    return not any(value)


Reader = Callable[[Any], Any]


def _text(value: bytes) -> str:
    try:
        return value.decode("utf-8")
    except (UnicodeDecodeError, AttributeError):
        raise UnsupportedProtobuf("a string field is not UTF-8 text") from None


def _flag(value: int) -> bool:
    return bool(value)


def _entry(value: bytes, read_value: Reader) -> tuple[str, Any]:
    key, item = "", read_value(b"")
    for number, _, part in fields(value):
        if number == 1:
            key = _text(part)
        elif number == 2:
            item = read_value(part)
    return key, item


def _base64(value: bytes) -> str:
    return base64.b64encode(value).decode("ascii")


# Each schema: field number -> (JSON name, reader, how it repeats: None, "list" or "map").
Schema = dict[int, tuple[str, Reader, str | None]]


def _message(schema: Schema) -> Reader:
    def read(value: bytes) -> dict[str, Any]:
        return decode_message(value, schema)

    return read


OBJECT_META: Schema = {
    1: ("name", _text, None),
    2: ("generateName", _text, None),
    3: ("namespace", _text, None),
    11: ("labels", _text, "map"),
    12: ("annotations", _text, "map"),
    14: ("finalizers", _text, "list"),
}
NAMESPACE_SPEC: Schema = {1: ("finalizers", _text, "list")}
LOCAL_REFERENCE: Schema = {1: ("name", _text, None)}

#: authorization.k8s.io/v1: what ``kubectl auth can-i`` asks.
RESOURCE_ATTRIBUTES: Schema = {
    1: ("namespace", _text, None),
    2: ("verb", _text, None),
    3: ("group", _text, None),
    4: ("version", _text, None),
    5: ("resource", _text, None),
    6: ("subresource", _text, None),
    7: ("name", _text, None),
}
NON_RESOURCE_ATTRIBUTES: Schema = {1: ("path", _text, None), 2: ("verb", _text, None)}
SELF_ACCESS_SPEC: Schema = {
    1: ("resourceAttributes", _message(RESOURCE_ATTRIBUTES), None),
    2: ("nonResourceAttributes", _message(NON_RESOURCE_ATTRIBUTES), None),
}
SELF_RULES_SPEC: Schema = {1: ("namespace", _text, None)}

KINDS: dict[tuple[str, str], Schema] = {
    ("authorization.k8s.io/v1", "SelfSubjectAccessReview"): {
        1: ("metadata", _message(OBJECT_META), None),
        2: ("spec", _message(SELF_ACCESS_SPEC), None),
    },
    ("authorization.k8s.io/v1", "SelfSubjectRulesReview"): {
        1: ("metadata", _message(OBJECT_META), None),
        2: ("spec", _message(SELF_RULES_SPEC), None),
    },
    ("v1", "Namespace"): {
        1: ("metadata", _message(OBJECT_META), None),
        2: ("spec", _message(NAMESPACE_SPEC), None),
    },
    ("v1", "ConfigMap"): {
        1: ("metadata", _message(OBJECT_META), None),
        2: ("data", _text, "map"),
        3: ("binaryData", _base64, "map"),
        4: ("immutable", _flag, None),
    },
    ("v1", "Secret"): {
        1: ("metadata", _message(OBJECT_META), None),
        2: ("data", _base64, "map"),
        3: ("type", _text, None),
        4: ("stringData", _text, "map"),
        5: ("immutable", _flag, None),
    },
    ("v1", "ServiceAccount"): {
        1: ("metadata", _message(OBJECT_META), None),
        3: ("imagePullSecrets", _message(LOCAL_REFERENCE), "list"),
        4: ("automountServiceAccountToken", _flag, None),
    },
}


def decode_message(data: bytes, schema: Schema) -> dict[str, Any]:
    """One message as a JSON object, refusing any non-zero field not in C{schema}."""
    obj: dict[str, Any] = {}
    for number, wire, value in fields(data):
        known = schema.get(number)
        if known is None:
            if _is_zero(wire, value):
                continue
            raise UnsupportedProtobuf(f"protobuf field {number} is not understood")
        name, read, repeated = known
        if repeated == "map":
            key, item = _entry(value, read)
            obj.setdefault(name, {})[key] = item
        elif repeated == "list":
            obj.setdefault(name, []).append(read(value))
        else:
            item = read(value)
            # Booleans are written only when set; empty strings and messages are gogo's zeros.
            if item != "" and item != {}:
                obj[name] = item
    return obj


def decode_body(body: bytes) -> dict[str, Any]:
    """
    A ``application/vnd.kubernetes.protobuf`` request body as a JSON object.

    :raises UnsupportedProtobuf: not one of the kinds this server reads, or a
        field it does not know.
    """
    if not body.startswith(MAGIC):
        raise UnsupportedProtobuf("the body does not start with the Kubernetes protobuf magic")
    api_version = kind = ""
    raw = b""
    for number, wire, value in fields(body[len(MAGIC) :]):
        if number in (1, 2) and not isinstance(value, bytes):
            # The type meta and the raw object are messages (wire type 2), never numbers.
            raise UnsupportedProtobuf(f"field {number} of the envelope has wire type {wire}")
        if number == 1:
            for inner, _, part in fields(value):
                if inner == 1:
                    api_version = _text(part)
                elif inner == 2:
                    kind = _text(part)
        elif number == 2:
            raw = value
    schema = KINDS.get((api_version, kind))
    if schema is None:
        raise UnsupportedProtobuf(f"protobuf bodies of {kind or 'this kind'} are not supported")
    obj = decode_message(raw, schema)
    obj["apiVersion"], obj["kind"] = api_version, kind
    return obj
