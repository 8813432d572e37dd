"""
Informers on a server: the object store as an informer's source, in process
(no HTTP, no encoding), and the server's shared informers, one per resource.
"""

from __future__ import annotations

from dataclasses import dataclass

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure
from zope.interface import implementer

from k3stw.apiserver.registry import ResourceType
from k3stw.apiserver.status import StatusError
from k3stw.apiserver.storage import ObjectStore, Predicate
from k3stw.datastore.interface import Compacted, IWatch, WatchOverflow
from k3stw.machinery.informer import EVERYTHING, Informer, Retention, SharedInformers
from k3stw.machinery.source import EventSink, Expired, IListWatch, IWatchStream, Listed


@implementer(IWatchStream)
class _StoreWatch:
    """A store watch as an informer sees it: a compacted or overflowing one has expired."""

    def __init__(self, watch: IWatch) -> None:
        self._watch = watch
        self.ended: Deferred[None] = Deferred()
        watch.ended.addCallbacks(self.ended.callback, self._failed)

    def _failed(self, failure: Failure) -> None:
        if failure.check(Compacted, WatchOverflow):
            failure = Failure(Expired(failure.getErrorMessage()))
        self.ended.errback(failure)

    def cancel(self) -> None:
        self._watch.cancel()


@implementer(IListWatch)
class StoreSource:
    """
    One resource of the server's own object store (of one namespace, through
    an optional predicate), listed and watched in process.  The objects it
    hands out are shared with the store's other watchers: read-only.
    """

    def __init__(
        self,
        store: ObjectStore,
        resource: ResourceType,
        namespace: str | None = None,
        predicate: Predicate | None = None,
    ) -> None:
        self.store = store
        self.resource = resource
        self.namespace = namespace
        self.predicate = predicate
        name = f"{resource.plural}.{resource.group}" if resource.group else resource.plural
        self.description = f"{name} in {namespace}" if namespace else name

    def list(self) -> Deferred[Listed]:
        return Deferred.fromCoroutine(self._list())

    async def _list(self) -> Listed:
        listed = await self.store.list(self.resource, self.namespace, self.predicate)
        return Listed(listed.items, listed.resource_version)

    def watch(self, resource_version: str, sink: EventSink) -> Deferred[IWatchStream]:
        return Deferred.fromCoroutine(self._watch(resource_version, sink))

    async def _watch(self, resource_version: str, sink: EventSink) -> IWatchStream:
        try:
            watch = await self.store.watch(
                self.resource, self.namespace, resource_version, self.predicate, sink
            )
        except StatusError as e:
            if e.code == 410:
                raise Expired(e.message) from None
            raise
        return _StoreWatch(watch)


@dataclass(frozen=True)
class Selection:
    """
    Which of a resource's objects an informer follows: those of one namespace
    that a predicate selects (at the source: the rest never arrive), and what
    its cache retains of them.  Loops that ask for the same selection, by its
    name, share one informer.
    """

    name: str
    namespace: str | None = None
    predicate: Predicate | None = None
    retention: Retention = EVERYTHING


#: Every object of the resource, cached whole.
ALL = Selection("all")


class ServerInformers(SharedInformers):
    """A server's shared informers: one per resource and selection, on its object store."""

    def __init__(self, store: ObjectStore) -> None:
        super().__init__(store.clock)
        self.store = store

    def for_resource(self, resource: ResourceType, selection: Selection = ALL) -> Informer:
        """The informer of the C{resource} objects C{selection} names."""
        return self.informer(
            (resource.group, resource.plural, selection.name),
            lambda: StoreSource(self.store, resource, selection.namespace, selection.predicate),
            selection.retention,
        )

    def forget_resource(self, resource: ResourceType, selection: Selection = ALL) -> None:
        self.forget((resource.group, resource.plural, selection.name))
