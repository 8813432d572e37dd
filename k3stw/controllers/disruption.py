"""
kube-controller-manager's disruption controller: each PodDisruptionBudget's
status, which the eviction subresource (L{k3stw.apiserver.eviction}) reads
and spends.

A budget counts the pods it selects that are Ready and not being deleted
(``currentHealthy``), less those an eviction spent it on in the last two
minutes (``disruptedPods``, dropped once the pod is gone or the two minutes
are up).  An integer ``minAvailable`` is the number wanted healthy out of the
pods there are; a percentage, or ``maxUnavailable``, counts against the
scale of the pods' controllers (``expectedPods``).  A budget whose pods'
controllers cannot be found allows nothing (condition reason ``SyncFailed``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from k3stw.apiserver.eviction import budget_selects, set_disruption_allowed
from k3stw.apiserver.informers import ServerInformers
from k3stw.apiserver.kinds import pods
from k3stw.apiserver.registry import Registry
from k3stw.apiserver.scale import scale_of
from k3stw.apiserver.status import StatusError, conflict
from k3stw.apiserver.storage import ObjectStore
from k3stw.controllers import TRANSIENT
from k3stw.controllers.ownership import controller_ref
from k3stw.machinery.cache import NAMESPACE
from k3stw.machinery.controller import Controller
from k3stw.machinery.informer import EventHandler
from k3stw.machinery.objects import (
    Object,
    get_path,
    is_deleting,
    metadata,
    name_of,
    namespace_of,
    object_key,
    set_condition,
    split_key,
)
from k3stw.machinery.times import parse_time, rfc3339

#: How long an evicted pod stays out of the count while it goes (kube's DeletionTimeout).
DELETION_TIMEOUT = 120.0


class NoController(Exception):
    """A pod's controller, whose scale the budget counts against, is not to be found."""


def scaled(value: Any, total: int) -> int:
    """An int-or-percent of C{total}, a percentage rounded up (GetScaledValueFromIntOrPercent)."""
    if isinstance(value, str) and value.endswith("%"):
        return math.ceil(int(value[:-1]) * total / 100)
    return int(value)


class DisruptionController(Controller):
    """Keeps every PodDisruptionBudget's status."""

    label = "disruption controller"
    expected = TRANSIENT

    def __init__(self, informers: ServerInformers, store: ObjectStore, registry: Registry) -> None:
        self.registry = registry
        self.budgets = registry.require("policy", "v1", "poddisruptionbudgets")
        self.budget_informer = informers.for_resource(self.budgets)
        self.pod_informer = informers.for_resource(pods.RESOURCE)
        super().__init__(store.clock, [self.budget_informer, self.pod_informer])
        self.store = store
        self.add_handler(self.budget_informer, self.enqueue_handler())
        self.add_handler(
            self.pod_informer,
            EventHandler(
                on_add=self._pod_changed,
                on_update=self._pod_updated,
                on_delete=self._pod_changed,
            ),
        )

    def _pod_updated(self, old: Object, new: Object) -> None:
        self._pod_changed(old)
        self._pod_changed(new)

    def _pod_changed(self, pod: Object) -> None:
        for budget in self.budget_informer.cache.by_index(NAMESPACE, namespace_of(pod)):
            if budget_selects(budget, pod):
                self.enqueue(object_key(budget))

    async def sync(self, key: str) -> None:
        budget = self.budget_informer.get(key)
        if budget is None:
            return
        namespace, _ = split_key(key)
        selected = [
            pod
            for pod in self.pod_informer.cache.by_index(NAMESPACE, namespace or "")
            if budget_selects(budget, pod)
        ]
        now = self.clock.seconds()
        try:
            expected, desired = await self._wanted(budget, selected)
        except NoController as e:
            await self._write(budget, _fail_safe(budget, str(e), rfc3339(now)))
            return
        disrupted, recheck = _still_disrupted(budget, selected, now)
        healthy = sum(
            1
            for pod in selected
            if not is_deleting(pod) and name_of(pod) not in disrupted and pods.is_ready(pod)
        )
        allowed = healthy - desired
        if expected <= 0 or allowed <= 0:
            allowed = 0
        status = {
            "observedGeneration": metadata(budget).get("generation", 1),
            "disruptedPods": disrupted,
            "disruptionsAllowed": allowed,
            "currentHealthy": healthy,
            "desiredHealthy": desired,
            "expectedPods": expected,
            "conditions": [dict(c) for c in get_path(budget, "status", "conditions") or []],
        }
        set_disruption_allowed(status, rfc3339(now))
        if not disrupted:
            del status["disruptedPods"]
        await self._write(budget, status)
        if recheck is not None:
            self.queue.add_after(key, recheck - now)

    async def _wanted(self, budget: Object, selected: list[Object]) -> tuple[int, int]:
        """The pods expected, and how many must stay healthy."""
        spec = budget.get("spec") or {}
        if spec.get("maxUnavailable") is not None:
            expected = await self._expected_scale(selected)
            return expected, max(0, expected - scaled(spec["maxUnavailable"], expected))
        least = spec.get("minAvailable")
        if isinstance(least, str):
            expected = await self._expected_scale(selected)
            return expected, scaled(least, expected)
        return len(selected), int(least or 0)

    async def _expected_scale(self, selected: list[Object]) -> int:
        """The summed scale of the selected pods' controllers (pods without one are not counted)."""
        scales: dict[str, int] = {}
        for pod in selected:
            ref = controller_ref(pod)
            if ref is None:
                continue
            found = await self._scale(ref, namespace_of(pod))
            if found is None:
                raise NoController(f'found no controllers for pod "{name_of(pod)}"')
            uid, replicas = found
            scales[uid] = replicas
        return sum(scales.values())

    async def _scale(self, ref: Mapping[str, Any], namespace: str) -> tuple[str, int] | None:
        """The uid and scale of a pod's controller; a Deployment's for a ReplicaSet it owns."""
        controller = await self._get(ref, namespace)
        if controller is None:
            return None
        if ref.get("kind") == "ReplicaSet" and str(ref.get("apiVersion")).startswith("apps/"):
            owner = controller_ref(controller)
            if owner is not None and owner.get("kind") == "Deployment":
                controller = await self._get(owner, namespace)
                if controller is None:
                    return None
        return str(metadata(controller)["uid"]), int(scale_of(controller)["spec"]["replicas"])

    async def _get(self, ref: Mapping[str, Any], namespace: str) -> Object | None:
        """The object C{ref} names, if it is there, has that uid, and has a scale."""
        group = str(ref.get("apiVersion", "")).rpartition("/")[0]
        resource = self.registry.by_kind(group, str(ref.get("kind")))
        if resource is None or "scale" not in resource.subresources:
            return None
        try:
            found = await self.store.get(resource, namespace, str(ref.get("name")))
        except StatusError as e:
            if e.code != 404:
                raise
            return None
        return found if metadata(found).get("uid") == ref.get("uid") else None

    async def _write(self, budget: Object, status: Object) -> None:
        """Write the status, unless it holds already; a budget changed since it was read waits."""
        current = budget.get("status") or {}
        if all(current.get(k) == v for k, v in status.items()) and (
            "disruptedPods" in status or not current.get("disruptedPods")
        ):
            return
        seen = metadata(budget).get("resourceVersion")

        def replace(stored: Object) -> Object:
            if stored["metadata"].get("resourceVersion") != seen:
                # An eviction may have spent the budget since: count again from the news.
                raise conflict(self.budgets.plural, self.budgets.group, name_of(stored))
            stored["status"] = status
            return stored

        try:
            await self.store.guaranteed_update(
                self.budgets, namespace_of(budget), name_of(budget), replace, subresource="status"
            )
        except StatusError as e:
            if e.code != 404:
                raise


def _still_disrupted(
    budget: Object, selected: list[Object], now: float
) -> tuple[dict[str, str], float | None]:
    """The evictions still under way (pods not gone, within the timeout); when the first ends."""
    recorded = get_path(budget, "status", "disruptedPods") or {}
    kept: dict[str, str] = {}
    recheck: float | None = None
    for pod in selected:
        when = parse_time(recorded.get(name_of(pod)))
        if is_deleting(pod) or when is None:
            continue
        ends = when + DELETION_TIMEOUT
        if ends < now:
            continue
        kept[name_of(pod)] = recorded[name_of(pod)]
        recheck = ends if recheck is None else min(recheck, ends)
    return kept, recheck


def _fail_safe(budget: Object, message: str, now: str) -> Object:
    """A status that allows no disruption, saying why (kube's failSafe)."""
    status = dict(budget.get("status") or {})
    status["conditions"] = [dict(c) for c in status.get("conditions") or []]
    status["disruptionsAllowed"] = 0
    status["observedGeneration"] = metadata(budget).get("generation", 1)
    wanted = {
        "type": "DisruptionAllowed",
        "status": "False",
        "observedGeneration": status["observedGeneration"],
        "reason": "SyncFailed",
        "message": message,
    }
    set_condition(status, wanted, now)
    return status
