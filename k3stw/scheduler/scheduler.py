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

A pod no node takes may preempt pods of lower priority (L{preemption}): the
victims are marked ``DisruptionTarget`` and deleted, the pod is nominated
to their node (``status.nominatedNodeName``), which holds its requests
against pods of lower priority until it is tried again.

A pod's PersistentVolumeClaims are VolumeBinding's (L{volumebinding}):
checked before the filters, filtered per node, and bound to a volume on
the chosen node before the pod is.

Left out: scheduling gates, node sampling above 100 nodes; the
system default spreading counts a pod's controller's pods rather than the
pods its Services' and controllers' selectors select.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from twisted.internet.defer import Deferred

from k3stw.apiserver.binding import bind
from k3stw.apiserver.informers import ServerInformers
from k3stw.apiserver.kinds import namespaces, nodes, pods
from k3stw.apiserver.registry import Registry
from k3stw.apiserver.status import StatusError
from k3stw.apiserver.storage import ObjectStore
from k3stw.controllers import TRANSIENT, update_status_if_present
from k3stw.controllers.events import NORMAL, WARNING, EventRecorder
from k3stw.machinery.controller import Controller
from k3stw.machinery.informer import EventHandler, each_change
from k3stw.machinery.objects import (
    Object,
    find_condition,
    get_path,
    is_deleting,
    metadata,
    name_of,
    object_key,
    set_condition,
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
from k3stw.scheduler.preemption import Candidate, copy_state, preempt, victim_condition
from k3stw.scheduler.volumebinding import (
    PodVolumes,
    VolumeBinding,
    VolumesNotBound,
    pre_filter_error,
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
    :param registry: where to find PodDisruptionBudgets, which preemption
        spares where it can (without it, it sees none).
    """

    label = "scheduler"
    expected = TRANSIENT

    def __init__(
        self,
        informers: ServerInformers,
        store: ObjectStore,
        host: str,
        registry: Registry | None = None,
    ) -> None:
        self.pods = informers.for_resource(pods.RESOURCE)
        self.nodes = informers.for_resource(nodes.RESOURCE)
        self.namespaces = informers.for_resource(namespaces.RESOURCE)
        self.budgets = None
        self.volumes: VolumeBinding | None = None
        if registry is not None:
            budgets = registry.require("policy", "v1", "poddisruptionbudgets")
            self.budgets = informers.for_resource(budgets)
            self.volumes = VolumeBinding(informers, store, registry)
        watched = [
            self.pods,
            self.nodes,
            self.namespaces,
            *([self.budgets] if self.budgets else []),
            *(self.volumes.storage_informers if self.volumes else []),
        ]
        super().__init__(store.clock, watched)
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
        #: Pending pods nominated to a node by preemption: (node, facts) by key.
        self._nominated: dict[str, tuple[str, PodFacts]] = {}
        self.add_handler(
            self.nodes, EventHandler(self._node_added, self._node_updated, self._node_deleted)
        )
        self.add_handler(
            self.pods, EventHandler(self._pod_changed, self._pod_updated, self._pod_gone)
        )
        if self.volumes is not None:
            # A claim or volume that appears or changes may let a waiting pod in.
            for informer in (self.volumes.claims, self.volumes.volumes):
                requeue = each_change(lambda _: self._requeue_unschedulable(), deletions=False)
                self.add_handler(informer, requeue)

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
        nominated = get_path(pod, "status", "nominatedNodeName")
        if nominated and _ours(pod):
            self._nominated[key] = (str(nominated), PodFacts.of(pod))
        else:
            self._nominated.pop(key, None)
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
        self._nominated.pop(key, None)
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
        volumes = self.volumes.pre_filter(pod) if self.volumes is not None else None
        if isinstance(volumes, str) and candidates:
            message = pre_filter_error(volumes, len(candidates), facts.preemption_policy)
            await self._unschedulable_pod(key, pod, message)
            return
        claims = volumes if isinstance(volumes, PodVolumes) else None
        cycle = Cycle(facts, candidates, self._namespace_labels, claims.filter if claims else None)
        rejections: dict[str, Rejection] = {}
        feasible: list[NodeState] = []
        nominated = self._states.get(str(get_path(pod, "status", "nominatedNodeName") or ""))
        # kube tries the node preemption made room on first, and takes it if it fits.
        if nominated is not None and nominated.node and self._fits(cycle, nominated) is None:
            feasible.append(nominated)
        for state in candidates if not feasible else ():
            rejected = self._fits(cycle, state)
            if rejected is None:
                feasible.append(state)
            else:
                rejections[state.name] = rejected
        if not feasible:
            if not candidates:
                await self._unschedulable_pod(key, pod, NO_NODES)
                return

            def fits_without_victims(_: PodFacts, trial: NodeState) -> Rejection | None:
                return self._fits(cycle.with_node(trial), trial)

            verdict = preempt(
                pod,
                facts,
                rejections,
                self._states,
                self.pods.get,
                self._budgets(),
                fits_without_victims,
            )
            message = fit_error(facts, list(rejections.values()), verdict.message)
            if verdict.candidate is None:
                # No candidate: kube clears a nomination; ineligible, it leaves it be.
                nominate = "" if verdict.eligible else None
                await self._unschedulable_pod(key, pod, message, nominate)
                return
            await self._preempt(key, pod, facts, verdict.candidate, message)
            return
        chosen = cycle.select_host(feasible)
        self._nominated.pop(key, None)  # counted on its node now: held no longer
        self._assumed.add(key)
        self._count(key, chosen.name, facts)
        assert chosen.node is not None
        binding = Deferred.fromCoroutine(self._bind(key, pod, chosen.node, claims))
        self._binding.add(binding)
        binding.addBoth(self._bound, binding)

    def _fits(self, cycle: Cycle, state: NodeState) -> Rejection | None:
        """
        The filters, with the pods nominated to the node at the same or a
        higher priority counted as on it (kube's filters with nominated pods).
        """
        facts = cycle.pod
        held = [
            other
            for other_key, (node, other) in self._nominated.items()
            if node == state.name and other_key != facts.key and other.priority >= facts.priority
        ]
        if held:
            trial = copy_state(state, add=held)
            rejected = cycle.with_node(trial).filter(trial)
            if rejected is not None:
                return rejected
        return cycle.filter(state)

    def _budgets(self) -> list[Object]:
        return [] if self.budgets is None else list(self.budgets.cache)

    async def _preempt(
        self, key: str, pod: Object, facts: PodFacts, candidate: Candidate, message: str
    ) -> None:
        """
        Nominate the candidate's node for the pod, then preempt its victims:
        each gets ``DisruptionTarget`` and is deleted, with a ``Preempted``
        event; lower-priority pods nominated there lose their nomination.
        """
        node = candidate.node
        self._nominated[key] = (node, facts)
        await self._unschedulable_pod(key, pod, message, node)
        uid = metadata(pod).get("uid", "")
        now = rfc3339(self.clock.seconds())
        for victim in candidate.victims:
            if is_deleting(victim):
                continue  # already going: nothing more to ask

            def mark(current: Object) -> Object:
                set_condition(current.setdefault("status", {}), victim_condition(), now)
                return current

            if not await self._update_status(object_key(victim), mark):
                continue  # gone already
            try:
                await self.store.delete(
                    pods.RESOURCE,
                    metadata(victim).get("namespace"),
                    name_of(victim),
                    {"uid": metadata(victim).get("uid")},
                )
            except StatusError as e:
                if e.code not in (404, 409):
                    raise
                continue  # gone already (or replaced by a namesake, which is no victim)
            self.recorder.emit(
                victim, NORMAL, "Preempted", f"Preempted by pod {uid} on node {node}"
            )
        for other_key, (other_node, other) in list(self._nominated.items()):
            if other_node == node and other.priority < facts.priority:
                await self._clear_nomination(other_key)
        # The victims are gone (or going): try again after the back-off.
        self.queue.add_after(key, self._backoff(key))

    async def _clear_nomination(self, key: str) -> None:
        self._nominated.pop(key, None)

        def clear(current: Object) -> Object:
            current.setdefault("status", {}).pop("nominatedNodeName", None)
            return current

        await self._update_status(key, clear)

    async def _update_status(self, key: str, mutate: Callable[[Object], Object]) -> bool:
        """Change a pod's status; False if the pod is gone."""
        namespace, name = split_key(key)
        return await update_status_if_present(self.store, pods.RESOURCE, namespace, name, mutate)

    def _namespace_labels(self, namespace: str) -> Mapping[str, str]:
        labels: Mapping[str, str] = (
            metadata(self.namespaces.get(namespace) or {}).get("labels") or {}
        )
        return labels

    def _bound(self, result: object, binding: Deferred[None]) -> object:
        self._binding.discard(binding)
        return result

    async def _bind(
        self, key: str, pod: Object, node_object: Object, volumes: PodVolumes | None
    ) -> None:
        node = name_of(node_object)
        namespace, name = split_key(key)
        body = {
            "metadata": {"namespace": namespace, "name": name, "uid": pod["metadata"]["uid"]},
            "target": {"kind": "Node", "name": node},
        }
        try:
            if volumes is not None and self.volumes is not None:
                await self.volumes.pre_bind(volumes, node_object)
            await bind(self.store, namespace or "", name, body)
        except (*TRANSIENT, VolumesNotBound) as e:
            if key in self._assumed:
                self._assumed.discard(key)
                self._uncount(key)
            if isinstance(e, StatusError) and e.code == 404:
                return
            if isinstance(e, VolumesNotBound):
                message = f'running PreBind plugin "VolumeBinding": {e}'
                self.recorder.emit(pod, WARNING, "FailedScheduling", message)
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

    async def _unschedulable_pod(
        self, key: str, pod: Object, message: str, nominate: str | None = None
    ) -> None:
        """
        Say why on the pod (status) and in an event; wait for a change or the
        back-off.

        :param nominate: the node to nominate the pod to, "" to clear its
            nomination, None to leave it as it is.
        """
        self._attempts[key] = self._attempts.get(key, 0) + 1
        self._unschedulable.add(key)
        self.queue.add_after(key, UNSCHEDULABLE_TIMEOUT)
        condition = find_condition(pod, "PodScheduled") or {}
        nominated = get_path(pod, "status", "nominatedNodeName") or ""
        if (condition.get("status"), condition.get("reason"), condition.get("message")) != (
            "False",
            "Unschedulable",
            message,
        ) or nominate not in (None, nominated):
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
                if nominate:
                    current["status"]["nominatedNodeName"] = nominate
                elif nominate == "":
                    current["status"].pop("nominatedNodeName", None)
                return current

            if not await self._update_status(key, mark):
                return
        note = message if len(message) <= NOTE_LIMIT else message[: NOTE_LIMIT - 4] + " ..."
        self.recorder.emit(pod, WARNING, "FailedScheduling", note)

    def new_term(self) -> None:
        # Binds in flight were cancelled with the last term: their pods are pending again.
        for key in self._assumed:
            self._uncount(key)
        self._assumed.clear()
        self._unschedulable.clear()
        self._attempts.clear()
        self._nominated.clear()  # the replay nominates them again

    def stopService(self) -> Deferred[None] | None:
        for binding in list(self._binding):
            binding.cancel()
        return super().stopService()
