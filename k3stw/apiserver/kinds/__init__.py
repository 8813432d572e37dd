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
    catalogued_validation,
    configmaps,
    crds,
    cronjobs,
    daemonsets,
    deployments,
    endpoints,
    endpointslices,
    events,
    jobs,
    leases,
    namespaces,
    nodes,
    pods,
    replicasets,
    secrets,
    serviceaccounts,
    services,
    statefulsets,
)
from k3stw.apiserver.registry import Registry, ResourceType
from k3stw.apiserver.strategy import Strategy

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
)


#: Catalogue resources not stored yet, and why: each needs behaviour of its own, and a
#: plain store would answer wrongly where kube-apiserver computes or converts.
NOT_STORED = {
    ("", "bindings"): "a pod's binding, not an object",
    ("", "componentstatuses"): "computed by the server, never stored",
    ("authentication.k8s.io", "tokenreviews"): "answered from the token, never stored",
    ("authentication.k8s.io", "selfsubjectreviews"): "answered from the request's user",
    ("authorization.k8s.io", "subjectaccessreviews"): "answered by the authorizer",
    ("authorization.k8s.io", "selfsubjectaccessreviews"): "answered by the authorizer",
    ("authorization.k8s.io", "localsubjectaccessreviews"): "answered by the authorizer",
    ("authorization.k8s.io", "selfsubjectrulesreviews"): "answered by the authorizer",
    ("events.k8s.io", "events"): "the core events, converted: not a store of its own",
}


#: The subresources served the same way for every kind that has them.
GENERIC_SUBRESOURCES = ("status", "scale")


def catalogue_resources(declared: tuple[ResourceType, ...] = BUILT_IN) -> list[ResourceType]:
    """
    The catalogue's resources that no module declares, at their group's
    preferred version (a group's other versions need conversion), with the
    default strategy and the merge rules their schemas state; of their
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
                    merge_rules=LazyRules(group, entry["version"], entry["kind"]),
                    **catalogued_validation.RULES.get((group, entry["kind"]), {}),
                ),
            )
        )
    return found


def built_in_registry() -> Registry:
    """A registry serving the built-in resources (CRDs add theirs as they come)."""
    return Registry.serving((*BUILT_IN, *catalogue_resources()))
