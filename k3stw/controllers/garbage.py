"""
Deletion that reaches beyond one object: dependents by ownerReferences
(background, foreground and orphan propagation) and everything in a
namespace that is being deleted.

The collector hears of every change to every served resource through the
shared informers, but its caches hold only what it may act on: the metadata
of objects that have owners or are being deleted (indexed by uid and owner
uid), as kube-controller-manager's metadata informers do.  Owners it does
not hold are looked up in the object store, through which it also does all
its work, so finalizers and every other rule of deletion still apply.  Its
keys name one object of one resource: ``<plural>[.<group>]/<namespace>/<name>``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from k3stw.apiserver.informers import Selection, ServerInformers
from k3stw.apiserver.kinds import namespaces
from k3stw.apiserver.registry import Registry, ResourceType
from k3stw.apiserver.status import StatusError
from k3stw.apiserver.storage import ObjectStore
from k3stw.controllers import TRANSIENT
from k3stw.machinery.cache import OWNER_UID, UID, by_owner_uid, by_uid
from k3stw.machinery.controller import Controller
from k3stw.machinery.informer import EventHandler, Informer, Retention
from k3stw.machinery.objects import (
    Object,
    drop_finalizer,
    is_deleting,
    join_key,
    metadata,
    metadata_only,
    name_of,
    namespace_of,
    owner_references,
    resource_version,
    set_owner_references,
    split_key,
    uid_of,
    without,
)

ORPHAN = "orphan"
FOREGROUND = "foregroundDeletion"
#: Wait before looking again at work that could not finish (a dependent still has finalizers).
RETRY_SECONDS = 1.0


def needs_attention(obj: Object) -> bool:
    """Whether collection could have work on C{obj}: most objects need none, and cost nothing."""
    return bool(owner_references(obj) or is_deleting(obj))


#: What the collector's caches hold.
OWNED_OR_DELETING = Selection(
    "garbage-collection", retention=Retention(keep=needs_attention, trim=metadata_only)
)


#: What a resource must serve to be followed (kube's ``GetDeletableResources``): not
#: the answered ones (reviews, resource metrics).
FOLLOWED_VERBS = frozenset({"delete", "list", "watch"})


def resource_name(resource: ResourceType) -> str:
    """``pods``, ``deployments.apps``: a resource as the collector's keys name it."""
    return f"{resource.plural}.{resource.group}" if resource.group else resource.plural


@dataclass(frozen=True)
class ObjectRef:
    resource: ResourceType
    namespace: str | None
    name: str

    @property
    def key(self) -> str:
        return f"{resource_name(self.resource)}/{join_key(self.namespace, self.name)}"


class GarbageCollector(Controller):
    """Cascading deletion by ownerReferences, and namespace termination."""

    label = "garbage collector"
    expected = TRANSIENT

    def __init__(self, informers: ServerInformers, store: ObjectStore, registry: Registry) -> None:
        super().__init__(store.clock)
        self.shared = informers
        self.store = store
        self.registry = registry
        self._followed: dict[str, tuple[ResourceType, Informer]] = {}
        self._follow_registry()
        # Work starts once the built-in resources are cached; custom ones join as they come.
        self.informers = [informer for _, informer in self._followed.values()]
        self.namespaces = informers.for_resource(namespaces.RESOURCE)
        registry.on_change(self._follow_registry)

    # Following every served resource

    def _follow_registry(self) -> None:
        """An informer for each served resource (one version of each); none for those gone."""
        served: dict[str, ResourceType] = {}
        for resource in self.registry:
            if FOLLOWED_VERBS.issubset(resource.verbs):
                served.setdefault(resource_name(resource), resource)
        for name in list(self._followed.keys() - served.keys()):
            resource, informer = self._followed.pop(name)
            if resource.crd:
                self.shared.forget_resource(resource, OWNED_OR_DELETING)
        for name, resource in served.items():
            if name not in self._followed:
                informer = self.shared.for_resource(resource, OWNED_OR_DELETING)
                informer.add_index(UID, by_uid)
                informer.add_index(OWNER_UID, by_owner_uid)
                self.add_handler(informer, self._handler(resource))
                self._followed[name] = (resource, informer)

    def _handler(self, resource: ResourceType) -> EventHandler:
        def changed(obj: Object) -> None:
            if needs_attention(obj):
                self.enqueue(self._ref(resource, obj).key)

        def deleted(obj: Object) -> None:
            # Its dependents may have lost their last owner; a foreground owner may be free;
            # a terminating namespace may be empty now.
            self._enqueue_dependents(uid_of(obj))
            for owner in owner_references(obj):
                found = self._by_uid(str(owner.get("uid") or ""))
                if found is not None:
                    self.enqueue(found.key)
            namespace = self.namespaces.get(namespace_of(obj)) if namespace_of(obj) else None
            if namespace is not None and is_deleting(namespace):
                self.enqueue(self._ref(namespaces.RESOURCE, namespace).key)

        return EventHandler(
            on_add=changed, on_update=lambda old, new: changed(new), on_delete=deleted
        )

    def _ref(self, resource: ResourceType, obj: Object) -> ObjectRef:
        return ObjectRef(resource, namespace_of(obj) or None, name_of(obj))

    def _enqueue_dependents(self, uid: str) -> None:
        for ref in self._dependents(uid):
            self.enqueue(ref.key)

    def _dependents(self, uid: str) -> list[ObjectRef]:
        found: list[ObjectRef] = []
        if not uid:
            return found
        for resource, informer in self._followed.values():
            found += [self._ref(resource, obj) for obj in informer.cache.by_index(OWNER_UID, uid)]
        return found

    def _by_uid(self, uid: str) -> ObjectRef | None:
        """The object with C{uid}, if the caches hold it."""
        if not uid:
            return None
        for resource, informer in self._followed.values():
            for obj in informer.cache.by_index(UID, uid):
                return self._ref(resource, obj)
        return None

    def _lookup(self, key: str) -> tuple[ObjectRef, Informer] | None:
        name, _, object_key = key.partition("/")
        followed = self._followed.get(name)
        if followed is None:
            return None
        resource, informer = followed
        namespace, object_name = split_key(object_key)
        return ObjectRef(resource, namespace, object_name), informer

    # The work

    async def sync(self, key: str) -> None:
        found = self._lookup(key)
        if found is None:
            return
        ref, informer = found
        obj = informer.get(join_key(ref.namespace, ref.name))
        if obj is None:
            return
        if is_deleting(obj):
            if ref.resource is namespaces.RESOURCE:
                if not await self._terminate_namespace(ref.name):
                    self.queue.add_after(key, RETRY_SECONDS)
                return
            finalizers = metadata(obj).get("finalizers") or []
            if ORPHAN in finalizers:
                await self._orphan_dependents(uid_of(obj))
                await self._drop_finalizer(ref, ORPHAN)
            elif FOREGROUND in finalizers:
                if await self._delete_dependents(uid_of(obj)):
                    await self._drop_finalizer(ref, FOREGROUND)
                else:
                    self.queue.add_after(key, RETRY_SECONDS)
            return
        await self._collect_if_owners_gone(ref, obj)

    async def _collect_if_owners_gone(self, ref: ObjectRef, obj: Object) -> None:
        """
        Delete an object whose every owner is gone (background propagation).
        The cache may lag the store (an owner's deletion can be seen before
        the release of its dependents when the two resources' watches run
        apart), so the owners are checked again on the object read fresh, and
        it is deleted only as that version: as kube's ``attemptToDeleteItem``.
        """
        if not await self._owners_gone(ref.namespace, owner_references(obj)):
            return
        try:
            live = await self.store.get(ref.resource, ref.namespace, ref.name)
        except StatusError as e:
            if e.code == 404:
                return
            raise
        if uid_of(live) != uid_of(obj) or not await self._owners_gone(
            ref.namespace, owner_references(live)
        ):
            return
        preconditions = {"uid": uid_of(live), "resourceVersion": resource_version(live)}
        try:
            await self.store.delete(ref.resource, ref.namespace, ref.name, preconditions)
        except StatusError as e:
            if e.code == 409:
                # Changed since it was read: look again at its new version.
                self.enqueue(ref.key)
            elif e.code != 404:
                raise

    async def _owners_gone(self, namespace: str | None, owners: list[Mapping[str, Any]]) -> bool:
        """Whether C{owners} (a dependent's references) are all gone; False for none."""
        if not owners:
            return False
        for owner in owners:
            if await self._owner_exists(namespace, owner):
                return False
        return True

    async def _owner_exists(self, namespace: str | None, owner: Mapping[str, Any]) -> bool:
        group = str(owner.get("apiVersion", "")).rpartition("/")[0]
        resource = self.registry.by_kind(group, str(owner.get("kind", "")))
        if resource is None:
            # An owner of a kind this server does not serve is never collected against.
            return True
        scope = namespace if resource.namespaced else None
        name = str(owner.get("name", ""))
        informer = self._followed.get(resource_name(resource), (resource, None))[1]
        cached = informer.get(join_key(scope, name)) if informer is not None else None
        if cached is not None and uid_of(cached) == owner.get("uid"):
            return True
        # The cache may not have seen the owner yet: only the store can say it is gone.
        try:
            live = await self.store.get(resource, scope, name)
        except StatusError as e:
            if e.code == 404:
                return False
            raise
        return uid_of(live) == owner.get("uid")

    async def _orphan_dependents(self, uid: str) -> None:
        for ref in self._dependents(uid):

            def release(current: Object) -> Object:
                kept = [o for o in owner_references(current) if o.get("uid") != uid]
                return set_owner_references(current, kept)

            try:
                await self.store.guaranteed_update(ref.resource, ref.namespace, ref.name, release)
            except StatusError as e:
                if e.code != 404:
                    raise

    async def _delete_dependents(self, uid: str) -> bool:
        """Delete every dependent of C{uid}, theirs first; True once none is left."""
        refs = self._dependents(uid)
        for ref in refs:
            try:
                await self.store.delete(ref.resource, ref.namespace, ref.name, None, [FOREGROUND])
            except StatusError as e:
                if e.code != 404:
                    raise
        return not refs

    async def _drop_finalizer(self, ref: ObjectRef, finalizer: str) -> None:
        await self.store.guaranteed_update(
            ref.resource,
            ref.namespace,
            ref.name,
            lambda current: drop_finalizer(current, finalizer),
        )

    async def _terminate_namespace(self, name: str) -> bool:
        """Delete everything in a terminating namespace, then the namespace itself."""
        namespace = self.namespaces.get(name)
        if namespace is None:
            return True
        remaining = 0
        for resource in self.registry:
            if not resource.namespaced or "delete" not in resource.verbs:
                continue
            for obj in (await self.store.list(resource, name)).items:
                remaining += 1
                if is_deleting(obj):
                    continue
                try:
                    await self.store.delete(resource, name, name_of(obj))
                except StatusError as e:
                    if e.code != 404:
                        raise
        if remaining:
            return False
        spec_finalizers = (namespace.get("spec") or {}).get("finalizers") or []
        if namespaces.FINALIZER in spec_finalizers or metadata(namespace).get("finalizers") is None:

            def finalize(current: Object) -> Object:
                spec = current.setdefault("spec", {})
                spec["finalizers"] = without(spec.get("finalizers") or [], namespaces.FINALIZER)
                if not spec["finalizers"]:
                    del spec["finalizers"]
                return current

            await self.store.guaranteed_update(namespaces.RESOURCE, None, name, finalize)
        try:
            await self.store.delete(namespaces.RESOURCE, None, name)
        except StatusError as e:
            if e.code != 404:
                raise
        self._log.info("namespace {name} deleted", name=name)
        return True
