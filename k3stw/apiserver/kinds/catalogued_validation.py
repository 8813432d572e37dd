"""
What kube-apiserver 1.32 checks of the catalogue's kinds that have no module
of their own (PersistentVolumeClaims, PriorityClasses, Ingresses,
NetworkPolicies, PodDisruptionBudgets), beyond their schemas: the rules users
hit most, in kube-apiserver's words.  L{catalogue_resources} gives each kind
its entry of L{RULES}: its name rule, ``validate`` and ``validate_update``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from k3stw.apiserver.fielderrors import (
    IMMUTABLE,
    PROTOCOLS,
    Cause,
    forbidden,
    int_or_percent_causes,
    invalid,
    items_at,
    not_supported,
    port_or_name_causes,
    required,
)
from k3stw.machinery.labels import dns_subdomain_errors
from k3stw.machinery.objects import Object, get_path
from k3stw.machinery.quantity import QuantityError, parse_quantity

ACCESS_MODES = ("ReadOnlyMany", "ReadWriteMany", "ReadWriteOnce", "ReadWriteOncePod")


def _claim_causes(claim: Object) -> list[Cause]:
    """A claim asks for an access mode and some storage."""
    spec = claim.get("spec")
    if not isinstance(spec, Mapping):
        spec = {}
    causes: list[Cause] = []
    modes = spec.get("accessModes")
    if not modes:
        causes.append(required("spec.accessModes", "at least 1 access mode is required"))
    for mode in modes if isinstance(modes, list) else []:
        if mode not in ACCESS_MODES:
            causes.append(not_supported("spec.accessModes", mode, ACCESS_MODES))
    storage = get_path(spec, "resources", "requests", "storage")
    if storage is None:
        causes.append(required("spec.resources[storage]"))
    else:
        try:
            quantity = parse_quantity(storage)
        except QuantityError:
            return causes  # The decoder's (400).
        if quantity.value <= 0:
            causes.append(
                invalid("spec.resources[storage]", str(quantity), "must be greater than zero")
            )
    return causes


#: The highest priority a PriorityClass not named ``system-...`` may have.
HIGHEST_USER_PRIORITY = 1_000_000_000
#: The built-in PriorityClasses' values: the only ``system-`` names there may be.
SYSTEM_PRIORITIES = {"system-node-critical": 2000001000, "system-cluster-critical": 2000000000}
PREEMPTION_POLICIES = ("Never", "PreemptLowerPriority")


def _not_system_class(name: str, value: object, global_default: bool) -> str | None:
    """Why a ``system-`` class is not a built-in one (kube's IsKnownSystemPriorityClass)."""
    if name not in SYSTEM_PRIORITIES:
        return f"{name} is not a known system priority class"
    if value != SYSTEM_PRIORITIES[name]:
        return f"value of {name} PriorityClass must be {SYSTEM_PRIORITIES[name]}"
    if global_default:
        return f"globalDefault of {name} PriorityClass must be false"
    return None


def _priority_causes(priority: Object) -> list[Cause]:
    causes: list[Cause] = []
    name = str(get_path(priority, "metadata", "name") or "")
    value = priority.get("value")
    if name.startswith("system-"):
        error = _not_system_class(name, value, priority.get("globalDefault") is True)
        if error:
            reserved = "priority class names with 'system-' prefix are reserved for system use only"
            causes.append(forbidden("metadata.name", f"{reserved}. error: {error}"))
    elif isinstance(value, int) and value > HIGHEST_USER_PRIORITY:
        detail = f"maximum allowed value of a user defined priority is {HIGHEST_USER_PRIORITY}"
        causes.append(forbidden("value", detail))
    policy = priority.get("preemptionPolicy")
    if policy is not None and policy not in PREEMPTION_POLICIES:
        causes.append(not_supported("preemptionPolicy", policy, PREEMPTION_POLICIES))
    return causes


def _priority_update_causes(new: Object, old: Object) -> list[Cause]:
    causes = []
    if new.get("value") != old.get("value"):
        causes.append(forbidden("value", "may not be changed in an update."))
    if new.get("preemptionPolicy") != old.get("preemptionPolicy"):
        causes.append(invalid("preemptionPolicy", new.get("preemptionPolicy"), IMMUTABLE))
    return causes


PATH_TYPES = ("Exact", "ImplementationSpecific", "Prefix")


def _backend_causes(backend: Any, path: str) -> list[Cause]:
    if not isinstance(backend, Mapping):
        return []
    service, resource = backend.get("service"), backend.get("resource")
    if service is not None and resource is not None:
        return [invalid(path, "", "cannot set both resource and service backends")]
    if isinstance(service, Mapping):
        port = service.get("port")
        if isinstance(port, Mapping):
            if port.get("name") and port.get("number"):
                return [
                    invalid(f"{path}.service.port", "", "cannot set both port name & port number")
                ]
            if port.get("number") is not None:
                return port_or_name_causes(f"{path}.service.port.number", port["number"])
            if port.get("name"):
                return port_or_name_causes(f"{path}.service.port.name", port["name"])
        return [required(f"{path}.service.port", "port name or number is required")]
    return []


def _ingress_causes(ingress: Object) -> list[Cause]:
    """Hosts, path types and absolute paths, backends."""
    spec = ingress.get("spec")
    if not isinstance(spec, Mapping):
        return []
    causes = _backend_causes(spec.get("defaultBackend"), "spec.defaultBackend")
    for at, rule in items_at(spec.get("rules"), "spec.rules"):
        host = rule.get("host")
        if isinstance(host, str) and host:
            checked = host[2:] if host.startswith("*.") else host
            causes += [invalid(f"{at}.host", host, m) for m in dns_subdomain_errors(checked)]
        for path_at, entry in items_at(get_path(rule, "http", "paths"), f"{at}.http.paths"):
            kind = entry.get("pathType")
            if kind is not None and kind not in PATH_TYPES:
                causes.append(not_supported(f"{path_at}.pathType", kind, PATH_TYPES))
            elif kind in ("Exact", "Prefix"):
                text = entry.get("path")
                if not isinstance(text, str) or not text.startswith("/"):
                    causes.append(
                        invalid(f"{path_at}.path", text or "", "must be an absolute path")
                    )
            causes += _backend_causes(entry.get("backend"), f"{path_at}.backend")
    return causes


POLICY_TYPES = ("Ingress", "Egress")


def _network_policy_causes(policy: Object) -> list[Cause]:
    """Policy types, and each rule's ports."""
    spec = policy.get("spec")
    if not isinstance(spec, Mapping):
        return []
    causes: list[Cause] = []
    for index, kind in enumerate(spec.get("policyTypes") or []):
        if kind not in POLICY_TYPES:
            causes.append(not_supported(f"spec.policyTypes[{index}]", kind, POLICY_TYPES))
    for direction in ("ingress", "egress"):
        for rule_at, rule in items_at(spec.get(direction), f"spec.{direction}"):
            for at, port in items_at(rule.get("ports"), f"{rule_at}.ports"):
                protocol = port.get("protocol")
                if protocol is not None and protocol not in PROTOCOLS:
                    causes.append(not_supported(f"{at}.protocol", protocol, PROTOCOLS))
                if port.get("port") is not None:
                    causes += port_or_name_causes(f"{at}.port", port["port"])
    return causes


def _budget_causes(budget: Object) -> list[Cause]:
    """One of minAvailable and maxUnavailable, each a count or a percentage."""
    spec = budget.get("spec")
    if not isinstance(spec, Mapping):
        return []
    least, most = spec.get("minAvailable"), spec.get("maxUnavailable")
    if least is not None and most is not None:
        detail = "minAvailable and maxUnavailable cannot be both set"
        return [("spec", f"Invalid value: policy.PodDisruptionBudgetSpec{{...}}: {detail}")]
    return int_or_percent_causes("spec.minAvailable", least) + int_or_percent_causes(
        "spec.maxUnavailable", most
    )


#: A kind's rules: Strategy fields by name.
Rules = dict[str, Any]

#: Each catalogue kind's rules, by (group, kind): ``names``, ``validate``, ``validate_update``.
RULES: dict[tuple[str, str], Rules] = {
    ("", "PersistentVolumeClaim"): {"validate": _claim_causes},
    ("scheduling.k8s.io", "PriorityClass"): {
        "validate": _priority_causes,
        "validate_update": _priority_update_causes,
    },
    ("networking.k8s.io", "Ingress"): {"validate": _ingress_causes},
    ("networking.k8s.io", "NetworkPolicy"): {"validate": _network_policy_causes},
    ("policy", "PodDisruptionBudget"): {"validate": _budget_causes},
}
