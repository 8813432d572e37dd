"""
The API server's object store, informers and registry in memory, on a Clock:
the real rules (defaults, validation, finalizers, watches) with nothing to
wait for, so controllers are unit-tested through what they really use.
"""

from __future__ import annotations

from collections.abc import Coroutine
from typing import Any, TypeVar

from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from k3stw.apiserver.bootstrap import bootstrap
from k3stw.apiserver.informers import ServerInformers
from k3stw.apiserver.kinds import built_in_registry, crds
from k3stw.apiserver.registry import ResourceType
from k3stw.apiserver.status import StatusError
from k3stw.apiserver.storage import ObjectStore
from k3stw.datastore.memory import MemoryDatastore
from k3stw.machinery.objects import Object

T = TypeVar("T")

#: A CRD version's schema that takes any object (kube-apiserver requires one).
ANY_SCHEMA = {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}}

#: Where the clock of every in-memory server starts (a plausible "now").
START = 1_800_000_000.0


class MemoryServer:
    """
    A server's storage half in memory: the datastore, the object store, the
    registry (following this store's CRD writes), and shared informers.

    Everything the store does completes before its call returns, so L{run}
    hands back results directly; the informers and controllers started with
    L{start} see each write as it happens.
    """

    def __init__(self, case: SynchronousTestCase, clock: Clock | None = None) -> None:
        self.case = case
        self.clock = clock or Clock()
        if self.clock.seconds() == 0:
            self.clock.advance(START)
        self.datastore = MemoryDatastore(self.clock)
        self.datastore.startService()
        case.addCleanup(self.datastore.stopService)
        self.store = ObjectStore(self.datastore, self.clock)
        self.registry = built_in_registry()
        self.store.observe(crds.serve_written_crds(self.registry))
        self.informers = ServerInformers(self.store)
        self.run(bootstrap(self.store, self.registry))

    def run(self, work: Coroutine[Any, Any, T] | Deferred[T]) -> T:
        """The result of a store or datastore call (or anything that waits on nothing else)."""
        result: T = self.case.successResultOf(ensureDeferred(work))
        return result

    def fails(self, coroutine: Coroutine[Any, Any, object]) -> StatusError:
        """The StatusError a store call raises."""
        failure = self.case.failureResultOf(Deferred.fromCoroutine(coroutine), StatusError)
        error = failure.value
        assert isinstance(error, StatusError)
        return error

    def start(self, *services: Any) -> None:
        """Start the informers and C{services} (controllers), stopping them after the test."""
        for service in (self.informers, *services):
            if not service.running:
                service.startService()
                self.case.addCleanup(service.stopService)

    def resource(self, group: str, plural: str, version: str = "v1") -> ResourceType:
        return self.registry.require(group, version, plural)

    def create(self, group: str, plural: str, obj: Object, namespace: str | None = None) -> Object:
        return self.run(self.store.create(self.resource(group, plural), namespace, obj))

    def get(self, group: str, plural: str, name: str, namespace: str | None = None) -> Object:
        return self.run(self.store.get(self.resource(group, plural), namespace, name))

    def exists(self, group: str, plural: str, name: str, namespace: str | None = None) -> bool:
        return self.run(self._exists(self.resource(group, plural), name, namespace))

    async def _exists(self, resource: ResourceType, name: str, namespace: str | None) -> bool:
        try:
            await self.store.get(resource, namespace, name)
        except StatusError as e:
            if e.code != 404:
                raise
            return False
        return True

    def delete(
        self,
        group: str,
        plural: str,
        name: str,
        namespace: str | None = None,
        finalizers: tuple[str, ...] = (),
    ) -> tuple[Object, bool]:
        resource = self.resource(group, plural)
        return self.run(self.store.delete(resource, namespace, name, None, finalizers))
