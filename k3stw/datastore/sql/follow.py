"""
Following the log: the follower that reads new rows in id order and feeds
them to the watches (L{k3stw.datastore.watch.BufferedWatch}) and listeners.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import (
    IDelayedCall,
    IReactorTime,
)
from twisted.python.failure import Failure

from k3stw.datastore.interface import Event
from k3stw.datastore.sql.log import Row
from k3stw.datastore.watch import BufferedWatch
from k3stw.logs import Logger


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
        self.watches: set[BufferedWatch] = set()
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
