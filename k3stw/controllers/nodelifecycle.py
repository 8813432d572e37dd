"""
The node lifecycle controller (kube-controller-manager's, in part): a node
whose kubelet stops renewing its Lease and posting its status for longer
than the grace period turns Ready=Unknown and gets the ``unreachable``
taints; when its kubelet posts Ready again, the taints go.

Like kube-controller-manager it measures silence with its own clock: it
notes when it last *saw* a node's Lease renewTime or Ready heartbeat change,
so clock skew between a node and the server does not matter, and a server
that starts after a long pause gives every node a full grace period.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime

from k3stw.apiserver.registry import ResourceType
from k3stw.apiserver.status import StatusError
from k3stw.apiserver.storage import Object, ObjectStore
from k3stw.controllers.loop import ControllerLoop
from k3stw.kubelet.node import (
    KUBELET_CONDITIONS,
    LEASE_NAMESPACE,
    Taint,
    find_condition,
    has_taint,
    rfc3339,
    without_taints,
)

UNREACHABLE = "node.kubernetes.io/unreachable"
UNREACHABLE_TAINTS = (Taint(UNREACHABLE, "", "NoSchedule"), Taint(UNREACHABLE, "", "NoExecute"))

#: kube-controller-manager's ``--node-monitor-period``.
MONITOR_PERIOD = 5.0

UNKNOWN_REASON = "NodeStatusUnknown"
UNKNOWN_MESSAGE = "Kubelet stopped posting node status."
NEVER_REASON = "NodeStatusNeverUpdated"
NEVER_MESSAGE = "Kubelet never posted node status."


@dataclass(frozen=True)
class _Probe:
    """What showed a node alive (its uid, Lease renewTime, Ready heartbeat) and when we saw it."""

    signature: tuple[str, str, str]
    seen_at: float


class NodeLifecycleController(ControllerLoop):
    """
    Marks silent nodes Ready=Unknown and unreachable, and clears the taints
    when they come back.

    :param store: the server's object store.
    :param nodes: the ``nodes`` resource type (core v1).
    :param leases: the ``leases`` resource type (coordination.k8s.io v1).
    :param clock: the controller's timing and its notion of now.
    :param grace_period: seconds of silence before a node turns Unknown
        (``--node-monitor-grace-period``).
    :param monitor_period: seconds between passes over all nodes.
    """

    label = "node lifecycle controller"

    def __init__(
        self,
        store: ObjectStore,
        nodes: ResourceType,
        leases: ResourceType,
        clock: IReactorTime,
        grace_period: float = 40.0,
        monitor_period: float = MONITOR_PERIOD,
    ) -> None:
        super().__init__(clock, monitor_period)
        self.store = store
        self.nodes = nodes
        self.leases = leases
        self.grace_period = grace_period
        self.monitor_period = monitor_period
        self._probes: dict[str, _Probe] = {}

    async def run_once(self) -> None:
        await self._monitor()

    def monitor(self) -> Deferred[None]:
        """One pass over every node (the service runs one every C{monitor_period})."""
        return Deferred.fromCoroutine(self._monitor())

    async def _monitor(self) -> None:
        now = self.clock.seconds()
        nodes = (await self.store.list(self.nodes, None)).items
        leases = {
            lease["metadata"]["name"]: lease
            for lease in (await self.store.list(self.leases, LEASE_NAMESPACE)).items
        }
        present: set[str] = set()
        for node in nodes:
            name = node["metadata"]["name"]
            present.add(name)
            lease = leases.get(name)
            silent = self._observe(name, node, lease, now)
            try:
                if silent and _needs_marking(node):
                    self._log.info(
                        "Node {node} has not reported for {grace}s: marking it Unknown",
                        node=name,
                        grace=self.grace_period,
                    )
                    await self._update(name, self._mark_unknown)
                elif not silent and _returned(node):
                    self._log.info("Node {node} is Ready again", node=name)
                    await self._update(name, _clear_unreachable)
            except StatusError as e:
                if e.code != 404:
                    self._log.warn(
                        "Updating node {node} failed: {error}", node=name, error=e.message
                    )
        for gone in set(self._probes) - present:
            del self._probes[gone]

    def _observe(self, name: str, node: Object, lease: Object | None, now: float) -> bool:
        """Note what shows the node alive; whether it has been silent beyond the grace period."""
        ready = find_condition(node, "Ready") or {}
        renewed = str(((lease or {}).get("spec") or {}).get("renewTime") or "")
        signature = (
            str(node["metadata"].get("uid", "")),
            renewed,
            str(ready.get("lastHeartbeatTime") or ""),
        )
        probe = self._probes.get(name)
        if probe is None or probe.signature != signature:
            probe = _Probe(signature, now)
            self._probes[name] = probe
        return now - probe.seen_at > self.grace_period

    async def _update(self, name: str, mutate: Callable[[Object], Object]) -> None:
        await self.store.guaranteed_update(self.nodes, None, name, mutate)

    def _mark_unknown(self, node: Object) -> Object:
        probe = self._probes.get(node["metadata"]["name"])
        ready = find_condition(node, "Ready") or {}
        if probe is not None and probe.signature[2] != str(ready.get("lastHeartbeatTime") or ""):
            return node  # a heartbeat arrived since the pass looked: not silent after all
        now = rfc3339(self.clock.seconds())
        status = node.setdefault("status", {})
        conditions = status.setdefault("conditions", [])
        for kind, *_ in KUBELET_CONDITIONS:
            condition = find_condition(node, kind)
            if condition is None:
                conditions.append(
                    {
                        "type": kind,
                        "status": "Unknown",
                        "lastHeartbeatTime": node["metadata"].get("creationTimestamp", now),
                        "lastTransitionTime": now,
                        "reason": NEVER_REASON,
                        "message": NEVER_MESSAGE,
                    }
                )
            elif condition.get("status") != "Unknown":
                condition.update(
                    status="Unknown",
                    reason=UNKNOWN_REASON,
                    message=UNKNOWN_MESSAGE,
                    lastTransitionTime=now,
                )
        spec = node.setdefault("spec", {})
        taints = list(spec.get("taints") or [])
        for taint in UNREACHABLE_TAINTS:
            if not has_taint(taints, taint):
                taints.append(taint.to_object(now))
        spec["taints"] = taints
        return node


def _needs_marking(node: Object) -> bool:
    """Whether a silent node still lacks the Unknown conditions or the unreachable taints."""
    for kind, *_ in KUBELET_CONDITIONS:
        condition = find_condition(node, kind)
        if condition is None or condition.get("status") != "Unknown":
            return True
    taints = (node.get("spec") or {}).get("taints") or []
    return not all(has_taint(taints, taint) for taint in UNREACHABLE_TAINTS)


def _returned(node: Object) -> bool:
    """Whether a node that reports again still carries the unreachable taints."""
    ready = find_condition(node, "Ready") or {}
    taints = (node.get("spec") or {}).get("taints") or []
    return ready.get("status") == "True" and any(
        has_taint(taints, taint) for taint in UNREACHABLE_TAINTS
    )


def _clear_unreachable(node: Object) -> Object:
    if not _returned(node):
        return node
    spec = node.setdefault("spec", {})
    taints = without_taints(spec.get("taints") or [], UNREACHABLE_TAINTS)
    if taints:
        spec["taints"] = taints
    else:
        spec.pop("taints", None)
    return node
