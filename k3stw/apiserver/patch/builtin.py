"""The merge rules of the built-in kinds, by kind name, until each kind's module declares its own.

The tables are keyed by kind alone, so they must never be consulted for a custom resource: an
``example.com/v1`` ``Pod`` is not a core Pod. :func:`strategic_merge_rules` and
:func:`apply_rules` take that decision for the API server.
"""

from __future__ import annotations

from k3stw.apiserver.patch.errors import UnsupportedPatchType
from k3stw.apiserver.patch.rules import (
    ATOMIC,
    MERGED_SET,
    METADATA_ONLY_RULES,
    POD_SPEC_RULES,
    POD_TEMPLATE_SPEC_RULES,
    STATUS_CONDITIONS_RULES,
    FieldRule,
    RuleTable,
    apply_keyed_list,
    keyed_list,
    under,
    workload_rules,
)

_CONTAINER_STATUS: RuleTable = {
    "resources.claims": apply_keyed_list("name"),
    "volumeMounts": keyed_list("mountPath"),
    "allocatedResourcesStatus": keyed_list("name"),
    "allocatedResourcesStatus.resources": apply_keyed_list("resourceID"),
}

_POD_STATUS: RuleTable = {
    "conditions": keyed_list("type"),
    # Merged by ip for strategic merge patch, yet atomic for server-side apply.
    "hostIPs": FieldRule(strategy="merge", merge_key="ip"),
    "podIPs": keyed_list("ip"),
    **under("initContainerStatuses", _CONTAINER_STATUS),
    **under("containerStatuses", _CONTAINER_STATUS),
    **under("ephemeralContainerStatuses", _CONTAINER_STATUS),
    "resourceClaimStatuses": keyed_list("name", strategy="merge,retainKeys"),
}

#: Merge rules per built-in kind. kube-apiserver answers strategic merge patches only for kinds
#: compiled into it; :func:`strategic_merge_rules` answers 415 for any kind missing here.
FIELD_RULES: dict[str, RuleTable] = {
    "Pod": {
        **METADATA_ONLY_RULES,
        **under("spec", POD_SPEC_RULES),
        **under("status", _POD_STATUS),
    },
    "PodTemplate": {**METADATA_ONLY_RULES, **under("template", POD_TEMPLATE_SPEC_RULES)},
    "Deployment": workload_rules({"spec.strategy": FieldRule(strategy="retainKeys")}),
    "ReplicaSet": workload_rules(),
    "DaemonSet": workload_rules(),
    "Service": {
        **METADATA_ONLY_RULES,
        "spec.ports": keyed_list("port", "port", "protocol"),
        "spec.selector": ATOMIC,
        **STATUS_CONDITIONS_RULES,
    },
    "Node": {
        **METADATA_ONLY_RULES,
        "spec.podCIDRs": MERGED_SET,
        **STATUS_CONDITIONS_RULES,
        "status.addresses": keyed_list("type"),
    },
    "Namespace": {**METADATA_ONLY_RULES, **STATUS_CONDITIONS_RULES},
    "Endpoints": METADATA_ONLY_RULES,
    "ConfigMap": METADATA_ONLY_RULES,
    "Secret": METADATA_ONLY_RULES,
    "Event": {**METADATA_ONLY_RULES, "involvedObject": ATOMIC, "related": ATOMIC},
    "ServiceAccount": {**METADATA_ONLY_RULES, "secrets": keyed_list("name")},
    "Lease": METADATA_ONLY_RULES,
    "EndpointSlice": METADATA_ONLY_RULES,
    # A compiled-in type, so strategic merge patch works on it; its lists carry no merge keys.
    "CustomResourceDefinition": METADATA_ONLY_RULES,
}


def strategic_merge_rules(kind: str, *, custom: bool) -> RuleTable:
    """The table strategic merge patch uses for a resource, when it may use one.

    :param kind: the resource's kind.
    :param custom: whether it is a custom resource (served for a CRD).
    :raises UnsupportedPatchType: for custom resources, and for kinds without a table (415).
    """
    table = None if custom else FIELD_RULES.get(kind)
    if table is None:
        raise UnsupportedPatchType()
    return table


def apply_rules(kind: str, *, custom: bool) -> RuleTable:
    """The table server-side apply and field ownership use for a resource.

    Custom resources, and kinds without a table, get :data:`METADATA_ONLY_RULES`: every list
    atomic.

    :param kind: the resource's kind.
    :param custom: whether it is a custom resource (served for a CRD).
    """
    return METADATA_ONLY_RULES if custom else FIELD_RULES.get(kind, METADATA_ONLY_RULES)
