"""
CustomResourceDefinitions (apiextensions.k8s.io/v1): what the server sets on
a new one (its cleanup finalizer and an Established status), and how a CRD
written on this server is served at once.
"""

from __future__ import annotations

from collections.abc import Callable

from k3stw.apiserver.defaulting import child, fill, fill_at
from k3stw.apiserver.kinds.custom import resources_of_crd
from k3stw.apiserver.kinds.customschema import structural_causes
from k3stw.apiserver.registry import Registry, ResourceType
from k3stw.apiserver.strategy import Cause, Strategy
from k3stw.machinery.objects import Object, get_path, is_deleting, name_of

#: kube-apiserver's finalizer: a deleted CRD first takes its custom resources with it.
CLEANUP = "customresourcecleanup.apiextensions.k8s.io"


def _default(crd: Object) -> None:
    """kube's defaults of a CRD: the names it may leave out, no conversion, stored versions."""
    spec = child(crd, "spec")
    names = child(spec, "names")
    kind = get_path(names, "kind")
    if isinstance(kind, str) and kind:
        fill(names, singular=kind.lower(), listKind=kind + "List")
    fill(spec, conversion={"strategy": "None"})
    fill_at(spec, "conversion.webhook.clientConfig.service", port=443)


def _prepare_create(crd: Object, now: str) -> None:
    _default(crd)
    finalizers = crd.setdefault("metadata", {}).setdefault("finalizers", [])
    if CLEANUP not in finalizers:
        finalizers.append(CLEANUP)
    spec = crd.get("spec") or {}
    names = spec.get("names") or {}
    crd["status"] = {
        "acceptedNames": names,
        "storedVersions": [v["name"] for v in spec.get("versions", []) if v.get("storage")],
        "conditions": [
            {
                "type": "NamesAccepted",
                "status": "True",
                "reason": "NoConflicts",
                "message": "no conflicts found",
                "lastTransitionTime": now,
            },
            {
                "type": "Established",
                "status": "True",
                "reason": "InitialNamesAccepted",
                "message": "the initial names have been accepted",
                "lastTransitionTime": now,
            },
        ],
    }


def _validate(crd: Object) -> list[Cause]:
    """Each version's schema must be given, and structural (what pruning and defaults need)."""
    causes: list[Cause] = []
    versions = get_path(crd, "spec", "versions")
    for index, version in enumerate(versions if isinstance(versions, list) else ()):
        path = f"spec.versions[{index}].schema.openAPIV3Schema"
        causes.extend(structural_causes(get_path(version, "schema", "openAPIV3Schema"), path))
    return causes


RESOURCE = ResourceType(
    "apiextensions.k8s.io",
    "v1",
    "CustomResourceDefinition",
    "customresourcedefinitions",
    "customresourcedefinition",
    namespaced=False,
    short_names=("crd", "crds"),
    subresources=("status",),
    strategy=Strategy(
        counts_generation=True,
        default=_default,
        prepare_create=_prepare_create,
        validate=_validate,
    ),
)


def serve(registry: Registry, crd: Object) -> None:
    """Serve what C{crd} defines now (nothing once it is being deleted)."""
    if not is_deleting(crd):
        registry.replace_crd(name_of(crd), resources_of_crd(crd))


def serve_written_crds(registry: Registry) -> Callable[[ResourceType, Object, bool], None]:
    """
    An object store observer that serves a CRD's resources as soon as this
    server writes it (other servers' writes arrive through the CRD controller).
    """

    def written(resource: ResourceType, obj: Object, deleted: bool) -> None:
        if resource is not RESOURCE:
            return
        if deleted:
            registry.replace_crd(name_of(obj), [])
        else:
            serve(registry, obj)

    return written


def k3s_crd(
    group: str,
    kind: str,
    plural: str,
    scope: str,
    properties: dict[str, object],
    columns: list[dict[str, str]],
    status: bool = False,
) -> Object:
    """
    A one-version (``v1``) CRD as k3s installs its own: C{properties} beside
    ``apiVersion``, ``kind`` and ``metadata``, with its printer columns and,
    if C{status}, a status subresource.
    """
    string = {"type": "string"}
    schema = {
        "type": "object",
        "properties": {"apiVersion": string, "kind": string, "metadata": {"type": "object"}}
        | properties,
    }
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{group}"},
        "spec": {
            "group": group,
            "names": {
                "kind": kind,
                "listKind": f"{kind}List",
                "plural": plural,
                "singular": kind.lower(),
            },
            "scope": scope,
            "versions": [
                {
                    "name": "v1",
                    "served": True,
                    "storage": True,
                    "schema": {"openAPIV3Schema": schema},
                    "subresources": {"status": {}} if status else {},
                    "additionalPrinterColumns": columns,
                }
            ],
        },
    }
