"""
The defaults of the catalogue's kinds that have no module of their own, as
kube-apiserver 1.32's defaulting functions (``pkg/apis/<group>/v1*/defaults.go``)
set them, and the zero counts Go always writes in their status: one function
per kind, by group and kind (L{DEFAULTS}).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from k3stw.apiserver.defaulting import child, each, fill, fill_at
from k3stw.apiserver.kinds.podspec import default_claim_spec, default_template
from k3stw.machinery.objects import Object, get_path

RBAC_GROUP = "rbac.authorization.k8s.io"


def _replication_controller(rc: Object) -> None:
    spec = child(rc, "spec")
    labels = get_path(spec, "template", "metadata", "labels")
    if isinstance(labels, dict) and labels and spec is not None:
        # No selector, no labels: the template's labels stand in for both.
        if not spec.get("selector"):
            spec["selector"] = dict(labels)
        metadata = child(rc, "metadata")
        if metadata is not None and not metadata.get("labels"):
            metadata["labels"] = dict(labels)
    fill(spec, replicas=1)
    default_template(spec)
    fill(child(rc, "status"), replicas=0)


def _persistent_volume(volume: Object) -> None:
    spec = child(volume, "spec")
    fill(spec, persistentVolumeReclaimPolicy="Retain", volumeMode="Filesystem")
    fill(get_path(spec, "hostPath"), type="")
    fill(child(volume, "status"), phase="Pending")


def _persistent_volume_claim(claim: Object) -> None:
    default_claim_spec(child(claim, "spec"))
    fill(child(claim, "status"), phase="Pending")


def _limit_range(limits: Object) -> None:
    """A Container limit's default is its max, its defaultRequest the default, else the min."""
    for item in each(limits, "spec.limits[]"):
        if item.get("type") != "Container":
            continue
        default = dict(item.get("default") or {})
        fill(default, **(item.get("max") or {}))
        request = dict(item.get("defaultRequest") or {})
        fill(request, **default)
        fill(request, **(item.get("min") or {}))
        # Empty maps are not written (Go omits them).
        item.update({k: v for k, v in (("default", default), ("defaultRequest", request)) if v})


def _horizontal_pod_autoscaler(hpa: Object) -> None:
    spec = child(hpa, "spec")
    fill(spec, minReplicas=1)
    if spec is not None and not spec.get("metrics"):
        target = {"type": "Utilization", "averageUtilization": 80}
        spec["metrics"] = [{"type": "Resource", "resource": {"name": "cpu", "target": target}}]
    behavior = get_path(spec, "behavior")
    if isinstance(behavior, dict):
        # A behavior given at all is filled in whole (scale down keeps no window of its own).
        percent = {"type": "Percent", "value": 100, "periodSeconds": 15}
        up = [{"type": "Pods", "value": 4, "periodSeconds": 15}, percent]
        fill(child(behavior, "scaleUp"), stabilizationWindowSeconds=0, selectPolicy="Max")
        fill(behavior["scaleUp"], policies=up)
        fill(child(behavior, "scaleDown"), selectPolicy="Max", policies=[percent])
    fill(child(hpa, "status"), desiredReplicas=0)


def _network_policy(policy: Object) -> None:
    spec = child(policy, "spec")
    if spec is not None and not spec.get("policyTypes"):
        spec["policyTypes"] = ["Ingress", "Egress"] if spec.get("egress") else ["Ingress"]
    fill_at(spec, "ingress[].ports[]", protocol="TCP")
    fill_at(spec, "egress[].ports[]", protocol="TCP")


def _binding(binding: Object) -> None:
    fill(child(binding, "roleRef"), apiGroup=RBAC_GROUP)
    for subject in each(binding, "subjects[]"):
        if subject.get("kind") in ("User", "Group"):
            fill(subject, apiGroup=RBAC_GROUP)


def _webhooks(mutating: bool) -> Callable[[Object], None]:
    def default(configuration: Object) -> None:
        for webhook in each(configuration, "webhooks[]"):
            fill(
                webhook,
                failurePolicy="Fail",
                matchPolicy="Equivalent",
                namespaceSelector={},
                objectSelector={},
                timeoutSeconds=10,
            )
            if mutating:
                fill(webhook, reinvocationPolicy="Never")
            fill_at(webhook, "rules[]", scope="*")
            fill_at(webhook, "clientConfig.service", port=443)

    return default


def _csi_driver(driver: Object) -> None:
    fill(
        child(driver, "spec"),
        attachRequired=True,
        podInfoOnMount=False,
        storageCapacity=False,
        fsGroupPolicy="ReadWriteOnceWithFSType",
        volumeLifecycleModes=["Persistent"],
        requiresRepublish=False,
        seLinuxMount=False,
    )


def _filled(path: str, **defaults: Any) -> Callable[[Object], None]:
    """A kind whose only defaults are C{defaults} at C{path} (made if missing)."""

    def default(obj: Object) -> None:
        found: Any = obj
        for step in path.split(".") if path else ():
            found = child(found, step)
        fill(found, **defaults)

    return default


#: The catalogued kinds whose ``metadata.generation`` counts changes of their spec
#: (kube-apiserver's strategies for them set it to 1 on create).
COUNTS_GENERATION = {
    ("", "ReplicationController"),
    ("networking.k8s.io", "NetworkPolicy"),
    ("networking.k8s.io", "Ingress"),
    ("networking.k8s.io", "IngressClass"),
    ("policy", "PodDisruptionBudget"),
    ("admissionregistration.k8s.io", "ValidatingWebhookConfiguration"),
    ("admissionregistration.k8s.io", "MutatingWebhookConfiguration"),
    ("admissionregistration.k8s.io", "ValidatingAdmissionPolicy"),
    ("admissionregistration.k8s.io", "ValidatingAdmissionPolicyBinding"),
}

#: The defaults of each catalogued kind that has any, by group and kind.
DEFAULTS: dict[tuple[str, str], Callable[[Object], None]] = {
    ("", "ReplicationController"): _replication_controller,
    ("", "PodTemplate"): default_template,
    ("", "PersistentVolume"): _persistent_volume,
    ("", "PersistentVolumeClaim"): _persistent_volume_claim,
    ("", "LimitRange"): _limit_range,
    ("autoscaling", "HorizontalPodAutoscaler"): _horizontal_pod_autoscaler,
    ("networking.k8s.io", "NetworkPolicy"): _network_policy,
    ("networking.k8s.io", "Ingress"): _filled("status.loadBalancer"),
    ("networking.k8s.io", "IngressClass"): lambda ingress_class: fill(
        get_path(ingress_class, "spec", "parameters"), scope="Cluster"
    ),
    ("policy", "PodDisruptionBudget"): _filled(
        "status", disruptionsAllowed=0, currentHealthy=0, desiredHealthy=0, expectedPods=0
    ),
    (RBAC_GROUP, "RoleBinding"): _binding,
    (RBAC_GROUP, "ClusterRoleBinding"): _binding,
    ("scheduling.k8s.io", "PriorityClass"): _filled("", preemptionPolicy="PreemptLowerPriority"),
    ("storage.k8s.io", "StorageClass"): _filled(
        "", reclaimPolicy="Delete", volumeBindingMode="Immediate"
    ),
    ("storage.k8s.io", "CSIDriver"): _csi_driver,
    ("admissionregistration.k8s.io", "ValidatingWebhookConfiguration"): _webhooks(False),
    ("admissionregistration.k8s.io", "MutatingWebhookConfiguration"): _webhooks(True),
}
