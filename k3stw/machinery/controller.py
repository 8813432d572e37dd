"""
The shape of every control loop: informers' handlers enqueue keys, workers
take them from a rate-limited L{WorkQueue} and call C{sync(key)}, which reads
the caches, works out what differs from the desired state, and writes.  A
sync that fails is tried again after a back-off; one that succeeds resets it.

A controller may stop and start again (one under leader election, at each
new term): it then begins as a new process would, with a new queue, its
in-memory state dropped (L{Controller.new_term}) and every cached object
handed to its handlers again as if just listed.
"""

from __future__ import annotations

from collections.abc import Sequence

from twisted.application.service import MultiService
from twisted.internet.defer import CancelledError, Deferred, DeferredList
from twisted.internet.interfaces import IReactorTime

from k3stw.logs import Logger
from k3stw.machinery.informer import EventHandler, Informer, enqueue_keys
from k3stw.machinery.timing import Backoff
from k3stw.machinery.workqueue import RATE_LIMIT, QueueShutDown, WorkQueue


class Controller(MultiService):
    """
    A control loop: C{workers} workers calling L{sync} with queued keys, once
    every informer in C{informers} has filled its cache.

    Subclasses implement L{sync}, and enqueue keys from the handlers they
    register with L{add_handler} (L{enqueue_handler} makes the common one).
    Child services (a periodic job, say) run with the controller.

    :cvar label: what the logs call this controller.
    :cvar expected: errors that are one warning line (a datastore that is
        away, a conflicting write): the key is simply tried again later.
    """

    _log = Logger()
    label = "controller"
    expected: tuple[type[Exception], ...] = ()

    def __init__(
        self,
        clock: IReactorTime,
        informers: Sequence[Informer] = (),
        workers: int = 1,
        backoff: Backoff = RATE_LIMIT,
    ) -> None:
        super().__init__()
        self.clock = clock
        self.informers = list(informers)
        self.workers = workers
        self.queue = WorkQueue(clock, backoff)
        self._running_workers: list[Deferred[None]] = []
        self._waiting: Deferred[list[tuple[bool, None]]] | None = None
        self._handlers: list[tuple[Informer, EventHandler]] = []

    async def sync(self, key: str) -> None:
        """Make the world under C{key} what it should be (raise to be tried again later)."""
        raise NotImplementedError

    def add_handler(self, informer: Informer, handler: EventHandler) -> None:
        """Tell C{handler} of C{informer}'s changes (and of all its objects, at each new term)."""
        informer.add_handler(handler)
        self._handlers.append((informer, handler))

    def enqueue(self, key: str) -> None:
        self.queue.add(key)

    def enqueue_handler(self) -> EventHandler:
        """A handler that enqueues the key of every object that changes."""
        # Through enqueue: a controller that stops and starts again (a leader
        # elected anew) has a new queue.
        return enqueue_keys(self.enqueue)

    def new_term(self) -> None:
        """
        Forget what the last run learned (expectations, timers' bookkeeping,
        when things were first seen) before starting again after a stop.
        """

    def _replay(self) -> None:
        """Hand every cached object to this controller's handlers, as a fresh list would."""
        for informer, handler in self._handlers:
            if handler.on_add is not None:
                for obj in informer.cache.list():
                    handler.on_add(obj)

    def startService(self) -> None:
        super().startService()
        if self.queue.shutting_down:
            # Changes seen while stopped were dropped with the old queue.
            self.queue = WorkQueue(self.clock, self.queue.backoff)
            self.new_term()
            self._replay()
        waiting = DeferredList(
            [informer.when_synced() for informer in self.informers], fireOnOneErrback=True
        )
        self._waiting = waiting
        waiting.addCallback(lambda _: self._start_workers())
        waiting.addErrback(lambda f: f.trap(CancelledError))

    def stopService(self) -> Deferred[None] | None:
        stopped: Deferred[None] | None = super().stopService()
        if self._waiting is not None and not self._waiting.called:
            self._waiting.cancel()
        self._waiting = None
        self.queue.shut_down()
        workers, self._running_workers = self._running_workers, []
        for worker in workers:
            worker.cancel()
        return stopped

    def _start_workers(self) -> None:
        self._waiting = None
        for _ in range(self.workers):
            worker = Deferred.fromCoroutine(self._work())
            worker.addErrback(lambda f: f.trap(CancelledError))
            self._running_workers.append(worker)

    async def _work(self) -> None:
        while True:
            try:
                key = await self.queue.get()
            except QueueShutDown:
                return
            try:
                await self.sync(key)
            except CancelledError:
                raise
            except self.expected as e:
                delay = self.queue.add_rate_limited(key)
                self._log.warn(
                    "The {label} could not sync {key} (again in {delay:.2f}s): {error}",
                    label=self.label,
                    key=key,
                    delay=delay,
                    error=str(e) or type(e).__name__,
                )
            except Exception:
                delay = self.queue.add_rate_limited(key)
                self._log.failure(
                    "The {label} failed to sync {key} (again in {delay:.2f}s)",
                    label=self.label,
                    key=key,
                    delay=delay,
                )
            else:
                self.queue.forget(key)
            finally:
                self.queue.done(key)
