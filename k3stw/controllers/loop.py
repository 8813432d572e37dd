"""The shape every server-side controller shares: one job, run again and again while it runs."""

from __future__ import annotations

from twisted.application.service import MultiService
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater
from twisted.python.failure import Failure

from k3stw.apiserver.status import StatusError
from k3stw.datastore.interface import DatastoreUnavailable, IWatch
from k3stw.logs import Logger


class ControllerLoop(MultiService):
    """
    Runs L{run_once} for as long as the service runs, C{interval} seconds after
    each time it returns or fails.  A failure is logged once per outage (a
    datastore that is away is expected at start, and is not logged); stopping
    cancels the job and any watch it holds in C{self.watch}.
    """

    _log = Logger()
    #: What the logs call this controller.
    label = "controller"

    #: How soon a failed pass is tried again (never later than C{interval}).
    retry_interval = 1.0

    def __init__(self, clock: IReactorTime, interval: float = 1.0) -> None:
        super().__init__()
        self.clock = clock
        self.interval = interval
        self.watch: IWatch | None = None
        self._running: Deferred[None] | None = None
        self._failing = False

    async def run_once(self) -> None:
        """One pass of the job (for a watching controller: until its watch ends)."""
        raise NotImplementedError

    def startService(self) -> None:
        super().startService()
        self._running = Deferred.fromCoroutine(self._loop())
        self._running.addErrback(self._ended)

    def stopService(self) -> Deferred[None] | None:
        if self.watch is not None:
            self.watch.cancel()
        if self._running is not None:
            running, self._running = self._running, None
            running.cancel()
        stopped: Deferred[None] | None = super().stopService()
        return stopped

    def _ended(self, failure: Failure) -> None:
        if not failure.check(CancelledError):
            self._log.failure("The {label} stopped", failure, label=self.label)

    async def _loop(self) -> None:
        while self.running:
            wait = self.interval
            try:
                await self.run_once()
                if self._failing:
                    self._log.info("The {label} works again", label=self.label)
                self._failing = False
            except CancelledError:
                raise
            except StatusError as e:
                if not self._failing and e.code != 503:
                    self._log.warn("The {label} failed: {error}", label=self.label, error=e.message)
                self._failing = True
            except DatastoreUnavailable:
                self._failing = True
            except Exception:
                if not self._failing:
                    self._log.failure("The {label} failed", label=self.label)
                self._failing = True
            if self._failing:
                wait = min(wait, self.retry_interval)
            await deferLater(self.clock, wait)
