"""
Protobuf request bodies (``application/vnd.kubernetes.protobuf``), what kubectl's typed
commands send (``kubectl create deployment|service|role|...``, drain's evictions), read into
the JSON objects the rest of the API works with.

One generic reader walks the body with the field-number table that
``tools/generate_protobuf.py`` writes from Kubernetes 1.32's ``generated.proto`` files (every
served kind, the kinds its subresources take, DeleteOptions). The table is loaded on the
first protobuf body, never at start-up.

The JSON written is what kube-apiserver would see after decoding into its Go types: a Go
non-pointer field holding its zero value (gogo writes those too) is left out, a pointer's
zero is kept (``replicas: 0``, ``emptyDir: {}``), and the types with a JSON form of their own
(times, quantities, int-or-strings, raw JSON) are written in that form.

Strict by design: a field the table does not know, holding anything but a zero value, is
refused (415) rather than dropped, so no user data is lost; so are bodies nested deeper than
the JSON bodies may be, and malformed ones.
"""

from __future__ import annotations

import base64
import functools
import gzip
import json
import struct
from collections.abc import Callable
from datetime import UTC, datetime
from importlib import resources
from typing import Any

from k3stw.machinery.times import go_duration

#: ``application/vnd.kubernetes.protobuf`` bodies start with this, then a runtime.Unknown.
MAGIC = b"k8s\x00"
#: As deep as a JSON body may nest (L{k3stw.apiserver.request.MAX_DEPTH}).
MAX_DEPTH = 100

_VARINT, _FIXED64, _BYTES, _FIXED32 = 0, 1, 2, 5
_WIRE = {
    "string": _BYTES,
    "bytes": _BYTES,
    "bool": _VARINT,
    "int32": _VARINT,
    "int64": _VARINT,
    "uint32": _VARINT,
    "uint64": _VARINT,
    "double": _FIXED64,
    "float": _FIXED32,
}
#: The zero values of JSON that Go leaves out of a non-pointer field (0 is also False).
_ZEROS: tuple[Any, ...] = ("", 0, {})

#: A field of the table: number -> (JSON name, type, flags); see tools/generate_protobuf.py.
Field = tuple[str, str, str]


class UnsupportedProtobuf(ValueError):
    """A protobuf body this server cannot read; answered with 415."""


@functools.cache
def _table() -> dict[str, Any]:
    data = resources.files("k3stw.apiserver.catalogue").joinpath("protobuf.json.gz").read_bytes()
    loaded: dict[str, Any] = json.loads(gzip.decompress(data))
    return loaded


@functools.cache
def _message(name: str) -> tuple[str, dict[int, Field]]:
    """One message's shape and fields, indexed by number (built on first use)."""
    shape, fields = _table()["messages"][name]
    return shape, {number: (json_name, type_, flags) for number, json_name, type_, flags in fields}


def _varint(data: bytes, at: int, end: int) -> tuple[int, int]:
    if at < end and data[at] < 0x80:
        return data[at], at + 1  # most keys and lengths: one byte
    value = shift = 0
    while True:
        if at >= end or shift > 63:
            raise UnsupportedProtobuf("truncated or malformed varint")
        byte = data[at]
        at += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, at
        shift += 7


def fields(data: bytes, start: int = 0, end: int | None = None) -> list[tuple[int, int, Any]]:
    """
    Every ``(field number, wire type, value)`` of the message in ``data[start:end]``, in
    order: a varint's value is its number, a length-delimited or fixed-width value is its
    ``(start, end)`` in C{data} (nothing is copied).
    """
    end = len(data) if end is None else end
    found: list[tuple[int, int, Any]] = []
    at = start
    while at < end:
        key, at = _varint(data, at, end)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise UnsupportedProtobuf("field number 0 is not allowed")
        if wire == _VARINT:
            value, at = _varint(data, at, end)
            found.append((number, wire, value))
            continue
        if wire == _BYTES:
            size, at = _varint(data, at, end)
        elif wire in (_FIXED64, _FIXED32):
            size = 8 if wire == _FIXED64 else 4
        else:
            raise UnsupportedProtobuf(f"unsupported wire type {wire}")
        if at + size > end:
            raise UnsupportedProtobuf("truncated field")
        found.append((number, wire, (at, at + size)))
        at += size
    return found


def _is_zero(data: bytes, wire: int, value: Any, depth: int) -> bool:
    """Whether an unknown field holds a zero value, as gogo writes for empty fields."""
    if wire == _VARINT:
        return bool(value == 0)
    start, end = value
    if wire != _BYTES:
        return not any(data[start:end])
    if start == end:
        return True
    if depth >= MAX_DEPTH:
        return False  # deeper than any zero value gogo writes: treat it as data
    try:
        return all(_is_zero(data, w, v, depth + 1) for _, w, v in fields(data, start, end))
    except UnsupportedProtobuf:
        return False


def _signed(value: int, bits: int) -> int:
    """A varint as Go reads it into an ``int32``/``int64`` (two's complement, truncated)."""
    value &= (1 << bits) - 1
    return value - (1 << bits) if value >> (bits - 1) else value


class _Reader:
    """One body's decoding: C{data} and the walk through the table."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    def text(self, span: tuple[int, int]) -> str:
        try:
            return self.data[span[0] : span[1]].decode("utf-8")
        except UnicodeDecodeError:
            raise UnsupportedProtobuf("a string field is not UTF-8 text") from None

    def scalar(self, type_: str, wire: int, value: Any) -> Any:
        if wire != _WIRE[type_]:
            raise UnsupportedProtobuf(f"a {type_} field has wire type {wire}")
        if type_ == "string":
            return self.text(value)
        if type_ == "bytes":
            return base64.b64encode(self.data[value[0] : value[1]]).decode("ascii")
        if type_ == "bool":
            return value != 0
        if type_ in ("int32", "int64"):
            return _signed(value, 32 if type_ == "int32" else 64)
        if type_ == "uint32":
            return value & 0xFFFFFFFF
        if type_ == "uint64":
            return value
        raw = self.data[value[0] : value[1]]
        number: float = struct.unpack("<d" if type_ == "double" else "<f", raw)[0]
        return number

    def value(self, type_: str, wire: int, value: Any, depth: int) -> Any:
        if type_ in _WIRE:
            return self.scalar(type_, wire, value)
        if wire != _BYTES:
            raise UnsupportedProtobuf(f"a message field has wire type {wire}")
        return self.message(type_, value, depth + 1)

    def message(self, name: str, span: tuple[int, int], depth: int) -> Any:
        """One message as its JSON value, within L{MAX_DEPTH} levels of JSON."""
        if depth > MAX_DEPTH:
            raise UnsupportedProtobuf(f"exceeded max depth of {MAX_DEPTH}")
        shape, known = _message(name)
        obj: dict[str, Any] = {}
        for number, wire, value in fields(self.data, *span):
            field = known.get(number)
            if field is None:
                if _is_zero(self.data, wire, value, depth):
                    continue
                raise UnsupportedProtobuf(
                    f"field {number} of protobuf message {name} is not understood"
                )
            json_name, type_, flags = field
            if "m" in flags:
                key, item = self.entry(type_, value, wire, depth + 1)
                obj.setdefault(json_name, {})[key] = item
            elif "r" in flags:
                items = obj.setdefault(json_name, [])
                if wire == _BYTES and _WIRE.get(type_, _BYTES) != _BYTES:
                    packed = self.packed(type_, value)
                    items.extend(self.scalar(type_, _WIRE[type_], inner) for inner in packed)
                else:
                    items.append(self.value(type_, wire, value, depth + 1))
            elif "i" in flags:
                inline = self.value(type_, wire, value, depth - 1)
                obj.update(inline)
            else:
                obj[json_name] = self.value(type_, wire, value, depth)
        if shape != "object":
            return _SHAPES[shape](obj, known)
        for json_name, _, flags in known.values():
            # Go reads a non-pointer field's zero as absent; a pointer's zero is data.
            value = obj.get(json_name, ())
            if value is None or ("p" not in flags and value in _ZEROS):
                del obj[json_name]
        return obj

    def packed(self, type_: str, span: tuple[int, int]) -> list[Any]:
        """The values of a packed repeated scalar: one length-delimited run of them."""
        wire = _WIRE[type_]
        if wire == _VARINT:
            values, at = [], span[0]
            while at < span[1]:
                value, at = _varint(self.data, at, span[1])
                values.append(value)
            return values
        size = 8 if wire == _FIXED64 else 4
        if (span[1] - span[0]) % size:
            raise UnsupportedProtobuf("truncated packed field")
        return [(at, at + size) for at in range(span[0], span[1], size)]

    def entry(self, type_: str, span: Any, wire: int, depth: int) -> tuple[str, Any]:
        """One map entry: key 1 (a string), value 2."""
        if wire != _BYTES:
            raise UnsupportedProtobuf(f"a map entry has wire type {wire}")
        key, item = "", None
        for number, inner_wire, value in fields(self.data, *span):
            if number == 1:
                key = self.scalar("string", inner_wire, value)
            elif number == 2:
                item = self.value(type_, inner_wire, value, depth)
            elif not _is_zero(self.data, inner_wire, value, depth):
                raise UnsupportedProtobuf(f"field {number} of a map entry is not understood")
        if item is None:
            # An entry without its value holds the value type's zero.
            item = (
                self.message(type_, (0, 0), depth + 1)
                if type_ not in _WIRE
                else {"string": "", "bytes": "", "bool": False}.get(type_, 0)
            )
        return key, item


def _time(obj: dict[str, Any], micro: bool) -> str | None:
    if not obj:
        return None  # Go writes the zero time as an empty message; its JSON is null
    seconds, nanos = divmod(obj.get("seconds", 0) * 10**9 + obj.get("nanos", 0), 10**9)
    try:
        moment = datetime.fromtimestamp(seconds, UTC)
    except (OverflowError, OSError, ValueError):
        raise UnsupportedProtobuf("a time is out of range") from None
    text = (
        f"{moment.year:04d}-{moment.month:02d}-{moment.day:02d}"
        f"T{moment.hour:02d}:{moment.minute:02d}:{moment.second:02d}"
    )
    return f"{text}.{nanos // 1000:06d}Z" if micro else f"{text}Z"


def _raw_json(obj: dict[str, Any]) -> Any:
    raw = obj.get("raw", obj.get("Raw", ""))
    if not raw:
        return None
    from k3stw.apiserver.request import decode_json

    try:
        return decode_json(base64.b64decode(raw))
    except (ValueError, UnicodeDecodeError) as e:
        raise UnsupportedProtobuf(f"an embedded object is not JSON: {e}") from None


def _either(obj: dict[str, Any], known: dict[int, Field]) -> Any:
    """apiextensions' C{JSONSchemaPropsOr*}: field 2 if it holds something, else field 1."""
    (first, first_type, _), (second, _, _) = known[1], known[2]
    if obj.get(second) not in (None, []):
        return obj[second]
    return obj.get(first, False if first_type == "bool" else None)


_SHAPES: dict[str, Callable[[dict[str, Any], dict[int, Field]], Any]] = {
    "time": lambda obj, _: _time(obj, micro=False),
    "microtime": lambda obj, _: _time(obj, micro=True),
    "duration": lambda obj, _: go_duration(obj.get("duration", 0)),
    "intorstring": lambda obj, _: (
        obj.get("strVal", "") if obj.get("type") else obj.get("intVal", 0)
    ),
    "quantity": lambda obj, _: obj.get("string") or "0",
    "raw": lambda obj, _: _raw_json(obj),
    "items": lambda obj, _: obj.get("items", []),
    "either": _either,
}


def decode_body(body: bytes) -> dict[str, Any]:
    """
    A ``application/vnd.kubernetes.protobuf`` request body as a JSON object.

    :raises UnsupportedProtobuf: not a kind Kubernetes 1.32 serves, a field it does not
        know, a malformed body, or one nested too deep.
    """
    if not body.startswith(MAGIC):
        raise UnsupportedProtobuf("the body does not start with the Kubernetes protobuf magic")
    reader = _Reader(body)
    api_version = kind = ""
    raw = (0, 0)
    for number, wire, value in fields(body, len(MAGIC)):
        if number in (1, 2) and wire != _BYTES:
            # The type meta and the raw object are messages (wire type 2), never numbers.
            raise UnsupportedProtobuf(f"field {number} of the envelope has wire type {wire}")
        if number == 1:
            for inner, inner_wire, part in fields(body, *value):
                if inner in (1, 2):
                    text = reader.scalar("string", inner_wire, part)
                    api_version, kind = (text, kind) if inner == 1 else (api_version, text)
        elif number == 2:
            raw = value
        elif number == 3 and reader.scalar("string", wire, value):
            raise UnsupportedProtobuf("content encodings are not supported")
        elif number > 4 and not _is_zero(body, wire, value, 0):
            raise UnsupportedProtobuf(f"field {number} of the envelope is not understood")
    kinds = _table()["kinds"]
    name = kinds.get(api_version, {}).get(kind) or kinds["*"].get(kind)
    if name is None:
        raise UnsupportedProtobuf(f"protobuf bodies of {kind or 'this kind'} are not supported")
    obj: dict[str, Any] = reader.message(name, raw, 1)
    return {"apiVersion": api_version, "kind": kind, **obj}
