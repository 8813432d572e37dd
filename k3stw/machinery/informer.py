"""
Informers, in the manner of client-go's shared informers: list a resource,
then watch it from the list's resourceVersion, keep every object in an
indexed cache, and tell event handlers what changed.

The informer's life is a typed Automat machine, as Twisted's C{ClientService}
is: C{stopped}, C{listing}, C{watching} (one stream after another, each
from the last resourceVersion seen) and C{waiting} (a back-off before listing
again).  A watch whose resourceVersion expired (410) lists again at once; a
failed list or watch waits out the back-off first.  Each state holds its own
work (the list in flight, the watch, the timer), dropped when it is left.

Handlers only enqueue keys: the work happens in a controller's C{sync(key)},
which reads the cache.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from automat import TypeMachineBuilder
from twisted.application.service import MultiService, Service
from twisted.internet.defer import CancelledError, Deferred, maybeDeferred, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.python.failure import Failure

from k3stw.logs import Logger
from k3stw.machinery.cache import DEFAULT_INDEXES, Indexer, IndexFunc
from k3stw.machinery.objects import Object, metadata, object_key
from k3stw.machinery.source import Expired, IListWatch, IWatchStream, Listed
from k3stw.machinery.timing import Backoff

#: client-go's reflector back-off: 0.8 s doubling to 30 s, jittered.
RELIST_BACKOFF = Backoff(0.8, 30.0, jitter=1.0)
#: A watch that ends sooner than this without one event counts as a failure, not an end.
SHORT_WATCH = 1.0


@dataclass(frozen=True)
class EventHandler:
    """What an informer tells of each change (client-go's ``ResourceEventHandlerFuncs``)."""

    on_add: Callable[[Object], object] | None = None
    on_update: Callable[[Object, Object], object] | None = None
    on_delete: Callable[[Object], object] | None = None


def each_change(
    changed: Callable[[Object], object],
    deletions: bool = True,
    deleted: Callable[[Object], object] | None = None,
) -> EventHandler:
    """
    A handler that hands every added or changed object to C{changed}, and
    every deleted one to C{deleted} (to C{changed} unless given; to none
    without C{deletions}).
    """
    return EventHandler(
        on_add=changed,
        on_update=lambda old, new: changed(new),
        on_delete=deleted or (changed if deletions else None),
    )


def enqueue_keys(enqueue: Callable[[str], object]) -> EventHandler:
    """A handler that hands the key of every added, changed or deleted object to C{enqueue}."""
    return each_change(lambda obj: enqueue(object_key(obj)))


class _Inputs(Protocol):
    def start(self) -> None:
        "Begin: list, then watch."

    def stop(self) -> None:
        "End whatever is in flight."

    def listed(self, result: Listed) -> None:
        "A list came back."

    def list_failed(self, failure: Failure) -> None:
        "A list failed."

    def expired(self) -> None:
        "The watch's resourceVersion is gone (410): list again now."

    def watch_failed(self, failure: Failure) -> None:
        "The watch could not start or broke."

    def retry(self) -> None:
        "The back-off is over."


@dataclass(frozen=True)
class Retention:
    """
    What an informer's cache keeps of the objects its handlers hear of: only
    those C{keep} accepts, each as C{trim} leaves it (client-go's transform).
    A loop that acts on few of many objects (the garbage collector) hears of
    every change and holds only what it may act on.
    """

    keep: Callable[[Object], bool] = lambda obj: True
    trim: Callable[[Object], Object] = lambda obj: obj


#: Keep every object whole.
EVERYTHING = Retention()


@dataclass
class _Core:
    """What the informer keeps whatever its state."""

    source: IListWatch
    clock: IReactorTime
    backoff: Backoff
    cache: Indexer
    retention: Retention = EVERYTHING
    handlers: list[EventHandler] = field(default_factory=list)
    resource_version: str = ""
    failures: int = 0
    synced: bool = False
    sync_waiters: list[Deferred[None]] = field(default_factory=list)
    log: Logger = field(default_factory=Logger)

    def event(self, kind: str, obj: Object) -> None:
        """One watch event: into the cache, then to the handlers."""
        version = metadata(obj).get("resourceVersion")
        if version:
            self.resource_version = str(version)
        if kind in ("ADDED", "MODIFIED"):
            old = self._hold(obj)
            if old is None:
                self.tell("on_add", obj)
            else:
                self.tell("on_update", old, obj)
        elif kind == "DELETED":
            self.cache.remove(object_key(obj))
            self.tell("on_delete", obj)

    def _hold(self, obj: Object) -> Object | None:
        """Cache C{obj} if it is kept (else forget its key); what was held before."""
        if self.retention.keep(obj):
            return self.cache.upsert(self.retention.trim(obj))
        return self.cache.remove(object_key(obj))

    def replace(self, result: Listed) -> None:
        """A fresh list: the cache holds exactly it; the handlers hear what changed."""
        self.resource_version = result.resource_version
        self.failures = 0
        retention = self.retention
        changes = self.cache.replace(retention.trim(o) for o in result.items if retention.keep(o))
        for obj in changes.added:
            self.tell("on_add", obj)
        for old, new in changes.updated:
            self.tell("on_update", old, new)
        for obj in changes.removed:
            self.tell("on_delete", obj)
        if not self.synced:
            self.synced = True
            waiters, self.sync_waiters = self.sync_waiters, []
            for waiter in waiters:
                waiter.callback(None)

    def tell(self, event: str, *objects: Object) -> None:
        for handler in list(self.handlers):
            callback: Callable[..., object] | None = getattr(handler, event)
            if callback is None:
                continue
            try:
                callback(*objects)
            except Exception:
                # One handler's bug must not stop the informer or the other handlers.
                self.log.failure(
                    "An event handler of {source} failed", source=self.source.description
                )


class _Follow:
    """
    The watching state's work: watch streams one after another, each from the
    last resourceVersion seen, until one expires or fails.
    """

    def __init__(self, inputs: _Inputs, core: _Core) -> None:
        self.inputs = inputs
        self.core = core
        self.stream: IWatchStream | None = None
        self._opening: Deferred[IWatchStream] | None = None
        self._cancelled = False
        self._open()

    def _open(self) -> None:
        core = self.core
        started = core.clock.seconds()
        events = [0]

        def sink(kind: str, obj: Object) -> None:
            events[0] += 1
            core.event(kind, obj)

        opening = maybeDeferred(core.source.watch, core.resource_version, sink)
        self._opening = opening
        opening.addCallback(self._opened, started, events)
        opening.addErrback(self._failed)

    def _opened(self, stream: IWatchStream, started: float, events: list[int]) -> None:
        self._opening = None
        self.stream = stream
        stream.ended.addCallbacks(self._ended, self._failed, callbackArgs=(started, events))

    def _ended(self, result: None, started: float, events: list[int]) -> None:
        self.stream = None
        if self._cancelled:
            return
        if events[0] == 0 and self.core.clock.seconds() - started < SHORT_WATCH:
            self.inputs.watch_failed(Failure(ConnectionError("very short watch: no events")))
            return
        self._open()

    def _failed(self, failure: Failure) -> None:
        self._opening = self.stream = None
        if self._cancelled:
            return
        if failure.check(Expired):
            self.inputs.expired()
        else:
            self.inputs.watch_failed(failure)

    def cancel(self) -> None:
        self._cancelled = True
        if self._opening is not None:
            self._opening.cancel()
        if self.stream is not None:
            self.stream.cancel()


def _build_machine() -> Callable[[_Core], _Inputs]:
    builder = TypeMachineBuilder(_Inputs, _Core)

    def start_list(inputs: _Inputs, core: _Core, *ignored: object) -> Deferred[Listed]:
        listing = maybeDeferred(core.source.list)
        listing.addCallbacks(inputs.listed, inputs.list_failed)
        return listing

    def follow(inputs: _Inputs, core: _Core, result: Listed | None = None) -> _Follow:
        # The cache holds the list before the watch from its resourceVersion starts.
        if result is not None:
            core.replace(result)
        return _Follow(inputs, core)

    def wait(inputs: _Inputs, core: _Core, failure: Failure | None = None) -> IDelayedCall:
        core.failures += 1
        delay = core.backoff.delay(core.failures)
        core.log.warn(
            "Failed to list or watch {source}, retrying in {delay:.1f}s: {error}",
            source=core.source.description,
            delay=delay,
            error=_describe(failure),
        )
        return core.clock.callLater(delay, inputs.retry)

    stopped = builder.state("stopped")
    listing = builder.state("listing", start_list)
    watching = builder.state("watching", follow)
    waiting = builder.state("waiting", wait)

    stopped.upon(_Inputs.start).to(listing).returns(None)
    listing.upon(_Inputs.listed).to(watching).returns(None)
    listing.upon(_Inputs.list_failed).to(waiting).returns(None)
    watching.upon(_Inputs.expired).to(listing).returns(None)
    watching.upon(_Inputs.watch_failed).to(waiting).returns(None)
    waiting.upon(_Inputs.retry).to(listing).returns(None)

    @listing.upon(_Inputs.stop).to(stopped)
    def stop_listing(inputs: _Inputs, core: _Core, listing: Deferred[Listed]) -> None:
        listing.cancel()

    @watching.upon(_Inputs.stop).to(stopped)
    def stop_watching(inputs: _Inputs, core: _Core, following: _Follow) -> None:
        following.cancel()

    @waiting.upon(_Inputs.stop).to(stopped)
    def stop_waiting(inputs: _Inputs, core: _Core, timer: IDelayedCall) -> None:
        if timer.active():
            timer.cancel()

    # Starting twice is harmless; so is news of work already cancelled.
    for state in (listing, watching, waiting):
        state.upon(_Inputs.start).loop().returns(None)
    stopped.upon(_Inputs.stop).loop().returns(None)
    for late in (_Inputs.listed, _Inputs.list_failed, _Inputs.expired, _Inputs.watch_failed):
        stopped.upon(late).loop().returns(None)
    return builder.build()


_Machine = _build_machine()


def _describe(failure: Failure | None) -> str:
    if failure is None:
        return "unknown error"
    if failure.check(CancelledError):
        return "cancelled"
    return str(failure.value) or type(failure.value).__name__


class Informer(Service):
    """
    One resource, listed and watched, cached and indexed while the service runs.

    :param source: where the objects come from.
    :param indexes: the cache's indexes (more can be added with L{add_index}).
    :param retention: what the cache keeps of what the handlers hear of.
    """

    def __init__(
        self,
        source: IListWatch,
        clock: IReactorTime,
        indexes: Mapping[str, IndexFunc] = DEFAULT_INDEXES,
        backoff: Backoff = RELIST_BACKOFF,
        retention: Retention = EVERYTHING,
    ) -> None:
        self.source = source
        self.cache = Indexer(indexes)
        self._core = _Core(source, clock, backoff, self.cache, retention)
        self._machine = _Machine(self._core)

    @property
    def synced(self) -> bool:
        """Whether the first list has filled the cache."""
        return self._core.synced

    def when_synced(self) -> Deferred[None]:
        """Fires once the first list has filled the cache."""
        if self._core.synced:
            return succeed(None)
        waiter: Deferred[None] = Deferred()
        self._core.sync_waiters.append(waiter)
        return waiter

    def add_handler(self, handler: EventHandler) -> None:
        """Tell C{handler} of every change; of every object held already, as an add."""
        self._core.handlers.append(handler)
        if handler.on_add is not None:
            for obj in self.cache.list():
                self._core.tell("on_add", obj)

    def add_index(self, name: str, function: IndexFunc) -> None:
        self.cache.add_index(name, function)

    def get(self, key: str) -> Object | None:
        return self.cache.get(key)

    def startService(self) -> None:
        super().startService()
        self._machine.start()

    def stopService(self) -> None:
        super().stopService()
        self._machine.stop()


class SharedInformers(MultiService):
    """
    The informers of one process, one per source key, shared by every
    controller that asks: the first to ask creates it, the rest get it.  They
    run while this service runs.
    """

    def __init__(self, clock: IReactorTime) -> None:
        super().__init__()
        self.clock = clock
        self._informers: dict[object, Informer] = {}

    def informer(
        self, key: object, source: Callable[[], IListWatch], retention: Retention = EVERYTHING
    ) -> Informer:
        """The informer for C{key}; C{source} makes its source the first time."""
        found = self._informers.get(key)
        if found is None:
            found = self._informers[key] = Informer(source(), self.clock, retention=retention)
            found.setServiceParent(self)
        return found

    def forget(self, key: object) -> None:
        """Stop and drop the informer for C{key} (its resource is no longer served)."""
        informer = self._informers.pop(key, None)
        if informer is not None:
            informer.disownServiceParent()

    def __contains__(self, key: object) -> bool:
        return key in self._informers
