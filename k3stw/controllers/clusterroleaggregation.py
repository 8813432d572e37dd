"""
kube-controller-manager's clusterrole-aggregation controller: a ClusterRole
with an ``aggregationRule`` holds the rules of every ClusterRole its
selectors match (``admin`` gathers ``edit`` and the ``aggregate-to-admin``
roles, and so on), each rule once, in the order of the selectors and of the
matched roles' names.
"""

from __future__ import annotations

from typing import Any

from k3stw.apiserver.informers import ServerInformers
from k3stw.apiserver.kinds.rbac import CLUSTER_ROLES
from k3stw.apiserver.storage import ObjectStore
from k3stw.controllers import TRANSIENT
from k3stw.machinery.controller import Controller
from k3stw.machinery.informer import each_change
from k3stw.machinery.labels import LabelSelectorError, label_selector_from_spec
from k3stw.machinery.objects import Object, name_of

MANAGER = "clusterrole-aggregation-controller"


def aggregated_rules(role: Object, roles: list[Object]) -> list[Any]:
    """The rules C{role}'s aggregationRule gathers from C{roles}."""
    rules: list[Any] = []
    ordered = sorted(roles, key=name_of)
    for spec in (role.get("aggregationRule") or {}).get("clusterRoleSelectors") or ():
        selector = label_selector_from_spec(spec)
        for other in ordered:
            if name_of(other) == name_of(role):
                continue
            if selector.matches(other["metadata"].get("labels") or {}):
                rules += [rule for rule in other.get("rules") or () if rule not in rules]
    return rules


class ClusterRoleAggregation(Controller):
    """Keeps every aggregated ClusterRole's rules what its selectors gather."""

    label = "clusterrole aggregation"
    expected = TRANSIENT

    def __init__(self, informers: ServerInformers, store: ObjectStore) -> None:
        self.cluster_roles = informers.for_resource(CLUSTER_ROLES)
        super().__init__(store.clock, [self.cluster_roles])
        self.store = store
        # Any change may change what any aggregated role gathers.
        self.add_handler(self.cluster_roles, each_change(lambda obj: self._enqueue_aggregated()))

    def _enqueue_aggregated(self) -> None:
        for role in self.cluster_roles.cache:
            if role.get("aggregationRule") is not None:
                self.enqueue(name_of(role))

    async def sync(self, key: str) -> None:
        role = self.cluster_roles.get(key)
        if role is None or role.get("aggregationRule") is None:
            return
        try:
            rules = aggregated_rules(role, list(self.cluster_roles.cache))
        except LabelSelectorError:
            return  # a selector kube's validation would refuse: nothing to gather
        if rules == (role.get("rules") or []):
            return

        def gather(current: Object) -> Object:
            current["rules"] = aggregated_rules(current, list(self.cluster_roles.cache))
            return current

        await self.store.guaranteed_update(CLUSTER_ROLES, None, key, gather, MANAGER)
