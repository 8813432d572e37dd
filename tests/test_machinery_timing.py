"""
How k3stw waits, on a fake clock: the back-off policy, retrying a step, and
the periodic job.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from typing import cast

from twisted.internet.defer import CancelledError, Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.logger import ILogObserver, LogEvent, formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from k3stw.machinery.timing import Backoff, PeriodicJob, fixed, retrying


def capture_events(case: SynchronousTestCase) -> list[LogEvent]:
    """Every log event emitted during the test."""
    events: list[LogEvent] = []
    observer = cast(ILogObserver, events.append)
    globalLogPublisher.addObserver(observer)
    case.addCleanup(globalLogPublisher.removeObserver, observer)
    return events


def constant(chance: float) -> Callable[[], float]:
    """A random source that always says C{chance}."""
    return lambda: chance


class Unreachable(Exception):
    """An error a job expects (its server is down)."""


class BackoffTests(SynchronousTestCase):
    def test_exponential(self) -> None:
        """The wait multiplies by C{factor} with each failure in a row."""
        backoff = Backoff(0.5, factor=3.0)
        self.assertEqual([backoff.delay(n) for n in range(1, 5)], [0.5, 1.5, 4.5, 13.5])

    def test_capped(self) -> None:
        """The wait never exceeds C{maximum}, however many failures (no overflow)."""
        backoff = Backoff(1.0, 5.0)
        self.assertEqual([backoff.delay(n) for n in range(1, 6)], [1, 2, 4, 5, 5])
        self.assertEqual(backoff.delay(10**6), 5.0)
        self.assertTrue(math.isfinite(Backoff(1.0).delay(10**6)))

    def test_no_failure_yet_is_the_initial_wait(self) -> None:
        """Zero (or fewer) failures count as the first."""
        self.assertEqual(Backoff(2.0).delay(0), 2.0)
        self.assertEqual(Backoff(2.0).delay(-3), 2.0)

    def test_jitter_bounds_with_a_fixed_chance(self) -> None:
        """Jitter adds C{chance() * jitter} of the capped wait."""
        for chance, expected in [(0.0, 4.0), (0.5, 5.0), (0.999, 4.0 * 1.4995)]:
            backoff = Backoff(1.0, 4.0, jitter=0.5, chance=constant(chance))
            self.assertAlmostEqual(backoff.delay(3), expected)
            self.assertAlmostEqual(backoff.delay(30), expected)
        self.assertEqual(Backoff(1.0, jitter=0.5, chance=constant(0.5)).delay(1), 1.25)

    def test_jitter_stays_within_its_bounds(self) -> None:
        """With the default random chance, every wait is in [base, base * (1 + jitter))."""
        backoff = Backoff(2.0, 10.0, jitter=0.25, chance=random.Random(7).random)
        delays = [backoff.delay(n) for n in range(1, 200)]
        for n, delay in enumerate(delays, 1):
            base = min(2.0 * 2 ** (n - 1), 10.0)
            self.assertTrue(base <= delay < base * 1.25, (n, delay))
        self.assertGreater(len(set(delays)), 100)

    def test_fixed(self) -> None:
        """L{fixed} waits the same after every failure, jitter on top."""
        self.assertEqual([fixed(3.0).delay(n) for n in range(1, 6)], [3.0] * 5)
        for n in range(1, 100):
            self.assertTrue(3.0 <= fixed(3.0, jitter=0.1).delay(n) < 3.3)

    def test_a_retry_policy(self) -> None:
        """Called with a number of failures, as C{ClientService} calls its retry policy."""
        backoff = Backoff(1.0, 10.0)
        self.assertEqual([backoff(n) for n in (1, 2, 5)], [1.0, 2.0, 10.0])

    def test_chance_is_not_part_of_equality(self) -> None:
        """Two policies with the same numbers are equal whatever their random source."""
        self.assertEqual(Backoff(1.0, chance=lambda: 0.1), Backoff(1.0, chance=lambda: 0.9))
        self.assertNotEqual(Backoff(1.0), Backoff(1.0, jitter=0.1))


class RetryingTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.failures: list[tuple[int, Exception]] = []

    def step_from(self, outcomes: list[Deferred[str]]) -> Callable[[], Deferred[str]]:
        calls = iter(outcomes)
        return lambda: next(calls)

    def retry(
        self, step: Callable[[], Deferred[str]], fatal: tuple[type[Exception], ...] = ()
    ) -> Deferred[str]:
        return Deferred.fromCoroutine(
            retrying(
                self.clock,
                step,
                Backoff(1.0, 10.0),
                lambda n, e: self.failures.append((n, e)),
                fatal,
            )
        )

    def test_retries_until_success(self) -> None:
        """Each failure is reported and followed by the back-off's wait."""
        first, second = Unreachable("down"), Unreachable("still down")
        done = self.retry(self.step_from([fail(first), fail(second), succeed("ok")]))
        self.assertEqual(self.failures, [(1, first)])
        self.clock.advance(0.999)
        self.assertEqual(len(self.failures), 1)
        self.clock.advance(0.001)
        self.assertEqual(self.failures, [(1, first), (2, second)])
        self.clock.advance(1.999)
        self.assertNoResult(done)
        self.clock.advance(0.001)
        self.assertEqual(self.successResultOf(done), "ok")
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_success_at_once_does_not_wait(self) -> None:
        """A step that succeeds first time is not retried nor reported."""
        done = self.retry(lambda: succeed("ok"))
        self.assertEqual(self.successResultOf(done), "ok")
        self.assertEqual(self.failures, [])

    def test_async_steps(self) -> None:
        """A coroutine function is a step too."""
        attempts: list[int] = []

        async def step() -> str:
            attempts.append(len(attempts))
            if len(attempts) < 2:
                raise Unreachable("down")
            return "ok"

        done = Deferred.fromCoroutine(
            retrying(self.clock, step, fixed(5.0), lambda n, e: self.failures.append((n, e)))
        )
        self.clock.advance(5)
        self.assertEqual(self.successResultOf(done), "ok")
        self.assertEqual(attempts, [0, 1])

    def test_fatal_errors_raise_at_once(self) -> None:
        """An error of a fatal type ends the retries without a report or a wait."""
        done = self.retry(
            self.step_from([fail(Unreachable("down")), fail(ValueError("bad token"))]),
            fatal=(ValueError,),
        )
        self.clock.advance(1)
        self.failureResultOf(done, ValueError)
        self.assertEqual([n for n, _ in self.failures], [1])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_cancelled_while_waiting(self) -> None:
        """Cancelling during the wait ends the retries and leaves no timer."""
        done = self.retry(self.step_from([fail(Unreachable("down"))]))
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        done.cancel()
        self.failureResultOf(done, CancelledError)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_cancelled_while_the_step_runs(self) -> None:
        """Cancelling cancels the running step, which is neither reported nor retried."""
        cancelled = []
        running: Deferred[str] = Deferred(lambda d: cancelled.append(True))
        done = self.retry(lambda: running)
        done.cancel()
        self.failureResultOf(done, CancelledError)
        self.assertEqual(cancelled, [True])
        self.assertEqual(self.failures, [])
        self.assertEqual(self.clock.getDelayedCalls(), [])


class PeriodicJobTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.events = capture_events(self)
        self.runs: list[float] = []
        # What each run returns, in order (then: success at once).
        self.outcomes: list[Deferred[None]] = []

    def job(self) -> Deferred[None]:
        self.runs.append(self.clock.seconds())
        return self.outcomes.pop(0) if self.outcomes else succeed(None)

    def periodic(self, **kwargs: object) -> PeriodicJob:
        job = PeriodicJob(self.clock, 10.0, self.job, "Failed to update lease", **kwargs)  # type: ignore[arg-type]
        job.startService()
        self.addCleanup(self.assertNoDelayedCallsAfterStop, job)
        return job

    def assertNoDelayedCallsAfterStop(self, job: PeriodicJob) -> None:
        if job.running:
            job.stopService()
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def lines(self) -> list[str]:
        return [formatEvent(e) for e in self.events if e.get("what")]

    def test_runs_at_start_then_every_interval(self) -> None:
        """The first run is at start; each next one an interval after the last ended."""
        self.periodic()
        self.clock.pump([5.0] * 6)
        self.assertEqual(self.runs, [0.0, 10.0, 20.0, 30.0])

    def test_the_interval_counts_from_the_end_of_a_run(self) -> None:
        """A slow run pushes the next one back."""
        slow: Deferred[None] = Deferred()
        self.outcomes.append(slow)
        self.periodic()
        self.clock.advance(4)
        slow.callback(None)
        self.clock.advance(9.999)
        self.assertEqual(self.runs, [0.0])
        self.clock.advance(0.001)
        self.assertEqual(self.runs, [0.0, 14.0])

    def test_first_delay(self) -> None:
        """With C{first}, the first run waits that long."""
        self.periodic(first=3.0)
        self.assertEqual(self.runs, [])
        self.clock.advance(3)
        self.assertEqual(self.runs, [3.0])
        self.clock.advance(10)
        self.assertEqual(self.runs, [3.0, 13.0])

    def test_a_failing_run_is_retried_after_the_back_off_never_later_than_the_interval(
        self,
    ) -> None:
        """Failures in a row wait 1, 2, 4, 8 seconds, then the interval; success resets."""
        self.outcomes.extend(fail(Unreachable("connection refused")) for _ in range(6))
        self.periodic(backoff=Backoff(1.0, 100.0), expected=(Unreachable,))
        for step in [1, 2, 4, 8, 10, 10, 10, 10]:
            self.clock.advance(step)
        # Six failures (the sixth waits the interval, not 32s), then success.
        self.assertEqual(self.runs, [0, 1, 3, 7, 15, 25, 35, 45, 55])
        self.assertEqual(
            self.lines()[:2],
            [
                "Failed to update lease (attempt 1): connection refused",
                "Failed to update lease (attempt 2): connection refused",
            ],
        )
        self.assertEqual(len(self.lines()), 6)

    def test_default_back_off(self) -> None:
        """By default a failed run is retried after a second, then doubling up to the interval."""
        self.outcomes.extend(fail(Unreachable("down")) for _ in range(6))
        self.periodic(expected=(Unreachable,))
        self.clock.pump([0.5] * 80)
        self.assertEqual(self.runs, [0, 1, 3, 7, 15, 25, 35])

    def test_expected_errors_are_one_line_others_get_a_traceback(self) -> None:
        """An expected error is a warning line; any other is logged with its failure."""
        self.outcomes.extend([fail(Unreachable("down")), fail(KeyError("lease"))])
        self.periodic(expected=(Unreachable,))
        self.clock.advance(1)
        expected, unexpected = [e for e in self.events if e.get("what")]
        self.assertNotIn("log_failure", expected)
        self.assertIsInstance(unexpected["log_failure"].value, KeyError)
        self.assertEqual(formatEvent(unexpected), "Failed to update lease (attempt 2)")
        self.flushLoggedErrors(KeyError)

    def test_a_run_that_outlasts_its_timeout(self) -> None:
        """A run without an answer in C{timeout} is cancelled, logged, and retried."""
        cancelled = []
        hung: Deferred[None] = Deferred(lambda d: cancelled.append(True))
        self.outcomes.append(hung)
        self.periodic(timeout=3.0)
        self.clock.advance(2.999)
        self.assertEqual(cancelled, [])
        self.clock.advance(0.001)
        self.assertEqual(cancelled, [True])
        self.assertEqual(self.lines(), ["Failed to update lease (attempt 1): no answer within 3s"])
        self.clock.advance(1)
        self.assertEqual(self.runs, [0, 4])

    def test_a_job_raising_synchronously(self) -> None:
        """A job that raises instead of returning a failed Deferred is a failed run."""

        def broken() -> Deferred[None]:
            self.runs.append(self.clock.seconds())
            raise Unreachable("no route")

        job = PeriodicJob(self.clock, 10.0, broken, "Failed to sync", expected=(Unreachable,))
        job.startService()
        self.clock.advance(1)
        job.stopService()
        self.assertEqual(self.runs, [0, 1])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_stop_cancels_the_running_job_and_leaves_no_timer(self) -> None:
        """Stopping cancels a run in progress, quietly, and nothing is scheduled."""
        cancelled = []
        running: Deferred[None] = Deferred(lambda d: cancelled.append(True))
        self.outcomes.append(running)
        job = self.periodic()
        job.stopService()
        self.assertEqual(cancelled, [True])
        self.assertEqual(self.lines(), [])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_stop_while_waiting(self) -> None:
        """Stopping between runs cancels the timer."""
        job = self.periodic()
        job.stopService()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.clock.advance(100)
        self.assertEqual(self.runs, [0.0])

    def test_a_run_outliving_its_cancellation_does_not_drive_a_later_start(self) -> None:
        """After a stop and a start, the old run's late end schedules nothing."""
        stubborn: Deferred[None] = Deferred()
        # Paused, the run's outcome (its cancellation) reaches the job's
        # callbacks only after the service has started again.
        stubborn.pause()
        self.outcomes.append(stubborn)
        job = self.periodic()
        job.stopService()
        job.startService()
        self.assertEqual(self.runs, [0.0, 0.0])
        stubborn.unpause()
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.clock.advance(10)
        self.assertEqual(self.runs, [0.0, 0.0, 10.0])

    def test_a_zero_back_off_does_not_recurse(self) -> None:
        """A job failing synchronously with no back-off runs again on a later turn, not nested."""
        self.outcomes.extend(fail(Unreachable("down")) for _ in range(5000))
        self.periodic(backoff=fixed(0.0), expected=(Unreachable,))
        self.assertEqual(self.runs, [0.0])
        self.clock.advance(0)
        self.assertEqual(len(self.runs), 5001)
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)

    def test_run_now_while_waiting(self) -> None:
        """L{run_now} runs the job at once, and the schedule goes on from there."""
        job = self.periodic()
        self.clock.advance(4)
        job.run_now()
        self.assertEqual(self.runs, [0.0, 4.0])
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.clock.advance(10)
        self.assertEqual(self.runs, [0.0, 4.0, 14.0])

    def test_run_now_while_running_or_stopped(self) -> None:
        """L{run_now} does nothing while the job runs, or when the service is stopped."""
        running: Deferred[None] = Deferred()
        self.outcomes.append(running)
        job = self.periodic()
        job.run_now()
        self.assertEqual(self.runs, [0.0])
        running.callback(None)
        job.stopService()
        job.run_now()
        self.assertEqual(self.runs, [0.0])
