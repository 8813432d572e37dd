"""
Custom resources: the resource types a CustomResourceDefinition serves, one
per served version, with the strategy kube-apiserver gives them (its
printer columns, its selectable fields, every list atomic, no strategic
merge patch, generations counted), and its version's schema: unknown fields
pruned, defaults filled in, the rest validated (L{customschema}).
"""

from __future__ import annotations

from functools import partial
from typing import Any

from k3stw.apiserver.fields import custom_resource_field_table
from k3stw.apiserver.kinds.customschema import (
    PRESERVE,
    apply_defaults,
    prune,
    schema_causes,
    unknown_fields,
)
from k3stw.apiserver.registry import ResourceType
from k3stw.apiserver.strategy import Strategy
from k3stw.apiserver.tables import custom_resource_printer
from k3stw.machinery.objects import Object, get_path


def _default(schema: dict[str, Any], obj: Object) -> None:
    """As kube decodes a custom object: unknown fields dropped, then the schema's defaults."""
    prune(schema, obj)
    apply_defaults(schema, obj)


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
        schema = get_path(version, "schema", "openAPIV3Schema")
        schema = schema if isinstance(schema, dict) else {"type": "object", PRESERVE: True}
        strategy = Strategy(
            printer=custom_resource_printer(version.get("additionalPrinterColumns") or ()),
            fields=custom_resource_field_table(namespaced, selectable),
            strategic_merge=False,
            counts_generation=True,
            default=partial(_default, schema),
            validate=partial(schema_causes, schema),
            schema=schema,
            unknown_fields=partial(unknown_fields, schema),
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
