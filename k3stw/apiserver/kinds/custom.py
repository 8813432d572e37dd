"""
Custom resources: the resource types a CustomResourceDefinition serves, one
per served version, with the strategy kube-apiserver gives them (its
printer columns, its selectable fields, every list atomic, no strategic
merge patch, generations counted).
"""

from __future__ import annotations

from k3stw.apiserver.fields import custom_resource_field_table
from k3stw.apiserver.registry import ResourceType
from k3stw.apiserver.strategy import Strategy
from k3stw.apiserver.tables import custom_resource_printer
from k3stw.machinery.objects import Object


def resources_of_crd(crd: Object) -> list[ResourceType]:
    """The resource types a CustomResourceDefinition serves (one per served version)."""
    spec = crd.get("spec", {})
    names = spec.get("names", {})
    namespaced = spec.get("scope", "Namespaced") == "Namespaced"
    found = []
    for version in spec.get("versions", []):
        if not version.get("served", True):
            continue
        selectable = [
            str(field["jsonPath"])
            for field in version.get("selectableFields") or ()
            if isinstance(field, dict) and field.get("jsonPath")
        ]
        strategy = Strategy(
            printer=custom_resource_printer(version.get("additionalPrinterColumns") or ()),
            fields=custom_resource_field_table(namespaced, selectable),
            strategic_merge=False,
            counts_generation=True,
        )
        found.append(
            ResourceType(
                group=spec["group"],
                version=version["name"],
                kind=names["kind"],
                plural=names["plural"],
                singular=names.get("singular") or names["kind"].lower(),
                namespaced=namespaced,
                short_names=tuple(names.get("shortNames") or ()),
                categories=tuple(names.get("categories") or ()),
                subresources=tuple(sorted(version.get("subresources") or {})),
                crd=crd["metadata"]["name"],
                strategy=strategy,
            )
        )
    return found
