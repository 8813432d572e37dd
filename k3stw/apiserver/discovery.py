"""
What the API says about itself: ``/version``, discovery (aggregated v2 and
legacy), and the OpenAPI v3 documents ``kubectl apply`` validates against.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import platform
import re
from functools import cache
from typing import Any

from k3stw import KUBERNETES_VERSION
from k3stw.apiserver import catalogue
from k3stw.apiserver.registry import Registry, ResourceType

AGGREGATED_CONTENT_TYPE = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList"


def version_info() -> dict[str, str]:
    """``/version``: major 1, minor 32, so kubectl's dispatcher runs kubectl 1.32."""
    machine = {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), platform.machine())
    return {
        "major": "1",
        "minor": "32",
        "gitVersion": KUBERNETES_VERSION,
        "gitCommit": "k3stw",
        "gitTreeState": "clean",
        "buildDate": "2026-11-27T00:00:00Z",
        "goVersion": f"python{platform.python_version()}",
        "compiler": "gc",
        "platform": f"linux/{machine}",
    }


def _verbs(resource: ResourceType) -> list[str]:
    return sorted(resource.verbs)


#: The options kinds of the connect subresources, as kube-apiserver's discovery names them.
_CONNECT_KINDS = {
    ("pods", "exec"): "PodExecOptions",
    ("pods", "attach"): "PodAttachOptions",
    ("pods", "portforward"): "PodPortForwardOptions",
    ("pods", "proxy"): "PodProxyOptions",
    ("services", "proxy"): "ServiceProxyOptions",
    ("nodes", "proxy"): "NodeProxyOptions",
}


def _subresource_kind(resource: ResourceType, subresource: str) -> tuple[str, str, str]:
    connect = _CONNECT_KINDS.get((resource.plural, subresource)) if not resource.group else None
    if connect is not None:
        return ("", "v1", connect)
    if subresource == "scale":
        return ("autoscaling", "v1", "Scale")
    if subresource == "binding":
        return ("", "v1", "Binding")
    if subresource == "eviction":
        return ("policy", "v1", "Eviction")
    if subresource == "token":
        return ("authentication.k8s.io", "v1", "TokenRequest")
    return (resource.group, resource.version, resource.kind)


def _subresource_verbs(subresource: str) -> list[str]:
    if subresource == "log":
        return ["get"]
    if subresource in ("exec", "attach", "portforward"):
        return ["create", "get"]
    if subresource == "proxy":
        return ["create", "delete", "get", "patch", "update"]
    if subresource in ("binding", "eviction", "token"):
        return ["create"]
    return ["get", "patch", "update"]


def _aggregated_resource(resource: ResourceType) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "resource": resource.plural,
        "responseKind": {
            "group": resource.group,
            "version": resource.version,
            "kind": resource.kind,
        },
        "scope": "Namespaced" if resource.namespaced else "Cluster",
        "singularResource": resource.singular,
        "verbs": _verbs(resource),
    }
    if resource.short_names:
        entry["shortNames"] = list(resource.short_names)
    if resource.categories:
        entry["categories"] = list(resource.categories)
    if resource.subresources:
        entry["subresources"] = [
            {
                "subresource": sub,
                "responseKind": dict(
                    zip(("group", "version", "kind"), _subresource_kind(resource, sub), strict=True)
                ),
                "verbs": _subresource_verbs(sub),
            }
            for sub in resource.subresources
        ]
    return entry


def aggregated_discovery(registry: Registry, core: bool) -> dict[str, Any]:
    """The ``APIGroupDiscoveryList`` of ``/api`` (C{core}) or of ``/apis``."""
    items = []
    for group, versions in registry.groups().items():
        if (group == "") != core:
            continue
        items.append(
            {
                "metadata": {"name": group} if group else {"creationTimestamp": None},
                "versions": [
                    {
                        "version": version,
                        "freshness": "Current",
                        "resources": [
                            _aggregated_resource(r)
                            for r in registry
                            if r.group == group and r.version == version
                        ],
                    }
                    for version in versions
                ],
            }
        )
    return {
        "kind": "APIGroupDiscoveryList",
        "apiVersion": "apidiscovery.k8s.io/v2",
        "metadata": {},
        "items": items,
    }


def api_versions(server_address: str) -> dict[str, Any]:
    """The legacy ``/api`` answer."""
    return {
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [
            {"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}
        ],
    }


def _group_entry(group: str, versions: list[str]) -> dict[str, Any]:
    listed = [{"groupVersion": f"{group}/{v}", "version": v} for v in versions]
    return {"name": group, "versions": listed, "preferredVersion": listed[0]}


def api_group_list(registry: Registry) -> dict[str, Any]:
    """The legacy ``/apis`` answer."""
    return {
        "kind": "APIGroupList",
        "apiVersion": "v1",
        "groups": [
            _group_entry(group, versions) for group, versions in registry.groups().items() if group
        ],
    }


def api_group(registry: Registry, group: str) -> dict[str, Any] | None:
    """``/apis/<group>``, or None for a group not served."""
    versions = registry.groups().get(group)
    if not group or not versions:
        return None
    return {"kind": "APIGroup", "apiVersion": "v1", **_group_entry(group, versions)}


def api_resource_list(registry: Registry, group: str, version: str) -> dict[str, Any] | None:
    """``/api/v1`` or ``/apis/<group>/<version>``, or None when not served."""
    served = [r for r in registry if r.group == group and r.version == version]
    if not served:
        return None
    resources: list[dict[str, Any]] = []
    for resource in served:
        entry: dict[str, Any] = {
            "name": resource.plural,
            "singularName": resource.singular,
            "namespaced": resource.namespaced,
            "kind": resource.kind,
            "verbs": _verbs(resource),
        }
        if resource.short_names:
            entry["shortNames"] = list(resource.short_names)
        if resource.categories:
            entry["categories"] = list(resource.categories)
        resources.append(entry)
        for sub in resource.subresources:
            group_, version_, kind = _subresource_kind(resource, sub)
            subentry: dict[str, Any] = {
                "name": f"{resource.plural}/{sub}",
                "singularName": "",
                "namespaced": resource.namespaced,
                "kind": kind,
                "verbs": _subresource_verbs(sub),
            }
            if group_ != resource.group:
                subentry.update(group=group_, version=version_)
            resources.append(subentry)
    return {
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": served[0].group_version,
        "resources": resources,
    }


#: The OpenAPI operations of an object's path and of its collection's, by the verb each is.
_ITEM_OPERATIONS = {"get": "get", "put": "update", "patch": "patch", "delete": "delete"}
_COLLECTION_OPERATIONS = {"get": "list", "post": "create"}


def _openapi_path(group: str, version: str) -> str:
    return f"api/{version}" if not group else f"apis/{group}/{version}"


def _gv_document(registry: Registry, group: str, version: str) -> dict[str, Any]:
    """
    One group version's OpenAPI v3 document: per kind, the item paths with
    PATCH operations carrying ``x-kubernetes-group-version-kind`` and the
    ``fieldValidation`` parameter, which is what tells kubectl the server
    validates fields itself (so ``kubectl apply`` needs no schemas).
    """
    paths: dict[str, Any] = {}
    parameters = [
        {
            "name": "fieldValidation",
            "in": "query",
            "schema": {"type": "string"},
            "description": "Ignore, Warn or Strict: how to treat unknown or duplicate fields.",
        },
        {"name": "fieldManager", "in": "query", "schema": {"type": "string"}},
        {"name": "dryRun", "in": "query", "schema": {"type": "string"}},
    ]
    schemas: dict[str, Any] = {}
    for resource in registry:
        if resource.group != group or resource.version != version:
            continue
        gvk = {"group": group, "version": version, "kind": resource.kind}
        if resource.strategy.schema is not None:
            schemas.update(_custom_resource_schemas(resource, gvk))
        scope = "namespaces/{namespace}/" if resource.namespaced else ""
        base = f"{resource.url_prefix}/{scope}{resource.plural}"
        operation = {
            "x-kubernetes-group-version-kind": gvk,
            "parameters": parameters,
            "responses": {"200": {"description": "OK"}},
        }
        # Only the operations of the verbs served (the resource metrics: get and list).
        served = set(resource.verbs)
        item = {m: operation for m, verb in _ITEM_OPERATIONS.items() if verb in served}
        collection = {m: operation for m, verb in _COLLECTION_OPERATIONS.items() if verb in served}
        if item:
            paths[base + "/{name}"] = item
        if collection:
            paths[base] = collection
    return {
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": KUBERNETES_VERSION},
        "paths": paths,
        "components": {"schemas": schemas},
    }


#: Where a custom resource's schema refers to ObjectMeta, as kube-apiserver's documents name it.
OBJECT_META = "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"


@cache
def _object_meta_schemas() -> dict[str, Any]:
    """ObjectMeta's definitions and those it refers to, from the catalogue (core/v1's document)."""
    document = catalogue.openapi_document("", "v1")
    if document is None:
        return {}
    every = json.loads(gzip.decompress(document))["components"]["schemas"]
    found: dict[str, Any] = {}
    waiting = [OBJECT_META]
    while waiting:
        name = waiting.pop()
        if name in found or name not in every:
            continue
        found[name] = every[name]
        waiting.extend(
            ref.removeprefix(catalogue.REF_PREFIX)
            for ref in re.findall(r'"\$ref": ?"([^"]+)"', json.dumps(every[name]))
        )
    return found


def _custom_resource_schemas(resource: ResourceType, gvk: dict[str, str]) -> dict[str, Any]:
    """
    A custom resource's definition (its CRD's schema with apiVersion, kind and
    metadata, named by reversed group, version and kind as kube-apiserver names
    it) and ObjectMeta's, so that ``kubectl explain`` reads it.
    """
    schema = dict(resource.strategy.schema or {})
    properties = dict(schema.get("properties") or {})
    properties["apiVersion"] = {
        "type": "string",
        "description": "APIVersion defines the versioned schema of this representation of an "
        "object. Servers should convert recognized schemas to the latest internal value, and "
        "may reject unrecognized values. More info: https://git.k8s.io/community/contributors/"
        "devel/sig-architecture/api-conventions.md#resources",
    }
    properties["kind"] = {
        "type": "string",
        "description": "Kind is a string value representing the REST resource this object "
        "represents. Servers may infer this from the endpoint the client submits requests to. "
        "Cannot be updated. In CamelCase. More info: https://git.k8s.io/community/contributors/"
        "devel/sig-architecture/api-conventions.md#types-kinds",
    }
    properties["metadata"] = {
        "allOf": [{"$ref": catalogue.REF_PREFIX + OBJECT_META}],
        "description": "Standard object's metadata. More info: https://git.k8s.io/community/"
        "contributors/devel/sig-architecture/api-conventions.md#metadata",
    }
    schema.update(
        type="object", properties=properties, **{"x-kubernetes-group-version-kind": [gvk]}
    )
    reversed_group = ".".join(reversed(resource.group.split(".")))
    return {
        f"{reversed_group}.{resource.version}.{resource.kind}": schema,
        **_object_meta_schemas(),
    }


class OpenAPI:
    """
    The OpenAPI v3 index and documents.  A built-in group version's document
    carries the schemas of the generated catalogue (what ``kubectl explain``
    reads); it is merged with the served paths when first asked for and kept
    gzip-compressed, so the server never holds the schemas parsed.
    """

    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self._paths: dict[str, bytes] = {}
        self._merged: dict[str, bytes] = {}
        self._index: bytes = b""
        registry.on_change(self.rebuild)
        self.rebuild()

    def rebuild(self) -> None:
        paths: dict[str, bytes] = {}
        hashes: dict[str, str] = {}
        for group, versions in self.registry.groups().items():
            for version in versions:
                body = json.dumps(_gv_document(self.registry, group, version)).encode()
                path = _openapi_path(group, version)
                paths[path] = body
                schemas = catalogue.openapi_document(group, version) or b""
                hashes[path] = _hash(body + schemas)
        self._paths = paths
        self._merged = {}
        self._index = json.dumps(
            {
                "paths": {
                    path: {"serverRelativeURL": f"/openapi/v3/{path}?hash={digest}"}
                    for path, digest in hashes.items()
                }
            }
        ).encode()

    def index(self) -> bytes:
        return self._index

    def document(self, path: str) -> bytes | None:
        """The gzip-compressed document of C{path} (``apis/apps/v1``), or None."""
        merged = self._merged.get(path)
        if merged is None:
            body = self._paths.get(path)
            if body is None:
                return None
            group, _, version = path.removeprefix("api/").removeprefix("apis/").rpartition("/")
            merged = self._merged[path] = _with_schemas(body, group, version)
        return merged


def _with_schemas(body: bytes, group: str, version: str) -> bytes:
    """C{body} (the served paths) with the catalogue's schemas of C{group}/C{version}, gzipped."""
    schemas = catalogue.openapi_document(group, version)
    if schemas is None:
        return gzip.compress(body, mtime=0)
    document = json.loads(body)
    document["components"] = json.loads(gzip.decompress(schemas))["components"]
    return gzip.compress(json.dumps(document, separators=(",", ":")).encode(), mtime=0)


def _hash(body: bytes) -> str:
    return hashlib.sha512(body).hexdigest()[:64].upper()
