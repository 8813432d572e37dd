"""
TTL keys for the backends that expire them themselves (the kine log, the
in-memory store): L{LeaseKeeper}.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterable

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.python.failure import Failure

from k3stw.datastore.interface import Conflict, Event, EventType, KeyNotFound
from k3stw.logs import Logger


class LeaseKeeper:
    """
    Deletes keys written with a TTL once it has passed, like kine: the clock
    starts when this server sees the write.  Fed with every event of the log.
    """

    _log = Logger()

    def __init__(self, clock: IReactorTime, delete: Callable[[str, int], Deferred[int]]) -> None:
        self._clock = clock
        self._delete = delete
        self._heap: list[tuple[float, int, str]] = []
        self._latest: dict[str, int] = {}
        self._call: IDelayedCall | None = None
        self._running = False
        self._pending: set[Deferred[int]] = set()

    def start(self) -> None:
        self._running = True
        self._reschedule()

    def stop(self) -> None:
        self._running = False
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
        for d in list(self._pending):
            d.cancel()

    def track(self, key: str, revision: int, ttl: int, delay: float | None = None) -> None:
        """Expire C{key} at C{revision} after C{ttl} seconds (or C{delay})."""
        if revision < self._latest.get(key, 0):
            return
        self._latest[key] = revision
        when = self._clock.seconds() + (ttl if delay is None else delay)
        heapq.heappush(self._heap, (when, revision, key))
        self._reschedule()

    def observe(self, events: Iterable[Event]) -> None:
        for e in events:
            if e.type is EventType.DELETE or not e.kv.lease:
                if e.revision >= self._latest.get(e.kv.key, 0) and e.kv.key in self._latest:
                    del self._latest[e.kv.key]
                continue
            self.track(e.kv.key, e.revision, e.kv.lease)

    def _reschedule(self) -> None:
        if not self._running:
            return
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
        while self._heap and self._latest.get(self._heap[0][2]) != self._heap[0][1]:
            heapq.heappop(self._heap)
        if self._heap:
            delay = max(0.0, self._heap[0][0] - self._clock.seconds())
            self._call = self._clock.callLater(delay, self._expire)

    def _expire(self) -> None:
        self._call = None
        now = self._clock.seconds()
        while self._heap and self._heap[0][0] <= now:
            _, revision, key = heapq.heappop(self._heap)
            if self._latest.get(key) != revision:
                continue
            d = self._delete(key, revision)
            self._pending.add(d)
            d.addBoth(self._deleted, key, revision)
        self._reschedule()

    def _deleted(self, result: object, key: str, revision: int) -> None:
        self._pending.difference_update(d for d in list(self._pending) if d.called)
        if not isinstance(result, Failure):
            return
        failure = result
        if failure.check(KeyNotFound, Conflict, CancelledError):
            return
        self._log.warn(
            "could not expire {key} (revision {revision}): {reason}; retrying",
            key=key,
            revision=revision,
            reason=failure.getErrorMessage(),
        )
        if self._running and self._latest.get(key) == revision:
            heapq.heappush(self._heap, (self._clock.seconds() + 1.0, revision, key))
            self._reschedule()
