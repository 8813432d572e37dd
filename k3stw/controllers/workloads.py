"""
What the controllers that own pods share (kube-controller-manager's
``controller_utils`` and ``history`` packages): which objects a controller
controls, readiness and availability, ``maxSurge``-style
int-or-percent values, and ControllerRevisions, the history of a
DaemonSet's or StatefulSet's pod template.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from k3stw.apiserver.kinds.pods import is_ready
from k3stw.apiserver.registry import ResourceType
from k3stw.apiserver.status import StatusError
from k3stw.apiserver.storage import ObjectStore
from k3stw.controllers.ownership import new_controller_ref
from k3stw.machinery.informer import EventHandler, each_change
from k3stw.machinery.objects import (
    Object,
    copy_json,
    find_condition,
    get_path,
    join_key,
    metadata,
    name_of,
    namespace_of,
    owner_references,
    safe_encode,
    uid_of,
)
from k3stw.machinery.times import parse_time

#: The label a pod and a ControllerRevision carry to name their revision.
REVISION_LABEL = "controller-revision-hash"
#: The longest name prefix a ControllerRevision name keeps (``ControllerRevisionName``).
_REVISION_PREFIX_MAX = 223


def controlled_by(obj: Mapping[str, Any], uid: str) -> bool:
    """Whether the object's controller reference names C{uid}."""
    return any(ref.get("controller") and ref.get("uid") == uid for ref in owner_references(obj))


def enqueue_controller(kind: str, enqueue: Callable[[str], object]) -> EventHandler:
    """A handler that enqueues the key of each changed object's controller of kind C{kind}."""

    def changed(obj: Object) -> None:
        for ref in owner_references(obj):
            if ref.get("controller") and ref.get("kind") == kind:
                enqueue(join_key(namespace_of(obj), str(ref.get("name"))))

    return each_change(changed)


def pod_available(pod: Mapping[str, Any], min_ready_seconds: int, now: float) -> bool:
    """Whether the pod has been Ready for C{min_ready_seconds} (``IsPodAvailable``)."""
    if not is_ready(pod):
        return False
    if not min_ready_seconds:
        return True
    ready = find_condition(pod, "Ready") or {}
    since = parse_time(ready.get("lastTransitionTime"))
    return since is not None and since + min_ready_seconds <= now


def ready_in(pod: Mapping[str, Any], min_ready_seconds: int, now: float) -> float | None:
    """Seconds until a Ready pod that is not yet available will be; None if that cannot come."""
    ready = find_condition(pod, "Ready") or {}
    since = parse_time(ready.get("lastTransitionTime"))
    if not is_ready(pod) or since is None:
        return None
    left = since + min_ready_seconds - now
    return left if left > 0 else None


def phase_of(pod: Mapping[str, Any]) -> str:
    return str((pod.get("status") or {}).get("phase") or "")


def scaled_value(value: Any, total: int, round_up: bool) -> int:
    """An int-or-percent (``"25%"``, ``2``) of C{total} (``GetScaledValueFromIntOrPercent``)."""
    if isinstance(value, int):
        return value
    text = str(value or "0")
    if not text.endswith("%"):
        return int(text)
    share = int(text[:-1]) * total / 100
    return math.ceil(share) if round_up else math.floor(share)


# ControllerRevisions


def fnv32a(data: bytes) -> int:
    """The 32-bit FNV-1a hash of C{data}, as Go's ``hash/fnv`` computes it."""
    value = 0x811C9DC5
    for byte in data:
        value = ((value ^ byte) * 0x01000193) & 0xFFFFFFFF
    return value


def _canonical(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


def template_hash(template: Mapping[str, Any], collision_count: int | None) -> str:
    """
    A pod template's hash as a DaemonSet's (and a Deployment's) pods are
    labelled with (``ComputeHash``): FNV-1a over the template, then the
    collision count as eight little-endian bytes, written in decimal and
    safe-encoded.  (kube hashes Go's dump of the struct; ours hashes its
    canonical JSON: a different but equally stable value, which no client
    recomputes.)
    """
    data = _canonical(template)
    if collision_count is not None:
        data += struct.pack("<Q", collision_count & 0xFFFFFFFF)
    return safe_encode(str(fnv32a(data)))


def revision_hash(data: Mapping[str, Any], collision_count: int | None) -> str:
    """A ControllerRevision's hash of its data (``HashControllerRevision``)."""
    raw = _canonical(data)
    if collision_count is not None:
        raw += str(collision_count).encode()
    return safe_encode(str(fnv32a(raw)))


def revision_name(parent: str, hash_: str) -> str:
    """``<parent>-<hash>``, the parent's name cut short if need be (``ControllerRevisionName``)."""
    return f"{parent[:_REVISION_PREFIX_MAX]}-{hash_}"


def template_patch(template: Mapping[str, Any]) -> Object:
    """
    What a revision stores: the patch that puts C{template} back
    (``{"spec":{"template":{..., "$patch":"replace"}}}``), its metadata as Go
    writes an empty creation time.
    """
    copied = copy_json(dict(template))
    meta = copied.setdefault("metadata", {})
    meta.setdefault("creationTimestamp", None)
    copied["$patch"] = "replace"
    return {"spec": {"template": copied}}


def template_of(revision: Mapping[str, Any]) -> Object:
    """The pod template a revision's data puts back."""
    template = copy_json(dict(get_path(revision, "data", "spec", "template") or {}))
    template.pop("$patch", None)
    meta = template.get("metadata") or {}
    if meta.get("creationTimestamp") is None:
        meta.pop("creationTimestamp", None)
    return template


def revision_number(revision: Mapping[str, Any]) -> int:
    return int(revision.get("revision") or 0)


def sorted_revisions(revisions: Iterable[Mapping[str, Any]]) -> list[Object]:
    """Revisions oldest first (by number, then name, as ``history.SortControllerRevisions``)."""
    return sorted((dict(r) for r in revisions), key=lambda r: (revision_number(r), name_of(r)))


async def update_unless_gone(
    store: ObjectStore,
    resource: ResourceType,
    namespace: str | None,
    name: str,
    mutate: Callable[[Object], Object],
    subresource: str | None = None,
) -> Object | None:
    """C{guaranteed_update}, or None if the object is gone (a controller has nothing to do)."""
    try:
        return await store.guaranteed_update(
            resource, namespace, name, mutate, subresource=subresource
        )
    except StatusError as e:
        if e.code != 404:
            raise
    return None


class Availability:
    """
    Ready pods counted as available once Ready for C{min_ready_seconds}, and
    how soon the next of those counted unavailable will be (to look again then).
    """

    def __init__(self, min_ready_seconds: int, now: float) -> None:
        self.min_ready_seconds = min_ready_seconds
        self.now = now
        self.recheck: float | None = None

    def available(self, pod: Mapping[str, Any]) -> bool:
        if pod_available(pod, self.min_ready_seconds, self.now):
            return True
        left = ready_in(pod, self.min_ready_seconds, self.now)
        if left is not None:
            self.recheck = left if self.recheck is None else min(self.recheck, left)
        return False


async def write_status(
    store: ObjectStore,
    resource: ResourceType,
    obj: Mapping[str, Any],
    counts: Mapping[str, Any],
    always: Iterable[str],
) -> None:
    """
    Write C{counts} into the object's status if they change it; fields not
    in C{always} are left out when zero or empty, as Go's ``omitempty`` does.
    """
    written = set(always)

    def counted(current: Object) -> Object:
        status = current.setdefault("status", {})
        for field, value in counts.items():
            if value or field in written:
                status[field] = value
            else:
                status.pop(field, None)
        return current

    status = obj.get("status") or {}
    if counted({"status": dict(status)})["status"] != status:
        await update_unless_gone(
            store, resource, namespace_of(obj) or None, name_of(obj), counted, "status"
        )


class RevisionHistory:
    """Writes an owner's ControllerRevisions through the object store."""

    def __init__(self, store: ObjectStore, resource: ResourceType) -> None:
        self.store = store
        self.resource = resource

    async def snapshot(
        self, owner: Mapping[str, Any], patch: Object, number: int, name: str, label: str
    ) -> Object | None:
        """
        Revision C{name} of C{owner}, holding C{patch}: created, or found if
        it holds C{patch} already; None if another revision has the name (a
        hash collision).

        :param label: its ``controller-revision-hash`` label.
        """
        namespace = str(metadata(owner).get("namespace"))
        labels = dict(get_path(owner, "spec", "template", "metadata", "labels") or {})
        labels[REVISION_LABEL] = label
        revision: Object = {
            "apiVersion": "apps/v1",
            "kind": "ControllerRevision",
            "metadata": {
                "name": name,
                "namespace": namespace,
                "labels": labels,
                "ownerReferences": [new_controller_ref(owner)],
            },
            "data": patch,
            "revision": number,
        }
        annotations = metadata(owner).get("annotations")
        if annotations:
            revision["metadata"]["annotations"] = dict(annotations)
        try:
            return await self.store.create(self.resource, namespace, revision)
        except StatusError as e:
            if e.code != 409:
                raise
        existing = await self.store.get(self.resource, namespace, name)
        return existing if existing.get("data") == patch else None

    async def renumber(self, revision: Mapping[str, Any], number: int) -> Object:
        """Give an existing revision a new number (a rollback to it makes it the newest)."""

        def renumbered(current: Object) -> Object:
            current["revision"] = number
            return current

        return await self.store.guaranteed_update(
            self.resource, str(metadata(revision).get("namespace")), name_of(revision), renumbered
        )

    async def delete(self, revision: Mapping[str, Any]) -> None:
        try:
            await self.store.delete(
                self.resource,
                str(metadata(revision).get("namespace")),
                name_of(revision),
                {"uid": uid_of(revision)},
            )
        except StatusError as e:
            if e.code not in (404, 409):
                raise

    async def truncate(self, revisions: list[Object], keep: set[str], excess: int) -> None:
        """Delete up to C{excess} of the oldest C{revisions} whose names are not in C{keep}."""
        for revision in sorted_revisions(revisions):
            if excess <= 0:
                return
            if name_of(revision) in keep:
                continue
            await self.delete(revision)
            excess -= 1
