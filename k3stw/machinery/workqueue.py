"""
A rate-limited work queue, as client-go's: keys wait their turn in order,
a key added again while it waits is one entry, a key is handed to at most
one worker at a time (added while in flight, it comes back once that worker
is done), and a key that failed comes back after a jittered back-off that
grows with its failures until it succeeds.
"""

from __future__ import annotations

from collections import deque

from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime

from k3stw.machinery.timing import Backoff

#: client-go's per-item back-off starts at 5 ms; ours stops growing at a minute,
#: so that a controller is back soon after a datastore that was away returns.
RATE_LIMIT = Backoff(0.005, 60.0, jitter=0.5)


class QueueShutDown(CancelledError):
    """The queue was shut down: no more keys."""


class WorkQueue:
    """Keys to work on, for the workers of one controller."""

    def __init__(self, clock: IReactorTime, backoff: Backoff = RATE_LIMIT) -> None:
        self.clock = clock
        self.backoff = backoff
        self._ready: deque[str] = deque()
        self._dirty: set[str] = set()
        self._processing: set[str] = set()
        self._later: dict[str, IDelayedCall] = {}
        self._failures: dict[str, int] = {}
        self._getters: deque[Deferred[str]] = deque()
        self._shut_down = False

    def __len__(self) -> int:
        """Keys waiting to be handed out now."""
        return len(self._ready)

    @property
    def shutting_down(self) -> bool:
        return self._shut_down

    def add(self, key: str) -> None:
        """Work on C{key} soon (once, however often it is added before then)."""
        if self._shut_down or key in self._dirty:
            return
        self._dirty.add(key)
        if key in self._processing:
            return  # back once the worker holding it is done
        if self._getters:
            self._dirty.discard(key)
            self._processing.add(key)
            self._getters.popleft().callback(key)
        else:
            self._ready.append(key)

    def add_after(self, key: str, delay: float) -> None:
        """Work on C{key} after C{delay} seconds (if it already waits, the earlier time wins)."""
        if self._shut_down:
            return
        if delay <= 0:
            self.add(key)
            return
        waiting = self._later.get(key)
        if waiting is not None and waiting.active():
            if waiting.getTime() <= self.clock.seconds() + delay:
                return
            waiting.cancel()
        self._later[key] = self.clock.callLater(delay, self._due, key)

    def _due(self, key: str) -> None:
        self._later.pop(key, None)
        self.add(key)

    def add_rate_limited(self, key: str) -> float:
        """C{key} failed: work on it again after its back-off; the delay chosen."""
        failures = self._failures.get(key, 0) + 1
        self._failures[key] = failures
        delay = self.backoff.delay(failures)
        self.add_after(key, delay)
        return delay

    def forget(self, key: str) -> None:
        """C{key} succeeded: its next failure starts the back-off afresh."""
        self._failures.pop(key, None)

    def failures(self, key: str) -> int:
        """How many times in a row C{key} has failed."""
        return self._failures.get(key, 0)

    def get(self) -> Deferred[str]:
        """The next key to work on (waiting until there is one); call L{done} with it after."""
        if self._shut_down:
            failed: Deferred[str] = Deferred()
            failed.errback(QueueShutDown())
            return failed
        if self._ready:
            key = self._ready.popleft()
            self._dirty.discard(key)
            self._processing.add(key)
            return succeed(key)
        getter: Deferred[str] = Deferred(self._getters.remove)
        self._getters.append(getter)
        return getter

    def done(self, key: str) -> None:
        """The worker is finished with C{key}; if it was added meanwhile, it goes round again."""
        self._processing.discard(key)
        if key in self._dirty:
            self._dirty.discard(key)
            self.add(key)

    def shut_down(self) -> None:
        """Hand out nothing more; waiting workers get L{QueueShutDown}, timers are cancelled."""
        self._shut_down = True
        for timer in self._later.values():
            if timer.active():
                timer.cancel()
        self._later.clear()
        self._ready.clear()
        self._dirty.clear()
        getters, self._getters = self._getters, deque()
        for getter in getters:
            getter.errback(QueueShutDown())
