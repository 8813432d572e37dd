"""
Following the log: the follower that reads new rows in id order, the
watches it feeds, and the lease keeper that expires TTL keys.
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from typing import TypeVar

from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.interfaces import (
    IDelayedCall,
    IReactorTime,
)
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from k3stw.datastore.interface import (
    Conflict,
    DatastoreError,
    Event,
    EventType,
    IWatch,
    KeyNotFound,
    WatchOverflow,
)
from k3stw.datastore.sql.log import Row

_T = TypeVar("_T")


@implementer(IWatch)
class SQLWatch:
    """
    One watch: filters the follower's events to a prefix, holds them while
    paused (up to a bound), and replays history first when it starts in the past.
    """

    _log = Logger()

    def __init__(
        self,
        prefix: str,
        next_revision: int,
        deliver: Callable[[Sequence[Event]], None],
        max_events: int,
        max_bytes: int,
        on_end: Callable[[SQLWatch], None],
    ) -> None:
        self.prefix = prefix
        self.next_revision = next_revision
        self.ended: Deferred[None] = Deferred()
        self._deliver = deliver
        self._max_events = max_events
        self._max_bytes = max_bytes
        self._on_end = on_end
        self._paused = False
        self._buffer: deque[Event] = deque()
        self._buffered_bytes = 0
        self._live_pending: list[Event] = []
        self.catching_up = False
        self.done = False
        self._resumed: Deferred[None] | None = None

    # The follower's side.

    def offer(self, events: Iterable[Event]) -> None:
        if self.done:
            return
        mine = [e for e in events if e.kv.key.startswith(self.prefix)]
        if not mine:
            return
        if self.catching_up:
            self._live_pending.extend(mine)
            self._check_bound(len(self._live_pending) + len(self._buffer), 0)
            return
        self.push(mine)

    def push(self, events: Sequence[Event]) -> None:
        """Deliver C{events} (already filtered, in order) or hold them while paused."""
        events = [e for e in events if e.revision >= self.next_revision]
        if self.done or not events:
            return
        self.next_revision = events[-1].revision + 1
        if self._paused or self._buffer:
            size = sum(len(e.kv.value) + (len(e.prev.value) if e.prev else 0) for e in events)
            self._buffer.extend(events)
            self._buffered_bytes += size
            self._check_bound(len(self._buffer), self._buffered_bytes)
            return
        self._call_deliver(events)

    def finish_catch_up(self) -> None:
        self.catching_up = False
        pending, self._live_pending = self._live_pending, []
        self.push(pending)

    def _check_bound(self, events: int, size: int) -> None:
        if events > self._max_events or size > self._max_bytes:
            self.fail(
                WatchOverflow(
                    f"watch on {self.prefix!r} fell behind by more than "
                    f"{self._max_events} events or {self._max_bytes} bytes"
                )
            )

    def _call_deliver(self, events: Sequence[Event]) -> None:
        try:
            self._deliver(events)
        except Exception:
            self._log.failure("watch consumer for {prefix!r} raised", prefix=self.prefix)

    def wait_resumed(self) -> Deferred[None]:
        if not self._paused:
            return succeed(None)
        if self._resumed is None:
            self._resumed = Deferred()
        return self._resumed

    def fail(self, reason: DatastoreError) -> None:
        if self.done:
            return
        self._end()
        self.ended.errback(reason)

    def _end(self) -> None:
        self.done = True
        self._buffer.clear()
        self._live_pending = []
        self._buffered_bytes = 0
        self._on_end(self)
        resumed, self._resumed = self._resumed, None
        if resumed is not None:
            resumed.callback(None)

    def is_done(self) -> bool:
        return self.done

    # IWatch / IPushProducer.

    def cancel(self) -> None:
        if self.done:
            return
        self._end()
        self.ended.callback(None)

    def stopProducing(self) -> None:
        self.cancel()

    def pauseProducing(self) -> None:
        self._paused = True

    def resumeProducing(self) -> None:
        if self.done or not self._paused:
            return
        self._paused = False
        while self._buffer and not self._paused and not self.done:
            batch = list(self._buffer)
            self._buffer.clear()
            self._buffered_bytes = 0
            self._call_deliver(batch)
        resumed, self._resumed = self._resumed, None
        if resumed is not None and not self._paused:
            resumed.callback(None)


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


class LogFollower:
    """
    Reads the log in id order and hands each new row to the watches.

    It wakes every C{poll_interval} seconds, or at once when poked after a
    local write.  Events are released strictly in sequence: when an id is
    missing (a transaction still in flight, or one that rolled back) it waits
    C{gap_wait} seconds, then writes a fill row for that id, which either
    succeeds (the id was burned) or fails because the real row landed.
    """

    _log = Logger()

    def __init__(
        self,
        clock: IReactorTime,
        read: Callable[[int], Deferred[tuple[list[Row], int]]],
        fill: Callable[[int], Deferred[None]],
        poll_interval: float,
        gap_wait: float = 0.2,
    ) -> None:
        self._clock = clock
        self._read = read
        self._fill = fill
        self.poll_interval = poll_interval
        self.gap_wait = gap_wait
        self.position = 0
        #: How many times the log was read (for tests and metrics).
        self.polls = 0
        self.watches: set[SQLWatch] = set()
        self.listeners: list[Callable[[Sequence[Event]], None]] = []
        self.on_compacted: Callable[[int, int], None] | None = None
        self._call: IDelayedCall | None = None
        self._busy = False
        self._again = False
        self._running = False
        self._gap_since: float | None = None
        self._gap_id = 0
        self._failing = False
        self._current: Deferred[None] | None = None

    def start(self, position: int) -> None:
        self.position = position
        self._running = True
        self._schedule(self.poll_interval)

    def stop(self) -> Deferred[None]:
        self._running = False
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
        current = self._current
        if current is None:
            return succeed(None)
        done: Deferred[None] = Deferred()
        current.addBoth(lambda _: done.callback(None))
        return done

    def poke(self) -> None:
        """A local write happened: look now."""
        if not self._running:
            return
        if self._busy:
            self._again = True
            return
        self._schedule(0)

    def _schedule(self, delay: float) -> None:
        if self._call is not None and self._call.active():
            if delay > 0:
                return
            self._call.cancel()
        self._call = self._clock.callLater(delay, self._poll)

    def _poll(self) -> None:
        self._call = None
        if not self._running or self._busy:
            return
        self.polls += 1
        self._busy = True
        self._again = False
        self._current = Deferred.fromCoroutine(self._poll_once())
        self._current.addBoth(self._polled)

    def _polled(self, result: object) -> None:
        self._busy = False
        self._current = None
        if isinstance(result, Failure):
            failure = result
            if not self._failing:
                self._log.warn(
                    "datastore log follower: {reason}; retrying",
                    reason=failure.getErrorMessage(),
                )
            self._failing = True
            if self._running:
                self._schedule(max(self.poll_interval, 1.0))
            return
        if self._failing:
            self._log.info("datastore log follower recovered at revision {rev}", rev=self.position)
            self._failing = False
        if not self._running:
            return
        if self._again:
            self._schedule(0)
        elif self._gap_since is not None:
            self._schedule(min(self.poll_interval, self.gap_wait / 4))
        else:
            self._schedule(self.poll_interval)

    def _stopped(self) -> bool:
        return not self._running

    async def _poll_once(self) -> None:
        while self._running:
            rows, compacted = await self._read(self.position)
            if self._stopped():
                return
            expected = self.position + 1
            accepted: list[Row] = []
            gap = False
            for row in rows:
                if row.id < expected:
                    continue
                if row.id != expected:
                    gap = True
                    break
                accepted.append(row)
                expected += 1
            if accepted:
                self._release(accepted)
            if gap:
                if compacted > self.position + 1:
                    self._lost_history(compacted)
                    continue
                await self._handle_gap()
                return
            self._gap_since = None
            if len(rows) < 500:
                return

    async def _handle_gap(self) -> None:
        missing = self.position + 1
        now = self._clock.seconds()
        if self._gap_since is None or self._gap_id != missing:
            self._gap_since = now
            self._gap_id = missing
            return
        if now - self._gap_since < self.gap_wait:
            return
        await self._fill(missing)
        self._gap_since = None
        self._again = True

    def _lost_history(self, compacted: int) -> None:
        self._log.warn(
            "datastore log follower fell behind compaction ({position} < {compacted})",
            position=self.position,
            compacted=compacted,
        )
        requested = self.position + 1
        self.position = compacted - 1
        self._gap_since = None
        if self.on_compacted is not None:
            self.on_compacted(requested, compacted)

    def _release(self, rows: list[Row]) -> None:
        self.position = rows[-1].id
        events = [row.event() for row in rows if not row.internal]
        if not events:
            return
        for listener in self.listeners:
            try:
                listener(events)
            except Exception:
                self._log.failure("datastore listener raised")
        for watch in list(self.watches):
            watch.offer(events)
