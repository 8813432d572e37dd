"""
Deletion that reaches beyond one object: dependents by ownerReferences
(background, foreground and orphan propagation) and everything in a
namespace that is being deleted.

One datastore watch over ``/registry/`` feeds an in-memory index of
ownership edges; the work itself goes through L{ObjectStore}, so finalizers
and every other rule of deletion still apply.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime

from k3stw.apiserver.registry import NAMESPACES, Registry, ResourceType
from k3stw.apiserver.status import StatusError
from k3stw.apiserver.storage import Object, ObjectStore
from k3stw.controllers.loop import ControllerLoop
from k3stw.datastore.interface import Event, EventType, IDatastore

PREFIX = "/registry/"
ORPHAN = "orphan"
FOREGROUND = "foregroundDeletion"
NAMESPACE_FINALIZER = "kubernetes"
#: Wait between passes over work that could not finish (a dependent still has finalizers).
RETRY_SECONDS = 1.0


@dataclass(frozen=True)
class ObjectRef:
    resource: ResourceType
    namespace: str | None
    name: str


class GarbageCollector(ControllerLoop):
    """Cascading deletion by ownerReferences, and namespace termination."""

    label = "garbage collector"

    def __init__(
        self, datastore: IDatastore, store: ObjectStore, registry: Registry, clock: IReactorTime
    ) -> None:
        super().__init__(clock, RETRY_SECONDS)
        self.datastore = datastore
        self.store = store
        self.registry = registry
        self.dependents: defaultdict[str, set[str]] = defaultdict(set)
        self._pending: set[str] = set()
        self._wake: Deferred[None] | None = None

    async def run_once(self) -> None:
        await self._follow()

    async def _follow(self) -> None:
        """Index everything, then handle changes as they come."""
        self.dependents.clear()
        revision = 0
        start: str | None = None
        while True:
            page = await self.datastore.list(PREFIX, 500, start, revision)
            revision = page.revision
            for kv in page.items:
                obj = _decode(kv.value)
                self._index(kv.key, obj)
                if _needs_attention(obj):
                    self._pending.add(kv.key)
                start = kv.key
            if not page.more:
                break
        self.watch = await self.datastore.watch(PREFIX, revision + 1, self._changed)
        ended = self.watch.ended
        ended.addBoth(self._nudge_through)
        while not ended.called:
            await self._work()
            if ended.called:
                break
            self._wake = Deferred()
            retry = self.clock.callLater(RETRY_SECONDS, self._nudge) if self._pending else None
            try:
                await self._wake
            finally:
                if retry is not None and retry.active():
                    retry.cancel()
        await ended

    def _changed(self, events: Sequence[Event]) -> None:
        for event in events:
            obj = _decode(event.kv.value)
            if event.type is EventType.DELETE:
                self._forget(event.kv.key, obj)
                uid = obj.get("metadata", {}).get("uid")
                if uid and self.dependents.get(uid):
                    self._pending.update(self.dependents[uid])
            else:
                self._index(event.kv.key, obj)
                if _needs_attention(obj):
                    self._pending.add(event.kv.key)
        self._nudge()

    def _nudge(self) -> None:
        if self._wake is not None and not self._wake.called:
            self._wake.callback(None)

    def _nudge_through(self, result: object) -> object:
        self._nudge()
        return result

    def _index(self, key: str, obj: Object) -> None:
        for reference in obj.get("metadata", {}).get("ownerReferences") or []:
            if reference.get("uid"):
                self.dependents[reference["uid"]].add(key)

    def _forget(self, key: str, obj: Object) -> None:
        for reference in obj.get("metadata", {}).get("ownerReferences") or []:
            keys = self.dependents.get(reference.get("uid", ""))
            if keys is not None:
                keys.discard(key)
                if not keys:
                    del self.dependents[reference["uid"]]

    async def _work(self) -> None:
        pending, self._pending = self._pending, set()
        for key in sorted(pending):
            try:
                done = await self._handle(key)
            except StatusError as e:
                self._log.warn(
                    "garbage collection of {key} failed: {error}", key=key, error=e.message
                )
                done = False
            if not done:
                self._pending.add(key)

    async def _handle(self, key: str) -> bool:
        """Act on one object; False when it must be looked at again later."""
        ref = self._ref(key)
        if ref is None:
            return True
        try:
            obj = await self.store.get(ref.resource, ref.namespace, ref.name)
        except StatusError as e:
            if e.code == 404:
                return True
            raise
        metadata = obj["metadata"]
        if metadata.get("deletionTimestamp"):
            if ref.resource is NAMESPACES or (
                ref.resource.kind == "Namespace" and not ref.resource.group
            ):
                return await self._terminate_namespace(ref, obj)
            finalizers = metadata.get("finalizers") or []
            if ORPHAN in finalizers:
                await self._orphan_dependents(metadata["uid"])
                await self._drop_finalizer(ref, ORPHAN)
            elif FOREGROUND in finalizers:
                if await self._delete_dependents(metadata["uid"], foreground=True):
                    await self._drop_finalizer(ref, FOREGROUND)
                else:
                    return False
        return await self._collect_if_owners_gone(ref, obj)

    async def _collect_if_owners_gone(self, ref: ObjectRef, obj: Object) -> bool:
        """Delete an object whose every owner is gone (background propagation)."""
        owners = obj["metadata"].get("ownerReferences") or []
        if not owners or obj["metadata"].get("deletionTimestamp"):
            return True
        for owner in owners:
            if await self._owner_exists(ref.namespace, owner):
                return True
        try:
            await self.store.delete(
                ref.resource, ref.namespace, ref.name, {"uid": obj["metadata"]["uid"]}
            )
        except StatusError as e:
            if e.code not in (404, 409):
                raise
        return True

    async def _owner_exists(self, namespace: str | None, owner: dict[str, str]) -> bool:
        group = owner.get("apiVersion", "").rpartition("/")[0]
        resource = self.registry.by_kind(group, owner.get("kind", ""))
        if resource is None:
            # An owner of a kind this server does not serve is never collected against.
            return True
        try:
            found = await self.store.get(
                resource, namespace if resource.namespaced else None, owner.get("name", "")
            )
        except StatusError as e:
            if e.code == 404:
                return False
            raise
        return bool(found["metadata"].get("uid") == owner.get("uid"))

    async def _dependent_refs(self, uid: str) -> list[ObjectRef]:
        refs = (self._ref(key) for key in sorted(self.dependents.get(uid, ())))
        return [ref for ref in refs if ref is not None]

    async def _orphan_dependents(self, uid: str) -> None:
        for ref in await self._dependent_refs(uid):

            def release(current: Object) -> Object:
                owners = current["metadata"].get("ownerReferences") or []
                kept = [o for o in owners if o.get("uid") != uid]
                if kept:
                    current["metadata"]["ownerReferences"] = kept
                else:
                    current["metadata"].pop("ownerReferences", None)
                return current

            try:
                await self.store.guaranteed_update(ref.resource, ref.namespace, ref.name, release)
            except StatusError as e:
                if e.code != 404:
                    raise

    async def _delete_dependents(self, uid: str, foreground: bool) -> bool:
        """Delete every dependent of C{uid}; True once none is left."""
        refs = await self._dependent_refs(uid)
        for ref in refs:
            try:
                await self.store.delete(
                    ref.resource, ref.namespace, ref.name, None, [FOREGROUND] if foreground else []
                )
            except StatusError as e:
                if e.code != 404:
                    raise
        return not self.dependents.get(uid)

    async def _drop_finalizer(self, ref: ObjectRef, finalizer: str) -> None:
        def drop(current: Object) -> Object:
            finalizers = [f for f in current["metadata"].get("finalizers") or [] if f != finalizer]
            if finalizers:
                current["metadata"]["finalizers"] = finalizers
            else:
                current["metadata"].pop("finalizers", None)
            return current

        await self.store.guaranteed_update(ref.resource, ref.namespace, ref.name, drop)

    async def _terminate_namespace(self, ref: ObjectRef, namespace: Object) -> bool:
        """Delete everything in a terminating namespace, then the namespace itself."""
        remaining = 0
        for resource in self.registry:
            if not resource.namespaced:
                continue
            listed = await self.store.list(resource, ref.name)
            for obj in listed.items:
                remaining += 1
                if obj["metadata"].get("deletionTimestamp"):
                    continue
                try:
                    await self.store.delete(resource, ref.name, obj["metadata"]["name"])
                except StatusError as e:
                    if e.code != 404:
                        raise
        if remaining:
            return False
        finalizers = namespace.get("spec", {}).get("finalizers") or []
        if NAMESPACE_FINALIZER in finalizers or namespace["metadata"].get("finalizers") is None:

            def finalize(current: Object) -> Object:
                spec = current.setdefault("spec", {})
                spec["finalizers"] = [
                    f for f in spec.get("finalizers") or [] if f != NAMESPACE_FINALIZER
                ]
                if not spec["finalizers"]:
                    del spec["finalizers"]
                return current

            await self.store.guaranteed_update(NAMESPACES, None, ref.name, finalize)
        try:
            await self.store.delete(NAMESPACES, None, ref.name)
        except StatusError as e:
            if e.code != 404:
                raise
        self._log.info("namespace {name} deleted", name=ref.name)
        return True

    def _ref(self, key: str) -> ObjectRef | None:
        """The object a storage key names, if it is of a served resource."""
        parts = key[len(PREFIX) :].split("/")
        for resource in self.registry:
            prefix = resource.storage_prefix()[len(PREFIX) :].rstrip("/").split("/")
            if parts[: len(prefix)] != prefix:
                continue
            rest = parts[len(prefix) :]
            if resource.namespaced and len(rest) == 2:
                return ObjectRef(resource, rest[0], rest[1])
            if not resource.namespaced and len(rest) == 1:
                return ObjectRef(resource, None, rest[0])
        return None


def _needs_attention(obj: Object) -> bool:
    """Whether collection could have work on C{obj}: most writes need none, and cost nothing."""
    metadata = obj.get("metadata") or {}
    return bool(metadata.get("ownerReferences") or metadata.get("deletionTimestamp"))


def _decode(value: bytes) -> Object:
    try:
        obj = json.loads(value)
    except ValueError:
        return {}
    return obj if isinstance(obj, dict) else {}
