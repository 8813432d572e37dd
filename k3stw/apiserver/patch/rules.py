"""Merge rules: how each field of a kind merges under strategic merge patch and server-side apply.

A kind declares its rules as a L{RuleTable}, keyed by dotted field path, built from the
pieces here: L{keyed_list}, L{MERGED_SET}, L{ATOMIC} and L{apply_keyed_list}
for single fields, L{under} to place a table below a field, and the shared tables of the
types many kinds embed (L{OBJECT_META_RULES}, L{POD_SPEC_RULES}, ...).

Transcribed from the patchStrategy/patchMergeKey tags and +listType/+listMapKey/+structType
markers of k8s.io/api v0.32 (core/v1, apps/v1) and k8s.io/apimachinery meta/v1. Lists a table
does not name are atomic: strategic merge patch and server-side apply replace them whole
(tolerations, taints, args, command, envFrom, containerStatuses, Endpoints subsets, ...).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TypeAlias

from k3stw.apiserver.patch.values import JSONValue


@dataclass(frozen=True)
class FieldRule:
    """How one field of a built-in type merges, from its Go tags and markers.

    :ivar strategy: the ``patchStrategy`` tag: ``"merge"``, ``"replace"``, ``"retainKeys"``, or
        ``"merge,retainKeys"``; ``""`` when absent (lists are then replaced whole).
    :ivar merge_key: the ``patchMergeKey`` tag, for lists of objects merged by key.
    :ivar list_type: the ``+listType`` marker server-side apply uses: ``"map"``, ``"set"``, or
        ``""`` for atomic.
    :ivar map_keys: the ``+listMapKey`` markers (may differ from ``merge_key``: container ports
        are keyed by ``containerPort`` and ``protocol``).
    :ivar key_defaults: defaults the API server gives to map keys (``protocol: TCP``), so an
        applied item without them names the same item as the stored one.
    :ivar atomic: ``+structType=atomic`` or ``+mapType=atomic``: server-side apply owns and
        replaces the value whole. Strategic merge patch ignores this marker.
    """

    strategy: str = ""
    merge_key: str = ""
    list_type: str = ""
    map_keys: tuple[str, ...] = ()
    key_defaults: tuple[tuple[str, JSONValue], ...] = ()
    atomic: bool = False

    @property
    def strategies(self) -> frozenset[str]:
        """The ``patchStrategy`` values as a set."""
        return frozenset(part for part in self.strategy.split(",") if part)


#: Rules for one kind: dotted field path (list levels add no segment) to rule.
RuleTable: TypeAlias = Mapping[str, FieldRule]

#: The rule of a field no table names: no patch strategy, lists atomic, objects merged.
_NO_RULE = FieldRule()


def rule_at(table: RuleTable, path: str) -> FieldRule:
    """The rule ``table`` gives the field at dotted ``path``; a plain field when it gives none."""
    return table.get(path, _NO_RULE)


def join_path(path: str, name: str) -> str:
    """The dotted path of member ``name`` of the field at ``path`` (``""`` is the object)."""
    return f"{path}.{name}" if path else name


#: ``+structType=atomic`` / ``+mapType=atomic``: server-side apply owns and replaces it whole.
ATOMIC = FieldRule(atomic=True)

#: A list of scalars merged as a set by both strategic merge patch and server-side apply.
MERGED_SET = FieldRule(strategy="merge", list_type="set")


def keyed_list(key: str, *map_keys: str, strategy: str = "merge") -> FieldRule:
    """A list of objects both patch forms merge item by item.

    :param key: the ``patchMergeKey`` strategic merge patch matches items by.
    :param map_keys: the ``+listMapKey``\\ s server-side apply matches items by, when they are
        not just ``key``; a ``protocol`` key defaults to ``TCP``, as the API server defaults it.
    :param strategy: the ``patchStrategy`` tag.
    """
    return FieldRule(
        strategy=strategy,
        merge_key=key,
        list_type="map",
        map_keys=map_keys or (key,),
        key_defaults=(("protocol", "TCP"),) if "protocol" in map_keys else (),
    )


def apply_keyed_list(*map_keys: str) -> FieldRule:
    """A list server-side apply merges by ``map_keys`` and strategic merge patch replaces whole.

    The Go field has ``+listType=map`` markers but no ``patchStrategy`` tag.
    """
    return FieldRule(list_type="map", map_keys=map_keys)


def under(prefix: str, table: RuleTable) -> dict[str, FieldRule]:
    """``table``, whose paths start at a nested type, placed below the field at ``prefix``."""
    return {f"{prefix}.{path}": rule for path, rule in table.items()}


#: ``ObjectMeta``.
OBJECT_META_RULES: RuleTable = {
    "ownerReferences": keyed_list("uid"),
    "finalizers": MERGED_SET,
}

#: A whole object whose only merge rules are its metadata's: the table of a custom resource,
#: whose lists are all atomic without their schema's list types.
METADATA_ONLY_RULES: RuleTable = under("metadata", OBJECT_META_RULES)

#: ``status.conditions`` keyed by ``type``, as most kinds with conditions declare them.
STATUS_CONDITIONS_RULES: RuleTable = {"status.conditions": keyed_list("type")}

_LABEL_SELECTOR_OWNERS = (
    "requiredDuringSchedulingIgnoredDuringExecution",
    "preferredDuringSchedulingIgnoredDuringExecution.podAffinityTerm",
)

#: ``Container`` (also init and ephemeral containers).
CONTAINER_RULES: RuleTable = {
    "ports": keyed_list("containerPort", "containerPort", "protocol"),
    "env": keyed_list("name"),
    "env.valueFrom.fieldRef": ATOMIC,
    "env.valueFrom.resourceFieldRef": ATOMIC,
    "env.valueFrom.configMapKeyRef": ATOMIC,
    "env.valueFrom.secretKeyRef": ATOMIC,
    "resources.claims": apply_keyed_list("name"),
    "volumeMounts": keyed_list("mountPath"),
    "volumeDevices": keyed_list("devicePath"),
}

#: ``Volume``.
VOLUME_RULES: RuleTable = {
    **{
        f"{source}.secretRef": ATOMIC
        for source in ("iscsi", "rbd", "flexVolume", "cinder", "cephfs", "scaleIO", "storageos")
    },
    "csi.nodePublishSecretRef": ATOMIC,
    "downwardAPI.items.fieldRef": ATOMIC,
    "downwardAPI.items.resourceFieldRef": ATOMIC,
    "projected.sources.downwardAPI.items.fieldRef": ATOMIC,
    "projected.sources.downwardAPI.items.resourceFieldRef": ATOMIC,
    "projected.sources.clusterTrustBundle.labelSelector": ATOMIC,
    **under("ephemeral.volumeClaimTemplate.metadata", OBJECT_META_RULES),
    "ephemeral.volumeClaimTemplate.spec.selector": ATOMIC,
    "ephemeral.volumeClaimTemplate.spec.dataSource": ATOMIC,
}

#: ``PodSpec``.
POD_SPEC_RULES: RuleTable = {
    "volumes": keyed_list("name", strategy="merge,retainKeys"),
    **under("volumes", VOLUME_RULES),
    "initContainers": keyed_list("name"),
    **under("initContainers", CONTAINER_RULES),
    "containers": keyed_list("name"),
    **under("containers", CONTAINER_RULES),
    "ephemeralContainers": keyed_list("name"),
    **under("ephemeralContainers", CONTAINER_RULES),
    "nodeSelector": ATOMIC,
    "imagePullSecrets": keyed_list("name"),
    "affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution": ATOMIC,
    "affinity.nodeAffinity.preferredDuringSchedulingIgnoredDuringExecution.preference": ATOMIC,
    **{
        f"affinity.{affinity}.{term}.{selector}": ATOMIC
        for affinity in ("podAffinity", "podAntiAffinity")
        for term in _LABEL_SELECTOR_OWNERS
        for selector in ("labelSelector", "namespaceSelector")
    },
    "hostAliases": keyed_list("ip"),
    "topologySpreadConstraints": keyed_list("topologyKey", "topologyKey", "whenUnsatisfiable"),
    "topologySpreadConstraints.labelSelector": ATOMIC,
    "schedulingGates": keyed_list("name"),
    "resourceClaims": keyed_list("name", strategy="merge,retainKeys"),
    "resources.claims": apply_keyed_list("name"),
}

#: ``PodTemplateSpec``.
POD_TEMPLATE_SPEC_RULES: RuleTable = {
    **under("metadata", OBJECT_META_RULES),
    **under("spec", POD_SPEC_RULES),
}


def workload_rules(extra: RuleTable | None = None) -> dict[str, FieldRule]:
    """The table of a workload kind: a label selector, a pod template and conditions.

    :param extra: the kind's own further rules (a Deployment's ``spec.strategy``).
    """
    return {
        **METADATA_ONLY_RULES,
        "spec.selector": ATOMIC,
        **under("spec.template", POD_TEMPLATE_SPEC_RULES),
        **STATUS_CONDITIONS_RULES,
        **(extra or {}),
    }
