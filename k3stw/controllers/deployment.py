"""
kube-controller-manager's deployment controller: a Deployment's pods come
from ReplicaSets named ``<deployment>-<pod-template-hash>``, one per template
it has had; a template change rolls the pods over to a new ReplicaSet
(RollingUpdate within maxSurge and maxUnavailable, or Recreate), the old ones
are kept at zero for ``kubectl rollout history`` and ``undo`` up to
``revisionHistoryLimit``, and the status and conditions say how far the
rollout got, as ``kubectl rollout status`` reads them.

Not here: the deprecated ``deprecated.deployment.rollback.to`` annotation
(``kubectl rollout undo`` works without it, client-side).
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Mapping, Sequence
from typing import Any

from k3stw.apiserver.fielderrors import int_or_percent
from k3stw.apiserver.informers import ServerInformers
from k3stw.apiserver.kinds import deployments, pods, replicasets
from k3stw.apiserver.status import StatusError, conflict
from k3stw.apiserver.storage import ObjectStore
from k3stw.controllers import TRANSIENT
from k3stw.controllers.events import NORMAL, WARNING, EventRecorder
from k3stw.controllers.ownership import (
    MANAGER,
    ClaimRefused,
    claim,
    controller_ref,
    new_controller_ref,
    resolve_owner,
)
from k3stw.controllers.replicaset import REPLICA_FAILURE, selects
from k3stw.machinery.cache import NAMESPACE, OWNER_UID, by_owner_uid
from k3stw.machinery.controller import Controller
from k3stw.machinery.informer import EventHandler
from k3stw.machinery.objects import (
    Object,
    copy_json,
    find_condition,
    get_path,
    is_deleting,
    metadata,
    name_of,
    namespace_of,
    object_key,
    uid_of,
)
from k3stw.machinery.times import parse_time, rfc3339

HASH_LABEL = "pod-template-hash"
REVISION = "deployment.kubernetes.io/revision"
REVISION_HISTORY = "deployment.kubernetes.io/revision-history"
DESIRED_REPLICAS = "deployment.kubernetes.io/desired-replicas"
MAX_REPLICAS = "deployment.kubernetes.io/max-replicas"
#: Deployment annotations a new ReplicaSet does not copy.
NOT_COPIED = frozenset(
    {
        "kubectl.kubernetes.io/last-applied-configuration",
        REVISION,
        REVISION_HISTORY,
        DESIRED_REPLICAS,
        MAX_REPLICAS,
        "deprecated.deployment.rollback.to",
    }
)
#: The longest ``revision-history`` annotation kept.
REVISION_HISTORY_CHARS = 2000
#: ``progressDeadlineSeconds`` at this value means no deadline.
NO_DEADLINE = 2**31 - 1

PROGRESSING = "Progressing"
AVAILABLE = "Available"

# rand.SafeEncodeString's alphabet: no vowels, no look-alikes.
_ALPHANUMS = "bcdfghjklmnpqrstvwxz2456789"


# The pod template's hash


def _fnv32a(data: bytes, value: int = 0x811C9DC5) -> int:
    for byte in data:
        value = ((value ^ byte) * 0x01000193) & 0xFFFFFFFF
    return value


def template_hash(template: Mapping[str, Any], collision_count: int | None) -> str:
    """
    ``ComputeHash``: FNV-32a of the template (here its canonical JSON, where
    kube hashes a dump of the Go struct), then of the collision count as 8
    little-endian bytes if there is one, its decimal digits each mapped
    through the safe alphabet.
    """
    value = _fnv32a(json.dumps(template, sort_keys=True, separators=(",", ":")).encode())
    if collision_count is not None:
        value = _fnv32a(struct.pack("<I", collision_count & 0xFFFFFFFF) + bytes(4), value)
    return "".join(_ALPHANUMS[byte % len(_ALPHANUMS)] for byte in str(value).encode())


def _pruned(value: Any) -> Any:
    """A JSON value without empty maps and lists (kube's semantic equality takes nil as empty)."""
    if isinstance(value, dict):
        kept = {k: _pruned(v) for k, v in value.items()}
        return {k: v for k, v in kept.items() if v not in ({}, [], None)}
    if isinstance(value, list):
        return [_pruned(v) for v in value]
    return value


def _without_hash(template: Any) -> Any:
    template = copy_json(template) if isinstance(template, dict) else {}
    labels = get_path(template, "metadata", "labels")
    if isinstance(labels, dict):
        labels.pop(HASH_LABEL, None)
    return _pruned(template)


def equal_ignoring_hash(a: Any, b: Any) -> bool:
    """``EqualIgnoreHash``: the same pod template, whatever their ``pod-template-hash`` labels."""
    same: bool = _without_hash(a) == _without_hash(b)
    return same


# Numbers


def _replicas(obj: Mapping[str, Any]) -> int:
    return int(get_path(obj, "spec", "replicas") or 0)


def _status_count(obj: Mapping[str, Any], field: str) -> int:
    return int(get_path(obj, "status", field) or 0)


def scaled_value(value: Any, total: int, round_up: bool) -> int:
    """An int-or-percent of C{total} (``GetScaledValueFromIntOrPercent``)."""
    number = int_or_percent(value)
    if number is None:
        return 0
    if isinstance(value, str):
        exact = number * total / 100
        return math.ceil(exact) if round_up else math.floor(exact)
    return number


def fenceposts(deployment: Mapping[str, Any]) -> tuple[int, int]:
    """``ResolveFenceposts``: (maxSurge, maxUnavailable) as pod counts; never both zero."""
    rolling = get_path(deployment, "spec", "strategy", "rollingUpdate") or {}
    desired = _replicas(deployment)
    surge = scaled_value(rolling.get("maxSurge", "25%"), desired, True)
    unavailable = scaled_value(rolling.get("maxUnavailable", "25%"), desired, False)
    if surge == 0 and unavailable == 0:
        unavailable = 1
    return surge, unavailable


def _rolling(deployment: Mapping[str, Any]) -> bool:
    return bool(get_path(deployment, "spec", "strategy", "type") != "Recreate")


def max_surge(deployment: Mapping[str, Any]) -> int:
    return fenceposts(deployment)[0] if _rolling(deployment) else 0


def max_unavailable(deployment: Mapping[str, Any]) -> int:
    desired = _replicas(deployment)
    if not _rolling(deployment) or desired == 0:
        return 0
    return min(fenceposts(deployment)[1], desired)


def revision(obj: Mapping[str, Any]) -> int | None:
    """The revision annotation's number (0 if none); None if it is not a number."""
    text = (metadata(obj).get("annotations") or {}).get(REVISION)
    if text is None:
        return 0
    try:
        return int(text)
    except ValueError:
        return None


def _created(obj: Mapping[str, Any]) -> tuple[float, str]:
    return parse_time(metadata(obj).get("creationTimestamp")) or 0.0, name_of(obj)


def _annotation_int(obj: Mapping[str, Any], key: str) -> int | None:
    try:
        return int((metadata(obj).get("annotations") or {})[key])
    except (KeyError, ValueError):
        return None


def _sum(replica_sets: Sequence[Object | None], count: str | None = None) -> int:
    return sum(
        _replicas(rs) if count is None else _status_count(rs, count)
        for rs in replica_sets
        if rs is not None
    )


def _active(replica_sets: Sequence[Object | None]) -> list[Object]:
    return [rs for rs in replica_sets if rs is not None and _replicas(rs) > 0]


def has_deadline(deployment: Mapping[str, Any]) -> bool:
    seconds = get_path(deployment, "spec", "progressDeadlineSeconds")
    return seconds is not None and seconds != NO_DEADLINE


# Conditions


def new_condition(status: str, kind: str, reason: str, message: str, now: float) -> Object:
    stamp = rfc3339(now)
    return {
        "type": kind,
        "status": status,
        "lastUpdateTime": stamp,
        "lastTransitionTime": stamp,
        "reason": reason,
        "message": message,
    }


def _conditions(status: Mapping[str, Any]) -> list[Object]:
    return [c for c in status.get("conditions") or [] if isinstance(c, dict)]


def get_condition(status: Mapping[str, Any], kind: str) -> Object | None:
    for condition in _conditions(status):
        if condition.get("type") == kind:
            return condition
    return None


def set_condition(status: Object, condition: Object) -> None:
    """``SetDeploymentCondition``: nothing if status and reason are the same; else replace it."""
    current = get_condition(status, condition["type"])
    if current is not None and current.get("status") == condition["status"]:
        if current.get("reason") == condition["reason"]:
            return
        condition["lastTransitionTime"] = current.get("lastTransitionTime")
    remove_condition(status, condition["type"])
    status["conditions"] = [*_conditions(status), condition]


def remove_condition(status: Object, kind: str) -> None:
    kept = [c for c in _conditions(status) if c.get("type") != kind]
    if kept:
        status["conditions"] = kept
    else:
        status.pop("conditions", None)


def deployment_complete(deployment: Mapping[str, Any], status: Mapping[str, Any]) -> bool:
    desired = _replicas(deployment)
    return (
        int(status.get("updatedReplicas") or 0) == desired
        and int(status.get("replicas") or 0) == desired
        and int(status.get("availableReplicas") or 0) == desired
        and int(status.get("observedGeneration") or 0)
        >= int(metadata(deployment).get("generation") or 0)
    )


def deployment_progressing(deployment: Mapping[str, Any], status: Mapping[str, Any]) -> bool:
    old = deployment.get("status") or {}

    def n(of: Mapping[str, Any], key: str) -> int:
        return int(of.get(key) or 0)

    return (
        n(status, "updatedReplicas") > n(old, "updatedReplicas")
        or n(status, "replicas") - n(status, "updatedReplicas")
        < n(old, "replicas") - n(old, "updatedReplicas")
        or n(status, "readyReplicas") > n(old, "readyReplicas")
        or n(status, "availableReplicas") > n(old, "availableReplicas")
    )


def timed_out(deployment: Mapping[str, Any], status: Mapping[str, Any], now: float) -> bool:
    if not has_deadline(deployment):
        return False
    condition = get_condition(status, PROGRESSING)
    if condition is None or condition.get("reason") == "NewReplicaSetAvailable":
        return False
    if condition.get("reason") == "ProgressDeadlineExceeded":
        return True
    since = parse_time(condition.get("lastUpdateTime")) or now
    deadline = int(get_path(deployment, "spec", "progressDeadlineSeconds") or 0)
    return since + deadline < now


def calculate_status(
    deployment: Mapping[str, Any], all_rss: Sequence[Object | None], new_rs: Object | None
) -> Object:
    """The Deployment's status as its ReplicaSets show it, with the Available condition set."""
    now_status = deployment.get("status") or {}
    available = _sum(all_rss, "availableReplicas")
    status: Object = {
        "observedGeneration": int(metadata(deployment).get("generation") or 0),
        "replicas": _sum(all_rss, "replicas"),
        "updatedReplicas": _sum([new_rs], "replicas"),
        "readyReplicas": _sum(all_rss, "readyReplicas"),
        "availableReplicas": available,
        "unavailableReplicas": max(0, _sum(all_rss) - available),
    }
    status = {k: v for k, v in status.items() if v}
    conditions = copy_json(_conditions(now_status))
    if conditions:
        status["conditions"] = conditions
    if now_status.get("collisionCount") is not None:
        status["collisionCount"] = now_status["collisionCount"]
    return status


class DeploymentController(Controller):
    """
    Rolls each Deployment's pods onto the ReplicaSet of its current template.

    :param host: the server's name, as the Events give it.
    """

    label = "deployment controller"
    expected = (*TRANSIENT, ClaimRefused)

    def __init__(
        self, informers: ServerInformers, store: ObjectStore, host: str = "", workers: int = 5
    ) -> None:
        self.deployments = informers.for_resource(deployments.RESOURCE)
        self.replicasets = informers.for_resource(replicasets.RESOURCE)
        self.pods = informers.for_resource(pods.RESOURCE)
        self.pods.add_index(OWNER_UID, by_owner_uid)
        super().__init__(
            store.clock, [self.deployments, self.replicasets, self.pods], workers=workers
        )
        self.store = store
        self.recorder = EventRecorder(store, store.clock, "deployment-controller", host)
        self.add_handler(self.deployments, self.enqueue_handler())
        self.add_handler(
            self.replicasets,
            EventHandler(
                on_add=self._replicaset_changed,
                on_update=self._replicaset_updated,
                on_delete=self._replicaset_deleted,
            ),
        )
        self.add_handler(self.pods, EventHandler(on_delete=self._pod_deleted))

    # The informers' news

    def _owner_of(self, replicaset: Object) -> Object | None:
        return resolve_owner(self.deployments, "Deployment", replicaset)

    def _replicaset_changed(self, replicaset: Object) -> None:
        owner = self._owner_of(replicaset)
        if owner is not None:
            self.enqueue(object_key(owner))
        elif controller_ref(replicaset) is None and not is_deleting(replicaset):
            labels = metadata(replicaset).get("labels") or {}
            for deployment in self.deployments.cache.by_index(NAMESPACE, namespace_of(replicaset)):
                if selects(deployment)(labels):
                    self.enqueue(object_key(deployment))

    def _replicaset_updated(self, old: Object, new: Object) -> None:
        if controller_ref(old) != controller_ref(new):
            previous = self._owner_of(old)
            if previous is not None:
                self.enqueue(object_key(previous))
        self._replicaset_changed(new)

    def _replicaset_deleted(self, replicaset: Object) -> None:
        owner = self._owner_of(replicaset)
        if owner is not None:
            self.enqueue(object_key(owner))

    def _pod_deleted(self, pod: Object) -> None:
        """A Recreate rollout waits for the old pods to be gone."""
        replicaset = resolve_owner(self.replicasets, "ReplicaSet", pod)
        owner = None if replicaset is None else self._owner_of(replicaset)
        if owner is not None and not _rolling(owner):
            self.enqueue(object_key(owner))

    # Sync

    async def sync(self, key: str) -> None:
        cached = self.deployments.get(key)
        if cached is None:
            return
        d = copy_json(cached)
        selector = get_path(d, "spec", "selector")
        if (
            isinstance(selector, dict)
            and not selector.get("matchLabels")
            and not selector.get("matchExpressions")
        ):
            self.recorder.emit(
                d,
                WARNING,
                "SelectingAll",
                "This deployment is selecting all pods. A non-empty selector is required.",
            )
            status = d.setdefault("status", {})
            if int(status.get("observedGeneration") or 0) < int(metadata(d).get("generation") or 0):
                status["observedGeneration"] = metadata(d).get("generation")
                await self._write_status(d)
            return
        candidates = self.replicasets.cache.by_index(NAMESPACE, namespace_of(d))
        rs_list = [
            copy_json(rs)
            for rs in await claim(
                self.store,
                deployments.RESOURCE,
                d,
                replicasets.RESOURCE,
                candidates,
                selects(d),
            )
        ]
        if is_deleting(d):
            new_rs, old_rss = await self._new_and_old(d, rs_list, create=False)
            await self._sync_status(d, [*old_rss, new_rs], new_rs)
            return
        await self._check_paused_conditions(d)
        if get_path(d, "spec", "paused") or await self._is_scaling_event(d, rs_list):
            await self._sync(d, rs_list)
        elif _rolling(d):
            await self._rollout_rolling(d, rs_list)
        else:
            await self._rollout_recreate(d, rs_list)

    async def _check_paused_conditions(self, d: Object) -> None:
        if not has_deadline(d):
            return
        status = d.setdefault("status", {})
        condition = get_condition(status, PROGRESSING)
        if condition is not None and condition.get("reason") == "ProgressDeadlineExceeded":
            return
        paused_shown = condition is not None and condition.get("reason") == "DeploymentPaused"
        now = self.clock.seconds()
        if get_path(d, "spec", "paused") and not paused_shown:
            set_condition(
                status,
                new_condition(
                    "Unknown", PROGRESSING, "DeploymentPaused", "Deployment is paused", now
                ),
            )
        elif not get_path(d, "spec", "paused") and paused_shown:
            set_condition(
                status,
                new_condition(
                    "Unknown", PROGRESSING, "DeploymentResumed", "Deployment is resumed", now
                ),
            )
        else:
            return
        await self._write_status(d)

    async def _is_scaling_event(self, d: Object, rs_list: list[Object]) -> bool:
        new_rs, old_rss = await self._new_and_old(d, rs_list, create=False)
        for rs in _active([*old_rss, new_rs]):
            desired = _annotation_int(rs, DESIRED_REPLICAS)
            if desired is not None and desired != _replicas(d):
                return True
        return False

    async def _sync(self, d: Object, rs_list: list[Object]) -> None:
        """Scaling only (a paused Deployment, or a changed ``spec.replicas``), then the status."""
        new_rs, old_rss = await self._new_and_old(d, rs_list, create=False)
        await self._scale(d, new_rs, old_rss)
        if get_path(d, "spec", "paused"):
            await self._cleanup(d, old_rss)
        await self._sync_status(d, [*old_rss, new_rs], new_rs)

    async def _rollout_rolling(self, d: Object, rs_list: list[Object]) -> None:
        new_rs, old_rss = await self._new_and_old(d, rs_list, create=True)
        all_rss = [*old_rss, new_rs]
        if new_rs is not None and await self._reconcile_new(d, all_rss, new_rs):
            await self._sync_rollout_status(d, all_rss, new_rs)
            return
        if await self._reconcile_old(d, all_rss, _active(old_rss), new_rs):
            await self._sync_rollout_status(d, all_rss, new_rs)
            return
        if deployment_complete(d, d.get("status") or {}):
            await self._cleanup(d, old_rss)
        await self._sync_rollout_status(d, all_rss, new_rs)

    async def _rollout_recreate(self, d: Object, rs_list: list[Object]) -> None:
        new_rs, old_rss = await self._new_and_old(d, rs_list, create=False)
        all_rss = [*old_rss, new_rs]
        scaled_down = False
        for rs in _active(old_rss):
            scaled_down = await self._scale_rs(d, rs, 0) or scaled_down
        if scaled_down or self._old_pods_running(new_rs, old_rss):
            await self._sync_rollout_status(d, all_rss, new_rs)
            return
        if new_rs is None:
            new_rs, old_rss = await self._new_and_old(d, rs_list, create=True)
            all_rss = [*old_rss, new_rs]
        if new_rs is not None:
            await self._scale_rs(d, new_rs, _replicas(d))
        if deployment_complete(d, d.get("status") or {}):
            await self._cleanup(d, old_rss)
        await self._sync_rollout_status(d, all_rss, new_rs)

    def _old_pods_running(self, new_rs: Object | None, old_rss: list[Object]) -> bool:
        if _sum(old_rss, "replicas") > 0:
            return True
        for rs in old_rss:
            for pod in self.pods.cache.by_index(OWNER_UID, uid_of(rs)):
                if get_path(pod, "status", "phase") not in ("Succeeded", "Failed"):
                    return True
        return False

    # The new ReplicaSet and the old ones

    async def _new_and_old(
        self, d: Object, rs_list: list[Object], create: bool
    ) -> tuple[Object | None, list[Object]]:
        """``getAllReplicaSetsAndSyncRevision``: the new ReplicaSet (made if C{create}), the old."""
        rs_list.sort(key=_created)
        existing = next(
            (
                rs
                for rs in rs_list
                if equal_ignoring_hash(
                    get_path(rs, "spec", "template"), get_path(d, "spec", "template")
                )
            ),
            None,
        )
        old_rss = [rs for rs in rs_list if rs is not existing]
        revisions = [r for r in (revision(rs) for rs in old_rss) if r is not None]
        new_revision = str(max(revisions, default=0) + 1)
        if existing is not None:
            await self._sync_existing_new(d, existing, new_revision)
            return existing, old_rss
        if not create:
            return None, old_rss
        created = await self._create_new(d, old_rss, new_revision)
        if created is not None:
            rs_list.append(created)
        return created, old_rss

    async def _sync_existing_new(self, d: Object, rs: Object, new_revision: str) -> None:
        changed = _set_new_annotations(d, rs, new_revision, exists=True)
        min_ready = get_path(d, "spec", "minReadySeconds") or 0
        if changed or (get_path(rs, "spec", "minReadySeconds") or 0) != min_ready:
            rs["spec"]["minReadySeconds"] = min_ready
            await self._update_rs(
                rs, rs, lambda current: _copy_annotations_and_min_ready(current, rs)
            )
            return
        needs_update = _set_deployment_revision(
            d, str((metadata(rs).get("annotations") or {}).get(REVISION, ""))
        )
        status = d.setdefault("status", {})
        if has_deadline(d) and get_condition(status, PROGRESSING) is None:
            message = f'Found new replica set "{name_of(rs)}"'
            set_condition(
                status,
                new_condition(
                    "True", PROGRESSING, "FoundNewReplicaSet", message, self.clock.seconds()
                ),
            )
            needs_update = True
        if needs_update:
            await self._write_status(d)

    async def _create_new(
        self, d: Object, old_rss: list[Object], new_revision: str
    ) -> Object | None:
        template = copy_json(get_path(d, "spec", "template") or {})
        status = d.setdefault("status", {})
        collisions = status.get("collisionCount")
        hashed = template_hash(template, collisions)
        template.setdefault("metadata", {})
        template["metadata"]["labels"] = {
            **(template["metadata"].get("labels") or {}),
            HASH_LABEL: hashed,
        }
        selector = copy_json(get_path(d, "spec", "selector") or {})
        selector["matchLabels"] = {**(selector.get("matchLabels") or {}), HASH_LABEL: hashed}
        name = f"{name_of(d)}-{hashed}"
        new_rs: Object = {
            "apiVersion": "apps/v1",
            "kind": "ReplicaSet",
            "metadata": {
                "name": name,
                "namespace": namespace_of(d),
                "labels": template["metadata"]["labels"],
                "ownerReferences": [new_controller_ref(d)],
            },
            "spec": {
                "replicas": 0,
                "minReadySeconds": get_path(d, "spec", "minReadySeconds") or 0,
                "selector": selector,
                "template": template,
            },
        }
        count = _new_rs_new_replicas(d, [*old_rss, new_rs], new_rs)
        new_rs["spec"]["replicas"] = count
        _set_new_annotations(d, new_rs, new_revision, exists=False)
        now = self.clock.seconds()
        already = False
        try:
            created = await self.store.create(
                replicasets.RESOURCE, namespace_of(d), new_rs, MANAGER
            )
        except StatusError as e:
            if e.reason == "AlreadyExists" or e.code == 409:
                found = self.replicasets.get(f"{namespace_of(d)}/{name}")
                ref = controller_ref(found or {})
                if (
                    found is not None
                    and ref is not None
                    and ref.get("uid") == uid_of(d)
                    and equal_ignoring_hash(
                        get_path(d, "spec", "template"), get_path(found, "spec", "template")
                    )
                ):
                    created, already = copy_json(found), True
                else:
                    status["collisionCount"] = int(collisions or 0) + 1
                    await self._write_status(d)
                    raise
            elif e.code == 403 and "being terminated" in e.message:
                raise
            else:
                message = f'Failed to create new replica set "{name}": {e.message}'
                if has_deadline(d):
                    set_condition(
                        status,
                        new_condition("False", PROGRESSING, "ReplicaSetCreateError", message, now),
                    )
                    await self._write_status(d)
                self.recorder.emit(d, WARNING, "ReplicaSetCreateError", message)
                raise
        if not already and count > 0:
            self.recorder.emit(
                d,
                NORMAL,
                "ScalingReplicaSet",
                f"Scaled up replica set {name_of(created)} from 0 to {count}",
            )
        needs_update = _set_deployment_revision(d, new_revision)
        if not already and has_deadline(d):
            message = f'Created new replica set "{name_of(created)}"'
            set_condition(
                status, new_condition("True", PROGRESSING, "NewReplicaSetCreated", message, now)
            )
            needs_update = True
        if needs_update:
            await self._write_status(d)
        return created

    # Scaling

    async def _reconcile_new(self, d: Object, all_rss: list[Object | None], new_rs: Object) -> bool:
        desired = _replicas(d)
        if _replicas(new_rs) == desired:
            return False
        if _replicas(new_rs) > desired:
            return await self._scale_rs(d, new_rs, desired)
        return await self._scale_rs(d, new_rs, _new_rs_new_replicas(d, all_rss, new_rs))

    async def _reconcile_old(
        self, d: Object, all_rss: list[Object | None], old_rss: list[Object], new_rs: Object | None
    ) -> bool:
        if _sum(old_rss) == 0:
            return False
        min_available = _replicas(d) - max_unavailable(d)
        new_unavailable = (
            0 if new_rs is None else _replicas(new_rs) - _status_count(new_rs, "availableReplicas")
        )
        max_scaled_down = _sum(all_rss) - min_available - new_unavailable
        if max_scaled_down <= 0:
            return False
        # First the old pods that are not available, oldest ReplicaSet first.
        old_rss = sorted(old_rss, key=_created)
        cleaned = 0
        for rs in old_rss:
            if cleaned >= max_scaled_down:
                break
            unhealthy = _replicas(rs) - _status_count(rs, "availableReplicas")
            if _replicas(rs) == 0 or unhealthy <= 0:
                continue
            count = min(max_scaled_down - cleaned, unhealthy)
            await self._scale_rs(d, rs, _replicas(rs) - count)
            cleaned += count
        # Then available ones, as far as availability allows.
        scaled = 0
        available = _sum([*old_rss, new_rs], "availableReplicas")
        if available > min_available:
            budget = available - min_available
            for rs in old_rss:
                if scaled >= budget:
                    break
                if _replicas(rs) == 0:
                    continue
                count = min(_replicas(rs), budget - scaled)
                await self._scale_rs(d, rs, _replicas(rs) - count)
                scaled += count
        return cleaned + scaled > 0

    async def _scale(self, d: Object, new_rs: Object | None, old_rss: list[Object]) -> None:
        """``scale``: a Deployment resized (or paused) gets its replicas spread proportionally."""
        desired = _replicas(d)
        latest = _active_or_latest(new_rs, old_rss)
        if latest is not None:
            if _replicas(latest) != desired:
                await self._scale_rs(d, latest, desired)
            return
        if _saturated(d, new_rs):
            for rs in _active(old_rss):
                await self._scale_rs(d, rs, 0)
            return
        if not _rolling(d):
            return
        all_rss = _active([*old_rss, new_rs])
        allowed = desired + max_surge(d) if desired > 0 else 0
        to_add = allowed - _sum(all_rss)
        if to_add > 0:
            all_rss.sort(key=lambda rs: (-_replicas(rs), -_created(rs)[0], _created(rs)[1]))
        elif to_add < 0:
            all_rss.sort(key=lambda rs: (-_replicas(rs), _created(rs)))
        operation = "up" if to_add > 0 else "down"
        sizes: dict[str, int] = {}
        added = 0
        for rs in all_rss:
            proportion = _proportion(rs, d, to_add, added) if to_add else 0
            sizes[name_of(rs)] = _replicas(rs) + proportion
            added += proportion
        if to_add and all_rss:
            first = name_of(all_rss[0])
            sizes[first] = max(0, sizes[first] + to_add - added)
        for rs in all_rss:
            await self._scale_rs(d, rs, sizes[name_of(rs)], operation)

    async def _scale_rs(
        self, d: Object, rs: Object, size: int, operation: str | None = None
    ) -> bool:
        """
        ``scaleReplicaSet(AndRecordEvent)``: set its replicas (and the
        desired/max annotations); whether its size changed.
        """
        old_size = _replicas(rs)
        if operation is None:
            if old_size == size:
                return False
            operation = "up" if old_size < size else "down"
        desired, most = _replicas(d), _replicas(d) + max_surge(d)
        annotations = metadata(rs).get("annotations") or {}
        annotations_stale = annotations.get(DESIRED_REPLICAS) != str(desired) or annotations.get(
            MAX_REPLICAS
        ) != str(most)
        if old_size == size and not annotations_stale:
            return False

        def scaled(current: Object) -> Object:
            if _replicas(current) != old_size or uid_of(current) != uid_of(rs):
                raise conflict("replicasets", "apps", name_of(rs))
            current["spec"]["replicas"] = size
            current["metadata"]["annotations"] = {
                **(current["metadata"].get("annotations") or {}),
                DESIRED_REPLICAS: str(desired),
                MAX_REPLICAS: str(most),
            }
            return current

        await self._update_rs(rs, rs, scaled)
        if old_size != size:
            self.recorder.emit(
                d,
                NORMAL,
                "ScalingReplicaSet",
                f"Scaled {operation} replica set {name_of(rs)} from {old_size} to {size}",
            )
            return True
        return False

    async def _update_rs(self, rs: Object, into: Object, mutate: Any) -> None:
        """Write C{rs} through C{mutate}; C{into} (the working copy) becomes what was stored."""
        updated = await self.store.guaranteed_update(
            replicasets.RESOURCE, namespace_of(rs), name_of(rs), mutate, MANAGER
        )
        into.clear()
        into.update(copy_json(updated))

    async def _cleanup(self, d: Object, old_rss: list[Object]) -> None:
        """``cleanupDeployment``: old ReplicaSets past ``revisionHistoryLimit``, oldest first."""
        limit = get_path(d, "spec", "revisionHistoryLimit")
        if limit is None:
            return
        alive = [rs for rs in old_rss if not is_deleting(rs)]
        excess = len(alive) - int(limit)
        if excess <= 0:
            return
        alive.sort(key=lambda rs: (revision(rs) or 0, _created(rs)))
        for rs in alive[:excess]:
            if (
                _status_count(rs, "replicas") != 0
                or _replicas(rs) != 0
                or int(metadata(rs).get("generation") or 0)
                > _status_count(rs, "observedGeneration")
            ):
                continue
            try:
                await self.store.delete(
                    replicasets.RESOURCE, namespace_of(rs), name_of(rs), {"uid": uid_of(rs)}
                )
            except StatusError as e:
                if e.code != 404:
                    raise

    # Status

    async def _sync_status(
        self, d: Object, all_rss: list[Object | None], new_rs: Object | None
    ) -> None:
        status = calculate_status(d, all_rss, new_rs)
        self._set_available(d, status)
        if status != d.get("status"):
            d["status"] = status
            await self._write_status(d)

    def _set_available(self, d: Object, status: Object) -> None:
        now = self.clock.seconds()
        if int(status.get("availableReplicas") or 0) >= _replicas(d) - max_unavailable(d):
            condition = new_condition(
                "True",
                AVAILABLE,
                "MinimumReplicasAvailable",
                "Deployment has minimum availability.",
                now,
            )
        else:
            condition = new_condition(
                "False",
                AVAILABLE,
                "MinimumReplicasUnavailable",
                "Deployment does not have minimum availability.",
                now,
            )
        set_condition(status, condition)

    async def _sync_rollout_status(
        self, d: Object, all_rss: list[Object | None], new_rs: Object | None
    ) -> None:
        """``syncRolloutStatus``: the status, with the Progressing condition brought up to date."""
        now = self.clock.seconds()
        status = calculate_status(d, all_rss, new_rs)
        self._set_available(d, status)
        if not has_deadline(d):
            remove_condition(status, PROGRESSING)
        current = get_condition(d.get("status") or {}, PROGRESSING)
        complete = (
            status.get("replicas", 0) == status.get("updatedReplicas", 0)
            and current is not None
            and current.get("reason") == "NewReplicaSetAvailable"
        )
        subject = (
            f'ReplicaSet "{name_of(new_rs)}"'
            if new_rs is not None
            else f'Deployment "{name_of(d)}"'
        )
        if has_deadline(d) and not complete:
            if deployment_complete(d, status):
                set_condition(
                    status,
                    new_condition(
                        "True",
                        PROGRESSING,
                        "NewReplicaSetAvailable",
                        f"{subject} has successfully progressed.",
                        now,
                    ),
                )
            elif deployment_progressing(d, status):
                condition = new_condition(
                    "True", PROGRESSING, "ReplicaSetUpdated", f"{subject} is progressing.", now
                )
                if current is not None:
                    if current.get("status") == "True":
                        condition["lastTransitionTime"] = current.get("lastTransitionTime")
                    remove_condition(status, PROGRESSING)
                set_condition(status, condition)
            elif timed_out(d, status, now):
                set_condition(
                    status,
                    new_condition(
                        "False",
                        PROGRESSING,
                        "ProgressDeadlineExceeded",
                        f"{subject} has timed out progressing.",
                        now,
                    ),
                )
        failure = _replica_failure(all_rss, new_rs)
        if failure is not None:
            set_condition(status, failure)
        else:
            remove_condition(status, REPLICA_FAILURE)
        if status == d.get("status"):
            self._requeue_stuck(d, status, now)
            return
        d["status"] = status
        await self._write_status(d)

    def _requeue_stuck(self, d: Object, status: Object, now: float) -> None:
        """Look again when the progress deadline would pass, should nothing happen before."""
        current = get_condition(d.get("status") or {}, PROGRESSING)
        if not has_deadline(d) or current is None:
            return
        if deployment_complete(d, status) or current.get("reason") == "ProgressDeadlineExceeded":
            return
        since = parse_time(current.get("lastUpdateTime")) or now
        after = since + int(get_path(d, "spec", "progressDeadlineSeconds") or 0) - now
        if after < 1:
            self.queue.add_rate_limited(object_key(d))
        else:
            self.queue.add_after(object_key(d), after + 1)

    async def _write_status(self, d: Object) -> None:
        """``UpdateStatus``: store C{d}'s status and revision; C{d} becomes what was stored."""
        status = copy_json(d.get("status") or {})
        revision_now = (metadata(d).get("annotations") or {}).get(REVISION)
        generation = metadata(d).get("generation")

        def replace(current: Object) -> Object:
            meta = current["metadata"]
            if meta.get("uid") != uid_of(d) or meta.get("generation") != generation:
                raise conflict("deployments", "apps", name_of(d))
            current["status"] = status
            if revision_now is not None:
                meta["annotations"] = {**(meta.get("annotations") or {}), REVISION: revision_now}
            return current

        updated = await self.store.guaranteed_update(
            deployments.RESOURCE,
            namespace_of(d),
            name_of(d),
            replace,
            MANAGER,
            subresource="status",
        )
        d.clear()
        d.update(copy_json(updated))


def _copy_annotations_and_min_ready(current: Object, wanted: Object) -> Object:
    current["metadata"]["annotations"] = dict(metadata(wanted).get("annotations") or {})
    current["spec"]["minReadySeconds"] = get_path(wanted, "spec", "minReadySeconds") or 0
    return current


def _set_deployment_revision(d: Object, value: str) -> bool:
    annotations = d["metadata"].setdefault("annotations", {})
    if annotations.get(REVISION) == value:
        return False
    annotations[REVISION] = value
    return True


def _set_new_annotations(d: Object, rs: Object, new_revision: str, exists: bool) -> bool:
    """``SetNewReplicaSetAnnotations``: the Deployment's annotations, the revision (and history)."""
    annotations = rs["metadata"].setdefault("annotations", {})
    changed = False
    for key, value in (metadata(d).get("annotations") or {}).items():
        if key not in NOT_COPIED and annotations.get(key) != value:
            annotations[key] = value
            changed = True
    had = REVISION in annotations
    old_text = annotations.get(REVISION, "")
    try:
        old = int(old_text) if old_text else 0
    except ValueError:
        return False
    if old < int(new_revision):
        annotations[REVISION] = new_revision
        changed = True
        if had:
            # Rolled back to this ReplicaSet: its earlier revisions are history.
            history = annotations.get(REVISION_HISTORY, "")
            entries = history.split(",") if history else []
            total = len(history) + len(old_text) + 1
            start = 0
            while total > REVISION_HISTORY_CHARS and start < len(entries):
                total -= len(entries[start]) + 1
                start += 1
            if total <= REVISION_HISTORY_CHARS:
                annotations[REVISION_HISTORY] = ",".join([*entries[start:], old_text])
    if not exists:
        desired, most = _replicas(d), _replicas(d) + max_surge(d)
        if annotations.get(DESIRED_REPLICAS) != str(desired) or annotations.get(
            MAX_REPLICAS
        ) != str(most):
            annotations[DESIRED_REPLICAS] = str(desired)
            annotations[MAX_REPLICAS] = str(most)
            changed = True
    if not annotations:
        rs["metadata"].pop("annotations")
    return changed


def _new_rs_new_replicas(d: Object, all_rss: Sequence[Object | None], new_rs: Object) -> int:
    """``NewRSNewReplicas``: how far the new ReplicaSet may grow now."""
    desired = _replicas(d)
    if not _rolling(d):
        return desired
    most = desired + scaled_value(
        get_path(d, "spec", "strategy", "rollingUpdate", "maxSurge") or "25%", desired, True
    )
    current = _sum(all_rss)
    if current >= most:
        return _replicas(new_rs)
    return _replicas(new_rs) + min(most - current, desired - _replicas(new_rs))


def _active_or_latest(new_rs: Object | None, old_rss: list[Object]) -> Object | None:
    """``FindActiveOrLatest``: the one ReplicaSet with replicas, or the latest if none has any."""
    if new_rs is None and not old_rss:
        return None
    newest_first = sorted(old_rss, key=_created, reverse=True)
    active = _active([*newest_first, new_rs])
    if not active:
        return new_rs if new_rs is not None else newest_first[0]
    return active[0] if len(active) == 1 else None


def _saturated(d: Object, rs: Object | None) -> bool:
    if rs is None:
        return False
    desired = _replicas(d)
    return (
        _annotation_int(rs, DESIRED_REPLICAS) == desired
        and _replicas(rs) == desired
        and _status_count(rs, "availableReplicas") == desired
    )


def _proportion(rs: Object, d: Object, to_add: int, added: int) -> int:
    """``GetProportion``: this ReplicaSet's share of the replicas added (or removed)."""
    if _replicas(rs) == 0 or to_add == 0 or to_add == added:
        return 0
    desired = _replicas(d)
    if desired == 0:
        fraction = -_replicas(rs)
    else:
        total = desired + max_surge(d)
        annotated = _annotation_int(rs, MAX_REPLICAS)
        if annotated is None:
            annotated = _status_count(d, "replicas")
        # Go's RoundToInt32 rounds halves away from zero.
        exact = _replicas(rs) * total / annotated if annotated else 0.0
        fraction = int(math.floor(abs(exact) + 0.5) * (1 if exact >= 0 else -1)) - _replicas(rs)
    allowed = to_add - added
    return min(fraction, allowed) if to_add > 0 else max(fraction, allowed)


def _replica_failure(all_rss: Sequence[Object | None], new_rs: Object | None) -> Object | None:
    """The new ReplicaSet's ReplicaFailure, else another's, as a Deployment condition."""
    ordered = [new_rs, *(rs for rs in all_rss if rs is not new_rs)]
    for rs in ordered:
        if rs is None:
            continue
        condition = find_condition(rs, REPLICA_FAILURE)
        if condition is not None and condition.get("status") == "True":
            return {
                "type": REPLICA_FAILURE,
                "status": condition.get("status"),
                "lastUpdateTime": condition.get("lastTransitionTime"),
                "lastTransitionTime": condition.get("lastTransitionTime"),
                "reason": condition.get("reason"),
                "message": condition.get("message"),
            }
    return None
