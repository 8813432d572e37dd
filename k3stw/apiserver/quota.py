"""
What an object counts against a ResourceQuota, as kube's quota evaluators
count it: a pod its compute resources (while it is not terminal) and itself,
a Service its load balancer and node ports, a PersistentVolumeClaim its
storage, and every object ``count/<resource>[.<group>]``.  Shared by the
ResourceQuota admission plugin (what a create adds) and kube-controller-
manager's resourcequota controller (what a namespace holds).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from fractions import Fraction
from typing import Any

from k3stw.apiserver.defaulting import each
from k3stw.apiserver.kinds.pods import qos_class
from k3stw.machinery.objects import get_path
from k3stw.machinery.quantity import Quantity, QuantityError, canonical, parse_quantity
from k3stw.machinery.times import parse_time

#: Amounts by resource name (``requests.cpu``: 500m).
Usage = dict[str, Quantity]

#: The core kinds counted under a bare name as well as ``count/<plural>``.
COUNTED_BY_NAME = (
    "configmaps",
    "persistentvolumeclaims",
    "replicationcontrollers",
    "resourcequotas",
    "secrets",
    "services",
)
_POD_NAMES = frozenset(
    {
        "pods",
        "count/pods",
        *(
            prefix + name
            for prefix in ("", "requests.", "limits.")
            for name in ("cpu", "memory", "ephemeral-storage")
        ),
    }
)
#: What a container must state when a quota limits it (kube's validationSet).
_MUST_STATE = ("cpu", "memory", "requests.cpu", "requests.memory", "limits.cpu", "limits.memory")
_STORAGE_CLASS = ".storageclass.storage.k8s.io/"
_ONE = Quantity(Fraction(1), "decimal")


def count_name(group: str, plural: str) -> str:
    """``count/pods``, ``count/deployments.apps``."""
    return f"count/{plural}.{group}" if group else f"count/{plural}"


def quantity(given: Any) -> Quantity | None:
    try:
        return parse_quantity(given)
    except QuantityError:
        return None


def add(total: Usage, more: Mapping[str, Quantity]) -> Usage:
    """C{total} plus C{more}, in place (a sum keeps the first amount's notation)."""
    for name, amount in more.items():
        held = total.get(name)
        total[name] = (
            amount
            if held is None or not held.value
            else Quantity(held.value + amount.value, held.notation)
        )
    return total


def parse_usage(given: Any) -> Usage:
    """A ResourceList (``status.used``, a container's requests) as amounts."""
    found: Usage = {}
    for name, value in given.items() if isinstance(given, Mapping) else ():
        amount = quantity(value)
        if amount is not None:
            found[str(name)] = amount
    return found


def increase(after: Mapping[str, Quantity], before: Mapping[str, Quantity]) -> Usage:
    """What C{after} holds beyond C{before} (never less than nothing)."""
    found: Usage = {}
    for name, amount in after.items():
        held = before.get(name)
        more = amount.value - (held.value if held is not None else 0)
        found[name] = Quantity(max(more, Fraction(0)), amount.notation)
    return found


def charges_updates(group: str, plural: str) -> bool:
    """Whether an update can take more quota (kube's evaluators that handle updates)."""
    return not group and plural in ("services", "persistentvolumeclaims")


def printed(usage: Mapping[str, Quantity]) -> dict[str, str]:
    return {name: canonical(amount) for name, amount in usage.items()}


def pretty(usage: Mapping[str, Quantity]) -> str:
    """kube's prettyPrint: ``limits.cpu=2,requests.cpu=1``."""
    return ",".join(f"{name}={canonical(usage[name])}" for name in sorted(usage))


def _maximum(total: Usage, other: Mapping[str, Quantity]) -> None:
    for name, amount in other.items():
        if name not in total or amount.value > total[name].value:
            total[name] = amount


def pod_amounts(spec: Any, kind: str, overhead: bool = True) -> Usage:
    """
    kube's PodRequests (C{kind} ``requests``) or PodLimits: the containers' sum
    and the sidecars', or the most one init container needs, plus the overhead.
    """
    total: Usage = {}
    for container in each(spec, "containers[]"):
        add(total, parse_usage(get_path(container, "resources", kind)))
    sidecars: Usage = {}
    init: Usage = {}
    for container in each(spec, "initContainers[]"):
        amounts = parse_usage(get_path(container, "resources", kind))
        if container.get("restartPolicy") == "Always":
            add(sidecars, amounts)
            _maximum(init, sidecars)
        else:
            _maximum(init, add(dict(amounts), sidecars))
    add(total, sidecars)
    _maximum(total, init)
    return add(total, parse_usage(get_path(spec, "overhead"))) if overhead else total


def _compute(requests: Mapping[str, Quantity], limits: Mapping[str, Quantity]) -> Usage:
    """kube's podComputeUsageHelper."""
    result: Usage = {"pods": _ONE}
    for name in ("cpu", "memory", "ephemeral-storage"):
        if name in requests:
            result[name] = result["requests." + name] = requests[name]
        if name in limits:
            result["limits." + name] = limits[name]
    for name, amount in requests.items():
        if name.startswith("hugepages-"):
            result[name] = result["requests." + name] = amount
        elif "/" in name and not name.startswith(("kubernetes.io/", "requests.")):
            # An extended resource is quota'd only as requests.<name>.
            result["requests." + name] = amount
    return result


def counts_compute(pod: Mapping[str, Any], now: float) -> bool:
    """kube's QuotaV1Pod: a terminal pod, or one past its deletion's grace, holds nothing."""
    if get_path(pod, "status", "phase") in ("Succeeded", "Failed"):
        return False
    deleting = parse_time(get_path(pod, "metadata", "deletionTimestamp"))
    grace = get_path(pod, "metadata", "deletionGracePeriodSeconds")
    return deleting is None or not isinstance(grace, int) or now <= deleting + grace


def usage(group: str, plural: str, obj: Mapping[str, Any], now: float) -> Usage:
    """What C{obj} (a C{plural}.C{group} object) counts against a quota."""
    result: Usage = {count_name(group, plural): _ONE}
    if group:
        return result
    if plural in COUNTED_BY_NAME:
        result[plural] = _ONE
    spec = obj.get("spec")
    if plural == "pods" and counts_compute(obj, now):
        add(result, _compute(pod_amounts(spec, "requests"), pod_amounts(spec, "limits")))
    elif plural == "services":
        kind = get_path(spec, "type")
        ports = list(each(spec, "ports[]"))
        if kind == "LoadBalancer":
            result["services.loadbalancers"] = _ONE
            if get_path(spec, "allocateLoadBalancerNodePorts") is False:
                ports = [port for port in ports if port.get("nodePort")]
        if kind in ("NodePort", "LoadBalancer"):
            result["services.nodeports"] = Quantity(Fraction(len(ports)), "decimal")
    elif plural == "persistentvolumeclaims":
        storage = quantity(get_path(spec, "resources", "requests", "storage"))
        allocated = quantity(get_path(obj, "status", "allocatedResources", "storage"))
        if storage is None or (allocated is not None and allocated.value > storage.value):
            storage = allocated
        names = ["requests.storage"]
        if storage_class := get_path(spec, "storageClassName"):
            result[f"{storage_class}{_STORAGE_CLASS}persistentvolumeclaims"] = _ONE
            names.append(f"{storage_class}{_STORAGE_CLASS}requests.storage")
        if storage is not None:
            result.update(dict.fromkeys(names, storage))
    return result


def tracks(group: str, plural: str, name: str) -> bool:
    """Whether a quota's C{name} is counted by C{plural}.C{group} objects (MatchingResources)."""
    if name == count_name(group, plural) or (
        not group and plural in COUNTED_BY_NAME and name == plural
    ):
        return True
    if group:
        return False
    if plural == "pods":
        return (
            name in _POD_NAMES
            or name.startswith(("hugepages-", "requests.hugepages-"))
            or (name.startswith("requests.") and "/" in name)
        )
    if plural == "services":
        return name in ("services.loadbalancers", "services.nodeports")
    if plural == "persistentvolumeclaims":
        return name == "requests.storage" or (
            _STORAGE_CLASS in name
            and name.endswith(("/requests.storage", "/persistentvolumeclaims"))
        )
    return False


def tracked(group: str, plural: str, names: Iterable[str]) -> list[str]:
    return sorted(name for name in names if tracks(group, plural, name))


def scope_selectors(quota: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """A quota's ``scopes`` (each an Exists) and ``scopeSelector`` expressions, together."""
    found: list[Mapping[str, Any]] = [
        {"scopeName": scope, "operator": "Exists"}
        for scope in get_path(quota, "spec", "scopes") or ()
    ]
    found.extend(each(get_path(quota, "spec", "scopeSelector"), "matchExpressions[]"))
    return found


def _cross_namespace_affinity(spec: Any) -> bool:
    for kind in ("podAffinity", "podAntiAffinity"):
        terms = [
            *each(
                get_path(spec, "affinity", kind), "requiredDuringSchedulingIgnoredDuringExecution[]"
            ),
            *(
                weighted.get("podAffinityTerm") or {}
                for weighted in each(
                    get_path(spec, "affinity", kind),
                    "preferredDuringSchedulingIgnoredDuringExecution[]",
                )
            ),
        ]
        if any(
            term.get("namespaces") or term.get("namespaceSelector") is not None for term in terms
        ):
            return True
    return False


def _pod_in_scope(selector: Mapping[str, Any], pod: Mapping[str, Any]) -> bool:
    spec = pod.get("spec")
    scope = str(selector.get("scopeName"))
    deadline = get_path(spec, "activeDeadlineSeconds")
    if scope in ("Terminating", "NotTerminating"):
        terminating = isinstance(deadline, int) and deadline >= 0
        return terminating is (scope == "Terminating")
    if scope in ("BestEffort", "NotBestEffort"):
        return (qos_class(spec) == "BestEffort") is (scope == "BestEffort")
    if scope == "CrossNamespacePodAffinity":
        return _cross_namespace_affinity(spec)
    if scope == "PriorityClass":
        # kube matches a label set holding the key only for a pod that names a class.
        name = str(get_path(spec, "priorityClassName") or "")
        values = selector.get("values") or ()
        return {
            "In": bool(name) and name in values,
            "NotIn": name not in values or not name,
            "Exists": bool(name),
            "DoesNotExist": not name,
        }.get(str(selector.get("operator")), False)
    return False


def in_scope(quota: Mapping[str, Any], group: str, plural: str, obj: Mapping[str, Any]) -> bool:
    """Whether C{obj} is within the quota's scopes (only pods are within any scope)."""
    selectors = scope_selectors(quota)
    if not selectors:
        return True
    if group or plural != "pods":
        return False
    return all(_pod_in_scope(selector, obj) for selector in selectors)


def missing(names: Iterable[str], spec: Any) -> str | None:
    """
    kube's pod Constraints: a quota on cpu or memory needs every container to
    state it (``must specify limits.cpu for: a,b``); None when all do.
    """
    required = {name for name in names if name in _MUST_STATE}
    lacking: dict[str, set[str]] = {}
    for container in (*each(spec, "containers[]"), *each(spec, "initContainers[]")):
        stated = _compute(
            parse_usage(get_path(container, "resources", "requests")),
            parse_usage(get_path(container, "resources", "limits")),
        )
        for name in required - stated.keys():
            lacking.setdefault(name, set()).add(str(container.get("name", "")))
    if not lacking:
        return None
    parts = [f"{name} for: {','.join(sorted(lacking[name]))}" for name in sorted(lacking)]
    return "must specify " + "; ".join(parts)
