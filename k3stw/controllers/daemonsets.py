"""
The DaemonSet controller (kube-controller-manager 1.32's): one pod of a
DaemonSet on each node its template may run on.

A node qualifies when the template's ``nodeName`` (if any), ``nodeSelector``
and required node affinity admit it and the pod, with the tolerations every
daemon pod gets, tolerates its NoSchedule and NoExecute taints; a pod already
there stays unless a NoExecute taint is not tolerated.  Pods are created
unbound, each with required node affinity ``metadata.name In [<node>]``, for
the scheduler to bind.  The template's history is kept as ControllerRevisions
``<ds>-<hash>``; pods carry ``controller-revision-hash`` and
``pod-template-generation``.  A changed template rolls out node by node
within ``maxUnavailable``/``maxSurge`` (RollingUpdate), or as pods are
deleted (OnDelete).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from k3stw.apiserver.informers import ServerInformers
from k3stw.apiserver.kinds import daemonsets, nodes, pods
from k3stw.apiserver.kinds.pods import is_ready
from k3stw.apiserver.registry import Registry
from k3stw.apiserver.status import StatusError
from k3stw.apiserver.storage import ObjectStore
from k3stw.controllers import TRANSIENT
from k3stw.controllers.events import NORMAL, WARNING, EventRecorder
from k3stw.controllers.ownership import Expectations, observing, pod_from_template
from k3stw.controllers.workloads import (
    REVISION_LABEL,
    Availability,
    RevisionHistory,
    controlled_by,
    enqueue_controller,
    phase_of,
    pod_available,
    revision_name,
    revision_number,
    scaled_value,
    template_hash,
    template_patch,
    update_unless_gone,
    write_status,
)
from k3stw.machinery.cache import OWNER_UID, by_owner_uid
from k3stw.machinery.controller import Controller
from k3stw.machinery.informer import EventHandler
from k3stw.machinery.nodeaffinity import NAME_FIELD, fits_node, untolerated_taint
from k3stw.machinery.objects import (
    Object,
    copy_json,
    get_path,
    is_deleting,
    join_key,
    metadata,
    name_of,
    namespace_of,
    object_key,
    uid_of,
)

KIND = "DaemonSet"
COMPONENT = "daemonset-controller"
#: The label that names the template generation a pod was made from.
GENERATION_LABEL = "pod-template-generation"
#: Where the API server keeps a DaemonSet's template generation.
GENERATION_ANNOTATION = daemonsets.TEMPLATE_GENERATION
#: Creates and deletes per sync at most (``BurstReplicas``).
BURST = 250
#: Back-off before deleting a node's failed daemon pod again (``failedPodsBackoff``).
FAILED_BACKOFF_INITIAL = 1.0
FAILED_BACKOFF_MAX = 900.0


def _toleration(key: str, effect: str) -> Object:
    return {"key": key, "operator": "Exists", "effect": effect}


#: What every daemon pod tolerates (``AddOrUpdateDaemonPodTolerations``), in kube's order.
DAEMON_TOLERATIONS = (
    _toleration("node.kubernetes.io/not-ready", "NoExecute"),
    _toleration("node.kubernetes.io/unreachable", "NoExecute"),
    _toleration("node.kubernetes.io/disk-pressure", "NoSchedule"),
    _toleration("node.kubernetes.io/memory-pressure", "NoSchedule"),
    _toleration("node.kubernetes.io/pid-pressure", "NoSchedule"),
    _toleration("node.kubernetes.io/unschedulable", "NoSchedule"),
)
#: And a pod on the host network besides.
HOST_NETWORK_TOLERATION = _toleration("node.kubernetes.io/network-unavailable", "NoSchedule")


def _same_toleration(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    return all((a.get(f) or "") == (b.get(f) or "") for f in ("key", "effect", "operator", "value"))


def daemon_pod_spec(spec: Mapping[str, Any]) -> Object:
    """A copy of a template's pod spec with the tolerations every daemon pod gets."""
    copied = copy_json(dict(spec))
    tolerations = list(copied.get("tolerations") or [])
    extra = list(DAEMON_TOLERATIONS)
    if copied.get("hostNetwork"):
        extra.append(HOST_NETWORK_TOLERATION)
    for toleration in extra:
        if not any(_same_toleration(toleration, t) for t in tolerations):
            tolerations.append(dict(toleration))
    copied["tolerations"] = tolerations
    return copied


def node_affinity_for(affinity: Mapping[str, Any] | None, node: str) -> Object:
    """The pod's affinity with its required node terms replaced by ``metadata.name In [node]``."""
    replaced = copy_json(dict(affinity or {}))
    node_affinity = replaced.setdefault("nodeAffinity", {})
    node_affinity["requiredDuringSchedulingIgnoredDuringExecution"] = {
        "nodeSelectorTerms": [
            {"matchFields": [{"key": NAME_FIELD, "operator": "In", "values": [node]}]}
        ]
    }
    return replaced


def should_run(daemonset: Mapping[str, Any], node: Mapping[str, Any]) -> tuple[bool, bool]:
    """
    Whether a daemon pod should be created on C{node}, and whether one there
    may stay (``NodeShouldRunDaemonPod``).
    """
    spec = get_path(daemonset, "spec", "template", "spec") or {}
    wanted = spec.get("nodeName")
    if wanted and wanted != name_of(node):
        return False, False
    if not fits_node(spec, node):
        return False, False
    taints = get_path(node, "spec", "taints") or []
    tolerations = daemon_pod_spec(spec)["tolerations"]
    if untolerated_taint(taints, tolerations, ("NoSchedule", "NoExecute")) is None:
        return True, True
    return False, untolerated_taint(taints, tolerations, ("NoExecute",)) is None


def target_node(pod: Mapping[str, Any]) -> str:
    """The node a daemon pod is on, or is meant for (``GetTargetNodeName``)."""
    node = get_path(pod, "spec", "nodeName")
    if node:
        return str(node)
    terms = get_path(
        pod,
        "spec",
        "affinity",
        "nodeAffinity",
        "requiredDuringSchedulingIgnoredDuringExecution",
        "nodeSelectorTerms",
    )
    for term in terms or []:
        for field in term.get("matchFields") or []:
            values = field.get("values") or []
            named = field.get("key") == NAME_FIELD and field.get("operator") == "In"
            if named and len(values) == 1:
                return str(values[0])
    return ""


def _oldest_first(pod: Mapping[str, Any]) -> tuple[bool, str, str]:
    # Scheduled pods first, then by creation, then by name (podByCreationTimestampAndPhase).
    scheduled = bool(get_path(pod, "spec", "nodeName"))
    return (not scheduled, str(metadata(pod).get("creationTimestamp") or ""), name_of(pod))


def template_generation(daemonset: Mapping[str, Any]) -> str | None:
    value = (metadata(daemonset).get("annotations") or {}).get(GENERATION_ANNOTATION)
    return str(value) if value is not None and str(value).isdigit() else None


def is_updated(pod: Mapping[str, Any], hash_: str, generation: str | None) -> bool:
    """Whether a pod is of the current template (``IsPodUpdated``)."""
    labels = metadata(pod).get("labels") or {}
    return (bool(hash_) and labels.get(REVISION_LABEL) == hash_) or (
        generation is not None and labels.get(GENERATION_LABEL) == generation
    )


def _max_unavailable_and_surge(daemonset: Mapping[str, Any], desired: int) -> tuple[int, int]:
    """``updateStrategy.rollingUpdate``'s budgets of C{desired} nodes, both rounded up."""
    rolling = get_path(daemonset, "spec", "updateStrategy", "rollingUpdate") or {}
    surge = scaled_value(rolling.get("maxSurge", 0), desired, True)
    unavailable = scaled_value(rolling.get("maxUnavailable", 1), desired, True)
    if surge == 0 and unavailable == 0 and desired > 0:
        unavailable = 1
    return unavailable, surge


#: Status counts Go writes even when zero.
_WRITTEN = ("currentNumberScheduled", "numberMisscheduled", "desiredNumberScheduled", "numberReady")


class DaemonSetController(Controller):
    """Keeps one pod of each DaemonSet on each node that should run it."""

    label = "daemonset controller"
    expected = TRANSIENT

    def __init__(
        self,
        informers: ServerInformers,
        store: ObjectStore,
        registry: Registry,
        host: str,
    ) -> None:
        self.daemonsets = informers.for_resource(daemonsets.RESOURCE)
        self.pods = informers.for_resource(pods.RESOURCE)
        self.nodes = informers.for_resource(nodes.RESOURCE)
        revisions = registry.require("apps", "v1", "controllerrevisions")
        self.revisions = informers.for_resource(revisions)
        super().__init__(
            store.clock, [self.daemonsets, self.pods, self.nodes, self.revisions], workers=2
        )
        self.store = store
        self.history = RevisionHistory(store, revisions)
        self.recorder = EventRecorder(store, store.clock, COMPONENT, host)
        self.expectations = Expectations(store.clock)
        self._failed_backoff: dict[tuple[str, str], tuple[float, float]] = {}
        self.pods.add_index(OWNER_UID, by_owner_uid)
        self.revisions.add_index(OWNER_UID, by_owner_uid)
        self.add_handler(self.daemonsets, self.enqueue_handler())
        self.add_handler(self.pods, observing(KIND, self.expectations))
        self.add_handler(self.pods, enqueue_controller(KIND, self.enqueue))
        self.add_handler(self.revisions, enqueue_controller(KIND, self.enqueue))
        self.add_handler(
            self.nodes,
            EventHandler(
                on_add=lambda node: self._enqueue_all(),
                on_update=self._node_updated,
                on_delete=lambda node: self._enqueue_all(),
            ),
        )

    # Who to look at

    def _node_updated(self, old: Object, new: Object) -> None:
        def placement(node: Object) -> tuple[Any, ...]:
            return (metadata(node).get("labels"), get_path(node, "spec", "taints"))

        if placement(old) != placement(new):
            self._enqueue_all()

    def _enqueue_all(self) -> None:
        for daemonset in self.daemonsets.cache:
            self.enqueue(join_key(namespace_of(daemonset), name_of(daemonset)))

    # The work

    def new_term(self) -> None:
        self.expectations.clear()
        self._failed_backoff.clear()

    async def sync(self, key: str) -> None:
        daemonset = self.daemonsets.get(key)
        if daemonset is None:
            self.expectations.forget(key)
            return
        if is_deleting(daemonset):
            return
        selector = get_path(daemonset, "spec", "selector") or {}
        if not selector.get("matchLabels") and not selector.get("matchExpressions"):
            await self.recorder.emit(
                daemonset,
                WARNING,
                "SelectingAll",
                "This daemon set is selecting all pods. A non-empty selector is required.",
            )
            return
        current, old = await self._history(daemonset)
        if current is None:
            return  # a name collision: the status now counts it, and the new status brings us back
        hash_ = str((metadata(current).get("labels") or {}).get(REVISION_LABEL) or "")
        if self.expectations.satisfied(key):
            by_node = self._pods_by_node(daemonset)
            await self._manage(key, daemonset, by_node, hash_)
            if self.expectations.satisfied(key):
                strategy = get_path(daemonset, "spec", "updateStrategy", "type")
                if strategy == "RollingUpdate":
                    await self._rolling_update(key, daemonset, self._pods_by_node(daemonset), hash_)
                await self._cleanup_history(daemonset, old)
        await self._update_status(daemonset, hash_)

    def _owned_pods(self, daemonset: Mapping[str, Any]) -> list[Object]:
        uid = uid_of(daemonset)
        return [p for p in self.pods.cache.by_index(OWNER_UID, uid) if controlled_by(p, uid)]

    def _pods_by_node(self, daemonset: Mapping[str, Any]) -> dict[str, list[Object]]:
        by_node: dict[str, list[Object]] = {}
        for pod in self._owned_pods(daemonset):
            node = target_node(pod)
            if node:
                by_node.setdefault(node, []).append(pod)
        return by_node

    # History

    async def _history(self, daemonset: Object) -> tuple[Object | None, list[Object]]:
        """The revision of the current template (made if need be) and the older ones."""
        uid = uid_of(daemonset)
        owned = [r for r in self.revisions.cache.by_index(OWNER_UID, uid) if controlled_by(r, uid)]
        patch = template_patch(daemonset["spec"]["template"])
        current = [r for r in owned if r.get("data") == patch]
        old = [r for r in owned if r.get("data") != patch]
        number = max((revision_number(r) for r in old), default=0) + 1
        if not current:
            return await self._snapshot(daemonset, patch, number), old
        # Of several equal revisions the newest stays (dedupCurHistories); the others go.
        current.sort(key=revision_number)
        chosen = current[-1]
        for duplicate in current[:-1]:
            await self.history.delete(duplicate)
        if revision_number(chosen) < number:
            chosen = await self.history.renumber(chosen, number)
        return chosen, old

    async def _snapshot(self, daemonset: Object, patch: Object, number: int) -> Object | None:
        collisions = get_path(daemonset, "status", "collisionCount")
        hash_ = template_hash(daemonset["spec"]["template"], collisions)
        name = revision_name(name_of(daemonset), hash_)
        found = await self.history.snapshot(daemonset, patch, number, name, hash_)
        if found is not None:
            return found
        # Another template hashes to the same name: count the collision, hash again next time.
        seen = collisions

        def bump(current: Object) -> Object:
            status = current.setdefault("status", {})
            if status.get("collisionCount") == seen:
                status["collisionCount"] = int(seen or 0) + 1
            return current

        await update_unless_gone(
            self.store,
            daemonsets.RESOURCE,
            namespace_of(daemonset),
            name_of(daemonset),
            bump,
            subresource="status",
        )
        self._log.info(
            "Found a hash collision for DaemonSet {name}: bumping collisionCount",
            name=name_of(daemonset),
        )
        return None

    async def _cleanup_history(self, daemonset: Object, old: list[Object]) -> None:
        limit = int(get_path(daemonset, "spec", "revisionHistoryLimit") or 0)
        live = {
            str((metadata(p).get("labels") or {}).get(REVISION_LABEL) or "")
            for p in self._owned_pods(daemonset)
        }
        keep = {
            name_of(r) for r in old if (metadata(r).get("labels") or {}).get(REVISION_LABEL) in live
        }
        await self.history.truncate(old, keep, len(old) - limit)

    # Pods on nodes

    async def _manage(
        self, key: str, daemonset: Object, by_node: dict[str, list[Object]], hash_: str
    ) -> None:
        """Create the missing pods and delete those that should not be (``manage``)."""
        create: list[str] = []
        delete: list[Object] = []
        surge = _max_unavailable_and_surge(daemonset, 1)[1] > 0 and (
            get_path(daemonset, "spec", "updateStrategy", "type") == "RollingUpdate"
        )
        known = set()
        for node in self.nodes.cache:
            node_name = name_of(node)
            known.add(node_name)
            run, stay = should_run(daemonset, node)
            on_node = by_node.get(node_name, [])
            if run and not on_node:
                create.append(node_name)
            elif stay:
                running = []
                for pod in on_node:
                    if is_deleting(pod):
                        continue
                    phase = phase_of(pod)
                    if phase in ("Failed", "Succeeded"):
                        if await self._condemn_finished(key, daemonset, pod, node_name, phase):
                            delete.append(pod)
                        continue
                    running.append(pod)
                delete += self._surplus(running, hash_, surge)
            elif on_node:
                delete += [p for p in on_node if not is_deleting(p)]
        # Pods meant for nodes that are gone (unbound ones, as kube's controller deletes;
        # bound ones stand in for kube's pod garbage collector).
        for node_name, on_node in by_node.items():
            if node_name not in known:
                delete += [p for p in on_node if not is_deleting(p)]
        await self._sync_nodes(key, daemonset, delete, create, hash_)

    def _surplus(self, running: list[Object], hash_: str, surge: bool) -> list[Object]:
        """All but one pod on a node; with surge, an old one may stay while the new one readies."""
        if len(running) <= 1:
            return []
        running = sorted(running, key=_oldest_first)
        if not surge:
            return running[1:]
        new = [p for p in running if (metadata(p).get("labels") or {}).get(REVISION_LABEL) == hash_]
        old = [p for p in running if p not in new]
        kept: list[Object] = []
        if new:
            kept.append(new[0])
            if not is_ready(new[0]) and old and is_ready(old[0]):
                kept.append(old[0])
        else:
            kept.append(old[0])
        return [p for p in running if p not in kept]

    async def _condemn_finished(
        self, key: str, daemonset: Object, pod: Object, node: str, phase: str
    ) -> bool:
        """Whether to delete a failed or succeeded pod now (failed ones back off per node)."""
        where = f"{namespace_of(pod)}/{name_of(pod)} on node {node}"
        if phase == "Succeeded":
            await self.recorder.emit(
                daemonset,
                NORMAL,
                "SucceededDaemonPod",
                f"Found succeeded daemon pod {where}, will try to delete it",
            )
            return True
        now = self.clock.seconds()
        backoff_key = (key, node)
        delay, until = self._failed_backoff.get(backoff_key, (0.0, 0.0))
        if now < until:
            self.queue.add_after(key, until - now)
            return False
        delay = min(FAILED_BACKOFF_MAX, delay * 2 if delay else FAILED_BACKOFF_INITIAL)
        self._failed_backoff[backoff_key] = (delay, now + delay)
        await self.recorder.emit(
            daemonset,
            WARNING,
            "FailedDaemonPod",
            f"Found failed daemon pod {where}, will try to kill it",
        )
        return True

    async def _sync_nodes(
        self, key: str, daemonset: Object, delete: list[Object], create: list[str], hash_: str
    ) -> None:
        """Create a pod for each of C{create}'s nodes, delete C{delete} (``syncNodes``)."""
        create, delete = create[:BURST], delete[:BURST]
        self.expectations.expect(
            key, creations=len(create), deletions=[object_key(pod) for pod in delete]
        )
        template = daemonset["spec"]["template"]
        labels = dict(get_path(template, "metadata", "labels") or {})
        labels[REVISION_LABEL] = hash_
        generation = template_generation(daemonset)
        if generation is not None:
            labels[GENERATION_LABEL] = generation
        for at, node in enumerate(create):
            pod = pod_from_template(template, daemonset)
            pod["metadata"]["labels"] = dict(labels)
            spec = daemon_pod_spec(template.get("spec") or {})
            spec["affinity"] = node_affinity_for(spec.get("affinity"), node)
            pod["spec"] = spec
            try:
                created = await self.store.create(pods.RESOURCE, namespace_of(daemonset), pod)
            except StatusError as e:
                for _ in create[at:]:
                    self.expectations.creation_observed(key)
                await self.recorder.emit(
                    daemonset, WARNING, "FailedCreate", f"Error creating: {e.message}"
                )
                raise
            await self.recorder.emit(
                daemonset, NORMAL, "SuccessfulCreate", f"Created pod: {name_of(created)}"
            )
        for pod in delete:
            try:
                await self.store.delete(
                    pods.RESOURCE, namespace_of(pod), name_of(pod), {"uid": uid_of(pod)}
                )
            except StatusError as e:
                self.expectations.deletion_observed(key, object_key(pod))
                if e.code == 404:
                    continue
                await self.recorder.emit(
                    daemonset, WARNING, "FailedDelete", f"Error deleting: {e.message}"
                )
                raise
            await self.recorder.emit(
                daemonset, NORMAL, "SuccessfulDelete", f"Deleted pod: {name_of(pod)}"
            )

    # Rolling update

    async def _rolling_update(
        self, key: str, daemonset: Object, by_node: dict[str, list[Object]], hash_: str
    ) -> None:
        """Replace old pods within the budgets (``rollingUpdate``)."""
        now = self.clock.seconds()
        min_ready = int(get_path(daemonset, "spec", "minReadySeconds") or 0)
        generation = template_generation(daemonset)
        placements = {name_of(n): should_run(daemonset, n) for n in self.nodes.cache}
        runs = {node for node, (run, _) in placements.items() if run}
        eligible = {node for node, (_, stay) in placements.items() if stay}
        max_unavailable, max_surge = _max_unavailable_and_surge(daemonset, len(runs))

        def split(on_node: list[Object]) -> tuple[Object | None, Object | None, bool]:
            new = old = None
            for pod in on_node:
                if is_deleting(pod):
                    continue
                if is_updated(pod, hash_, generation):
                    if new is not None:
                        return None, None, False
                    new = pod
                else:
                    if old is not None:
                        return None, None, False
                    old = pod
            return new, old, True

        def available(pod: Object) -> bool:
            return pod_available(pod, min_ready, now)

        delete: list[Object] = []
        if max_surge == 0:
            unavailable = 0
            replace: list[Object] = []
            candidates: list[Object] = []
            for node in sorted(by_node):
                if node not in eligible:
                    continue
                new, old, ok = split(by_node[node])
                if not ok or (new is None) == (old is None):
                    unavailable += 1  # the manage loop sees to this node
                elif new is not None:
                    unavailable += 0 if available(new) else 1
                elif old is not None:
                    if not available(old):
                        replace.append(old)
                        unavailable += 1
                    elif unavailable < max_unavailable:
                        candidates.append(old)
            room = max(0, min(max_unavailable - unavailable, len(candidates)))
            delete = replace + candidates[:room]
            await self._sync_nodes(key, daemonset, delete, [], hash_)
            return
        surged = 0
        allowed: list[str] = []
        candidate_nodes: list[str] = []
        for node in sorted(by_node):
            if node not in eligible:
                continue
            new, old, ok = split(by_node[node])
            if not ok:
                surged += 1
            elif old is None:
                continue
            elif new is None:
                if available(old):
                    candidate_nodes.append(node)
                elif node in runs:
                    allowed.append(node)  # an unavailable old pod is replaced at once
                else:
                    delete.append(old)
            elif not available(new):
                surged += 1
            else:
                delete.append(old)
        room = max(0, min(max_surge - surged, len(candidate_nodes)))
        await self._sync_nodes(key, daemonset, delete, allowed + candidate_nodes[:room], hash_)

    # Status

    async def _update_status(self, daemonset: Object, hash_: str) -> None:
        min_ready = int(get_path(daemonset, "spec", "minReadySeconds") or 0)
        availability = Availability(min_ready, self.clock.seconds())
        generation = template_generation(daemonset)
        by_node = self._pods_by_node(daemonset)
        desired = current = misscheduled = ready = available = updated = 0
        for node in self.nodes.cache:
            run, _ = should_run(daemonset, node)
            on_node = by_node.get(name_of(node), [])
            if not run:
                misscheduled += 1 if on_node else 0
                continue
            desired += 1
            if not on_node:
                continue
            current += 1
            pod = sorted(on_node, key=_oldest_first)[0]
            if is_ready(pod):
                ready += 1
                available += availability.available(pod)
            if is_updated(pod, hash_, generation):
                updated += 1
        counts = {
            "currentNumberScheduled": current,
            "numberMisscheduled": misscheduled,
            "desiredNumberScheduled": desired,
            "numberReady": ready,
            "updatedNumberScheduled": updated,
            "numberAvailable": available,
            "numberUnavailable": desired - available,
            "observedGeneration": metadata(daemonset).get("generation"),
        }

        await write_status(self.store, daemonsets.RESOURCE, daemonset, counts, _WRITTEN)
        if availability.recheck is not None:
            key = join_key(namespace_of(daemonset), name_of(daemonset))
            self.queue.add_after(key, availability.recheck)
