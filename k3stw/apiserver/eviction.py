"""
``pods/<name>/eviction`` (``kubectl drain``): delete a pod unless that would
break its PodDisruptionBudget.  A budget allows an eviction only once the
disruption controller has counted it (``status.observedGeneration``) and
allows a disruption (``status.disruptionsAllowed``); the eviction spends one,
as kube-apiserver's does, before the pod goes.
"""

from __future__ import annotations

from typing import Any

from k3stw.apiserver.kinds import pods
from k3stw.apiserver.registry import ResourceType
from k3stw.apiserver.status import StatusError
from k3stw.apiserver.storage import ObjectStore
from k3stw.machinery.labels import LabelSelectorError, label_selector_from_spec
from k3stw.machinery.objects import Object, is_deleting, name_of, set_condition

_REFUSED = "Cannot evict pod as it would violate the pod's disruption budget."


def _refused(message: str) -> StatusError:
    details = {"causes": [{"reason": "DisruptionBudget", "message": message}]}
    return StatusError(429, _REFUSED, details, "TooManyRequests")


def budget_selects(budget: Object, pod: Object) -> bool:
    """
    Whether a policy/v1 budget covers the pod (of its namespace): a null
    selector covers none, an empty one every pod.
    """
    try:
        selector = label_selector_from_spec((budget.get("spec") or {}).get("selector"))
    except LabelSelectorError:
        return False
    return selector.matches(pod["metadata"].get("labels") or {})


def set_disruption_allowed(status: Object, now: str) -> None:
    """The budget's ``DisruptionAllowed`` condition, as its ``disruptionsAllowed`` says."""
    allowed = status.get("disruptionsAllowed", 0) > 0
    wanted = {
        "type": "DisruptionAllowed",
        "status": "True" if allowed else "False",
        "observedGeneration": status.get("observedGeneration", 0),
        "reason": "SufficientPods" if allowed else "InsufficientPods",
        "message": "",
    }
    set_condition(status, wanted, now)


async def evict(
    store: ObjectStore, budgets: ResourceType, namespace: str, name: str, eviction: Any
) -> Object:
    """Evict pod C{name}: kube-apiserver's Success Status (201), or 429 naming the budget."""
    pod = await store.get(pods.RESOURCE, namespace, name)
    listed = await store.list(budgets, namespace)
    matching = [b for b in listed.items if budget_selects(b, pod)]
    if len(matching) > 1:
        raise StatusError(
            500,
            "This pod has more than one PodDisruptionBudget, which the eviction subresource "
            "does not support.",
        )
    phase = (pod.get("status") or {}).get("phase")
    # A pod that has finished, has not started, or is on its way out disrupts
    # nothing more (kube's canIgnorePDB skips the budget).
    ignores_budget = phase in ("Succeeded", "Failed", "Pending") or is_deleting(pod)
    if matching and not ignores_budget:
        await _spend(store, budgets, namespace, matching[0], name)
    options = (eviction.get("deleteOptions") if isinstance(eviction, dict) else None) or {}
    grace = options.get("gracePeriodSeconds")
    await store.delete(
        pods.RESOURCE,
        namespace,
        name,
        options.get("preconditions"),
        grace_period=grace if isinstance(grace, int) else None,
    )
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201}


async def _spend(
    store: ObjectStore, budgets: ResourceType, namespace: str, budget: Object, pod: str
) -> None:
    budget_name = name_of(budget)

    def spend(current: Object) -> Object:
        status = current.setdefault("status", {})
        generation = current["metadata"].get("generation", 1)
        if status.get("observedGeneration", 0) < generation:
            raise _refused(
                f"The disruption budget {budget_name} is still being processed by the server."
            )
        allowed = status.get("disruptionsAllowed", 0)
        if allowed <= 0:
            raise _refused(
                f"The disruption budget {budget_name} needs {status.get('desiredHealthy', 0)} "
                f"healthy pods and has {status.get('currentHealthy', 0)} currently",
            )
        status["disruptionsAllowed"] = allowed - 1
        if allowed == 1:
            set_disruption_allowed(status, store.now())
        status.setdefault("disruptedPods", {})[pod] = store.now()
        return current

    await store.guaranteed_update(budgets, namespace, budget_name, spend, subresource="status")
