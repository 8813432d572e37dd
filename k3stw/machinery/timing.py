"""
How k3stw waits: one back-off policy (L{Backoff}), one way to retry a step
until it succeeds (L{retrying}) and one periodic job (L{PeriodicJob}), all on
an injected L{IReactorTime}.
"""

from __future__ import annotations

import math
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

from twisted.application.service import Service
from twisted.internet.defer import CancelledError, Deferred, ensureDeferred
from twisted.internet.defer import TimeoutError as DeferredTimeoutError
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.task import deferLater
from twisted.python.failure import Failure

from k3stw.logs import Logger

T = TypeVar("T")

_log = Logger(namespace="k3stw.machinery.timing")


@dataclass(frozen=True)
class Backoff:
    """
    The wait after the Nth failure in a row: C{initial * factor ** (N - 1)},
    at most C{maximum}, plus up to C{jitter} times that at random, so that
    many clients do not retry in step.  A fixed delay is C{factor=1}.

    Usable as Twisted's C{ClientService} retry policy: call it with the
    number of failures.
    """

    initial: float
    maximum: float = math.inf
    factor: float = 2.0
    jitter: float = 0.0
    #: A number in [0, 1) for each wait's random share (tests pass a fixed one).
    chance: Callable[[], float] = field(default=random.random, compare=False, repr=False)

    def delay(self, failures: int) -> float:
        """Seconds to wait after C{failures} failures in a row (1 or more)."""
        exponent = min(max(failures - 1, 0), 64)
        base = min(self.initial * self.factor**exponent, self.maximum)
        return base * (1 + self.jitter * self.chance()) if self.jitter else base

    def __call__(self, failures: int) -> float:
        return self.delay(failures)


def fixed(delay: float, jitter: float = 0.0) -> Backoff:
    """The same wait after every failure (plus up to C{jitter} times it at random)."""
    return Backoff(delay, factor=1.0, jitter=jitter)


async def retrying(
    clock: IReactorTime,
    step: Callable[[], Awaitable[T]],
    backoff: Backoff,
    failed: Callable[[int, Exception], object],
    fatal: tuple[type[Exception], ...] = (),
) -> T:
    """
    Run C{step} until it succeeds, waiting C{backoff} after each failure.

    :param failed: told of each failure (its number, from 1, and the error), to log it.
    :param fatal: errors that end the retries: they are raised at once.
    """
    failures = 0
    while True:
        try:
            return await step()
        except fatal:
            raise
        except CancelledError:
            raise
        except Exception as e:
            failures += 1
            failed(failures, e)
        await deferLater(clock, backoff.delay(failures))


class PeriodicJob(Service):
    """
    Run C{job} every C{interval} seconds while the service runs, the first
    time after C{first} seconds.

    A run that fails (or outlasts C{timeout}) is logged, and the job runs again
    after C{backoff} (never later than C{interval}): a heartbeat recovers as
    soon as its server does.  Errors of the C{expected} types are one warning
    line; any other error also gets its traceback.  Stopping cancels the
    running job and the timer.

    :param label: what the logs call the job (``Failed to update lease``).
    """

    def __init__(
        self,
        clock: IReactorTime,
        interval: float,
        job: Callable[[], Awaitable[object]],
        label: str,
        *,
        first: float = 0.0,
        backoff: Backoff | None = None,
        timeout: float | None = None,
        expected: tuple[type[Exception], ...] = (),
    ) -> None:
        self.clock = clock
        self.interval = interval
        self.job = job
        self.label = label
        self.first = first
        self.backoff = backoff or Backoff(min(1.0, interval), interval)
        self.timeout = timeout
        self.expected = expected
        self.failures = 0
        self._timer: IDelayedCall | None = None
        self._running: Deferred[object] | None = None

    def startService(self) -> None:
        super().startService()
        if self.first <= 0:
            self._run()
        else:
            self._schedule(self.first)

    def stopService(self) -> None:
        super().stopService()
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        # Forget the run as well as cancel it: a job that outlives its
        # cancellation must not drive the schedule of a later start.
        running, self._running = self._running, None
        if running is not None:
            running.cancel()

    def run_now(self) -> None:
        """Run the job at once (unless it is running), then go on from there."""
        if self.running and self._running is None:
            if self._timer is not None and self._timer.active():
                self._timer.cancel()
            self._run()

    def _schedule(self, delay: float) -> None:
        # Always through the clock, even for no delay: a job that completes
        # synchronously must not recurse into its next run.
        self._timer = self.clock.callLater(max(delay, 0.0), self._run)

    def _run(self) -> None:
        self._timer = None
        running: Deferred[object] = ensureDeferred(_awaited(self.job))
        if self.timeout is not None:
            running.addTimeout(self.timeout, self.clock)
        self._running = running
        running.addCallbacks(
            self._succeeded, self._failed, callbackArgs=(running,), errbackArgs=(running,)
        )

    def _succeeded(self, result: object, run: Deferred[object]) -> None:
        if run is not self._running:
            return
        self._running = None
        self.failures = 0
        if self.running:
            self._schedule(self.interval)

    def _failed(self, failure: Failure, run: Deferred[object]) -> None:
        if run is not self._running:
            return
        self._running = None
        if not self.running:
            return
        self.failures += 1
        if failure.check(DeferredTimeoutError):
            self._log_warning(f"no answer within {self.timeout:g}s")
        elif failure.check(CancelledError):
            self._log_warning("cancelled")
        elif failure.check(*self.expected):
            self._log_warning(str(failure.value) or type(failure.value).__name__)
        else:
            _log.failure(
                "{what} (attempt {attempt})", failure, what=self.label, attempt=self.failures
            )
        self._schedule(min(self.backoff.delay(self.failures), self.interval))

    def _log_warning(self, error: str) -> None:
        _log.warn(
            "{what} (attempt {attempt}): {error}",
            what=self.label,
            attempt=self.failures,
            error=error,
        )


async def _awaited(job: Callable[[], Awaitable[object]]) -> object:
    return await job()
