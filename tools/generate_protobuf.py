"""Generate the field-number table that reads Kubernetes 1.32 protobuf request bodies.

kubectl's typed commands (``kubectl create deployment|service|role|...``, ``drain``,
``create token``) send ``application/vnd.kubernetes.protobuf`` bodies; the server reads them
with one generic decoder (``k3stw/apiserver/protobuf.py``) driven by the table this script
writes. Nothing in the table is typed by hand per kind.

Usage::

    python tools/generate_protobuf.py \\
        --source api --source apimachinery \\
        --source apiextensions-apiserver --source kube-aggregator \\
        --catalogue k3stw/apiserver/catalogue/resources.json \\
        --out k3stw/apiserver/catalogue/protobuf.json.gz

Inputs
------
``--source`` (repeatable)
    A checkout of a Kubernetes staging repository at its 1.32 release (``kubernetes/api`` at
    branch ``release-1.32``, ``kubernetes/apimachinery``, ``kubernetes/apiextensions-apiserver``
    and ``kubernetes/kube-aggregator`` at the same branch). Every ``generated.proto`` in it
    gives the messages, field numbers and field types; the Go ``types`` files beside each
    ``generated.proto`` give what the ``.proto`` cannot: each field's JSON name (``$ref`` is
    the ``.proto``'s ``ref``; an ``inline`` field's members belong to the enclosing JSON
    object), and whether the Go field is a pointer (gogo writes non-pointer fields even when
    they hold a zero value, which JSON leaves out; a pointer's zero is data: ``replicas: 0``,
    ``emptyDir: {}``).
``--catalogue``
    The catalogue of served resources (``resources.json``, see ``generate_catalogue.py``):
    every served kind and every kind its subresources take is a root of the table.

Output
------
A gzip-compressed JSON document (sorted keys, mtime 0, so the output is deterministic)::

    {"kinds": {"<apiVersion>": {"<Kind>": "<message>"}},
     "messages": {"<message>": ["<shape>", [[number, "jsonName", "type", "flags"], ...]]}}

Message names are the ``.proto`` names without ``k8s.io.``. The kinds under ``"*"``
(``DeleteOptions``) are read whatever group version the body names, as kube-apiserver
registers them in every group version. A field's type is a ``.proto`` scalar (``string``,
``int32``, ``bool``, ``bytes``, ...) or a message name; its flags are ``p`` (a Go pointer: a
zero value is kept), ``r`` (repeated), ``m`` (a map with string keys; the type is the
value's) and ``i`` (inline: its members are the enclosing object's); ``jsonName`` is empty
for inline fields. A shape other than ``object`` is one of the types whose JSON is not an
object: ``time``, ``microtime``, ``duration``, ``intorstring``, ``quantity``, ``raw`` (JSON
bytes, as RawExtension and FieldsV1), ``items`` (a named Go slice such as ``ExtraValue``,
written as a message with one repeated field) and ``either`` (apiextensions'
``JSONSchemaPropsOr*``: field 2 if it holds something, else field 1).

Only the messages reachable from the roots are written, so the table stays small.
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import re
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: Types whose Go JSON form is not an object, by their ``.proto`` name.
SHAPES = {
    "apimachinery.pkg.apis.meta.v1.Time": "time",
    "apimachinery.pkg.apis.meta.v1.MicroTime": "microtime",
    "apimachinery.pkg.apis.meta.v1.Duration": "duration",
    "apimachinery.pkg.apis.meta.v1.FieldsV1": "raw",
    "apimachinery.pkg.util.intstr.IntOrString": "intorstring",
    "apimachinery.pkg.api.resource.Quantity": "quantity",
    "apimachinery.pkg.runtime.RawExtension": "raw",
    "apiextensions_apiserver.pkg.apis.apiextensions.v1.JSON": "raw",
    "apiextensions_apiserver.pkg.apis.apiextensions.v1.JSONSchemaPropsOrArray": "either",
    "apiextensions_apiserver.pkg.apis.apiextensions.v1.JSONSchemaPropsOrBool": "either",
    "apiextensions_apiserver.pkg.apis.apiextensions.v1.JSONSchemaPropsOrStringArray": "either",
}
#: Kinds read in every group version (``metav1.AddToGroupVersion`` registers them so).
ANY_VERSION_KINDS = {"DeleteOptions": "apimachinery.pkg.apis.meta.v1.DeleteOptions"}
SCALARS = {
    "string",
    "bytes",
    "bool",
    "int32",
    "int64",
    "uint32",
    "uint64",
    "double",
    "float",
}

_COMMENTS = re.compile(r"//[^\n]*|/\*.*?\*/", re.S)
_TOKENS = re.compile(r"[A-Za-z_.][\w.]*|\d+|\"[^\"]*\"|[{}=;<>,\[\]()]")
_GO_STRUCT = re.compile(r"^type (\w+) struct \{\n(.*?)^\}", re.S | re.M)
_GO_SLICE = re.compile(r"^type (\w+) \[\]\S+$", re.M)
_GO_FIELD = re.compile(r"^\s*(?:(\w+)\s+)?(\S+)\s+`([^`]*protobuf:\"[^`]*)`", re.M)
_GO_TAG = re.compile(r'(\w+):"([^"]*)"')


@dataclass(frozen=True)
class ProtoField:
    number: int
    name: str
    type: str
    label: str  # "optional", "repeated" or "map"


@dataclass(frozen=True)
class GoField:
    json_name: str | None
    inline: bool
    pointer: bool


def short(name: str) -> str:
    """A ``.proto`` full name without its leading dot and ``k8s.io.``."""
    return name.lstrip(".").removeprefix("k8s.io.")


def parse_proto(text: str) -> tuple[str, dict[str, list[ProtoField]]]:
    """The package and the messages (full name -> fields) of one ``generated.proto``."""
    tokens = _TOKENS.findall(_COMMENTS.sub("", text))
    package = ""
    messages: dict[str, list[ProtoField]] = {}
    at = 0

    def expect(value: str) -> None:
        nonlocal at
        if tokens[at] != value:
            raise SystemExit(f"proto: expected {value!r}, found {tokens[at]!r}")
        at += 1

    while at < len(tokens):
        token = tokens[at]
        if token in ("syntax", "option", "import"):
            at = tokens.index(";", at) + 1
        elif token == "package":
            package, at = tokens[at + 1], at + 3
        elif token == "message":
            name, at = tokens[at + 1], at + 2
            expect("{")
            fields: list[ProtoField] = []
            while tokens[at] != "}":
                if tokens[at] == "map":
                    key, value = tokens[at + 2], tokens[at + 4]
                    if key != "string":
                        raise SystemExit(f"proto: {name}: map keys of type {key}")
                    at += 6
                    label, type_ = "map", value
                elif tokens[at] in ("optional", "repeated"):
                    label, type_, at = tokens[at], tokens[at + 1], at + 2
                else:
                    raise SystemExit(f"proto: {name}: cannot read {tokens[at]!r}")
                field_name, number = tokens[at], int(tokens[at + 2])
                at += 3
                expect(";")
                fields.append(ProtoField(number, field_name, type_, label))
            at += 1
            messages[f"{package}.{name}"] = fields
        else:
            raise SystemExit(f"proto: cannot read {token!r}")
    return package, messages


def parse_go(directory: Path) -> tuple[dict[str, dict[int, GoField]], set[str]]:
    """
    The Go structs of one package (name -> protobuf field number -> field) and the names
    of its named slice types.
    """
    structs: dict[str, dict[int, GoField]] = {}
    slices: set[str] = set()
    for path in sorted(directory.glob("*.go")):
        if path.name.endswith("_test.go") or path.name.startswith(("zz_", "generated.")):
            continue
        text = path.read_text()
        slices.update(_GO_SLICE.findall(text))
        for struct, body in _GO_STRUCT.findall(text):
            found = structs.setdefault(struct, {})
            for name, go_type, tag in _GO_FIELD.findall(body):
                tags = dict(_GO_TAG.findall(tag))
                if tags["protobuf"] == "-":
                    continue
                number = int(tags["protobuf"].split(",")[1])
                json_name, *options = tags.get("json", "-").split(",")
                inline = "inline" in options and not json_name
                found[number] = GoField(
                    None if json_name in ("", "-") else json_name,
                    inline,
                    go_type.startswith("*") and bool(name),
                )
    return structs, slices


def read_sources(
    sources: Iterable[Path],
) -> tuple[dict[str, list[ProtoField]], dict[str, dict[int, GoField]], set[str]]:
    """Every message of the sources, its Go fields, and the messages that are Go slices."""
    messages: dict[str, list[ProtoField]] = {}
    go_fields: dict[str, dict[int, GoField]] = {}
    slices: set[str] = set()
    for source in sources:
        for proto in sorted(source.rglob("generated.proto")):
            package, found = parse_proto(proto.read_text())
            structs, named_slices = parse_go(proto.parent)
            for full, fields in found.items():
                name = short(full)
                messages[name] = [
                    ProtoField(f.number, f.name, qualify(f.type, package), f.label) for f in fields
                ]
                go_name = full.rsplit(".", 1)[1]
                go_fields[name] = structs.get(go_name, {})
                if go_name in named_slices:
                    slices.add(name)
    return messages, go_fields, slices


def qualify(type_: str, package: str) -> str:
    """A field's type as a scalar or a short message name."""
    if type_ in SCALARS:
        return type_
    if type_.startswith("."):
        return short(type_)
    return short(f"{package}.{type_}")


def roots(
    catalogue: list[dict[str, Any]], messages: dict[str, list[ProtoField]]
) -> Iterator[tuple[str, str, str]]:
    """``(apiVersion, kind, message)`` of every served kind and every subresource's kind."""
    by_version_kind = {}
    for name in messages:
        *package, version, kind = name.split(".")
        # k8s.io.api.apps.v1, ...apis.apiextensions.v1: the group's first label, then version.
        by_version_kind[(package[-1], version, kind)] = name
    for resource in catalogue:
        kinds = [resource, *resource["subresources"]]
        for entry in kinds:
            group, version, kind = entry["group"], entry["version"], entry["kind"]
            label = group.split(".")[0] if group else "core"
            name = by_version_kind.get((label, version, kind))
            if name is None:
                if entry is resource:
                    raise SystemExit(f"no protobuf message for {group}/{version} {kind}")
                continue  # PodExecOptions and the like: query parameters, never a body
            yield (f"{group}/{version}" if group else version, kind, name)


def table(
    messages: dict[str, list[ProtoField]],
    go_fields: dict[str, dict[int, GoField]],
    slices: set[str],
    kinds: list[tuple[str, str, str]],
) -> dict[str, Any]:
    """The table of every message reachable from C{kinds}."""
    out: dict[str, Any] = {}
    pending = [name for _, _, name in kinds] + list(ANY_VERSION_KINDS.values())
    while pending:
        name = pending.pop()
        if name in out:
            continue
        if name not in messages:
            raise SystemExit(f"message {name} is not in the sources")
        shape = SHAPES.get(name) or ("items" if name in slices else "object")
        fields = []
        for f in messages[name]:
            go = go_fields[name].get(f.number)
            if shape == "object" and go is None:
                raise SystemExit(f"{name}.{f.name} ({f.number}) has no Go field")
            flags = {"repeated": "r", "map": "m"}.get(f.label, "")
            if go is not None and go.pointer:
                flags += "p"
            if go is not None and go.inline:
                flags += "i"
            json_name = "" if "i" in flags else (go.json_name if go and go.json_name else f.name)
            fields.append([f.number, json_name, f.type, flags])
            if f.type not in SCALARS:
                pending.append(f.type)
        if shape == "items" and [f[:2] for f in fields] != [[1, "items"]]:
            raise SystemExit(f"{name} is a Go slice but not a message of items")
        out[name] = [shape, sorted(fields)]
    versions: dict[str, dict[str, str]] = {"*": dict(ANY_VERSION_KINDS)}
    for api_version, kind, name in kinds:
        versions.setdefault(api_version, {})[kind] = name
    return {"kinds": versions, "messages": out}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--source", action="append", type=Path, required=True)
    parser.add_argument("--catalogue", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    messages, go_fields, slices = read_sources(args.source)
    kinds = sorted(set(roots(json.loads(args.catalogue.read_text()), messages)))
    document = table(messages, go_fields, slices, kinds)
    data = json.dumps(document, sort_keys=True, separators=(",", ":")).encode()
    buffer = io.BytesIO()
    with gzip.GzipFile(fileobj=buffer, mode="wb", mtime=0, compresslevel=9) as out:
        out.write(data)
    args.out.write_bytes(buffer.getvalue())
    print(
        f"{len(document['messages'])} messages, {sum(map(len, document['kinds'].values()))} "
        f"kinds, {len(data)} bytes ({len(buffer.getvalue())} compressed)",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
