"""
The node lifecycle controller (kube-controller-manager's, in part): a node
whose kubelet stops renewing its Lease and posting its status for longer
than the grace period turns Ready=Unknown and gets the ``unreachable``
taints; one whose kubelet reports Ready=False gets the ``not-ready`` taints
instead; when its kubelet posts Ready again, the taints go.  (The NoExecute
ones evict pods: L{k3stw.controllers.tainteviction}.)

Like kube-controller-manager it measures silence with its own clock: it
notes when it last *saw* a node's Lease renewTime or Ready heartbeat change,
so clock skew between a node and the server does not matter, and a server
that starts after a long pause gives every node a full grace period.  A
node is looked at when its Node or Lease changes, and again when its grace
period would run out: nothing polls.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from k3stw.apiserver.informers import Selection, ServerInformers
from k3stw.apiserver.kinds import leases, nodes
from k3stw.apiserver.status import StatusError
from k3stw.apiserver.storage import ObjectStore
from k3stw.controllers import TRANSIENT
from k3stw.machinery.controller import Controller
from k3stw.machinery.informer import each_change
from k3stw.machinery.nodes import (
    KUBELET_CONDITIONS,
    LEASE_NAMESPACE,
    Taint,
    has_taint,
    without_taints,
)
from k3stw.machinery.objects import Object, find_condition, get_path, join_key, name_of, uid_of
from k3stw.machinery.times import rfc3339

UNREACHABLE = "node.kubernetes.io/unreachable"
UNREACHABLE_TAINTS = (Taint(UNREACHABLE, "", "NoSchedule"), Taint(UNREACHABLE, "", "NoExecute"))
NOT_READY = "node.kubernetes.io/not-ready"
NOT_READY_TAINTS = (Taint(NOT_READY, "", "NoSchedule"), Taint(NOT_READY, "", "NoExecute"))
#: The taints a node carries for each status of its Ready condition (kube's taint templates).
READY_TAINTS: dict[str, tuple[Taint, ...]] = {
    "True": (),
    "False": NOT_READY_TAINTS,
    "Unknown": UNREACHABLE_TAINTS,
}
_MANAGED = (*UNREACHABLE_TAINTS, *NOT_READY_TAINTS)

UNKNOWN_REASON = "NodeStatusUnknown"
UNKNOWN_MESSAGE = "Kubelet stopped posting node status."
NEVER_REASON = "NodeStatusNeverUpdated"
NEVER_MESSAGE = "Kubelet never posted node status."
#: The Leases that show nodes alive.
NODE_LEASES = Selection("node-leases", namespace=LEASE_NAMESPACE)
#: A node is looked at again this long after its grace period would end (timers are not exact).
_SLACK = 0.1


@dataclass(frozen=True)
class _Probe:
    """What showed a node alive (its uid, Lease renewTime, Ready heartbeat) and when we saw it."""

    signature: tuple[str, str, str]
    seen_at: float


class NodeLifecycleController(Controller):
    """
    Marks silent nodes Ready=Unknown and unreachable, and clears the taints
    when they come back.

    :param grace_period: seconds of silence before a node turns Unknown
        (``--node-monitor-grace-period``).
    """

    label = "node lifecycle controller"
    expected = TRANSIENT

    def __init__(
        self, informers: ServerInformers, store: ObjectStore, grace_period: float = 40.0
    ) -> None:
        self.nodes = informers.for_resource(nodes.RESOURCE)
        self.leases = informers.for_resource(leases.RESOURCE, NODE_LEASES)
        super().__init__(store.clock, [self.nodes, self.leases])
        self.store = store
        self.grace_period = grace_period
        self._probes: dict[str, _Probe] = {}
        self.add_handler(self.nodes, self.enqueue_handler())
        self.add_handler(self.leases, each_change(self._lease_changed))

    def _lease_changed(self, lease: Object) -> None:
        self.enqueue(name_of(lease))

    def new_term(self) -> None:
        self._probes.clear()  # every node gets a full grace period, as after a restart

    async def sync(self, key: str) -> None:
        node = self.nodes.get(key)
        if node is None:
            self._probes.pop(key, None)
            return
        now = self.clock.seconds()
        silent_for = self._observe(key, node, self.leases.get(join_key(LEASE_NAMESPACE, key)), now)
        if silent_for > self.grace_period:
            if _needs_marking(node):
                self._log.info(
                    "Node {node} has not reported for {grace}s: marking it Unknown",
                    node=key,
                    grace=self.grace_period,
                )
                await self._update(key, self._mark_unknown)
            return
        if _needs_retaint(node):
            self._log.info(
                "Node {node} is Ready={status}: updating its taints",
                node=key,
                status=(find_condition(node, "Ready") or {}).get("status"),
            )
            stamp = rfc3339(now)
            await self._update(key, lambda current: _retaint(current, stamp))
        # Look again when the grace period would run out, should nothing change before.
        self.queue.add_after(key, self.grace_period - silent_for + _SLACK)

    def _observe(self, name: str, node: Object, lease: Object | None, now: float) -> float:
        """Note what shows the node alive; how long it has been silent."""
        ready = find_condition(node, "Ready") or {}
        signature = (
            uid_of(node),
            str(get_path(lease, "spec", "renewTime") or ""),
            str(ready.get("lastHeartbeatTime") or ""),
        )
        probe = self._probes.get(name)
        if probe is None or probe.signature != signature:
            probe = _Probe(signature, now)
            self._probes[name] = probe
        return now - probe.seen_at

    async def _update(self, name: str, mutate: Callable[[Object], Object]) -> None:
        try:
            await self.store.guaranteed_update(nodes.RESOURCE, None, name, mutate)
        except StatusError as e:
            if e.code != 404:
                raise

    def _mark_unknown(self, node: Object) -> Object:
        probe = self._probes.get(node["metadata"]["name"])
        ready = find_condition(node, "Ready") or {}
        if probe is not None and probe.signature[2] != str(ready.get("lastHeartbeatTime") or ""):
            return node  # a heartbeat arrived since the cache showed the node: not silent after all
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
        return _retaint(node, now)


def _wanted_taints(node: Object) -> tuple[Taint, ...] | None:
    """The Ready taints the node should carry (None: its Ready condition says nothing yet)."""
    ready = find_condition(node, "Ready")
    return None if ready is None else READY_TAINTS.get(str(ready.get("status")))


def _needs_marking(node: Object) -> bool:
    """Whether a silent node still lacks the Unknown conditions or the unreachable taints."""
    for kind, *_ in KUBELET_CONDITIONS:
        condition = find_condition(node, kind)
        if condition is None or condition.get("status") != "Unknown":
            return True
    return _needs_retaint(node)


def _needs_retaint(node: Object) -> bool:
    """Whether the node's Ready taints are not those its Ready condition calls for."""
    wanted = _wanted_taints(node)
    taints = get_path(node, "spec", "taints") or []
    return wanted is not None and any(
        has_taint(taints, taint) != (taint in wanted) for taint in _MANAGED
    )


def _retaint(node: Object, now: str) -> Object:
    """The node with the Ready taints its condition calls for (NoExecute ones added C{now})."""
    wanted = _wanted_taints(node)
    if wanted is None:
        return node
    spec = node.setdefault("spec", {})
    unwanted = [taint for taint in _MANAGED if taint not in wanted]
    taints = without_taints(spec.get("taints") or [], unwanted)
    for taint in wanted:
        if not has_taint(taints, taint):
            taints.append(taint.to_object(now))
    if taints:
        spec["taints"] = taints
    else:
        spec.pop("taints", None)
    return node
