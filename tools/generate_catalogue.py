"""Generate the catalogue of resources kube-apiserver 1.32 serves by default.

The catalogue (``k3stw/apiserver/catalogue``) is data only, produced by this script from
published definitions; nothing in it is typed by hand per kind.

Usage::

    python tools/generate_catalogue.py \\
        --definitions kubernetes_validate-1.32.0-py3-none-any.whl \\
        --discovery aggregated_v2.json --discovery api__v1.json \\
        --paths kubernetes-32.0.1-py2.py3-none-any.whl \\
        --out k3stw/apiserver/catalogue

Inputs
------
``--definitions``
    ``_definitions.json`` of the ``kubernetes-validate`` package (``{"$defs": {...}}``, the
    Kubernetes OpenAPI definitions in JSON-schema form), or the package's wheel itself, in
    which case ``kubernetes-json-schema/<--kube-version>-local/_definitions.json`` is read
    from it (``pip download kubernetes-validate==1.32.0 --no-deps``).
``--discovery`` (repeatable)
    Discovery documents from the kubernetes/kubernetes repository's ``api/discovery``:
    ``aggregated_v2.json`` (an ``APIGroupDiscoveryList`` covering ``/apis``) and
    ``api__v1.json`` (the ``APIResourceList`` of the core group). They give what the
    definitions lack: plural and singular names, scope, verbs, short names, categories and
    subresources with their kinds and verbs, and the order of preference of versions.
``--paths``
    The official Python client generated from the same Kubernetes minor (``pip download
    kubernetes==32.0.1 --no-deps``): its wheel, or an unpacked ``kubernetes`` package
    directory. Every REST path and HTTP method it calls is taken as the list of paths the
    1.32 OpenAPI document declares.

What is kept
------------
The discovery documents available are newer than 1.32, so they are filtered:

* Only GA versions (``v1``, ``v2``, ...) are kept. Since Kubernetes 1.24 (KEP-3136, "Beta
  APIs Off by Default") new beta API versions are disabled unless ``--runtime-config``
  enables them; the only beta versions that stayed on by default were those already on
  before 1.24, and the last of them, ``flowcontrol.apiserver.k8s.io/v1beta3``, stopped
  being served in 1.32 (Kubernetes' Deprecated API Migration Guide, "v1.32"); its
  definitions are absent from the 1.32 schemas too. So no beta version is served by a
  default 1.32 kube-apiserver, and alpha versions never are.
* A resource is kept only if its (group, version, kind) exists in the 1.32 definitions
  (so e.g. ``networking.k8s.io/v1`` IPAddress and ServiceCIDR, GA after 1.32, go) and its
  REST paths exist in the 1.32 client.
* A subresource is kept only if its path exists in the 1.32 client (so ``pods/checkpoint``
  goes) and it is not registered only behind an alpha feature gate, off by default: see
  ``GATED_SUBRESOURCES``.
* A verb is kept only if the 1.32 client has the path and HTTP method that carry it.

Each group's preferred version is the first of its served versions in discovery order
(``v1`` for the core group).

Outputs
-------
``resources.json``
    A compact JSON list, one object per served resource, ordered by group (core first),
    version preference and plural: ``group``, ``version``, ``kind``, ``plural``,
    ``singular``, ``namespaced``, ``verbs``, ``shortNames``, ``categories``,
    ``subresources`` (each ``name``, ``kind``, ``group``, ``version`` of the kind it
    answers with, and ``verbs``), ``schema`` (the definition's name, such as
    ``io.k8s.api.apps.v1.Deployment``) and ``preferredVersion`` (its group's).
``openapi/<group or "core">_<version>.json.gz``
    For every served group-version, an OpenAPI 3.0 document whose
    ``components.schemas`` holds exactly the definitions reachable through ``$ref`` from
    that group-version's kinds (every definition whose group-version-kind is in that
    group-version, and the kinds its subresources answer with, such as autoscaling/v1
    Scale for apps/v1). Definitions are converted from JSON-schema form to the form
    kube-apiserver publishes: references point at ``#/components/schemas/<name>`` (wrapped
    in a one-element ``allOf`` where the reference has sibling keys, as kube does, since
    OpenAPI 3.0 ignores a ``$ref``'s siblings), ``["x", "null"]`` types become ``"x"``, the
    ``enum`` the conversion put on ``apiVersion`` and ``kind`` is removed, and every
    ``x-kubernetes-*`` extension is kept. Written gzip-compressed with mtime 0.

The output is deterministic: sorted keys, a stable order, fixed gzip headers.
"""

from __future__ import annotations

import argparse
import gzip
import json
import re
import sys
import zipfile
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

JSON = dict[str, Any]

DEFAULT_KUBE_VERSION = "v1.32.0"

#: Subresources registered only when an alpha feature gate (off by default in 1.32) is on,
#: keyed by (group, plural, subresource). The Python client documents every path the
#: OpenAPI generator saw, and the generator runs with alpha features on.
GATED_SUBRESOURCES: Mapping[tuple[str, str, str], str] = {
    # KEP-1287 in-place pod resize: InPlacePodVerticalScaling is alpha up to 1.32, beta 1.33.
    ("", "pods", "resize"): "InPlacePodVerticalScaling",
}

#: How each verb reaches the server: on the collection or on one object, and by which method.
VERB_ROUTES: Mapping[str, tuple[bool, str]] = {
    "create": (False, "POST"),
    "list": (False, "GET"),
    "watch": (False, "GET"),
    "deletecollection": (False, "DELETE"),
    "get": (True, "GET"),
    "update": (True, "PUT"),
    "patch": (True, "PATCH"),
    "delete": (True, "DELETE"),
}

GA_VERSION = re.compile(r"v[0-9]+")
CLIENT_CALL = re.compile(r"call_api\(\s*'(/[^']*)',\s*'([A-Z]+)'")
#: A DELETE and the type of its answer (``V1Status``, or the object's own kind).
CLIENT_DELETE = re.compile(r"call_api\(\s*'(/[^']*)',\s*'DELETE'[^)]*?response_type='(\w+)'", re.S)
LOCAL_REF = "#/$defs/"
OPENAPI_REF = "#/components/schemas/"


@dataclass(frozen=True)
class Subresource:
    """One subresource as discovery describes it."""

    name: str
    kind: str
    group: str
    version: str
    verbs: tuple[str, ...]


@dataclass
class Resource:
    """One resource of one group-version as discovery describes it."""

    group: str
    version: str
    kind: str
    plural: str
    singular: str
    namespaced: bool
    verbs: tuple[str, ...]
    short_names: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()
    subresources: list[Subresource] = field(default_factory=list)


@dataclass
class Discovery:
    """All resources found in the discovery documents, with version preference per group."""

    resources: list[Resource] = field(default_factory=list)
    version_order: dict[str, list[str]] = field(default_factory=dict)

    def add_version(self, group: str, version: str) -> None:
        """Record ``version`` as the next most preferred version of ``group``."""
        order = self.version_order.setdefault(group, [])
        if version not in order:
            order.append(version)


# Reading the inputs -------------------------------------------------------------------


def load_definitions(path: Path, kube_version: str) -> dict[str, JSON]:
    """Read the ``$defs`` of ``_definitions.json``, directly or out of the wheel."""
    if zipfile.is_zipfile(path):
        suffix = f"/{kube_version}-local/_definitions.json"
        with zipfile.ZipFile(path) as wheel:
            names = [n for n in wheel.namelist() if n.endswith(suffix)]
            if len(names) != 1:
                raise SystemExit(f"{path}: expected one member ending in {suffix}, not {names}")
            document = json.loads(wheel.read(names[0]))
    else:
        document = json.loads(path.read_text(encoding="utf-8"))
    definitions = document["$defs"]
    if not isinstance(definitions, dict):
        raise SystemExit(f"{path}: $defs is not an object")
    return definitions


def client_sources(path: Path) -> Iterator[str]:
    """The text of every ``*_api.py`` module of the Python client (wheel or directory)."""
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as wheel:
            for name in sorted(wheel.namelist()):
                if re.fullmatch(r"kubernetes/client/api/[a-z0-9_]+_api\.py", name):
                    yield wheel.read(name).decode("utf-8")
    else:
        root = path / "client" / "api" if (path / "client" / "api").is_dir() else path
        for module in sorted(root.glob("*_api.py")):
            yield module.read_text(encoding="utf-8")


def load_paths(path: Path) -> set[tuple[str, str]]:
    """Every (HTTP method, path template) the Python client calls."""
    routes = {
        (method, route)
        for source in client_sources(path)
        for route, method in CLIENT_CALL.findall(source)
    }
    if not routes:
        raise SystemExit(f"{path}: no API paths found")
    return routes


def load_deleted_objects(path: Path) -> set[str]:
    """
    The object paths whose DELETE answers the deleted object rather than a
    ``Status`` (kube-apiserver's ``ReturnDeletedObject``: pods, services, ...).
    """
    return {
        route
        for source in client_sources(path)
        for route, answer in CLIENT_DELETE.findall(source)
        if answer not in ("V1Status", "object")
    }


def _rk_field(kind: Mapping[str, str], key: str, default: str) -> str:
    return kind.get(key) or default


def read_aggregated(document: JSON, into: Discovery) -> None:
    """Add the resources of an ``APIGroupDiscoveryList`` (aggregated discovery v2)."""
    for item in document["items"]:
        group = item["metadata"].get("name", "")
        for entry in item["versions"]:
            version = entry["version"]
            into.add_version(group, version)
            for res in entry.get("resources", []):
                kind = res["responseKind"]
                subresources = [
                    Subresource(
                        name=sub["subresource"],
                        kind=sub["responseKind"]["kind"],
                        group=_rk_field(sub["responseKind"], "group", group),
                        version=_rk_field(sub["responseKind"], "version", version),
                        verbs=tuple(sub.get("verbs", [])),
                    )
                    for sub in res.get("subresources", [])
                ]
                into.resources.append(
                    Resource(
                        group=_rk_field(kind, "group", group),
                        version=_rk_field(kind, "version", version),
                        kind=kind["kind"],
                        plural=res["resource"],
                        singular=res.get("singularResource", ""),
                        namespaced=res["scope"] == "Namespaced",
                        verbs=tuple(res.get("verbs", [])),
                        short_names=tuple(res.get("shortNames", [])),
                        categories=tuple(res.get("categories", [])),
                        subresources=subresources,
                    )
                )


def read_resource_list(document: JSON, into: Discovery) -> None:
    """Add the resources of an ``APIResourceList`` (one group-version, legacy discovery)."""
    group, _, version = document["groupVersion"].rpartition("/")
    into.add_version(group, version)
    by_plural: dict[str, Resource] = {}
    entries = document["resources"]
    for res in entries:
        if "/" in res["name"]:
            continue
        resource = Resource(
            group=group,
            version=version,
            kind=res["kind"],
            plural=res["name"],
            singular=res.get("singularName", ""),
            namespaced=bool(res["namespaced"]),
            verbs=tuple(res.get("verbs", [])),
            short_names=tuple(res.get("shortNames", [])),
            categories=tuple(res.get("categories", [])),
        )
        by_plural[resource.plural] = resource
        into.resources.append(resource)
    for res in entries:
        parent, slash, name = res["name"].partition("/")
        if not slash:
            continue
        if parent not in by_plural:
            raise SystemExit(f"{document['groupVersion']}: {res['name']} has no parent resource")
        by_plural[parent].subresources.append(
            Subresource(
                name=name,
                kind=res["kind"],
                group=res.get("group", group),
                version=res.get("version", version),
                verbs=tuple(res.get("verbs", [])),
            )
        )


def load_discovery(paths: Iterable[Path]) -> Discovery:
    """Read every discovery document given, whichever of the two forms it is."""
    found = Discovery()
    for path in paths:
        document = json.loads(path.read_text(encoding="utf-8"))
        kind = document.get("kind")
        if kind == "APIGroupDiscoveryList":
            read_aggregated(document, found)
        elif kind == "APIResourceList":
            read_resource_list(document, found)
        else:
            raise SystemExit(f"{path}: unknown discovery document kind {kind!r}")
    return found


# Filtering --------------------------------------------------------------------------------


def kinds_by_gvk(definitions: Mapping[str, JSON]) -> dict[tuple[str, str, str], str]:
    """Map each (group, version, kind) to its definition's name.

    Definitions naming several group-version-kinds (DeleteOptions, WatchEvent) are shared
    helper types registered in every group, not kinds of one group-version, and are skipped.
    """
    index: dict[tuple[str, str, str], str] = {}
    for name in sorted(definitions):
        gvks = definitions[name].get("x-kubernetes-group-version-kind", [])
        if len(gvks) != 1:
            continue
        gvk = gvks[0]
        key = (gvk["group"], gvk["version"], gvk["kind"])
        if key in index:
            raise SystemExit(f"{key} is defined by both {index[key]} and {name}")
        index[key] = name
    return index


def object_path(resource: Resource) -> tuple[str, str]:
    """The collection and object path templates of ``resource``."""
    if resource.group:
        prefix = f"/apis/{resource.group}/{resource.version}"
    else:
        prefix = f"/api/{resource.version}"
    scope = "/namespaces/{namespace}" if resource.namespaced else ""
    collection = f"{prefix}{scope}/{resource.plural}"
    return collection, f"{collection}/{{name}}"


def routed_verbs(
    verbs: Iterable[str], collection: str | None, item: str, paths: set[tuple[str, str]]
) -> list[str]:
    """The verbs whose path and method exist; ``collection`` None means a subresource."""
    kept = []
    for verb in verbs:
        on_item, method = VERB_ROUTES.get(verb, (True, ""))
        target = item if on_item or collection is None else collection
        if (method, target) in paths:
            kept.append(verb)
    return kept


@dataclass
class Served:
    """The filtered catalogue, with notes on what was dropped and why."""

    resources: list[Resource]
    preferred: dict[str, str]
    dropped: list[str]


def select(
    discovery: Discovery,
    gvks: Mapping[tuple[str, str, str], str],
    paths: set[tuple[str, str]],
) -> Served:
    """Keep what a default kube-apiserver 1.32 serves (see the module docstring)."""
    dropped: list[str] = []
    kept: list[Resource] = []
    seen: set[tuple[str, str, str]] = set()
    for res in discovery.resources:
        label = f"{res.group or 'core'}/{res.version} {res.plural}"
        if not GA_VERSION.fullmatch(res.version):
            dropped.append(f"{label}: {res.version} is not GA")
            continue
        if (res.group, res.version, res.kind) not in gvks:
            dropped.append(
                f"{label}: no {res.kind} in the {res.group or 'core'}/{res.version} definitions"
            )
            continue
        key = (res.group, res.version, res.plural)
        if key in seen:
            raise SystemExit(f"{label} is listed twice")
        seen.add(key)
        collection, item = object_path(res)
        verbs = routed_verbs(res.verbs, collection, item, paths)
        if not verbs:
            dropped.append(f"{label}: none of its paths is in the client")
            continue
        for verb in sorted(set(res.verbs) - set(verbs)):
            dropped.append(f"{label}: verb {verb} has no path in the client")
        subresources = []
        for sub in res.subresources:
            gate = GATED_SUBRESOURCES.get((res.group, res.plural, sub.name))
            if gate:
                dropped.append(f"{label}/{sub.name}: behind alpha feature gate {gate}")
                continue
            sub_verbs = routed_verbs(sub.verbs, None, f"{item}/{sub.name}", paths)
            if not sub_verbs:
                dropped.append(f"{label}/{sub.name}: no path in the client")
                continue
            subresources.append(
                Subresource(sub.name, sub.kind, sub.group, sub.version, tuple(sub_verbs))
            )
        res.verbs = tuple(verbs)
        res.subresources = sorted(subresources, key=lambda s: s.name)
        kept.append(res)

    preferred: dict[str, str] = {}
    served_versions = {(r.group, r.version) for r in kept}
    for group, order in discovery.version_order.items():
        for version in order:
            if (group, version) in served_versions:
                preferred[group] = version
                break

    def rank(res: Resource) -> tuple[bool, str, int, str]:
        order = discovery.version_order[res.group]
        return (res.group != "", res.group, order.index(res.version), res.plural)

    kept.sort(key=rank)
    return Served(kept, preferred, dropped)


# OpenAPI conversion -------------------------------------------------------------------


def _strip_null(kind: Any) -> Any:
    """``["x", "null"]`` becomes ``"x"``; a list of several types stays a list."""
    if not isinstance(kind, list):
        return kind
    types = [t for t in kind if t != "null"]
    if len(types) == 1:
        return types[0]
    return types


def convert_schema(node: Any) -> Any:
    """One JSON-schema node in the form OpenAPI 3.0 and kube-apiserver use.

    The walk follows the schema's structure (``properties`` maps names to schemas), so a
    property that is itself named ``$ref`` or ``type`` (as in JSONSchemaProps) stays a name.
    """
    if not isinstance(node, dict):
        return node
    out: JSON = {}
    for key, value in node.items():
        if key == "$ref":
            out[key] = OPENAPI_REF + value.removeprefix(LOCAL_REF)
        elif key == "type":
            stripped = _strip_null(value)
            if stripped != []:
                out[key] = stripped
        elif key in ("properties", "patternProperties", "definitions"):
            out[key] = {name: convert_schema(sub) for name, sub in value.items()}
        elif key in ("items", "additionalProperties", "not", "additionalItems"):
            out[key] = (
                [convert_schema(v) for v in value]
                if isinstance(value, list)
                else convert_schema(value)
            )
        elif key in ("allOf", "anyOf", "oneOf"):
            out[key] = [convert_schema(v) for v in value]
        else:
            out[key] = value
    if "$ref" in out and len(out) > 1:
        ref = out.pop("$ref")
        out["allOf"] = [{"$ref": ref}]
    return out


def convert_definition(definition: JSON) -> JSON:
    """A whole definition, without the enum injected on a kind's apiVersion and kind."""
    converted: JSON = convert_schema(definition)
    gvks = definition.get("x-kubernetes-group-version-kind", [])
    if gvks:
        injected = {
            "apiVersion": {f"{g['group']}/{g['version']}".lstrip("/") for g in gvks},
            "kind": {g["kind"] for g in gvks},
        }
        properties = converted.get("properties", {})
        for name, values in injected.items():
            prop = properties.get(name)
            if prop is None or "enum" not in prop:
                continue
            if not set(prop["enum"]) <= values:
                raise SystemExit(f"unexpected enum on {name}: {prop['enum']}")
            properties[name] = {k: v for k, v in prop.items() if k != "enum"}
        converted["x-kubernetes-group-version-kind"] = [
            {"group": g["group"], "kind": g["kind"], "version": g["version"]} for g in gvks
        ]
    return converted


def references(node: Any) -> Iterator[str]:
    """Names of the definitions a JSON-schema node refers to, following its structure."""
    if isinstance(node, list):
        for item in node:
            yield from references(item)
        return
    if not isinstance(node, dict):
        return
    for key, value in node.items():
        if key == "$ref" and isinstance(value, str):
            if not value.startswith(LOCAL_REF):
                raise SystemExit(f"reference outside the definitions: {value}")
            yield value.removeprefix(LOCAL_REF)
        elif key in ("properties", "patternProperties", "definitions"):
            for sub in value.values():
                yield from references(sub)
        elif key in (
            "items",
            "additionalProperties",
            "not",
            "additionalItems",
            "allOf",
            "anyOf",
            "oneOf",
        ):
            yield from references(value)


def reachable(roots: Iterable[str], definitions: Mapping[str, JSON]) -> list[str]:
    """Every definition reachable from ``roots`` through ``$ref``, sorted by name."""
    found: set[str] = set()
    pending = list(roots)
    while pending:
        name = pending.pop()
        if name in found:
            continue
        if name not in definitions:
            raise SystemExit(f"reference to a missing definition: {name}")
        found.add(name)
        pending.extend(references(definitions[name]))
    return sorted(found)


def openapi_documents(
    served: Served,
    definitions: Mapping[str, JSON],
    gvks: Mapping[tuple[str, str, str], str],
    kube_version: str,
) -> dict[tuple[str, str], JSON]:
    """One OpenAPI 3.0 document per served group-version."""
    documents: dict[tuple[str, str], JSON] = {}
    group_versions = sorted({(r.group, r.version) for r in served.resources})
    for group, version in group_versions:
        roots = {name for (g, v, _), name in gvks.items() if (g, v) == (group, version)}
        for res in served.resources:
            if (res.group, res.version) != (group, version):
                continue
            for sub in res.subresources:
                name = gvks.get((sub.group, sub.version, sub.kind))
                if name:
                    roots.add(name)
        schemas = {
            name: convert_definition(definitions[name]) for name in reachable(roots, definitions)
        }
        documents[(group, version)] = {
            "openapi": "3.0.0",
            "info": {"title": "Kubernetes", "version": kube_version},
            "paths": {},
            "components": {"schemas": schemas},
        }
    return documents


# Writing ----------------------------------------------------------------------------------


def resource_entry(
    res: Resource,
    served: Served,
    gvks: Mapping[tuple[str, str, str], str],
    deleted_objects: set[str],
) -> JSON:
    """The ``resources.json`` object for one resource."""
    return {
        "group": res.group,
        "version": res.version,
        "kind": res.kind,
        "plural": res.plural,
        "singular": res.singular,
        "namespaced": res.namespaced,
        "verbs": list(res.verbs),
        "shortNames": list(res.short_names),
        "categories": list(res.categories),
        "subresources": [
            {
                "name": sub.name,
                "kind": sub.kind,
                "group": sub.group,
                "version": sub.version,
                "verbs": list(sub.verbs),
            }
            for sub in res.subresources
        ],
        "schema": gvks[(res.group, res.version, res.kind)],
        "preferredVersion": served.preferred[res.group],
        "deleteReturnsObject": object_path(res)[1] in deleted_objects,
    }


def document_name(group: str, version: str) -> str:
    """The file name of one group-version's OpenAPI document."""
    return f"{group or 'core'}_{version}.json.gz"


def dump(value: Any) -> bytes:
    """Compact, key-sorted JSON."""
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode("utf-8")


def write_catalogue(
    out: Path,
    served: Served,
    documents: Mapping[tuple[str, str], JSON],
    gvks: Mapping[tuple[str, str, str], str],
    deleted_objects: set[str],
) -> None:
    """Write ``resources.json`` and the OpenAPI documents, removing stale documents."""
    openapi_dir = out / "openapi"
    openapi_dir.mkdir(parents=True, exist_ok=True)
    entries = [resource_entry(res, served, gvks, deleted_objects) for res in served.resources]
    (out / "resources.json").write_bytes(dump(entries) + b"\n")
    wanted = {document_name(g, v) for g, v in documents}
    for stale in openapi_dir.glob("*.json.gz"):
        if stale.name not in wanted:
            stale.unlink()
    for (group, version), document in sorted(documents.items()):
        data = gzip.compress(dump(document), compresslevel=9, mtime=0)
        (openapi_dir / document_name(group, version)).write_bytes(data)


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--definitions",
        type=Path,
        required=True,
        help="_definitions.json or the kubernetes-validate wheel",
    )
    parser.add_argument(
        "--discovery",
        type=Path,
        action="append",
        required=True,
        help="aggregated_v2.json and/or api__v1.json (repeatable)",
    )
    parser.add_argument(
        "--paths",
        type=Path,
        required=True,
        help="the kubernetes Python client wheel (or package directory)",
    )
    parser.add_argument("--out", type=Path, required=True, help="the catalogue directory")
    parser.add_argument(
        "--kube-version",
        default=DEFAULT_KUBE_VERSION,
        help="the definitions' version inside the wheel, and info.version",
    )
    parser.add_argument("--verbose", action="store_true", help="list what was left out")
    args = parser.parse_args(argv)

    definitions = load_definitions(args.definitions, args.kube_version)
    gvks = kinds_by_gvk(definitions)
    discovery = load_discovery(args.discovery)
    served = select(discovery, gvks, load_paths(args.paths))
    documents = openapi_documents(served, definitions, gvks, args.kube_version)
    write_catalogue(args.out, served, documents, gvks, load_deleted_objects(args.paths))

    covered = {(r.group, r.version, r.kind) for r in served.resources}
    served_gvs = {(r.group, r.version) for r in served.resources}
    sub_kinds = {(s.group, s.version, s.kind) for r in served.resources for s in r.subresources}
    uncovered = sorted(
        f"{g or 'core'}/{v} {k}"
        for (g, v, k) in gvks
        if (g, v) in served_gvs and (g, v, k) not in covered | sub_kinds and not k.endswith("List")
    )
    if args.verbose:
        for line in served.dropped:
            print(f"left out: {line}", file=sys.stderr)
        for line in uncovered:
            print(f"kind with no resource: {line}", file=sys.stderr)
    print(
        f"{len(served.resources)} resources in {len(documents)} group-versions;"
        f" {len(served.dropped)} entries left out"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
