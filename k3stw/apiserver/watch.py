"""
Watch requests: a stream of ``{"type", "object"}`` lines (or one-row Tables
for kubectl's printing watches), with the store's watch as its producer, ended
by ``timeoutSeconds`` (30 to 60 minutes when not given, as kube-apiserver),
and an ``ERROR`` event with a 410 when the client must list again.
"""

from __future__ import annotations

import json
import random
from collections import OrderedDict
from collections.abc import Callable

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.python.failure import Failure
from twisted.web.server import Request

from k3stw.apiserver import tables
from k3stw.apiserver.registry import ResourceType
from k3stw.apiserver.request import param, wants_table
from k3stw.apiserver.status import StatusError, status
from k3stw.apiserver.storage import FANOUT_CACHE, ObjectStore, Predicate
from k3stw.datastore.interface import Compacted, DatastoreUnavailable, IWatch, WatchOverflow
from k3stw.logs import Logger
from k3stw.machinery.objects import Object

#: A watch without timeoutSeconds ends after 30-60 minutes, as kube-apiserver's do.
MIN_WATCH_SECONDS = 1800

Send = Callable[[str, Object], None]


def event_line(kind: str, obj: object) -> bytes:
    return json.dumps({"type": kind, "object": obj}, separators=(",", ":")).encode() + b"\n"


class EventLines:
    """
    Encoded watch lines of recent events, so an event sent to many watchers
    is encoded once.  Keyed by the (shared, read-only) decoded object.
    """

    def __init__(self, size: int = FANOUT_CACHE) -> None:
        self.size = size
        self._lines: OrderedDict[tuple[str, int], tuple[object, bytes]] = OrderedDict()

    def line(self, kind: str, obj: object) -> bytes:
        key = (kind, id(obj))
        found = self._lines.get(key)
        # The object is kept with its line, so its id cannot be reused while cached.
        if found is not None and found[0] is obj:
            return found[1]
        encoded = event_line(kind, obj)
        self._lines[key] = (obj, encoded)
        if len(self._lines) > self.size:
            self._lines.popitem(last=False)
        return encoded


def named(name: str, predicate: Predicate | None) -> Predicate:
    """C{predicate}, narrowed to the object called C{name} (a watch of one object)."""

    def matches(obj: Object) -> bool:
        return bool(obj["metadata"].get("name") == name) and (predicate is None or predicate(obj))

    return matches


class WatchStreams:
    """Serves the watch requests of one API server."""

    _log = Logger()

    def __init__(
        self,
        store: ObjectStore,
        clock: IReactorTime,
        sent: Callable[[ResourceType], None] = lambda resource: None,
    ) -> None:
        """:param sent: told of every event sent to a watcher (the metrics)."""
        self.store = store
        self.clock = clock
        self.sent = sent
        self._lines = EventLines()

    async def serve(
        self,
        request: Request,
        resource: ResourceType,
        namespace: str | None,
        predicate: Predicate | None,
    ) -> None:
        """Stream the changes C{predicate} selects until the client or the timeout ends it."""
        send = self._sender(request, resource)
        request.setResponseCode(200)
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"cache-control", b"no-cache, private")
        try:
            watch = await self.store.watch(
                resource, namespace, param(request, "resourceVersion"), predicate, send
            )
        except StatusError as e:
            if e.code != 410:
                raise
            # Kubernetes answers an expired watch with 200 and one ERROR event.
            request.write(b"")
            send("ERROR", e.status())
            request.finish()
            return
        request.write(b"")  # headers now, before the first change
        request.registerProducer(watch, True)
        timer = self._timer(request, watch)
        request.notifyFinish().addBoth(lambda _: _stop(watch, timer))
        watch.ended.addCallbacks(
            lambda _: _end(request),
            lambda failure: self._failed(request, send, failure),
        )

    def _sender(self, request: Request, resource: ResourceType) -> Send:
        printer = resource.strategy.printer if wants_table(request) else None
        first = [True]

        def send(kind: str, obj: Object) -> None:
            if getattr(request, "_disconnected", False):
                return
            if kind != "ERROR":
                self.sent(resource)
            if printer is not None and kind != "ERROR":
                row = tables.watch_event_table(
                    printer, obj, self.clock.seconds(), with_columns=first[0]
                )
                first[0] = False
                request.write(event_line(kind, row))
            else:
                request.write(self._lines.line(kind, obj))

        return send

    def _timer(self, request: Request, watch: IWatch) -> IDelayedCall:
        seconds = param(request, "timeoutSeconds")
        try:
            timeout = float(seconds) if seconds else MIN_WATCH_SECONDS * (1 + random.random())
        except ValueError:
            timeout = MIN_WATCH_SECONDS
        return self.clock.callLater(max(timeout, 0), watch.cancel)

    def _failed(self, request: Request, send: Send, failure: Failure) -> None:
        if failure.check(Compacted, WatchOverflow):
            message = (
                "too old resource version"
                if failure.check(Compacted)
                else "the watch fell too far behind and was closed; list again"
            )
            send("ERROR", status(410, message))
        else:
            if failure.check(DatastoreUnavailable):
                # The datastore went away (or this server is stopping): the
                # client re-lists elsewhere; a traceback would add nothing.
                self._log.warn("watch ended: {error}", error=failure.getErrorMessage())
            else:
                self._log.failure("watch ended", failure)
            send("ERROR", status(503, f"the watch ended: {failure.getErrorMessage()}"))
        _end(request)


def _end(request: Request) -> None:
    if not getattr(request, "_disconnected", False) and not getattr(request, "finished", 0):
        request.unregisterProducer()
        request.finish()


def _stop(watch: IWatch, timer: IDelayedCall) -> None:
    watch.cancel()
    if timer.active():
        timer.cancel()
