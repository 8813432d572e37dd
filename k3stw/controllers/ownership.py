"""
What kube-controller-manager's workload controllers share about the objects
they own (its ``ControllerRefManager`` and ``ControllerExpectations``):
claiming the objects a selector picks (adopting orphans, releasing those that
no longer match), and remembering the creations and deletions a sync made
until the informers have seen them, so the next sync does not make them twice.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from twisted.internet.interfaces import IReactorTime

from k3stw.apiserver.registry import ResourceType
from k3stw.apiserver.status import StatusError
from k3stw.apiserver.storage import ObjectStore
from k3stw.machinery.informer import EventHandler, Informer
from k3stw.machinery.objects import (
    Object,
    copy_json,
    is_deleting,
    join_key,
    metadata,
    name_of,
    namespace_of,
    object_key,
    owner_references,
    uid_of,
)

#: How long a sync waits for the informers to see its writes before it acts anyway.
EXPECTATIONS_TIMEOUT = 300.0


def controller_ref(obj: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The object's ownerReference with ``controller: true``, if it has one."""
    for ref in owner_references(obj):
        if ref.get("controller") is True:
            return ref
    return None


def new_controller_ref(owner: Mapping[str, Any]) -> Object:
    """``metav1.NewControllerRef``: the reference a controller puts on what it makes."""
    return {
        "apiVersion": owner.get("apiVersion", ""),
        "kind": owner.get("kind", ""),
        "name": name_of(owner),
        "uid": uid_of(owner),
        "controller": True,
        "blockOwnerDeletion": True,
    }


def pod_from_template(template: Mapping[str, Any], owner: Mapping[str, Any]) -> Object:
    """
    ``GetPodFromTemplate``: a new pod of C{owner}'s from its C{template}, with
    the template's labels, annotations and finalizers and spec, the owner's
    name as the generated name's prefix, and a controller reference.
    """
    meta = template.get("metadata") or {}
    pod_meta: Object = {
        "generateName": f"{name_of(owner)}-",
        "namespace": namespace_of(owner),
        "ownerReferences": [new_controller_ref(owner)],
    }
    for key in ("labels", "annotations", "finalizers"):
        if meta.get(key):
            pod_meta[key] = copy_json(meta[key])
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": pod_meta,
        "spec": copy_json(dict(template.get("spec") or {})),
    }


def resolve_owner(informer: Informer, kind: str, obj: Mapping[str, Any]) -> Object | None:
    """The cached owner of kind C{kind} that controls C{obj}, if it is still that one (same uid)."""
    ref = controller_ref(obj)
    if ref is None or ref.get("kind") != kind:
        return None
    owner = informer.get(f"{namespace_of(obj)}/{ref.get('name', '')}")
    if owner is None or uid_of(owner) != ref.get("uid"):
        return None
    return owner


class ClaimRefused(Exception):
    """The owner may not adopt: it is gone, replaced, or being deleted."""


async def claim(
    store: ObjectStore,
    owner_resource: ResourceType,
    owner: Object,
    resource: ResourceType,
    candidates: Iterable[Object],
    selects: Callable[[Mapping[str, Any]], bool],
) -> list[Object]:
    """
    The candidates C{owner} controls once it has claimed them
    (``ClaimObject``): its own that C{selects} still picks, and orphans it
    picks, adopted by writing its controller reference on them; its own that
    C{selects} no longer picks are released (the reference removed).  Adoption
    first checks, uncached, that the owner is not being deleted or replaced.
    """
    owner_uid = uid_of(owner)
    owned: list[Object] = []
    checked = False
    ref_to_add = new_controller_ref(owner)
    for obj in candidates:
        ref = controller_ref(obj)
        labels = metadata(obj).get("labels") or {}
        if ref is not None:
            if ref.get("uid") != owner_uid:
                continue  # another controller's
            if selects(labels):
                owned.append(obj)
            elif not is_deleting(owner):
                await _write_refs(store, resource, obj, lambda refs: _release(refs, owner_uid))
            continue
        if is_deleting(owner) or not selects(labels) or is_deleting(obj):
            continue
        if namespace_of(obj) != namespace_of(owner):
            continue
        if not checked:
            await _can_adopt(store, owner_resource, owner)
            checked = True
        adopted = await _write_refs(store, resource, obj, lambda refs: _adopt(refs, ref_to_add))
        if adopted is not None and controller_ref(adopted) == ref_to_add:
            owned.append(adopted)
    return owned


async def _can_adopt(store: ObjectStore, resource: ResourceType, owner: Object) -> None:
    """``RecheckDeletionTimestamp``: the owner, read fresh, is the same and not being deleted."""
    namespace, name = namespace_of(owner), name_of(owner)
    try:
        fresh = await store.get(resource, namespace or None, name)
    except StatusError as e:
        if e.code == 404:
            raise ClaimRefused(f"{resource.kind} {namespace}/{name} is gone") from None
        raise
    if uid_of(fresh) != uid_of(owner):
        raise ClaimRefused(
            f"original {resource.kind} {namespace}/{name} is gone: got uid {uid_of(fresh)}, "
            f"wanted {uid_of(owner)}"
        )
    if is_deleting(fresh):
        raise ClaimRefused(
            f"{resource.kind} {namespace}/{name} has just been deleted at "
            f"{metadata(fresh).get('deletionTimestamp')}"
        )


def _release(refs: list[Object], owner_uid: str) -> list[Object] | None:
    kept = [ref for ref in refs if ref.get("uid") != owner_uid]
    return kept if len(kept) != len(refs) else None


def _adopt(refs: list[Object], ref: Object) -> list[Object] | None:
    if any(existing.get("controller") is True for existing in refs):
        return None  # someone else got there first
    return [*refs, ref]


async def _write_refs(
    store: ObjectStore,
    resource: ResourceType,
    obj: Object,
    change: Callable[[list[Object]], list[Object] | None],
) -> Object | None:
    """Change C{obj}'s ownerReferences as C{change} says (None: leave them); None if it is gone."""
    uid = uid_of(obj)

    def mutate(current: Object) -> Object:
        meta = current["metadata"]
        if meta.get("uid") != uid:
            return current
        refs = change(list(meta.get("ownerReferences") or []))
        if refs is not None:
            if refs:
                meta["ownerReferences"] = refs
            else:
                meta.pop("ownerReferences", None)
        return current

    try:
        return await store.guaranteed_update(
            resource, namespace_of(obj) or None, name_of(obj), mutate, MANAGER
        )
    except StatusError as e:
        if e.code == 404:
            return None
        raise


#: The field manager kube-controller-manager's writes are recorded under.
MANAGER = "kube-controller-manager"


@dataclass
class _Expected:
    creations: int
    deletions: set[str]
    since: float


@dataclass
class Expectations:
    """
    Per controller key, the creations (a count: names are generated) and
    deletions (object keys) a sync made that the informers have not shown
    yet; a key is satisfied once they all arrived, or after
    L{EXPECTATIONS_TIMEOUT} in case one was lost.  A controller raises them
    before it writes and the informer's handlers lower them as objects arrive.
    """

    clock: IReactorTime
    _expected: dict[str, _Expected] = field(default_factory=dict)

    def satisfied(self, key: str) -> bool:
        expected = self._expected.get(key)
        if expected is None:
            return True
        arrived = expected.creations <= 0 and not expected.deletions
        if arrived or self.clock.seconds() - expected.since > EXPECTATIONS_TIMEOUT:
            del self._expected[key]
            return True
        return False

    def expect(self, key: str, creations: int = 0, deletions: Iterable[str] = ()) -> None:
        """Raise C{key}'s expectations by C{creations} and C{deletions}."""
        expected = self._expected.get(key)
        if expected is None:
            expected = self._expected[key] = _Expected(0, set(), self.clock.seconds())
        expected.creations += creations
        expected.deletions.update(deletions)

    def creation_observed(self, key: str) -> None:
        """One creation arrived (or, called for a failed write, never will)."""
        expected = self._expected.get(key)
        if expected is not None:
            expected.creations -= 1

    def deletion_observed(self, key: str, deleted: str) -> None:
        expected = self._expected.get(key)
        if expected is not None:
            expected.deletions.discard(deleted)

    def forget(self, key: str) -> None:
        self._expected.pop(key, None)

    def clear(self) -> None:
        """Forget every key (a new leadership term starts from the informers' view)."""
        self._expected.clear()


def observing(kind: str, expectations: Expectations) -> EventHandler:
    """
    A handler that lowers C{expectations} as the creations and deletions of
    objects a C{kind} controls arrive (keyed by the controller's
    ``namespace/name``); a deletion arrives with its deletionTimestamp.
    """

    def controller_key(obj: Object) -> str | None:
        ref = controller_ref(obj)
        if ref is None or ref.get("kind") != kind:
            return None
        return join_key(namespace_of(obj), str(ref.get("name", "")))

    def added(obj: Object) -> None:
        if (key := controller_key(obj)) is not None:
            expectations.creation_observed(key)
            if is_deleting(obj):
                expectations.deletion_observed(key, object_key(obj))

    def updated(old: Object, new: Object) -> None:
        if is_deleting(new) and not is_deleting(old):
            deleted(new)

    def deleted(obj: Object) -> None:
        if (key := controller_key(obj)) is not None:
            expectations.deletion_observed(key, object_key(obj))

    return EventHandler(on_add=added, on_update=updated, on_delete=deleted)
