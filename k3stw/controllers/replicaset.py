"""
kube-controller-manager's replicaset controller, which also runs
ReplicationControllers: it keeps ``spec.replicas`` active pods made from the
template, creating them in slow-start batches (1, 2, 4, ...) and deleting the
ones kube would delete first, adopts orphans its selector picks and releases
pods that no longer match, and reports the counts in ``status``.

A sync that created or deleted pods waits for the pod informer to show them
(its expectations) before it counts again, so it never makes one twice.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from twisted.internet.defer import Deferred, gatherResults

from k3stw.apiserver.informers import ServerInformers
from k3stw.apiserver.kinds import pods, replicasets
from k3stw.apiserver.kinds.pods import is_ready
from k3stw.apiserver.registry import ResourceType
from k3stw.apiserver.status import StatusError
from k3stw.apiserver.storage import ObjectStore
from k3stw.controllers import TRANSIENT
from k3stw.controllers.events import NORMAL, WARNING, EventRecorder
from k3stw.controllers.ownership import (
    MANAGER,
    ClaimRefused,
    Expectations,
    claim,
    controller_ref,
    pod_from_template,
    resolve_owner,
)
from k3stw.machinery.cache import NAMESPACE
from k3stw.machinery.controller import Controller
from k3stw.machinery.informer import EventHandler
from k3stw.machinery.labels import LabelSelectorError, spec_matches
from k3stw.machinery.objects import (
    Object,
    find_condition,
    get_path,
    is_deleting,
    metadata,
    name_of,
    namespace_of,
    object_key,
    split_key,
    uid_of,
)
from k3stw.machinery.times import parse_time, rfc3339

#: Most pods one sync creates or deletes (``burstReplicas``).
BURST_REPLICAS = 500
#: The first slow-start batch (``SlowStartInitialBatchSize``).
SLOW_START_INITIAL_BATCH = 1
#: The annotation that makes a pod cheaper (or dearer) to delete on scale-down.
DELETION_COST = "controller.kubernetes.io/pod-deletion-cost"
REPLICA_FAILURE = "ReplicaFailure"


# Pods as the workload controllers judge them


def is_active(pod: Mapping[str, Any]) -> bool:
    """Not finished (Succeeded, Failed) and not being deleted (``IsPodActive``)."""
    phase = get_path(pod, "status", "phase")
    return phase not in ("Succeeded", "Failed") and not is_deleting(pod)


def ready_since(pod: Mapping[str, Any]) -> float | None:
    """When a ready pod turned Ready (its condition's lastTransitionTime)."""
    ready = find_condition(pod, "Ready")
    if ready is None or ready.get("status") != "True":
        return None
    return parse_time(ready.get("lastTransitionTime"))


def available_at(pod: Mapping[str, Any], min_ready_seconds: int) -> float | None:
    """When a pod is (or will be) available: ready for C{min_ready_seconds}; None if not ready."""
    if not is_ready(pod):
        return None
    if min_ready_seconds <= 0:
        return -math.inf
    since = ready_since(pod)
    return -math.inf if since is None else since + min_ready_seconds


def is_available(pod: Mapping[str, Any], min_ready_seconds: int, now: float) -> bool:
    """``IsPodAvailable``: ready for at least C{min_ready_seconds}."""
    when = available_at(pod, min_ready_seconds)
    return when is not None and when <= now


def selects(owner: Mapping[str, Any]) -> Callable[[Mapping[str, Any]], bool]:
    """
    Whether the owner's selector picks a label set: a ReplicaSet's (and a
    Deployment's) is a LabelSelector, a ReplicationController's a plain map.
    An invalid or missing one picks nothing.
    """
    spec = get_path(owner, "spec", "selector")
    if owner.get("kind") == "ReplicationController":
        spec = {"matchLabels": spec} if isinstance(spec, Mapping) and spec else None
    if not isinstance(spec, Mapping):
        return lambda labels: False

    def matches(labels: Mapping[str, Any]) -> bool:
        try:
            return spec_matches(spec, labels)
        except LabelSelectorError:
            return False

    return matches


# Which pods go first on scale-down (``ActivePodsWithRanks``)

_PHASE_ORDER = {"Pending": 0, "Unknown": 1, "Running": 2}


def _deletion_cost(pod: Mapping[str, Any]) -> int:
    value = (metadata(pod).get("annotations") or {}).get(DELETION_COST)
    try:
        return int(value) if value is not None else 0
    except ValueError:
        return 0


def _max_restarts(pod: Mapping[str, Any]) -> int:
    statuses = get_path(pod, "status", "containerStatuses") or []
    return max((int(s.get("restartCount") or 0) for s in statuses), default=0)


def _log_bucket(moment: float, now: float) -> int:
    """``logarithmicRankDiff``'s rank: log2 of the age in nanoseconds, -1 if not in the past."""
    age = int((now - moment) * 1e9)
    return int(math.log2(age)) if age > 0 else -1


def _newer_first(a: float | None, b: float | None, uid_a: str, uid_b: str, now: float) -> int:
    """Empty before set, then newer before older in log2 age buckets, then by uid."""
    if a is None or b is None:
        return (0 if b is None else -1) if a is None else 1
    difference = _log_bucket(a, now) - _log_bucket(b, now)
    if difference == 0:
        return -1 if uid_a < uid_b else (1 if uid_a > uid_b else 0)
    return -1 if difference < 0 else 1


def _sign(value: float) -> int:
    return -1 if value < 0 else (1 if value > 0 else 0)


def _compare(a: Object, b: Object, ranks: Mapping[str, int], now: float) -> int:
    """Negative when C{a} is deleted before C{b}."""
    a_node, b_node = get_path(a, "spec", "nodeName"), get_path(b, "spec", "nodeName")
    if bool(a_node) != bool(b_node):
        return -1 if not a_node else 1
    a_phase = _PHASE_ORDER.get(str(get_path(a, "status", "phase") or ""), 0)
    b_phase = _PHASE_ORDER.get(str(get_path(b, "status", "phase") or ""), 0)
    if a_phase != b_phase:
        return _sign(a_phase - b_phase)
    if is_ready(a) != is_ready(b):
        return -1 if not is_ready(a) else 1
    if (cost := _deletion_cost(a) - _deletion_cost(b)) != 0:
        return _sign(cost)
    if (rank := ranks[object_key(b)] - ranks[object_key(a)]) != 0:
        return _sign(rank)
    if is_ready(a) and is_ready(b):
        a_ready, b_ready = ready_since(a), ready_since(b)
        if a_ready != b_ready:
            return _newer_first(a_ready, b_ready, uid_of(a), uid_of(b), now)
    if (restarts := _max_restarts(b) - _max_restarts(a)) != 0:
        return _sign(restarts)
    a_created = parse_time(metadata(a).get("creationTimestamp"))
    b_created = parse_time(metadata(b).get("creationTimestamp"))
    if a_created != b_created:
        return _newer_first(a_created, b_created, uid_of(a), uid_of(b), now)
    return 0


def pods_to_delete(
    candidates: Sequence[Object], related: Sequence[Object], count: int, now: float
) -> list[Object]:
    """
    The C{count} pods to delete first (``getPodsToDelete``), ranked higher
    where more of the C{related} pods (the owner's siblings') share their node.
    """
    if count >= len(candidates):
        return list(candidates)
    on_node: dict[str, int] = {}
    for pod in related:
        if is_active(pod):
            node = str(get_path(pod, "spec", "nodeName") or "")
            on_node[node] = on_node.get(node, 0) + 1
    ranks = {
        object_key(pod): on_node.get(str(get_path(pod, "spec", "nodeName") or ""), 0)
        for pod in candidates
    }

    def compare(a: Object, b: Object) -> int:
        return _compare(a, b, ranks, now)

    return sorted(candidates, key=functools.cmp_to_key(compare))[:count]


async def slow_start_batch(count: int, initial: int, make: Callable[[], Awaitable[None]]) -> int:
    """
    Call C{make} C{count} times, in batches of C{initial}, twice that, ...,
    each batch at once; stop after a batch with a failure (``slowStartBatch``).

    :return: how many calls succeeded.
    :raises: the first failure of the batch that stopped it.
    """
    remaining, successes = count, 0
    batch = min(remaining, initial)
    while batch > 0:
        results = await gatherResults(
            [Deferred.fromCoroutine(_attempt(make)) for _ in range(batch)]
        )
        errors = [error for error in results if error is not None]
        successes += batch - len(errors)
        if errors:
            raise _SlowStartStopped(successes, errors[0])
        remaining -= batch
        batch = min(2 * batch, remaining)
    return successes


class _SlowStartStopped(Exception):
    def __init__(self, successes: int, error: Exception) -> None:
        super().__init__(str(error))
        self.successes = successes
        self.error = error


async def _attempt(make: Callable[[], Awaitable[None]]) -> Exception | None:
    try:
        await make()
    except Exception as e:
        return e
    return None


# Status


def replica_status(
    owner: Mapping[str, Any], active: Sequence[Object], failure: Object | None, now: float
) -> Object:
    """
    The owner's status for its C{active} pods (``calculateStatus``), with the
    ReplicaFailure condition C{failure} set (or kept) or, if None, removed.
    """
    spec = owner.get("spec") or {}
    template_labels = get_path(spec, "template", "metadata", "labels") or {}
    min_ready = int(spec.get("minReadySeconds") or 0)
    labelled = sum(
        1
        for pod in active
        if all((metadata(pod).get("labels") or {}).get(k) == v for k, v in template_labels.items())
    )
    status: Object = {
        "replicas": len(active),
        "fullyLabeledReplicas": labelled,
        "readyReplicas": sum(1 for pod in active if is_ready(pod)),
        "availableReplicas": sum(1 for pod in active if is_available(pod, min_ready, now)),
        "observedGeneration": int(metadata(owner).get("generation") or 0),
    }
    status = {k: v for k, v in status.items() if v or k == "replicas"}
    conditions = [
        c
        for c in get_path(owner, "status", "conditions") or []
        if isinstance(c, dict) and c.get("type") != REPLICA_FAILURE
    ]
    if failure is not None:
        conditions.append(failure)
    if conditions:
        status["conditions"] = conditions
    return status


class ReplicaSetController(Controller):
    """
    Keeps each ReplicaSet's (or ReplicationController's) pods at its
    ``spec.replicas``.

    :param resource: ReplicaSets (by default) or ReplicationControllers.
    :param host: the server's name, as the Events give it.
    """

    label = "replicaset controller"
    expected = (*TRANSIENT, ClaimRefused)

    def __init__(
        self,
        informers: ServerInformers,
        store: ObjectStore,
        resource: ResourceType = replicasets.RESOURCE,
        host: str = "",
        workers: int = 5,
    ) -> None:
        self.resource = resource
        self.owners = informers.for_resource(resource)
        self.pods = informers.for_resource(pods.RESOURCE)
        super().__init__(store.clock, [self.owners, self.pods], workers=workers)
        self.store = store
        component = (
            "replication-controller"
            if resource.kind == "ReplicationController"
            else "replicaset-controller"
        )
        self.label = component.replace("-", " ")
        self.recorder = EventRecorder(store, store.clock, component, host)
        self.expectations = Expectations(store.clock)
        self.add_handler(self.owners, self.enqueue_handler())
        self.add_handler(
            self.pods,
            EventHandler(
                on_add=self._pod_added, on_update=self._pod_updated, on_delete=self._pod_deleted
            ),
        )

    # The pod informer's news

    def _pod_added(self, pod: Object) -> None:
        if is_deleting(pod):
            self._pod_deleted(pod)
            return
        owner = resolve_owner(self.owners, self.resource.kind, pod)
        if owner is not None:
            key = object_key(owner)
            self.expectations.creation_observed(key)
            self.enqueue(key)
        elif controller_ref(pod) is None:
            self._enqueue_selecting(pod)

    def _pod_updated(self, old: Object, new: Object) -> None:
        if metadata(old).get("resourceVersion") == metadata(new).get("resourceVersion"):
            return
        labels_changed = metadata(old).get("labels") != metadata(new).get("labels")
        if is_deleting(new):
            self._pod_deleted(new)
            if labels_changed:
                self._pod_deleted(old)
            return
        old_ref, new_ref = controller_ref(old), controller_ref(new)
        if old_ref != new_ref and old_ref is not None:
            previous = resolve_owner(self.owners, self.resource.kind, old)
            if previous is not None:
                self.enqueue(object_key(previous))
        owner = resolve_owner(self.owners, self.resource.kind, new)
        if owner is not None:
            key = object_key(owner)
            self.enqueue(key)
            min_ready = int(get_path(owner, "spec", "minReadySeconds") or 0)
            if min_ready > 0 and not is_ready(old) and is_ready(new):
                self.queue.add_after(key, min_ready)
        elif new_ref is None and (labels_changed or old_ref != new_ref):
            self._enqueue_selecting(new)

    def _pod_deleted(self, pod: Object) -> None:
        owner = resolve_owner(self.owners, self.resource.kind, pod)
        if owner is not None:
            key = object_key(owner)
            self.expectations.deletion_observed(key, object_key(pod))
            self.enqueue(key)

    def _enqueue_selecting(self, pod: Object) -> None:
        """An orphan: every owner whose selector picks it may adopt it."""
        labels = metadata(pod).get("labels") or {}
        if not labels:
            return
        for owner in self.owners.cache.by_index(NAMESPACE, namespace_of(pod)):
            if selects(owner)(labels):
                self.enqueue(object_key(owner))

    # Sync

    def new_term(self) -> None:
        self.expectations.clear()

    async def sync(self, key: str) -> None:
        owner = self.owners.get(key)
        if owner is None:
            self.expectations.forget(key)
            return
        needs_sync = self.expectations.satisfied(key)
        namespace, _ = split_key(key)
        candidates = [
            pod for pod in self.pods.cache.by_index(NAMESPACE, namespace or "") if is_active(pod)
        ]
        active = await claim(
            self.store, self.resource, owner, pods.RESOURCE, candidates, selects(owner)
        )
        failure: tuple[str, StatusError] | None = None
        if needs_sync and not is_deleting(owner):
            failure = await self._manage(key, owner, active)
        await self._write_status(owner, active, failure)
        if failure is not None:
            raise failure[1]

    async def _manage(
        self, key: str, owner: Object, active: list[Object]
    ) -> tuple[str, StatusError] | None:
        """Create or delete pods towards ``spec.replicas``; the failure (reason, error), if any."""
        wanted = int(get_path(owner, "spec", "replicas") or 0)
        difference = len(active) - wanted
        if difference < 0:
            count = min(-difference, BURST_REPLICAS)
            self.expectations.expect(key, creations=count)
            try:
                await slow_start_batch(
                    count, SLOW_START_INITIAL_BATCH, lambda: self._create_pod(owner)
                )
            except _SlowStartStopped as stopped:
                # The pods never attempted will not be seen either.
                for _ in range(count - stopped.successes):
                    self.expectations.creation_observed(key)
                error = stopped.error
                if isinstance(error, StatusError):
                    return "FailedCreate", error
                raise error from None
        elif difference > 0:
            count = min(difference, BURST_REPLICAS)
            victims = pods_to_delete(active, self._related_pods(owner), count, self.clock.seconds())
            self.expectations.expect(key, deletions=[object_key(pod) for pod in victims])
            results = await gatherResults(
                [Deferred.fromCoroutine(self._delete_pod(key, owner, pod)) for pod in victims]
            )
            errors = [error for error in results if error is not None]
            if errors:
                return "FailedDelete", errors[0]
        return None

    def _related_pods(self, owner: Object) -> list[Object]:
        """The pods of every owner sharing C{owner}'s controller (a Deployment's ReplicaSets)."""
        ref = controller_ref(owner)
        siblings = [owner]
        if ref is not None:
            siblings = [
                sibling
                for sibling in self.owners.cache.by_index(NAMESPACE, namespace_of(owner))
                if (controller_ref(sibling) or {}).get("uid") == ref.get("uid")
            ] or [owner]
        uids = {uid_of(sibling) for sibling in siblings}
        return [
            pod
            for pod in self.pods.cache.by_index(NAMESPACE, namespace_of(owner))
            if (controller_ref(pod) or {}).get("uid") in uids
        ]

    async def _create_pod(self, owner: Object) -> None:
        template = get_path(owner, "spec", "template") or {}
        try:
            pod = await self.store.create(
                pods.RESOURCE, namespace_of(owner), pod_from_template(template, owner), MANAGER
            )
        except StatusError as e:
            # kube stays quiet about creates refused by a terminating namespace.
            if not (e.code == 403 and "being terminated" in e.message):
                self.recorder.emit(owner, WARNING, "FailedCreate", f"Error creating: {e.message}")
            raise
        self.recorder.emit(owner, NORMAL, "SuccessfulCreate", f"Created pod: {name_of(pod)}")

    async def _delete_pod(self, key: str, owner: Object, pod: Object) -> StatusError | None:
        try:
            await self.store.delete(
                pods.RESOURCE, namespace_of(pod), name_of(pod), {"uid": uid_of(pod)}
            )
        except StatusError as e:
            self.expectations.deletion_observed(key, object_key(pod))
            if e.code == 404:
                return None
            self.recorder.emit(owner, WARNING, "FailedDelete", f"Error deleting: {e.message}")
            return e
        self.recorder.emit(owner, NORMAL, "SuccessfulDelete", f"Deleted pod: {name_of(pod)}")
        return None

    async def _write_status(
        self, owner: Object, active: list[Object], failure: tuple[str, StatusError] | None
    ) -> None:
        now = self.clock.seconds()
        condition = find_condition(owner, REPLICA_FAILURE)
        if failure is not None and condition is None:
            reason, error = failure
            condition = {
                "type": REPLICA_FAILURE,
                "status": "True",
                "lastTransitionTime": rfc3339(now),
                "reason": reason,
                "message": error.message,
            }
        elif failure is None:
            condition = None
        status = replica_status(owner, active, condition, now)
        if status != owner.get("status"):
            uid = uid_of(owner)

            def replace(current: Object) -> Object:
                if uid_of(current) == uid:
                    current["status"] = status
                return current

            try:
                await self.store.guaranteed_update(
                    self.resource,
                    namespace_of(owner),
                    name_of(owner),
                    replace,
                    MANAGER,
                    subresource="status",
                )
            except StatusError as e:
                if e.code != 404:
                    raise
        self._recheck_availability(owner, active, now)

    def _recheck_availability(self, owner: Object, active: list[Object], now: float) -> None:
        """Look again when the next ready pod has been ready for minReadySeconds."""
        min_ready = int(get_path(owner, "spec", "minReadySeconds") or 0)
        if min_ready <= 0:
            return
        pending = [
            when
            for pod in active
            if (when := available_at(pod, min_ready)) is not None and when > now
        ]
        if pending:
            self.queue.add_after(object_key(owner), min(pending) - now)
