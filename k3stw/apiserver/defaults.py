"""
The defaults kube-apiserver fills in on every write, for the kinds k3stw
serves, so stored objects read as clients expect (and print as kubectl shows).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from k3stw.apiserver.registry import ResourceType

Object = dict[str, Any]


def _ports(ports: list[Any] | None) -> None:
    for port in ports or []:
        if isinstance(port, dict):
            port.setdefault("protocol", "TCP")


def _containers(spec: Object) -> None:
    for key in ("containers", "initContainers"):
        for container in spec.get(key) or []:
            if isinstance(container, dict):
                _ports(container.get("ports"))
                container.setdefault("terminationMessagePath", "/dev/termination-log")
                container.setdefault("terminationMessagePolicy", "File")
                image = str(container.get("image", ""))
                latest = ":" not in image.rsplit("/", 1)[-1] or image.endswith(":latest")
                container.setdefault("imagePullPolicy", "Always" if latest else "IfNotPresent")


def _pod_spec(spec: Object) -> None:
    _containers(spec)
    spec.setdefault("restartPolicy", "Always")
    spec.setdefault("terminationGracePeriodSeconds", 30)
    spec.setdefault("dnsPolicy", "ClusterFirst")
    spec.setdefault("schedulerName", "default-scheduler")
    spec.setdefault("securityContext", {})
    spec.setdefault("enableServiceLinks", True)


def _pod(obj: Object) -> None:
    _pod_spec(obj.setdefault("spec", {}))
    obj.setdefault("status", {}).setdefault("phase", "Pending")


def _template_owner(obj: Object) -> None:
    spec = obj.setdefault("spec", {})
    if obj["kind"] != "DaemonSet":
        spec.setdefault("replicas", 1)
    spec.setdefault("revisionHistoryLimit", 10)
    template = spec.setdefault("template", {})
    if isinstance(template, dict):
        _pod_spec(template.setdefault("spec", {}))


def _service(obj: Object) -> None:
    spec = obj.setdefault("spec", {})
    spec.setdefault("type", "ClusterIP")
    spec.setdefault("sessionAffinity", "None")
    _ports(spec.get("ports"))
    for port in spec.get("ports") or []:
        if isinstance(port, dict) and "port" in port:
            port.setdefault("targetPort", port["port"])
    if spec.get("clusterIP") and not spec.get("clusterIPs"):
        spec["clusterIPs"] = [spec["clusterIP"]]


def _secret(obj: Object) -> None:
    obj.setdefault("type", "Opaque")


def _namespace(obj: Object) -> None:
    obj.setdefault("spec", {}).setdefault("finalizers", ["kubernetes"])
    obj.setdefault("status", {}).setdefault("phase", "Active")


_DEFAULTS: dict[tuple[str, str], Callable[[Object], None]] = {
    ("", "Pod"): _pod,
    ("", "Service"): _service,
    ("", "Secret"): _secret,
    ("", "Namespace"): _namespace,
    ("apps", "Deployment"): _template_owner,
    ("apps", "ReplicaSet"): _template_owner,
    ("apps", "DaemonSet"): _template_owner,
}


def apply_defaults(resource: ResourceType, obj: Object) -> Object:
    """Fill C{obj}'s defaults in place and return it."""
    defaults = _DEFAULTS.get((resource.group, resource.kind))
    if defaults is not None and not resource.crd:
        defaults(obj)
    return obj
