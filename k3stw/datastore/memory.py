"""
The in-memory datastore, for unit tests of controllers, the scheduler and the
API: L{MemoryDatastore}, an L{IDatastore} whose every call answers at once.

It keeps the contract the conformance suite checks on the real backends:
one revision counter (revision 1 is the empty store, as on etcd), reads as of
an older revision until it is compacted, watches without gap or duplicate,
TTL keys deleted (with a delete event) on an injected clock, compaction.
What differs is only time: nothing waits for a thread or a socket, so

- every method returns a Deferred that has already fired;
- a write is delivered to every watch before the write's Deferred is
  returned (one made by a watch's consumer while it is told of another
  change, right after that change has reached every watch); a watch from an
  older revision has its history delivered before C{watch()} returns;
- TTLs run on the L{IReactorTime} given (a L{task.Clock} in tests), from the
  moment a client sees the write, as kine's do.

Several clients may share one L{MemoryLog}, as several servers share one
database: each has its own watches and lease keeper.
"""

from __future__ import annotations

import bisect
from collections import deque
from collections.abc import Callable, Sequence
from typing import TypeVar

from twisted.application.service import Service
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IReactorTime
from zope.interface import implementer

from k3stw.datastore.interface import (
    Compacted,
    Conflict,
    DatastoreUnavailable,
    Event,
    EventType,
    FutureRevision,
    IDatastore,
    IWatch,
    KeyExists,
    KeyNotFound,
    KeyValue,
    ListResult,
)
from k3stw.datastore.lease import LeaseKeeper
from k3stw.datastore.readiness import DatastoreReadiness
from k3stw.datastore.watch import BufferedWatch
from k3stw.logs import Logger

_T = TypeVar("_T")

#: One version of a key: the revision that wrote it, and the value (None: deleted then).
_Version = tuple[int, KeyValue | None]


def _revision_of(version: _Version) -> int:
    return version[0]


def _event_revision(event: Event) -> int:
    return event.revision


class MemoryLog:
    """
    The data of an in-memory datastore: every key's versions since the
    compacted revision, the events since then, and who is told of new ones.

    Synchronous: methods return their answer or raise the datastore's errors.
    """

    _log = Logger()

    def __init__(self) -> None:
        #: The newest revision; 1 is the empty store.
        self.revision = 1
        #: The revision history was compacted to (0: never).
        self.compacted = 0
        #: Every key with a version kept, in key order.
        self._keys: list[str] = []
        self._versions: dict[str, list[_Version]] = {}
        #: Every change from the compacted revision on, in revision order.
        self._events: list[Event] = []
        self._listeners: list[Callable[[Sequence[Event]], None]] = []
        self._undelivered: deque[Event] = deque()
        self._delivering = False

    # Listeners

    def listen(self, listener: Callable[[Sequence[Event]], None]) -> None:
        """Tell C{listener} of every change from now on, in revision order."""
        self._listeners.append(listener)

    def stop_listening(self, listener: Callable[[Sequence[Event]], None]) -> None:
        if listener in self._listeners:
            self._listeners.remove(listener)

    def _record(self, key: str, version: KeyValue | None, event: Event) -> int:
        versions = self._versions.get(key)
        if versions is None:
            versions = self._versions[key] = []
            bisect.insort(self._keys, key)
        versions.append((event.revision, version))
        self._events.append(event)
        self.revision = event.revision
        self._undelivered.append(event)
        # A listener that writes while it is being told (a controller that
        # reacts at once) must not make anyone see its write before this one.
        if not self._delivering:
            self._deliver()
        return event.revision

    def _deliver(self) -> None:
        self._delivering = True
        try:
            while self._undelivered:
                events = [self._undelivered.popleft()]
                for listener in list(self._listeners):
                    try:
                        listener(events)
                    except Exception:
                        self._log.failure("datastore listener raised")
        finally:
            self._delivering = False

    # Reads

    def _as_of(self, revision: int) -> int:
        """The revision a read at C{revision} sees (0: now)."""
        if revision == 0:
            return self.revision
        if revision > self.revision:
            raise FutureRevision(revision, self.revision)
        if revision < self.compacted:
            raise Compacted(revision, self.compacted)
        return revision

    def _version(self, key: str, revision: int) -> KeyValue | None:
        versions = self._versions.get(key)
        if not versions:
            return None
        found = bisect.bisect_right(versions, revision, key=_revision_of)
        return versions[found - 1][1] if found else None

    def current(self, key: str) -> KeyValue | None:
        """The live version of C{key}, or None."""
        return self._version(key, self.revision)

    def get(self, key: str, revision: int = 0) -> KeyValue | None:
        return self._version(key, self._as_of(revision))

    def count(self, prefix: str) -> int:
        return len(self.list(prefix).items)

    def leased(self) -> list[KeyValue]:
        """The live keys that were written with a TTL."""
        live = (self.current(key) for key in self._keys)
        return [kv for kv in live if kv is not None and kv.lease]

    def history(self, start: int) -> list[Event]:
        """Every change with a revision of C{start} or later."""
        first = bisect.bisect_left(self._events, start, key=_event_revision)
        return self._events[first:]

    # After the methods annotated with the builtin list, which it hides.
    def list(
        self, prefix: str, limit: int = 0, continue_from: str | None = None, revision: int = 0
    ) -> ListResult:
        at = self._as_of(revision)
        start = prefix if continue_from is None else max(prefix, continue_from + "\x00")
        items: list[KeyValue] = []
        more = False
        for index in range(bisect.bisect_left(self._keys, start), len(self._keys)):
            key = self._keys[index]
            if not key.startswith(prefix):
                break
            kv = self._version(key, at)
            if kv is None:
                continue
            if limit and len(items) == limit:
                more = True
                break
            items.append(kv)
        return ListResult(items=items, revision=at, more=more)

    # Writes

    def create(self, key: str, value: bytes, lease_ttl: int | None = None) -> int:
        if self.current(key) is not None:
            raise KeyExists(key)
        revision = self.revision + 1
        kv = KeyValue(key, value, revision, revision, lease_ttl or 0)
        return self._record(key, kv, Event(EventType.CREATE, revision, kv, None))

    def _expected(self, key: str, expected_revision: int | None) -> KeyValue:
        current = self.current(key)
        if current is None:
            raise KeyNotFound(key)
        if expected_revision is not None and current.mod_revision != expected_revision:
            raise Conflict(key, expected_revision, current)
        return current

    def update(
        self, key: str, value: bytes, expected_revision: int, lease_ttl: int | None = None
    ) -> int:
        current = self._expected(key, expected_revision)
        revision = self.revision + 1
        kv = KeyValue(key, value, current.create_revision, revision, lease_ttl or 0)
        return self._record(key, kv, Event(EventType.UPDATE, revision, kv, current))

    def delete(self, key: str, expected_revision: int | None = None) -> int:
        current = self._expected(key, expected_revision)
        revision = self.revision + 1
        gone = KeyValue(key, current.value, current.create_revision, revision, current.lease)
        return self._record(key, None, Event(EventType.DELETE, revision, gone, current))

    def compact(self, revision: int) -> None:
        """Forget every version older than the one each key had at C{revision}."""
        if revision > self.revision:
            raise FutureRevision(revision, self.revision)
        if revision <= self.compacted:
            return
        for key in list(self._keys):
            versions = self._versions[key]
            kept = bisect.bisect_right(versions, revision, key=_revision_of) - 1
            if kept >= 0 and versions[kept][1] is None:
                kept += 1  # deleted by then: nothing of that life is left to read
            del versions[: max(kept, 0)]
            if not versions:
                del self._versions[key]
                self._keys.remove(key)
        del self._events[: bisect.bisect_left(self._events, revision, key=_event_revision)]
        self.compacted = revision


@implementer(IDatastore)
class MemoryDatastore(Service):
    """
    L{IDatastore} in memory; a service like the other backends, which
    answers only while it runs (L{DatastoreUnavailable} otherwise).

    :param clock: the time TTLs run on.
    :param memory: the data, to share it with another client (a second
        server, or this one restarted); by default a fresh, empty store.
    :param watch_buffer_events: a paused watch holding more events than this is cut off.
    :param watch_buffer_bytes: likewise for the bytes of values it holds.
    """

    _log = Logger()

    #: How messages name this datastore.
    description = "memory"

    def __init__(
        self,
        clock: IReactorTime,
        memory: MemoryLog | None = None,
        *,
        watch_buffer_events: int = 10_000,
        watch_buffer_bytes: int = 64 << 20,
    ) -> None:
        self.memory = MemoryLog() if memory is None else memory
        self.leases = LeaseKeeper(clock, self._expire)
        self._watch_buffer_events = watch_buffer_events
        self._watch_buffer_bytes = watch_buffer_bytes
        self._watches: set[BufferedWatch] = set()
        self._readiness = DatastoreReadiness(self.description, self._log)

    def __repr__(self) -> str:
        return f"<MemoryDatastore at revision {self.memory.revision}>"

    # Service

    def startService(self) -> None:
        super().startService()
        self.memory.listen(self._observe)
        self.leases.start()
        for kv in self.memory.leased():
            self.leases.track(kv.key, kv.mod_revision, kv.lease)
        self._readiness.reached(self.memory.revision)

    def stopService(self) -> Deferred[None]:
        super().stopService()
        self._readiness.lost()
        self.memory.stop_listening(self._observe)
        self.leases.stop()
        stopped = DatastoreUnavailable(f"datastore {self.description} stopped")
        for watch in list(self._watches):
            watch.fail(stopped)
        return succeed(None)

    def when_ready(self) -> Deferred[None]:
        """Fires once the service runs."""
        return self._readiness.when_ready()

    def _observe(self, events: Sequence[Event]) -> None:
        self.leases.observe(events)
        for watch in list(self._watches):
            watch.offer(events)

    def _expire(self, key: str, revision: int) -> Deferred[int]:
        return self.delete(key, revision)

    def _answer(self, call: Callable[[], _T]) -> Deferred[_T]:
        """C{call}'s answer or error as a fired Deferred; only while running."""
        try:
            if not self.running:
                raise DatastoreUnavailable(f"datastore {self.description} is not running")
            return succeed(call())
        except Exception:
            return fail()

    # IDatastore

    def get(self, key: str, revision: int = 0) -> Deferred[KeyValue | None]:
        return self._answer(lambda: self.memory.get(key, revision))

    def list(
        self, prefix: str, limit: int = 0, continue_from: str | None = None, revision: int = 0
    ) -> Deferred[ListResult]:
        return self._answer(lambda: self.memory.list(prefix, limit, continue_from, revision))

    def count(self, prefix: str) -> Deferred[int]:
        return self._answer(lambda: self.memory.count(prefix))

    def create(self, key: str, value: bytes, lease_ttl: int | None = None) -> Deferred[int]:
        return self._answer(lambda: self.memory.create(key, value, lease_ttl))

    def update(
        self, key: str, value: bytes, expected_revision: int, lease_ttl: int | None = None
    ) -> Deferred[int]:
        return self._answer(lambda: self.memory.update(key, value, expected_revision, lease_ttl))

    def delete(self, key: str, expected_revision: int | None = None) -> Deferred[int]:
        return self._answer(lambda: self.memory.delete(key, expected_revision))

    def watch(
        self, prefix: str, start_revision: int, deliver: Callable[[Sequence[Event]], None]
    ) -> Deferred[IWatch]:
        return self._answer(lambda: self._watch(prefix, start_revision, deliver))

    def _watch(
        self, prefix: str, start_revision: int, deliver: Callable[[Sequence[Event]], None]
    ) -> IWatch:
        if start_revision and start_revision < self.memory.compacted:
            raise Compacted(start_revision, self.memory.compacted)
        start = start_revision or self.memory.revision + 1
        watch = BufferedWatch(
            prefix,
            start,
            deliver,
            self._watch_buffer_events,
            self._watch_buffer_bytes,
            self._watches.discard,
        )
        self._watches.add(watch)
        watch.offer(self.memory.history(start))
        return watch

    def current_revision(self) -> Deferred[int]:
        return self._answer(lambda: self.memory.revision)

    def compact(self, revision: int) -> Deferred[None]:
        return self._answer(lambda: self.memory.compact(revision))

    def compacted_revision(self) -> Deferred[int]:
        return self._answer(lambda: self.memory.compacted)

    def health(self) -> Deferred[None]:
        return self._answer(lambda: None)
