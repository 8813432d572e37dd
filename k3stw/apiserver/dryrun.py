"""
``dryRun=All``: every check of a write, and none of its effects.

The API serves dry runs with an L{ObjectStore} over this view of the
datastore, so each verb runs its real code path and only the final write is
replaced by the precondition it would have checked.
"""

from __future__ import annotations

from twisted.internet.defer import Deferred, succeed
from zope.interface import implementer

from k3stw.datastore.interface import Conflict, IDatastore, KeyExists, KeyNotFound, KeyValue


@implementer(IDatastore)
class DryRunDatastore:
    """Reads go to C{datastore}; writes only check what the real write would check."""

    def __init__(self, datastore: IDatastore) -> None:
        self._datastore = datastore
        self.get = datastore.get
        self.list = datastore.list
        self.count = datastore.count
        self.watch = datastore.watch
        self.current_revision = datastore.current_revision
        self.compacted_revision = datastore.compacted_revision
        self.health = datastore.health

    def compact(self, revision: int) -> Deferred[None]:
        return succeed(None)

    async def _current(self, key: str) -> KeyValue | None:
        found: KeyValue | None = await self._datastore.get(key)
        return found

    async def _revision(self) -> int:
        revision: int = await self._datastore.current_revision()
        return revision

    def create(self, key: str, value: bytes, lease_ttl: int | None = None) -> Deferred[int]:
        async def check() -> int:
            if await self._current(key) is not None:
                raise KeyExists(key)
            return await self._revision()

        return Deferred.fromCoroutine(check())

    def update(
        self, key: str, value: bytes, expected_revision: int, lease_ttl: int | None = None
    ) -> Deferred[int]:
        return self._check(key, expected_revision)

    def delete(self, key: str, expected_revision: int | None = None) -> Deferred[int]:
        return self._check(key, expected_revision)

    def _check(self, key: str, expected_revision: int | None) -> Deferred[int]:
        async def check() -> int:
            current = await self._current(key)
            if current is None:
                raise KeyNotFound(key)
            if expected_revision is not None and current.mod_revision != expected_revision:
                raise Conflict(key, expected_revision, current)
            return current.mod_revision

        return Deferred.fromCoroutine(check())
