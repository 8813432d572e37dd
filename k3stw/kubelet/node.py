"""
The Node and Lease objects a kubelet writes, built as k3s's kubelet builds
them: labels, taints, addresses, capacity, nodeInfo and conditions.  Pure:
time comes in as an argument, host facts as a L{HostFacts}.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from k3stw import KUBERNETES_VERSION
from k3stw.kubelet.config import KubeletConfig
from k3stw.kubelet.hostinfo import FilesystemUsage, HostFacts
from k3stw.machinery.nodes import KUBELET_CONDITIONS, LEASE_NAMESPACE
from k3stw.machinery.objects import Object

if TYPE_CHECKING:
    from k3stw.kubelet.cri.api_pb2 import Image

MAX_PODS = 110

HOSTNAME_LABEL = "kubernetes.io/hostname"
OS_LABEL = "kubernetes.io/os"
ARCH_LABEL = "kubernetes.io/arch"
CONTROL_PLANE_LABEL = "node-role.kubernetes.io/control-plane"
MASTER_LABEL = "node-role.kubernetes.io/master"

NODES_PATH = "/api/v1/nodes"
LEASES_PATH = f"/apis/coordination.k8s.io/v1/namespaces/{LEASE_NAMESPACE}/leases"

#: Most names one image lists in ``status.images``, and most images listed
#: (the kubelet's ``nodeStatusMaxImages``).
MAX_NAMES_PER_IMAGE = 5
MAX_IMAGES = 50


@dataclass(frozen=True)
class EvictionThresholds:
    """
    The kubelet's hard eviction thresholds, its Linux defaults:
    ``memory.available<100Mi``, ``nodefs.available<10%``,
    ``nodefs.inodesFree<5%``, ``imagefs.available<15%``,
    ``imagefs.inodesFree<5%``; ``pid.available`` has none by default.
    """

    memory_available: int = 100 * 1024 * 1024
    nodefs_available: float = 0.10
    nodefs_inodes_free: float = 0.05
    imagefs_available: float = 0.15
    imagefs_inodes_free: float = 0.05
    pid_available: float | None = None


DEFAULT_THRESHOLDS = EvictionThresholds()


@dataclass(frozen=True)
class RuntimeState:
    """
    What the kubelet last learned from its container runtime.

    :ivar conditions: CRI Status's conditions as (type, status, reason,
        message); None when Status did not answer.
    :ivar images: ``status.images`` (L{node_images}).
    """

    conditions: tuple[tuple[str, bool, str, str], ...] | None
    images: tuple[Object, ...] = ()


def node_path(name: str) -> str:
    return f"{NODES_PATH}/{name}"


def lease_path(name: str) -> str:
    return f"{LEASES_PATH}/{name}"


def default_labels(config: KubeletConfig, facts: HostFacts) -> dict[str, str]:
    """The labels the node always carries: its name, OS and architecture, and roles."""
    labels = {
        "beta.kubernetes.io/arch": facts.architecture,
        "beta.kubernetes.io/instance-type": "k3s",
        "beta.kubernetes.io/os": facts.operating_system,
        ARCH_LABEL: facts.architecture,
        HOSTNAME_LABEL: config.node_name,
        OS_LABEL: facts.operating_system,
        "node.kubernetes.io/instance-type": "k3s",
    }
    if config.is_server:
        labels[CONTROL_PLANE_LABEL] = "true"
        labels[MASTER_LABEL] = "true"
    return labels


def node_labels(config: KubeletConfig, facts: HostFacts) -> dict[str, str]:
    """The default labels, then the ``--node-label``s (which may override instance type or zone)."""
    labels = default_labels(config, facts)
    labels.update(config.labels)
    return labels


def node_annotations(config: KubeletConfig, facts: HostFacts) -> dict[str, str]:
    """The annotations kubelet and k3s set on a node they register."""
    annotations = {
        "k3s.io/hostname": facts.hostname,
        "node.alpha.kubernetes.io/ttl": "0",
        "volumes.kubernetes.io/controller-managed-attach-detach": "true",
    }
    if config.node_ips:
        annotations["k3s.io/internal-ip"] = ",".join(config.node_ips)
    if config.external_ips:
        annotations["k3s.io/external-ip"] = ",".join(config.external_ips)
    return annotations


def node_addresses(config: KubeletConfig) -> list[Object]:
    """InternalIP for each ``--node-ip``, ExternalIP for each external one, then the Hostname."""
    addresses = [{"type": "InternalIP", "address": ip} for ip in config.node_ips]
    addresses += [{"type": "ExternalIP", "address": ip} for ip in config.external_ips]
    addresses.append({"type": "Hostname", "address": config.node_name})
    return addresses


def node_resources(facts: HostFacts) -> tuple[dict[str, str], dict[str, str]]:
    """C{(capacity, allocatable)} as quantities."""
    memory_ki = facts.memory_bytes // 1024
    storage_ki = facts.storage_bytes // 1024
    capacity = {
        "cpu": str(facts.cpus),
        "ephemeral-storage": f"{storage_ki}Ki",
        "hugepages-1Gi": "0",
        "hugepages-2Mi": "0",
        "memory": f"{memory_ki}Ki",
        "pods": str(MAX_PODS),
    }
    # allocatable: capacity less the hard eviction thresholds (no reservations under k3s).
    allocatable = dict(capacity)
    memory = max(facts.memory_bytes - DEFAULT_THRESHOLDS.memory_available, 0)
    allocatable["memory"] = f"{memory // 1024}Ki"
    nodefs = storage_ki * 1024 * (1 - DEFAULT_THRESHOLDS.nodefs_available)
    allocatable["ephemeral-storage"] = str(int(nodefs))
    return capacity, allocatable


def node_info(facts: HostFacts) -> dict[str, str]:
    """``status.nodeInfo``: all ten fields the clients require."""
    return {
        "architecture": facts.architecture,
        "bootID": facts.boot_id,
        "containerRuntimeVersion": facts.container_runtime_version,
        "kernelVersion": facts.kernel_version,
        "kubeProxyVersion": KUBERNETES_VERSION,
        "kubeletVersion": KUBERNETES_VERSION,
        "machineID": facts.machine_id,
        "operatingSystem": facts.operating_system,
        "osImage": facts.os_image,
        "systemUUID": facts.system_uuid,
    }


def _short(fs: FilesystemUsage | None, available: float, inodes_free: float) -> bool:
    """Whether C{fs} is below a threshold of free space or free inodes (fractions)."""
    if fs is None:
        return False
    if fs.capacity_bytes and fs.available_bytes < fs.capacity_bytes * available:
        return True
    return bool(fs.inodes) and fs.inodes_free < fs.inodes * inodes_free


def pressures(
    facts: HostFacts, thresholds: EvictionThresholds = DEFAULT_THRESHOLDS
) -> dict[str, bool]:
    """Whether each eviction signal of C{facts} is past its hard threshold, by condition type."""
    memory = facts.memory_available_bytes
    pid = thresholds.pid_available
    return {
        "MemoryPressure": memory is not None and memory < thresholds.memory_available,
        "DiskPressure": _short(
            facts.nodefs, thresholds.nodefs_available, thresholds.nodefs_inodes_free
        )
        or _short(facts.imagefs, thresholds.imagefs_available, thresholds.imagefs_inodes_free),
        "PIDPressure": pid is not None
        and facts.pid_max is not None
        and facts.processes is not None
        and facts.pid_max - facts.processes < facts.pid_max * pid,
    }


#: The pressure conditions when True: (reason, message), the kubelet's words.
_UNDER_PRESSURE = {
    "MemoryPressure": ("KubeletHasInsufficientMemory", "kubelet has insufficient memory available"),
    "DiskPressure": ("KubeletHasDiskPressure", "kubelet has disk pressure"),
    "PIDPressure": ("KubeletHasInsufficientPID", "kubelet has insufficient PID available"),
}


def _runtime_condition(found: tuple[str, bool, str, str] | None) -> str:
    # Go's %v of the kubelet's RuntimeCondition, nil included.
    if found is None:
        return "<nil>"
    kind, status, reason, message = found
    return f"{kind}={str(status).lower()} reason:{reason} message:{message}"


def readiness_errors(runtime: RuntimeState | None) -> list[str]:
    """
    Why the node is not Ready, in the kubelet's words: the runtime down or
    not ready, then its network not ready.  None: the node runs no runtime.
    """
    if runtime is None:
        return []
    if runtime.conditions is None:
        return ["container runtime is down"]
    by_type = {c[0]: c for c in runtime.conditions}
    errors = []
    ready = by_type.get("RuntimeReady")
    if ready is None or not ready[1]:
        errors.append(f"container runtime not ready: {_runtime_condition(ready)}")
    network = by_type.get("NetworkReady")
    if network is None or not network[1]:
        errors.append(f"container runtime network not ready: {_runtime_condition(network)}")
    return errors


def desired_conditions(
    facts: HostFacts, runtime: RuntimeState | None
) -> list[tuple[str, str, str, str]]:
    """The kubelet's conditions now: (type, status, reason, message), in its order."""
    under = pressures(facts)
    errors = readiness_errors(runtime)
    wanted = []
    for kind, status, reason, message in KUBELET_CONDITIONS:
        if under.get(kind):
            reason, message = _UNDER_PRESSURE[kind]
            status = "True"
        elif kind == "Ready" and errors:
            # Go's aggregate error: one message, or all of them bracketed.
            message = errors[0] if len(errors) == 1 else f"[{', '.join(errors)}]"
            status, reason = "False", "KubeletNotReady"
        wanted.append((kind, status, reason, message))
    return wanted


def node_conditions(
    previous: Sequence[Object] | None,
    now: str,
    wanted: Iterable[tuple[str, str, str, str]] = KUBELET_CONDITIONS,
) -> list[Object]:
    """
    The kubelet's conditions (C{wanted}) as of C{now}: each heartbeat is
    C{now}; a transition time moves only when the condition's status changes.
    Conditions others own (NetworkUnavailable, ...) are kept as they are.
    """
    wanted = list(wanted)
    before = {c.get("type"): c for c in previous or () if isinstance(c, dict)}
    ours = {kind for kind, *_ in wanted}
    conditions = [
        copy.deepcopy(c) for kind, c in before.items() if kind not in ours and kind is not None
    ]
    for kind, status, reason, message in wanted:
        old = before.get(kind)
        transition = now
        if old is not None and old.get("status") == status and old.get("lastTransitionTime"):
            transition = old["lastTransitionTime"]
        conditions.append(
            {
                "type": kind,
                "status": status,
                "lastHeartbeatTime": now,
                "lastTransitionTime": transition,
                "reason": reason,
                "message": message,
            }
        )
    return conditions


def without_heartbeats(status: Object) -> Object:
    """C{status} with its conditions' heartbeat times left out: what a change is."""
    conditions = [
        {k: v for k, v in c.items() if k != "lastHeartbeatTime"}
        for c in status.get("conditions") or ()
        if isinstance(c, dict)
    ]
    return {**status, "conditions": conditions}


def node_images(images: Iterable[Image]) -> tuple[Object, ...]:
    """
    ``status.images`` from CRI ListImages: the biggest C{MAX_IMAGES} first,
    each named by its digests then its tags, at most C{MAX_NAMES_PER_IMAGE}.
    """
    listed = sorted(images, key=lambda image: image.size, reverse=True)[:MAX_IMAGES]
    return tuple(
        {
            "names": [*image.repo_digests, *image.repo_tags][:MAX_NAMES_PER_IMAGE],
            "sizeBytes": image.size,
        }
        for image in listed
    )


def node_status(
    config: KubeletConfig,
    facts: HostFacts,
    previous: Object | None,
    now: str,
    runtime: RuntimeState | None = None,
) -> Object:
    """
    The whole ``status`` the kubelet posts, given the status the server holds
    now and what the runtime last said (None: the node runs no runtime).
    """
    capacity, allocatable = node_resources(facts)
    status = dict(previous or {})
    conditions = desired_conditions(facts, runtime)
    status.update(
        {
            "addresses": node_addresses(config),
            "allocatable": allocatable,
            "capacity": capacity,
            "conditions": node_conditions((previous or {}).get("conditions"), now, conditions),
            "daemonEndpoints": {"kubeletEndpoint": {"Port": config.port}},
            "nodeInfo": node_info(facts),
        }
    )
    if runtime is not None:
        status["images"] = [copy.deepcopy(image) for image in runtime.images]
    return status


def build_node(
    config: KubeletConfig, facts: HostFacts, now: str, runtime: RuntimeState | None = None
) -> Object:
    """
    The Node to create when the node registers for the first time.  No
    ``not-ready`` taint: the node lifecycle controller manages that one.
    """
    spec: Object = {"providerID": f"k3s://{config.node_name}"}
    if config.taints:
        spec["taints"] = [taint.to_object(now) for taint in config.taints]
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": config.node_name,
            "labels": node_labels(config, facts),
            "annotations": node_annotations(config, facts),
        },
        "spec": spec,
        "status": node_status(config, facts, None, now, runtime),
    }


def reconcile_node(existing: Object, config: KubeletConfig, facts: HostFacts) -> Object:
    """
    The existing Node as a restarted kubelet leaves it: its own labels and
    annotations set again, everything others set (labels, annotations,
    taints, the spec) kept.  Taints from flags apply only at creation, as
    ``--register-with-taints`` does.  Status goes separately (L{node_status}).
    """
    node = copy.deepcopy(existing)
    metadata = node.setdefault("metadata", {})
    metadata["labels"] = {**(metadata.get("labels") or {}), **node_labels(config, facts)}
    metadata["annotations"] = {
        **(metadata.get("annotations") or {}),
        **node_annotations(config, facts),
    }
    spec = node.setdefault("spec", {})
    spec.setdefault("providerID", f"k3s://{config.node_name}")
    return node


def build_lease(node_name: str, node_uid: str, now: str, duration: int) -> Object:
    """The node's Lease in ``kube-node-lease``, owned by its Node."""
    return renew_lease(
        {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": node_name, "namespace": LEASE_NAMESPACE},
            "spec": {},
        },
        node_name,
        node_uid,
        now,
        duration,
    )


def renew_lease(lease: Object, node_name: str, node_uid: str, now: str, duration: int) -> Object:
    """C{lease} renewed at C{now} (a MicroTime), its owner the Node with C{node_uid}."""
    renewed = copy.deepcopy(lease)
    metadata = renewed.setdefault("metadata", {})
    owners = [
        ref
        for ref in metadata.get("ownerReferences") or []
        if not (ref.get("kind") == "Node" and ref.get("apiVersion") == "v1")
    ]
    if node_uid:
        owners.append({"apiVersion": "v1", "kind": "Node", "name": node_name, "uid": node_uid})
    metadata["ownerReferences"] = owners
    spec = renewed.setdefault("spec", {})
    spec["holderIdentity"] = node_name
    spec["leaseDurationSeconds"] = duration
    spec["renewTime"] = now
    return renewed
