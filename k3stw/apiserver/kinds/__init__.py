"""
One module per kind, each declaring its L{ResourceType} (as discovery and
storage see it) and its L{Strategy} (defaults, validation, merge rules,
printer columns, field selectors): everything the API server knows about
the kind, in one place.  Custom resources get theirs from their CRD
(L{custom}).
"""

from __future__ import annotations

from k3stw.apiserver.kinds import (
    configmaps,
    crds,
    daemonsets,
    deployments,
    endpoints,
    endpointslices,
    events,
    leases,
    namespaces,
    nodes,
    pods,
    replicasets,
    secrets,
    serviceaccounts,
    services,
)
from k3stw.apiserver.registry import Registry, ResourceType

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
    crds.RESOURCE,
)


def built_in_registry() -> Registry:
    """A registry serving the built-in resources (CRDs add theirs as they come)."""
    return Registry.serving(BUILT_IN)
