"""
Pods (core/v1): defaults, merge rules, the Table kubectl prints and the
fields a selector may name.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import datetime
from fractions import Fraction
from typing import Any

from k3stw.apiserver.defaulting import child, each, fill
from k3stw.apiserver.fielderrors import Cause, forbidden
from k3stw.apiserver.fields import (
    NAME,
    NAMESPACE,
    FieldTable,
    boolean_field,
    field_path,
    field_text,
)
from k3stw.apiserver.kinds.podspec import (
    default_pod_spec,
    pod_spec_causes,
)
from k3stw.apiserver.patch.rules import (
    METADATA_ONLY_RULES,
    POD_SPEC_RULES,
    FieldRule,
    RuleTable,
    apply_keyed_list,
    keyed_list,
    under,
)
from k3stw.apiserver.registry import ResourceType
from k3stw.apiserver.strategy import Strategy
from k3stw.apiserver.tables import (
    AGE_COLUMN,
    NAME_COLUMN,
    Column,
    Printed,
    Printer,
    age_cell,
    human_duration,
    integer,
    items,
    mapping,
    mappings,
    name_cell,
    text,
)
from k3stw.machinery.objects import Object, generated_suffix, get_path
from k3stw.machinery.times import parse_datetime


def _is_restartable_init(container: Mapping[str, Any] | None) -> bool:
    return container is not None and container.get("restartPolicy") == "Always"


def _has_condition(status: Any, kind: str) -> bool:
    return any(
        c.get("type") == kind and c.get("status") == "True"
        for c in mappings(get_path(status, "conditions"))
    )


def is_ready(pod: Mapping[str, Any]) -> bool:
    """Whether the pod's Ready condition is True (kube's IsPodReady)."""
    return _has_condition(pod.get("status"), "Ready")


def _finished_at(container_status: Mapping[str, Any]) -> datetime | None:
    return parse_datetime(get_path(container_status, "lastState", "terminated", "finishedAt"))


def _later(current: datetime | None, candidate: datetime | None) -> datetime | None:
    if candidate is None or (current is not None and current >= candidate):
        return current
    return candidate


def _pod_cells(pod: Printed, now: datetime) -> list[Any]:
    spec = mapping(pod.get("spec"))
    status = mapping(pod.get("status"))
    restarts = 0
    restartable_restarts = 0
    total = len(items(spec.get("containers")))
    ready = 0
    last_restart: datetime | None = None
    last_restartable_restart: datetime | None = None

    phase = text(status.get("phase"))
    reason = text(status.get("reason")) or phase
    for condition in mappings(status.get("conditions")):
        if condition.get("type") == "PodScheduled" and condition.get("reason") == "SchedulingGated":
            reason = "SchedulingGated"

    init_specs = mappings(spec.get("initContainers"))
    init_containers = {text(c.get("name")): c for c in init_specs}
    total += sum(1 for c in init_specs if _is_restartable_init(c))

    initializing = False
    for index, container in enumerate(mappings(status.get("initContainerStatuses"))):
        count = integer(container.get("restartCount"))
        restarts += count
        last_restart = _later(last_restart, _finished_at(container))
        restartable = _is_restartable_init(init_containers.get(text(container.get("name"))))
        if restartable:
            restartable_restarts += count
            last_restartable_restart = _later(last_restartable_restart, _finished_at(container))
        terminated = get_path(container, "state", "terminated")
        waiting = get_path(container, "state", "waiting")
        if isinstance(terminated, Mapping) and integer(terminated.get("exitCode")) == 0:
            continue
        if restartable and container.get("started") is True:
            if container.get("ready") is True:
                ready += 1
            continue
        if isinstance(terminated, Mapping):
            if text(terminated.get("reason")):
                reason = "Init:" + text(terminated.get("reason"))
            elif integer(terminated.get("signal")):
                reason = f"Init:Signal:{integer(terminated.get('signal'))}"
            else:
                reason = f"Init:ExitCode:{integer(terminated.get('exitCode'))}"
        elif isinstance(waiting, Mapping) and text(waiting.get("reason")) not in (
            "",
            "PodInitializing",
        ):
            reason = "Init:" + text(waiting.get("reason"))
        else:
            reason = f"Init:{index}/{len(init_specs)}"
        initializing = True
        break

    if not initializing or _has_condition(status, "Initialized"):
        restarts = restartable_restarts
        last_restart = last_restartable_restart
        has_running = False
        for container in reversed(mappings(status.get("containerStatuses"))):
            restarts += integer(container.get("restartCount"))
            last_restart = _later(last_restart, _finished_at(container))
            state = mapping(container.get("state"))
            waiting = state.get("waiting")
            terminated = state.get("terminated")
            if isinstance(waiting, Mapping) and text(waiting.get("reason")):
                reason = text(waiting.get("reason"))
            elif isinstance(terminated, Mapping) and text(terminated.get("reason")):
                reason = text(terminated.get("reason"))
            elif isinstance(terminated, Mapping):
                if integer(terminated.get("signal")):
                    reason = f"Signal:{integer(terminated.get('signal'))}"
                else:
                    reason = f"ExitCode:{integer(terminated.get('exitCode'))}"
            elif container.get("ready") is True and state.get("running") is not None:
                has_running = True
                ready += 1
        # A completed container next to one still running: the pod is not done.
        if reason == "Completed" and has_running:
            reason = "Running" if _has_condition(status, "Ready") else "NotReady"

    if get_path(pod, "metadata", "deletionTimestamp"):
        if status.get("reason") == "NodeLost":
            reason = "Unknown"
        elif phase not in ("Succeeded", "Failed"):
            reason = "Terminating"

    restarts_text = str(restarts)
    if restarts and last_restart is not None:
        restarts_text = f"{restarts} ({human_duration(now - last_restart)} ago)"

    pod_ips = mappings(status.get("podIPs"))
    pod_ip = text(pod_ips[0].get("ip")) if pod_ips else text(status.get("podIP"))
    gates = "<none>"
    readiness_gates = mappings(spec.get("readinessGates"))
    if readiness_gates:
        conditions = {}
        for condition in reversed(mappings(status.get("conditions"))):
            conditions[condition.get("type")] = condition.get("status")
        met = sum(1 for g in readiness_gates if conditions.get(g.get("conditionType")) == "True")
        gates = f"{met}/{len(readiness_gates)}"
    return [
        name_cell(pod),
        f"{ready}/{total}",
        reason,
        restarts_text,
        age_cell(pod, now),
        pod_ip or "<none>",
        text(spec.get("nodeName")) or "<none>",
        text(status.get("nominatedNodeName")) or "<none>",
        gates,
    ]


def _pod_conditions(pod: Printed) -> list[dict[str, str]]:
    phase = get_path(pod, "status", "phase")
    if phase == "Succeeded":
        message = "The pod has completed successfully."
    elif phase == "Failed":
        message = "The pod failed."
    else:
        return []
    return [{"type": "Completed", "status": "True", "reason": phase, "message": message}]


PRINTER = Printer(
    (
        NAME_COLUMN,
        Column(
            "Ready", description="The aggregate readiness state of this pod for accepting traffic."
        ),
        Column("Status", description="The aggregate status of the containers in this pod."),
        Column(
            "Restarts",
            description="The number of times the containers in this pod have been restarted "
            "and when the last container in this pod has restarted.",
        ),
        AGE_COLUMN,
        Column(
            "IP",
            priority=1,
            description="podIP address allocated to the pod. Routable at least within the "
            "cluster. Empty if not yet allocated.",
        ),
        Column(
            "Node",
            priority=1,
            description="NodeName indicates in which node this pod is scheduled.",
        ),
        Column(
            "Nominated Node",
            priority=1,
            description="nominatedNodeName is set only when this pod preempts other pods on "
            "the node, but it cannot be scheduled right away as preemption victims receive "
            "their graceful termination periods.",
        ),
        Column(
            "Readiness Gates",
            priority=1,
            description="If specified, all readiness gates will be evaluated for pod readiness.",
        ),
    ),
    _pod_cells,
    _pod_conditions,
)


def _pod_ip(obj: Mapping[str, Any]) -> str:
    # kube-apiserver reads status.podIPs[0]; podIP mirrors it, so fall back to it.
    return field_text(
        get_path(obj, "status", "podIPs", 0, "ip") or get_path(obj, "status", "podIP")
    )


FIELDS = FieldTable(
    {
        "metadata.name": NAME,
        "metadata.namespace": NAMESPACE,
        "spec.nodeName": field_path("spec", "nodeName"),
        "spec.restartPolicy": field_path("spec", "restartPolicy"),
        "spec.schedulerName": field_path("spec", "schedulerName"),
        "spec.serviceAccountName": field_path("spec", "serviceAccountName"),
        "spec.hostNetwork": boolean_field("spec", "hostNetwork"),
        "status.phase": field_path("status", "phase"),
        "status.podIP": _pod_ip,
        # Accepted by the conversion but not in the selectable set: always "".
        "status.podIPs": lambda obj: "",
        "status.nominatedNodeName": field_path("status", "nominatedNodeName"),
    },
    aliases={"spec.host": "spec.nodeName"},
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


def references(pod: Object, plural: str) -> set[str]:
    """
    The names of the secrets (C{plural} ``secrets``), configmaps,
    persistentvolumeclaims or serviceaccounts a pod uses (what its node may read).
    """
    spec = pod.get("spec") or {}
    if plural == "serviceaccounts":
        return {str(spec.get("serviceAccountName") or "default")}
    if plural == "persistentvolumeclaims":
        return {
            str(volume["persistentVolumeClaim"].get("claimName", ""))
            if isinstance(volume.get("persistentVolumeClaim"), dict)
            # A generic ephemeral volume's claim is named for the pod and the volume.
            else f"{(pod.get('metadata') or {}).get('name', '')}-{volume.get('name', '')}"
            for volume in spec.get("volumes") or []
            if isinstance(volume.get("persistentVolumeClaim"), dict)
            or isinstance(volume.get("ephemeral"), dict)
        }
    key, ref_key, name_key = (
        ("secret", "secretKeyRef", "secretName")
        if plural == "secrets"
        else ("configMap", "configMapKeyRef", "name")
    )
    found: set[str] = set()
    for volume in spec.get("volumes") or []:
        if isinstance(volume.get(key), dict):
            found.add(volume[key].get(name_key, ""))
        for source in (volume.get("projected") or {}).get("sources") or []:
            if isinstance(source.get(key), dict):
                found.add(source[key].get("name", ""))
    for container in (spec.get("containers") or []) + (spec.get("initContainers") or []):
        for env in container.get("env") or []:
            ref = (env.get("valueFrom") or {}).get(ref_key)
            if ref:
                found.add(ref.get("name", ""))
        for env_from in container.get("envFrom") or []:
            ref = env_from.get(f"{key}Ref")
            if ref:
                found.add(ref.get("name", ""))
    if plural == "secrets":
        found.update(s.get("name", "") for s in spec.get("imagePullSecrets") or [])
    return found


def _default(pod: Object) -> None:
    """A pod's defaults: its spec's, and what kube's SetDefaults_Pod adds for pods only."""
    spec = child(pod, "spec")
    default_pod_spec(spec)
    for container in (*each(spec, "containers[]"), *each(spec, "initContainers[]")):
        # Requests default to limits (what a pod asks for is what it may use).
        limits = get_path(container, "resources", "limits")
        if isinstance(limits, dict):
            requests = child(child(container, "resources"), "requests")
            fill(requests, **limits)
    fill(spec, enableServiceLinks=True)
    if get_path(spec, "hostNetwork") is True:
        for key in ("containers[]", "initContainers[]"):
            for port in each(spec, key + ".ports[]"):
                if not port.get("hostPort"):
                    port["hostPort"] = port.get("containerPort")
    fill(child(pod, "status"), phase="Pending")


#: Where the ServiceAccount admission plugin mounts a pod's API credentials.
SERVICE_ACCOUNT_MOUNT = "/var/run/secrets/kubernetes.io/serviceaccount"

#: The taints every pod tolerates for 5 minutes (kube's DefaultTolerationSeconds plugin).
NOT_READY_TAINTS = ("node.kubernetes.io/not-ready", "node.kubernetes.io/unreachable")


def _api_access_volume(name: str) -> Object:
    """The projected volume the ServiceAccount admission plugin gives a pod."""
    namespace = {"fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}
    return {
        "name": name,
        "projected": {
            "defaultMode": 420,
            "sources": [
                {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
                {
                    "configMap": {
                        "name": "kube-root-ca.crt",
                        "items": [{"key": "ca.crt", "path": "ca.crt"}],
                    }
                },
                {"downwardAPI": {"items": [{**namespace, "path": "namespace"}]}},
            ],
        },
    }


def _admit_service_account(spec: Object) -> None:
    """The ServiceAccount plugin: the ``default`` account, its token mounted in every container."""
    fill(spec, serviceAccountName="default")
    spec["serviceAccount"] = spec["serviceAccountName"]
    if spec.get("automountServiceAccountToken") is False:
        return
    containers = [*each(spec, "initContainers[]"), *each(spec, "containers[]")]
    if any(
        mount.get("mountPath") == SERVICE_ACCOUNT_MOUNT
        for container in containers
        for mount in each(container, "volumeMounts[]")
    ):
        return
    name = "kube-api-access-" + generated_suffix()
    volumes = spec.get("volumes")
    spec["volumes"] = [*(volumes if isinstance(volumes, list) else ()), _api_access_volume(name)]
    for container in containers:
        mounts = container.get("volumeMounts")
        mount = {"name": name, "readOnly": True, "mountPath": SERVICE_ACCOUNT_MOUNT}
        container["volumeMounts"] = [*(mounts if isinstance(mounts, list) else ()), mount]


def _admit_tolerations(spec: Object) -> None:
    """DefaultTolerationSeconds: tolerate a not-ready or unreachable node for 300 s."""
    tolerations = spec.get("tolerations")
    found = list(tolerations) if isinstance(tolerations, list) else []
    for taint in NOT_READY_TAINTS:
        if not any(
            isinstance(t, dict)
            and t.get("key") in (None, "", taint)
            and t.get("effect") in (None, "", "NoExecute")
            for t in found
        ):
            found.append(
                {
                    "key": taint,
                    "operator": "Exists",
                    "effect": "NoExecute",
                    "tolerationSeconds": 300,
                }
            )
    spec["tolerations"] = found


_QUANTITY = re.compile(r"^([+-]?[0-9.]+)(?:([eE][+-]?[0-9]+)|(Ki|Mi|Gi|Ti|Pi|Ei|[numkMGTPE])?)$")
_SUFFIXES = {
    **{s: Fraction(1024) ** (i + 1) for i, s in enumerate(("Ki", "Mi", "Gi", "Ti", "Pi", "Ei"))},
    **{
        s: Fraction(10) ** e
        for s, e in zip("numkMGTPE", (-9, -6, -3, 3, 6, 9, 12, 15, 18), strict=True)
    },
}


def _amount(quantity: Any) -> Fraction:
    """A resource quantity's value ("500m", "1Gi", 2); 0 if it does not parse."""
    match = _QUANTITY.match(str(quantity).strip())
    if match is None:
        return Fraction(0)
    number, exponent, suffix = match.groups()
    try:
        value = Fraction(number)
    except ValueError:
        return Fraction(0)
    if exponent:
        value *= Fraction(10) ** int(exponent[1:])
    return value * _SUFFIXES.get(suffix or "", Fraction(1))


def qos_class(spec: Any) -> str:
    """A pod's quality of service class from its containers' cpu and memory (kube's GetPodQOS)."""
    requests: dict[str, Fraction] = {}
    limits: dict[str, Fraction] = {}
    guaranteed = True
    for container in (*each(spec, "containers[]"), *each(spec, "initContainers[]")):
        limited = set()
        for kind, totals in (("requests", requests), ("limits", limits)):
            amounts = get_path(container, "resources", kind)
            for name, quantity in amounts.items() if isinstance(amounts, dict) else ():
                value = _amount(quantity)
                if name in ("cpu", "memory") and value > 0:
                    totals[name] = totals.get(name, Fraction(0)) + value
                    if kind == "limits":
                        limited.add(name)
        if limited != {"cpu", "memory"}:
            guaranteed = False
    if not requests and not limits:
        return "BestEffort"
    if guaranteed and requests == limits:
        return "Guaranteed"
    return "Burstable"


def _prepare_create(pod: Object, now: str) -> None:
    """What kube-apiserver's admission plugins and pod strategy add to a new pod."""
    _default(pod)
    spec = pod["spec"]
    if isinstance(spec, dict):
        _admit_service_account(spec)
        _admit_tolerations(spec)
    pod["status"]["qosClass"] = qos_class(spec)


#: What a pod update may change, in kube-apiserver's words.
POD_UPDATE_FORBIDDEN = (
    "pod updates may not change fields other than `spec.containers[*].image`,"
    "`spec.initContainers[*].image`,`spec.activeDeadlineSeconds`,`spec.tolerations` (only "
    "additions to existing tolerations),`spec.terminationGracePeriodSeconds` (allow it to be "
    "set to 1 if it was previously negative)"
)


def validate_pod(pod: Object) -> list[Cause]:
    """A pod's spec: volumes, containers (with their images), ports, resources, restart policy."""
    return pod_spec_causes(pod.get("spec"), "spec", pod=True)


def _mutable_part_removed(given: Any, keep_node: bool) -> dict[str, Any]:
    """A pod spec without what an update may change."""
    spec: dict[str, Any] = dict(given) if isinstance(given, Mapping) else {}
    for key in ("containers", "initContainers"):
        if isinstance(spec.get(key), list):
            spec[key] = [
                {k: v for k, v in c.items() if k != "image"} if isinstance(c, Mapping) else c
                for c in spec[key]
            ]
    for key in ("activeDeadlineSeconds", "tolerations", "terminationGracePeriodSeconds"):
        spec.pop(key, None)
    spec.pop("schedulingGates", None)
    if not keep_node:
        spec.pop("nodeName", None)
    return spec


def validate_pod_update(new: Object, old: Object) -> list[Cause]:
    """Only images, the deadline, added tolerations (and the scheduler's node) may change."""
    before, after = old.get("spec"), new.get("spec")
    if before == after:
        return []
    bound = bool(get_path(old, "spec", "nodeName"))
    kept = [t for t in mappings(get_path(before, "tolerations"))]
    added = mappings(get_path(after, "tolerations"))
    if _mutable_part_removed(before, bound) != _mutable_part_removed(after, bound) or any(
        t not in added for t in kept
    ):
        return [forbidden("spec", POD_UPDATE_FORBIDDEN)]
    return []


def grace_period(pod: Object, requested: int | None) -> int:
    """
    kube's podStrategy.CheckGracefulDelete: the asked-for grace, else the
    pod's ``terminationGracePeriodSeconds``; 0 for a pod no kubelet runs
    (not bound to a node) or one that has finished.
    """
    if not get_path(pod, "spec", "nodeName"):
        return 0
    if get_path(pod, "status", "phase") in ("Succeeded", "Failed"):
        return 0
    if requested is not None:
        return requested
    default = get_path(pod, "spec", "terminationGracePeriodSeconds")
    return default if isinstance(default, int) and not isinstance(default, bool) else 0


RESOURCE = ResourceType(
    "",
    "v1",
    "Pod",
    "pods",
    "pod",
    namespaced=True,
    short_names=("po",),
    categories=("all",),
    subresources=("status", "log", "binding", "eviction", "exec", "attach", "portforward", "proxy"),
    strategy=Strategy(
        printer=PRINTER,
        fields=FIELDS,
        merge_rules={
            **METADATA_ONLY_RULES,
            **under("spec", POD_SPEC_RULES),
            **under("status", _POD_STATUS),
        },
        default=_default,
        prepare_create=_prepare_create,
        validate=validate_pod,
        validate_update=validate_pod_update,
        grace_period=grace_period,
        returns_deleted_object=True,
    ),
)
