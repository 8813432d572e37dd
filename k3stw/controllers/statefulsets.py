"""
The StatefulSet controller (kube-controller-manager 1.32's): pods with a
stable identity, ``<sts>-<ordinal>``, each with its own claims
``<template>-<sts>-<ordinal>`` made from ``volumeClaimTemplates``.

OrderedReady creates one pod at a time, the next only once every lower
ordinal is Running and Ready, and scales down from the highest ordinal, one
pod at a time; Parallel creates and deletes without waiting.  A changed
template becomes a new ControllerRevision ``<sts>-<hash>``; RollingUpdate
replaces pods at ordinals from the partition up, the highest first, each
once the one before is Ready again; OnDelete replaces them as they are
deleted.  Claims get ownerReferences as ``persistentVolumeClaimRetentionPolicy``
says, so that the garbage collector deletes them with the set or the pod.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from k3stw.apiserver.informers import ServerInformers
from k3stw.apiserver.kinds import pods, statefulsets
from k3stw.apiserver.kinds.pods import is_ready
from k3stw.apiserver.registry import Registry
from k3stw.apiserver.status import StatusError
from k3stw.apiserver.storage import ObjectStore
from k3stw.controllers import TRANSIENT
from k3stw.controllers.events import NORMAL, WARNING, EventRecorder
from k3stw.controllers.ownership import pod_from_template
from k3stw.controllers.workloads import (
    REVISION_LABEL,
    Availability,
    RevisionHistory,
    controlled_by,
    enqueue_controller,
    phase_of,
    pod_available,
    revision_hash,
    revision_name,
    revision_number,
    sorted_revisions,
    template_of,
    template_patch,
    update_unless_gone,
    write_status,
)
from k3stw.machinery.cache import OWNER_UID, by_owner_uid
from k3stw.machinery.controller import Controller
from k3stw.machinery.objects import (
    Object,
    get_path,
    is_deleting,
    join_key,
    metadata,
    name_of,
    namespace_of,
    owner_references,
    set_owner_references,
    uid_of,
)

KIND = "StatefulSet"
COMPONENT = "statefulset-controller"
POD_NAME_LABEL = "statefulset.kubernetes.io/pod-name"
POD_INDEX_LABEL = "apps.kubernetes.io/pod-index"
_ORDINAL = re.compile(r"^(.*)-([0-9]+)$")


def ordinal_of(pod: Mapping[str, Any], set_name: str) -> int | None:
    """The ordinal of one of C{set_name}'s pods, from its name (``getParentNameAndOrdinal``)."""
    match = _ORDINAL.match(name_of(pod))
    if match is None or match.group(1) != set_name:
        return None
    return int(match.group(2))


def running_and_ready(pod: Mapping[str, Any]) -> bool:
    return phase_of(pod) == "Running" and is_ready(pod)


def healthy(pod: Mapping[str, Any]) -> bool:
    return running_and_ready(pod) and not is_deleting(pod)


def claim_name(template: Mapping[str, Any], set_name: str, ordinal: int) -> str:
    return f"{name_of(template)}-{set_name}-{ordinal}"


@dataclass
class _Round:
    """What one sync found and did: the pods by slot, the condemned, and whether to stop."""

    replicas: dict[int, Object] = field(default_factory=dict)
    condemned: list[Object] = field(default_factory=list)
    current_replicas_delta: int = 0


class StatefulSetController(Controller):
    """Keeps each StatefulSet's ordinal pods and their claims, in order."""

    label = "statefulset controller"
    expected = TRANSIENT

    def __init__(
        self, informers: ServerInformers, store: ObjectStore, registry: Registry, host: str
    ) -> None:
        self.sets = informers.for_resource(statefulsets.RESOURCE)
        self.pods = informers.for_resource(pods.RESOURCE)
        revisions = registry.require("apps", "v1", "controllerrevisions")
        self.claims_resource = registry.require("", "v1", "persistentvolumeclaims")
        self.revisions = informers.for_resource(revisions)
        self.claims = informers.for_resource(self.claims_resource)
        super().__init__(
            store.clock, [self.sets, self.pods, self.revisions, self.claims], workers=2
        )
        self.store = store
        self.history = RevisionHistory(store, revisions)
        self.recorder = EventRecorder(store, store.clock, COMPONENT, host)
        self.pods.add_index(OWNER_UID, by_owner_uid)
        self.revisions.add_index(OWNER_UID, by_owner_uid)
        self.add_handler(self.sets, self.enqueue_handler())
        self.add_handler(self.pods, enqueue_controller(KIND, self.enqueue))
        self.add_handler(self.revisions, enqueue_controller(KIND, self.enqueue))

    # The work

    async def sync(self, key: str) -> None:
        sts = self.sets.get(key)
        if sts is None:
            return
        current, update, collisions = await self._revisions(sts)
        found = self._round(sts)
        if not is_deleting(sts):
            await self._update(sts, current, update, found)
        await self._write_status(sts, current, update, collisions, found)

    def _owned(self, informer_cache: Any, sts: Mapping[str, Any]) -> list[Object]:
        uid = uid_of(sts)
        return [o for o in informer_cache.by_index(OWNER_UID, uid) if controlled_by(o, uid)]

    def _round(self, sts: Object) -> _Round:
        found = _Round()
        start = int(get_path(sts, "spec", "ordinals", "start") or 0)
        count = int(get_path(sts, "spec", "replicas") or 0)
        for pod in self._owned(self.pods.cache, sts):
            ordinal = ordinal_of(pod, name_of(sts))
            if ordinal is None:
                continue
            if start <= ordinal < start + count:
                found.replicas[ordinal] = pod
            else:
                found.condemned.append(pod)
        found.condemned.sort(key=lambda p: -(ordinal_of(p, name_of(sts)) or 0))
        return found

    # Revisions

    async def _revisions(self, sts: Object) -> tuple[Object, Object, int]:
        """The current and update revisions (the update one made if need be), and collisions."""
        revisions = sorted_revisions(self._owned(self.revisions.cache, sts))
        collisions = int(get_path(sts, "status", "collisionCount") or 0)
        patch = template_patch(sts["spec"]["template"])
        number = revision_number(revisions[-1]) + 1 if revisions else 1
        equal = [r for r in revisions if r.get("data") == patch]
        if equal and equal[-1] is revisions[-1]:
            update = equal[-1]
        elif equal:
            update = await self.history.renumber(equal[-1], number)
        else:
            update, collisions = await self._create_revision(sts, patch, number, collisions)
        wanted = get_path(sts, "status", "currentRevision")
        current = next((r for r in revisions if name_of(r) == wanted), update)
        return current, update, collisions

    async def _create_revision(
        self, sts: Object, patch: Object, number: int, collisions: int
    ) -> tuple[Object, int]:
        while True:
            name = revision_name(name_of(sts), revision_hash(patch, collisions))
            found = await self.history.snapshot(sts, patch, number, name, name)
            if found is not None:
                return found, collisions
            collisions += 1

    # Pods

    def _new_pod(self, sts: Object, ordinal: int, current: Object, update: Object) -> Object:
        """Pod C{ordinal} at the revision it should have (``newVersionedStatefulSetPod``)."""
        partition = get_path(sts, "spec", "updateStrategy", "rollingUpdate", "partition")
        rolling = get_path(sts, "spec", "updateStrategy", "type") == "RollingUpdate"
        start = int(get_path(sts, "spec", "ordinals", "start") or 0)
        at_current = rolling and partition is not None and ordinal - start < int(partition)
        revision = current if at_current else update
        template = template_of(revision) if at_current else sts["spec"]["template"]
        pod = pod_from_template(template, sts)
        name = f"{name_of(sts)}-{ordinal}"
        pod["metadata"]["name"] = name
        labels = pod["metadata"]["labels"]
        labels[POD_NAME_LABEL] = name
        labels[POD_INDEX_LABEL] = str(ordinal)
        labels[REVISION_LABEL] = name_of(revision)
        pod["spec"]["hostname"] = name
        service = get_path(sts, "spec", "serviceName")
        if service:
            pod["spec"]["subdomain"] = service
        claims = self._claims_for(sts, ordinal)
        volumes = [
            {
                "name": template_name,
                "persistentVolumeClaim": {"claimName": name_of(claim)},
            }
            for template_name, claim in claims
        ]
        taken = {template_name for template_name, _ in claims}
        volumes += [v for v in pod["spec"].get("volumes") or [] if v.get("name") not in taken]
        if volumes:
            pod["spec"]["volumes"] = volumes
        return pod

    def _claims_for(self, sts: Object, ordinal: int) -> list[tuple[str, Object]]:
        """Pod C{ordinal}'s claims from the templates (``getPersistentVolumeClaims``)."""
        selector_labels = get_path(sts, "spec", "selector", "matchLabels") or {}
        found = []
        for template in get_path(sts, "spec", "volumeClaimTemplates") or []:
            claim: Object = {
                "apiVersion": "v1",
                "kind": "PersistentVolumeClaim",
                "metadata": {
                    "name": claim_name(template, name_of(sts), ordinal),
                    "namespace": namespace_of(sts),
                    "labels": {
                        **(get_path(template, "metadata", "labels") or {}),
                        **selector_labels,
                    },
                },
                "spec": dict(template.get("spec") or {}),
            }
            annotations = get_path(template, "metadata", "annotations")
            if annotations:
                claim["metadata"]["annotations"] = dict(annotations)
            found.append((name_of(template), claim))
        return found

    async def _create_claims(self, sts: Object, pod: Object, ordinal: int) -> None:
        """Create the pod's missing claims (``createPersistentVolumeClaims``)."""
        for _, claim in self._claims_for(sts, ordinal):
            cached = self.claims.get(join_key(namespace_of(sts), name_of(claim)))
            if cached is not None:
                if is_deleting(cached):
                    raise StatusError(409, f"pvc {name_of(claim)} is being deleted")
                continue
            what = f"Claim {name_of(claim)} Pod {name_of(pod)} in StatefulSet {name_of(sts)}"
            try:
                await self.store.create(self.claims_resource, namespace_of(sts), claim)
            except StatusError as e:
                if e.code == 409:
                    continue
                await self.recorder.emit(
                    sts, WARNING, "FailedCreate", f"create {what} failed error: {e.message}"
                )
                raise
            await self.recorder.emit(sts, NORMAL, "SuccessfulCreate", f"create {what} success")

    async def _create_pod(self, sts: Object, pod: Object, ordinal: int) -> Object:
        await self._create_claims(sts, pod, ordinal)
        try:
            created = await self.store.create(pods.RESOURCE, namespace_of(sts), pod)
        except StatusError as e:
            if e.code != 409:
                await self._pod_event(sts, pod, "create", e)
            raise
        await self._retain_claims(sts, created, ordinal)
        await self._pod_event(sts, created, "create")
        return created

    async def _delete_pod(self, sts: Object, pod: Object) -> None:
        try:
            await self.store.delete(
                pods.RESOURCE, namespace_of(pod), name_of(pod), {"uid": uid_of(pod)}
            )
        except StatusError as e:
            if e.code == 404:
                return
            await self._pod_event(sts, pod, "delete", e)
            raise
        await self._pod_event(sts, pod, "delete")

    async def _pod_event(
        self, sts: Object, pod: Object, verb: str, error: StatusError | None = None
    ) -> None:
        """kube's ``recordPodEvent``: ``<verb> Pod <pod> in StatefulSet <sts> successful``."""
        what = f"{verb} Pod {name_of(pod)} in StatefulSet {name_of(sts)}"
        if error is None:
            await self.recorder.emit(sts, NORMAL, f"Successful{verb.title()}", f"{what} successful")
        else:
            await self.recorder.emit(
                sts, WARNING, f"Failed{verb.title()}", f"{what} failed error: {error.message}"
            )

    async def _retain_claims(self, sts: Object, pod: Object, ordinal: int) -> None:
        """Give the pod's claims the ownerReferences the retention policy asks for."""
        policy = get_path(sts, "spec", "persistentVolumeClaimRetentionPolicy") or {}
        when_deleted = policy.get("whenDeleted") or "Retain"
        when_scaled = policy.get("whenScaled") or "Retain"
        start = int(get_path(sts, "spec", "ordinals", "start") or 0)
        scaled_down = not start <= ordinal < start + int(get_path(sts, "spec", "replicas") or 0)
        owners: list[tuple[Object, str, str]] = []  # (owner, apiVersion, kind) to hold the claim
        if when_scaled == "Delete" and scaled_down:
            owners.append((pod, "v1", "Pod"))
        elif when_deleted == "Delete":
            owners.append((sts, "apps/v1", KIND))
        wanted_uids = {uid_of(owner) for owner, _, _ in owners}
        dropped_uids = {uid_of(sts), uid_of(pod)} - wanted_uids
        for _, claim in self._claims_for(sts, ordinal):
            cached = self.claims.get(join_key(namespace_of(sts), name_of(claim)))
            if cached is None:
                continue
            refs = owner_references(cached)
            have = {str(r.get("uid")) for r in refs}
            if wanted_uids <= have and not have & dropped_uids:
                continue

            def owned(current: Object) -> Object:
                kept = [r for r in owner_references(current) if r.get("uid") not in dropped_uids]
                uids = {r.get("uid") for r in kept}
                for owner, api_version, kind in owners:
                    if uid_of(owner) not in uids:
                        kept.append(
                            {
                                "apiVersion": api_version,
                                "kind": kind,
                                "name": name_of(owner),
                                "uid": uid_of(owner),
                            }
                        )
                return set_owner_references(current, kept)

            await update_unless_gone(
                self.store, self.claims_resource, namespace_of(sts), name_of(claim), owned
            )

    async def _update(self, sts: Object, current: Object, update: Object, found: _Round) -> None:
        """Create, replace and delete pods as the policy allows (``updateStatefulSet``)."""
        monotonic = get_path(sts, "spec", "podManagementPolicy") != "Parallel"
        min_ready = int(get_path(sts, "spec", "minReadySeconds") or 0)
        now = self.clock.seconds()
        start = int(get_path(sts, "spec", "ordinals", "start") or 0)
        count = int(get_path(sts, "spec", "replicas") or 0)
        ordinals = range(start, start + count)
        unhealthy = [found.replicas[o] for o in ordinals if o in found.replicas]
        unhealthy += found.condemned
        first_unhealthy = next((p for p in unhealthy if not healthy(p)), None)
        for ordinal in ordinals:
            pod = found.replicas.get(ordinal)
            if pod is not None and phase_of(pod) in ("Failed", "Succeeded"):
                failed = phase_of(pod) == "Failed"
                await self.recorder.emit(
                    sts,
                    WARNING if failed else NORMAL,
                    "RecreatingFailedPod" if failed else "RecreatingTerminatedPod",
                    f"StatefulSet {namespace_of(sts)}/{name_of(sts)} is recreating "
                    f"{'failed' if failed else 'terminated'} Pod {name_of(pod)}",
                )
                if not is_deleting(pod):
                    await self._delete_pod(sts, pod)
                pod = None
                found.replicas.pop(ordinal, None)
            if pod is None:
                created = await self._create_pod(
                    sts, self._new_pod(sts, ordinal, current, update), ordinal
                )
                found.replicas[ordinal] = created
                if monotonic:
                    return
                continue
            if phase_of(pod) == "Pending":
                await self._create_claims(sts, pod, ordinal)
            if monotonic and (is_deleting(pod) or not running_and_ready(pod)):
                return
            if monotonic and not pod_available(pod, min_ready, now):
                return
            await self._fix_identity(sts, pod, ordinal)
            await self._retain_claims(sts, pod, ordinal)
        for pod in found.condemned:
            condemned = ordinal_of(pod, name_of(sts))
            if condemned is not None:
                await self._retain_claims(sts, pod, condemned)
        for pod in found.condemned:
            if is_deleting(pod):
                if monotonic:
                    return
                continue
            ready = running_and_ready(pod) and pod_available(pod, min_ready, now)
            if monotonic and pod is not first_unhealthy and not ready:
                return
            await self._delete_pod(sts, pod)
            if monotonic:
                return
        if get_path(sts, "spec", "updateStrategy", "type") != "RollingUpdate":
            return
        partition = int(get_path(sts, "spec", "updateStrategy", "rollingUpdate", "partition") or 0)
        for ordinal in reversed(ordinals):
            if ordinal - start < partition:
                break
            pod = found.replicas.get(ordinal)
            if pod is None:
                return
            labels = metadata(pod).get("labels") or {}
            if labels.get(REVISION_LABEL) != name_of(update) and not is_deleting(pod):
                self._log.info(
                    "Pod {pod} of StatefulSet {sts} is terminating for update",
                    pod=name_of(pod),
                    sts=name_of(sts),
                )
                await self._delete_pod(sts, pod)
                found.current_replicas_delta -= 1
                return
            if not healthy(pod):
                return

    async def _fix_identity(self, sts: Object, pod: Object, ordinal: int) -> None:
        """Put back the identity labels of a pod that lost them (``updateIdentity``)."""
        wanted = {POD_NAME_LABEL: name_of(pod), POD_INDEX_LABEL: str(ordinal)}
        labels = metadata(pod).get("labels") or {}
        if all(labels.get(k) == v for k, v in wanted.items()):
            return

        def relabelled(current: Object) -> Object:
            current["metadata"].setdefault("labels", {}).update(wanted)
            return current

        if await update_unless_gone(
            self.store, pods.RESOURCE, namespace_of(pod), name_of(pod), relabelled
        ):
            await self._pod_event(sts, pod, "update")

    # Status and history

    async def _write_status(
        self, sts: Object, current: Object, update: Object, collisions: int, found: _Round
    ) -> None:
        min_ready = int(get_path(sts, "spec", "minReadySeconds") or 0)
        availability = Availability(min_ready, self.clock.seconds())
        replicas = ready = available = at_current = at_update = 0
        everyone = [*found.replicas.values(), *found.condemned]
        for pod in everyone:
            replicas += 1
            if running_and_ready(pod):
                ready += 1
                available += availability.available(pod)
            if not is_deleting(pod):
                revision = (metadata(pod).get("labels") or {}).get(REVISION_LABEL)
                at_current += revision == name_of(current)
                at_update += revision == name_of(update)
        at_current = max(0, at_current + found.current_replicas_delta)
        current_name = name_of(current)
        rolling = get_path(sts, "spec", "updateStrategy", "type") == "RollingUpdate"
        if rolling and at_update == replicas and ready == replicas:
            # The roll-out is complete (``completeRollingUpdate``).
            at_current, current_name = at_update, name_of(update)
        counts: dict[str, Any] = {
            "observedGeneration": metadata(sts).get("generation"),
            "replicas": replicas,
            "readyReplicas": ready,
            "currentReplicas": at_current,
            "updatedReplicas": at_update,
            "currentRevision": current_name,
            "updateRevision": name_of(update),
            "collisionCount": collisions,
            "availableReplicas": available,
        }

        await write_status(self.store, statefulsets.RESOURCE, sts, counts, _ALWAYS_WRITTEN)
        await self._truncate_history(sts, {current_name, name_of(update)}, everyone)
        if availability.recheck is not None:
            self.queue.add_after(join_key(namespace_of(sts), name_of(sts)), availability.recheck)

    async def _truncate_history(self, sts: Object, live: set[str], everyone: list[Object]) -> None:
        live |= {str((metadata(p).get("labels") or {}).get(REVISION_LABEL)) for p in everyone}
        revisions = self._owned(self.revisions.cache, sts)
        historic = [r for r in revisions if name_of(r) not in live]
        limit = int(get_path(sts, "spec", "revisionHistoryLimit") or 0)
        await self.history.truncate(historic, live, len(historic) - limit)


#: Status fields Go writes even when zero.
_ALWAYS_WRITTEN = ("replicas", "availableReplicas", "collisionCount")
