"""
A watch for the backends that see every event of their log themselves (the
kine log's follower, the in-memory store): L{BufferedWatch}.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Sequence

from twisted.internet.defer import Deferred, succeed
from zope.interface import implementer

from k3stw.datastore.interface import DatastoreError, Event, IWatch, WatchOverflow
from k3stw.logs import Logger


@implementer(IWatch)
class BufferedWatch:
    """
    One watch fed with every event of the log: it filters them to its prefix,
    holds them while paused (up to a bound, then ends with L{WatchOverflow}),
    and, while it replays history (C{catching_up}), keeps the live events
    that arrive meanwhile for after the replay.

    :param on_end: told once the watch has ended, however it ended.
    """

    _log = Logger()

    def __init__(
        self,
        prefix: str,
        next_revision: int,
        deliver: Callable[[Sequence[Event]], None],
        max_events: int,
        max_bytes: int,
        on_end: Callable[[BufferedWatch], None],
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
