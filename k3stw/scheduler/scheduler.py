"""
The scheduler (kube-scheduler's default profile, in part): pods that name
no node and ask for ``default-scheduler`` are filtered against every node,
scored, and bound to the best through ``pods/binding``; a pod no node takes
gets ``PodScheduled=False`` (``Unschedulable``) with kube's message and a
``FailedScheduling`` event, and is tried again when a node or a pod changes
in a way that may make room, and after its back-off.

Like kube-scheduler's cache, the scheduler keeps each node's summed
requests, host ports and pods as the pod informer reports them, and counts
a pod it has placed as on its node at once (``assumed``), before the
informer shows it bound, so pods placed back to back never overcommit a
node.  Binding runs beside the next pod's scheduling, as kube's binding
cycle does.

Left out: preemption (the message reports what it would find with no
victims), volumes, scheduling gates, node sampling above 100 nodes; the
system default spreading counts a pod's controller's pods rather than the
pods its Services' and controllers' selectors select.
"""

from __future__ import annotations

from collections.abc import Mapping

from twisted.internet.defer import Deferred

from k3stw.apiserver.binding import bind
from k3stw.apiserver.informers import ServerInformers
from k3stw.apiserver.kinds import namespaces, nodes, pods
from k3stw.apiserver.status import StatusError
from k3stw.apiserver.storage import ObjectStore
from k3stw.controllers import TRANSIENT
from k3stw.controllers.events import NORMAL, WARNING, EventRecorder
from k3stw.machinery.controller import Controller
from k3stw.machinery.informer import EventHandler
from k3stw.machinery.objects import (
    Object,
    find_condition,
    get_path,
    is_deleting,
    metadata,
    name_of,
    object_key,
    split_key,
)
from k3stw.machinery.times import rfc3339
from k3stw.machinery.timing import Backoff
from k3stw.scheduler.framework import (
    NO_NODES,
    SCHEDULER_NAME,
    Cycle,
    NodeState,
    PodFacts,
    Rejection,
    fit_error,
)

#: kube's pod back-off: 1 s doubling to 10 s (``podInitialBackoffSeconds``, ``podMax...``).
POD_BACKOFF = Backoff(1.0, 10.0, jitter=0.0)
#: An unschedulable pod is tried again after this long even if nothing changed.
UNSCHEDULABLE_TIMEOUT = 300.0
#: An event's note is cut to this length (with " ...").
NOTE_LIMIT = 1024


def _ours(pod: Object) -> bool:
    """Whether a pod waits for this scheduler: unbound, ours, alive."""
    spec = pod.get("spec") or {}
    return (
        not spec.get("nodeName")
        and (spec.get("schedulerName") or SCHEDULER_NAME) == SCHEDULER_NAME
        and not is_deleting(pod)
        and get_path(pod, "status", "phase") not in ("Succeeded", "Failed")
    )


def _holds_resources(pod: Object) -> bool:
    """Whether a bound pod counts against its node (a finished one does not)."""
    return bool(get_path(pod, "spec", "nodeName")) and get_path(pod, "status", "phase") not in (
        "Succeeded",
        "Failed",
    )


def _asks_for_pods(pod: Object | None) -> bool:
    """Whether a pod's placement depends on other pods being placed (affinity, spreading)."""
    spec = (pod or {}).get("spec") or {}
    return bool(get_path(spec, "affinity", "podAffinity") or spec.get("topologySpreadConstraints"))


def _node_facts(node: Object) -> tuple[object, ...]:
    """What of a Node matters to scheduling: a change in it may make room."""
    ready = (find_condition(node, "Ready") or {}).get("status")
    return (
        metadata(node).get("labels"),
        get_path(node, "spec", "taints"),
        get_path(node, "spec", "unschedulable"),
        get_path(node, "status", "allocatable"),
        ready,
    )


def _pod_facts(pod: Object) -> tuple[object, ...]:
    """What of a pending pod matters to scheduling (not its status, which we write)."""
    return (pod.get("spec"), metadata(pod).get("labels"))


class Scheduler(Controller):
    """
    Places pending pods on nodes.

    :param host: the server's name, for the events' source.
    """

    label = "scheduler"
    expected = TRANSIENT

    def __init__(self, informers: ServerInformers, store: ObjectStore, host: str) -> None:
        self.pods = informers.for_resource(pods.RESOURCE)
        self.nodes = informers.for_resource(nodes.RESOURCE)
        self.namespaces = informers.for_resource(namespaces.RESOURCE)
        super().__init__(store.clock, [self.pods, self.nodes, self.namespaces])
        self.store = store
        self.recorder = EventRecorder(store, store.clock, SCHEDULER_NAME, host)
        self._states: dict[str, NodeState] = {}
        #: Where each counted pod is counted (bound or assumed).
        self._placed: dict[str, str] = {}
        #: Pods bound by us that the informer has not shown bound yet.
        self._assumed: set[str] = set()
        #: Pods no node took, and how many times each has been tried.
        self._unschedulable: set[str] = set()
        self._attempts: dict[str, int] = {}
        self._binding: set[Deferred[None]] = set()
        self.nodes.add_handler(
            EventHandler(self._node_added, self._node_updated, self._node_deleted)
        )
        self.pods.add_handler(EventHandler(self._pod_changed, self._pod_updated, self._pod_gone))

    # The cache, kept by the informers' handlers.

    def _state(self, name: str) -> NodeState:
        state = self._states.get(name)
        if state is None:
            state = self._states[name] = NodeState(name)
        return state

    def _node_added(self, node: Object) -> None:
        self._state(name_of(node)).set_node(node)
        self._requeue_unschedulable()

    def _node_updated(self, old: Object, new: Object) -> None:
        self._state(name_of(new)).set_node(new)
        if _node_facts(old) != _node_facts(new):
            self._requeue_unschedulable()

    def _node_deleted(self, node: Object) -> None:
        state = self._state(name_of(node))
        state.set_node(None)
        if not state.pods:
            del self._states[state.name]

    def _pod_updated(self, old: Object, new: Object) -> None:
        key = object_key(new)
        if key in self._unschedulable and _pod_facts(old) != _pod_facts(new):
            # The pod itself changed (a toleration, a label): worth another try.
            self._unschedulable.discard(key)
            self.queue.add_after(key, self._backoff(key))
        self._pod_changed(new)
        if _holds_resources(new) and metadata(old).get("labels") != metadata(new).get("labels"):
            # Another pod's affinity or anti-affinity may see it differently now.
            self._requeue_unschedulable()

    def _pod_changed(self, pod: Object) -> None:
        key = object_key(pod)
        if _holds_resources(pod):
            self._assumed.discard(key)
            self._unschedulable.discard(key)
            self._count(key, str(pod["spec"]["nodeName"]), PodFacts.of(pod))
            return
        if key not in self._assumed:
            released = key in self._placed
            self._uncount(key)
            if released:
                self._requeue_unschedulable()
        if _ours(pod):
            if key not in self._unschedulable and key not in self._assumed:
                self.enqueue(key)
        else:
            self._forget_pod(key)

    def _pod_gone(self, pod: Object) -> None:
        key = object_key(pod)
        self._assumed.discard(key)
        self._forget_pod(key)
        if key in self._placed:
            self._uncount(key)
            self._requeue_unschedulable()

    def _forget_pod(self, key: str) -> None:
        self._unschedulable.discard(key)
        self._attempts.pop(key, None)

    def _count(self, key: str, node: str, facts: PodFacts) -> None:
        placed = self._placed.get(key)
        if placed not in (None, node):
            self._uncount(key)
        self._placed[key] = node
        self._state(node).add_pod(facts)
        if placed is None and self._unschedulable:
            self._requeue_waiting_for_pods()

    def _requeue_waiting_for_pods(self) -> None:
        """A pod placed: those waiting on pod affinity or spreading may fit now."""
        for key in [k for k in self._unschedulable if _asks_for_pods(self.pods.get(k))]:
            self._unschedulable.discard(key)
            self.queue.add_after(key, self._backoff(key))

    def _uncount(self, key: str) -> None:
        node = self._placed.pop(key, None)
        if node is None:
            return
        state = self._states.get(node)
        if state is not None:
            state.remove_pod(key)
            if state.node is None and not state.pods:
                del self._states[node]

    def _requeue_unschedulable(self) -> None:
        """A cluster event that may make room: try the unschedulable pods again, after back-off."""
        for key in self._unschedulable:
            self.queue.add_after(key, self._backoff(key))
        self._unschedulable.clear()

    def _backoff(self, key: str) -> float:
        attempts = self._attempts.get(key, 0)
        return POD_BACKOFF.delay(attempts) if attempts else 0.0

    # Scheduling one pod.

    async def sync(self, key: str) -> None:
        pod = self.pods.get(key)
        if pod is None or not _ours(pod) or key in self._assumed:
            self._forget_pod(key)
            return
        self._unschedulable.discard(key)
        facts = PodFacts.of(pod)
        candidates = [state for state in self._states.values() if state.node is not None]
        cycle = Cycle(facts, candidates, self._namespace_labels)
        rejections: list[Rejection] = []
        feasible: list[NodeState] = []
        for state in candidates:
            rejected = cycle.filter(state)
            if rejected is None:
                feasible.append(state)
            else:
                rejections.append(rejected)
        if not feasible:
            message = fit_error(facts, rejections) if candidates else NO_NODES
            await self._unschedulable_pod(key, pod, message)
            return
        chosen = cycle.select_host(feasible)
        self._assumed.add(key)
        self._count(key, chosen.name, facts)
        binding = Deferred.fromCoroutine(self._bind(key, pod, chosen.name))
        self._binding.add(binding)
        binding.addBoth(self._bound, binding)

    def _namespace_labels(self, namespace: str) -> Mapping[str, str]:
        labels: Mapping[str, str] = (
            metadata(self.namespaces.get(namespace) or {}).get("labels") or {}
        )
        return labels

    def _bound(self, result: object, binding: Deferred[None]) -> object:
        self._binding.discard(binding)
        return result

    async def _bind(self, key: str, pod: Object, node: str) -> None:
        namespace, name = split_key(key)
        body = {
            "metadata": {"namespace": namespace, "name": name, "uid": pod["metadata"]["uid"]},
            "target": {"kind": "Node", "name": node},
        }
        try:
            await bind(self.store, namespace or "", name, body)
        except TRANSIENT as e:
            if key in self._assumed:
                self._assumed.discard(key)
                self._uncount(key)
            if isinstance(e, StatusError) and e.code == 404:
                return
            delay = self.queue.add_rate_limited(key)
            self._log.warn(
                "The scheduler could not bind {key} to {node} (again in {delay:.2f}s): {error}",
                key=key,
                node=node,
                delay=delay,
                error=str(e),
            )
            return
        self._attempts.pop(key, None)
        self.recorder.emit(pod, NORMAL, "Scheduled", f"Successfully assigned {key} to {node}")

    async def _unschedulable_pod(self, key: str, pod: Object, message: str) -> None:
        """Say why on the pod (status) and in an event; wait for a change or the back-off."""
        self._attempts[key] = self._attempts.get(key, 0) + 1
        self._unschedulable.add(key)
        self.queue.add_after(key, UNSCHEDULABLE_TIMEOUT)
        condition = find_condition(pod, "PodScheduled") or {}
        if (condition.get("status"), condition.get("reason"), condition.get("message")) != (
            "False",
            "Unschedulable",
            message,
        ):
            namespace, name = split_key(key)
            now = rfc3339(self.clock.seconds())

            def mark(current: Object) -> Object:
                if get_path(current, "spec", "nodeName"):
                    return current  # placed meanwhile (by another scheduler)
                conditions = current.setdefault("status", {}).setdefault("conditions", [])
                found = find_condition(current, "PodScheduled")
                if found is None:
                    found = {"type": "PodScheduled"}
                    conditions.append(found)
                if found.get("status") != "False":
                    found["lastTransitionTime"] = now
                found.update(
                    status="False", reason="Unschedulable", message=message, lastProbeTime=None
                )
                return current

            try:
                await self.store.guaranteed_update(
                    pods.RESOURCE, namespace, name, mark, subresource="status"
                )
            except StatusError as e:
                if e.code != 404:
                    raise
                return
        note = message if len(message) <= NOTE_LIMIT else message[: NOTE_LIMIT - 4] + " ..."
        self.recorder.emit(pod, WARNING, "FailedScheduling", note)

    def startService(self) -> None:
        super().startService()
        # Started anew (a leader again, say): every pending pod gets a turn.
        self._unschedulable.clear()
        for pod in self.pods.cache:
            if _ours(pod) and object_key(pod) not in self._assumed:
                self.enqueue(object_key(pod))

    def stopService(self) -> Deferred[None] | None:
        for binding in list(self._binding):
            binding.cancel()
        return super().stopService()
