"""
One module per kind, each declaring its L{ResourceType} (as discovery and
storage see it) and its L{Strategy} (defaults, validation, merge rules,
printer columns, field selectors): everything the API server knows about
the kind, in one place.  Custom resources get theirs from their CRD
(L{custom}).

Every other resource kube-apiserver 1.32 serves comes from the generated
catalogue (L{k3stw.apiserver.catalogue}) with the default strategy: stored,
listed, watched and patched like any object, until a module of its own says
more.
"""

from __future__ import annotations

from k3stw.apiserver import catalogue
from k3stw.apiserver.catalogue.rules import LazyRules
from k3stw.apiserver.kinds import (
    catalogued,
    catalogued_printers,
    catalogued_validation,
    configmaps,
    crds,
    cronjobs,
    daemonsets,
    deployments,
    endpoints,
    endpointslices,
    events,
    horizontalpodautoscalers,
    jobs,
    leases,
    namespaces,
    nodes,
    pods,
    rbac,
    replicasets,
    secrets,
    serviceaccounts,
    services,
    statefulsets,
)
from k3stw.apiserver.registry import Registry, ResourceType
from k3stw.apiserver.strategy import Strategy, no_defaults
from k3stw.apiserver.tables import DEFAULT_PRINTER

#: Every built-in resource, in the order the modules declare them.
BUILT_IN: tuple[ResourceType, ...] = (
    namespaces.RESOURCE,
    nodes.RESOURCE,
    pods.RESOURCE,
    services.RESOURCE,
    endpoints.RESOURCE,
    secrets.RESOURCE,
    configmaps.RESOURCE,
    events.RESOURCE,
    serviceaccounts.RESOURCE,
    leases.RESOURCE,
    endpointslices.RESOURCE,
    deployments.RESOURCE,
    replicasets.RESOURCE,
    daemonsets.RESOURCE,
    statefulsets.RESOURCE,
    jobs.RESOURCE,
    cronjobs.RESOURCE,
    crds.RESOURCE,
    events.NEW_API_RESOURCE,
    *rbac.RESOURCES,
)


#: Catalogue resources not served yet, and why: each needs behaviour of its own, and a
#: plain store would answer wrongly where kube-apiserver computes or converts.  (The
#: create-only reviews are served, answered by L{k3stw.apiserver.reviews}, never stored.)
NOT_STORED = {
    ("", "bindings"): "a pod's binding, not an object",
    ("", "componentstatuses"): "computed by the server, never stored",
}


#: The subresources served the same way for every kind that has them.
GENERIC_SUBRESOURCES = ("status", "scale", "approval")


def catalogue_resources(declared: tuple[ResourceType, ...] = BUILT_IN) -> list[ResourceType]:
    """
    The catalogue's resources that no module declares, at their group's
    preferred version (a group's other versions need conversion), with the
    default strategy, kube's columns (L{catalogued_printers}) and the merge
    rules their schemas state; of their
    subresources those served for any kind (L{GENERIC_SUBRESOURCES}).
    """
    modules = {(r.group, r.kind) for r in declared}
    found = []
    for entry in catalogue.resources():
        group, plural = entry["group"], entry["plural"]
        if (
            entry["version"] != entry["preferredVersion"]
            or (group, entry["kind"]) in modules
            or (group, plural) in NOT_STORED
        ):
            continue
        served = tuple(
            name
            for name in GENERIC_SUBRESOURCES
            if any(sub["name"] == name for sub in entry["subresources"])
        )
        found.append(
            ResourceType(
                group,
                entry["version"],
                entry["kind"],
                plural,
                entry["singular"],
                namespaced=entry["namespaced"],
                short_names=tuple(entry["shortNames"]),
                categories=tuple(entry["categories"]),
                subresources=served,
                verbs=tuple(entry["verbs"]),
                strategy=Strategy(
                    printer=catalogued_printers.PRINTERS.get(
                        (group, entry["kind"]), DEFAULT_PRINTER
                    ),
                    merge_rules=LazyRules(group, entry["version"], entry["kind"]),
                    returns_deleted_object=entry["deleteReturnsObject"],
                    default=catalogued.DEFAULTS.get((group, entry["kind"]), no_defaults),
                    counts_generation=(group, entry["kind"]) in catalogued.COUNTS_GENERATION,
                    **catalogued_validation.RULES.get((group, entry["kind"]), {}),
                ),
            )
        )
    return found


def converted_versions(stored: list[ResourceType]) -> list[ResourceType]:
    """The other versions served of C{stored} resources, converted to and from them."""
    hpa = next(r for r in stored if (r.group, r.kind) == ("autoscaling", "HorizontalPodAutoscaler"))
    return [horizontalpodautoscalers.v1_resource(hpa)]


def built_in_registry() -> Registry:
    """A registry serving the built-in resources (CRDs add theirs as they come)."""
    generic = catalogue_resources()
    return Registry.serving((*BUILT_IN, *generic, *converted_versions(generic)))
