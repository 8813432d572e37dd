"""
Events as client-go's recorders write them (core/v1): one Event for an
object, reason and message (and field path), counted again (``count``,
``lastTimestamp``) when it repeats within ten minutes instead of written
anew, so a loop that fails on every retry leaves one line in ``kubectl
describe``, not hundreds.  Its name is the object's, then the time in
nanoseconds in hex; ``source`` and ``reporting*`` name the component and its
host.

One L{EventRecorder} serves every component; where the Events go is its
L{EventWriter}: the server's controllers write to the store
(L{k3stw.controllers.events}), the kubelet through the API (L{APIEvents}).
Recording never holds up or fails the loop that records: a write that fails
is logged and dropped, as client-go's broadcaster drops it.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime

from k3stw.kubeclient import KubeAPI, KubeAPIError
from k3stw.logs import Logger
from k3stw.machinery.objects import Object, metadata
from k3stw.machinery.times import rfc3339

__all__ = ["NORMAL", "WARNING", "APIEvents", "EventRecorder", "EventWriter", "WriteError"]

#: A repeat within this many seconds counts on the same Event (client-go's aggregation window).
REPEAT_WINDOW = 600.0
#: How many (object, reason, message) the recorder remembers (client-go's LRU size).
REMEMBERED = 4096
#: How many names (nanoseconds apart) an Event tries before it is dropped.
_NAME_ATTEMPTS = 16

NORMAL = "Normal"
WARNING = "Warning"


class WriteError(Exception):
    """A write the server refused (C{code} its HTTP status; 0: it was not reached)."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


class EventWriter(Protocol):
    """Where a recorder's Events go; each method raises L{WriteError} when refused."""

    async def create(self, namespace: str, event: Object) -> None:
        """Create C{event} (409 when its name is taken)."""

    async def count_again(self, namespace: str, name: str, count: int, stamp: str) -> None:
        """Set the Event's C{count} (at least one more than it holds) and C{lastTimestamp}."""


class APIEvents:
    """An L{EventWriter} through the API, with a client's identity (the kubelet's)."""

    def __init__(self, client: KubeAPI) -> None:
        self.client = client

    async def create(self, namespace: str, event: Object) -> None:
        body = {"apiVersion": "v1", "kind": "Event", **event}
        await self._write(self.client.create(f"/api/v1/namespaces/{namespace}/events", body))

    async def count_again(self, namespace: str, name: str, count: int, stamp: str) -> None:
        path = f"/api/v1/namespaces/{namespace}/events/{name}"
        patch = {"count": count, "lastTimestamp": stamp}
        await self._write(self.client.call("PATCH", path, patch, "application/merge-patch+json"))

    @staticmethod
    async def _write(request: Awaitable[object]) -> None:
        try:
            await request
        except KubeAPIError as e:
            raise WriteError(e.code, str(e)) from e
        except OSError as e:
            raise WriteError(0, str(e)) from e


@dataclass
class _Recorded:
    namespace: str
    name: str
    count: int
    last: float


class EventRecorder:
    """
    Writes a component's Events.

    :param writer: where they go.
    :param component: ``source.component`` and ``reportingComponent``
        (``deployment-controller``, ``kubelet``).
    :param host: ``source.host`` and ``reportingInstance`` (the server's or
        node's name), or "" for none (kube-controller-manager's controllers name none).
    :param quiet: a repeat sooner than this many seconds after the last is
        not written at all (the kubelet's: a pod in back-off syncs every second).
    """

    _log = Logger()

    def __init__(
        self,
        writer: EventWriter,
        clock: IReactorTime,
        component: str,
        host: str,
        quiet: float = 0.0,
    ) -> None:
        self.writer = writer
        self.clock = clock
        self.component = component
        self.host = host
        self.quiet = quiet
        self._recorded: OrderedDict[tuple[str, ...], _Recorded] = OrderedDict()

    def emit(
        self, obj: Mapping[str, Any], kind: str, reason: str, message: str, field_path: str = ""
    ) -> Deferred[None]:
        """Record that C{reason} happened to C{obj}; fires once written (or dropped)."""
        return Deferred.fromCoroutine(self._emit(obj, kind, reason, message, field_path))

    def forget(self, uid: str) -> None:
        """Forget the Events of the object C{uid} (it is gone)."""
        for key in [k for k in self._recorded if k[0] == uid]:
            del self._recorded[key]

    async def _emit(
        self, obj: Mapping[str, Any], kind: str, reason: str, message: str, field_path: str
    ) -> None:
        meta = metadata(obj)
        involved = {
            "kind": obj.get("kind", ""),
            "namespace": meta.get("namespace", ""),
            "name": meta.get("name", ""),
            "uid": meta.get("uid", ""),
            "apiVersion": obj.get("apiVersion", ""),
            "resourceVersion": meta.get("resourceVersion", ""),
            "fieldPath": field_path,
        }
        involved = {key: value for key, value in involved.items() if value}
        key = (involved.get("uid", ""), involved.get("name", ""), field_path, kind, reason, message)
        now = self.clock.seconds()
        try:
            seen = self._recorded.get(key)
            if seen is not None and now - seen.last < REPEAT_WINDOW:
                if now - seen.last < self.quiet:
                    return
                try:
                    await self._count_again(seen, now)
                    return
                except WriteError as e:
                    if e.code != 404:  # Gone (deleted, expired): recorded anew below.
                        raise
            self._remember(key, await self._create(involved, kind, reason, message, now))
        except WriteError as e:
            self._log.warn(
                "could not record event {reason} for {name}: {error}",
                reason=reason,
                name=involved.get("name"),
                error=str(e),
            )

    async def _create(
        self, involved: dict[str, str], kind: str, reason: str, message: str, now: float
    ) -> _Recorded:
        namespace = involved.get("namespace") or "default"
        stamp = rfc3339(now)
        event: Object = {
            "metadata": {"namespace": namespace},
            "involvedObject": involved,
            "reason": reason,
            "message": message,
            "type": kind,
            "source": {"component": self.component, **({"host": self.host} if self.host else {})},
            "firstTimestamp": stamp,
            "lastTimestamp": stamp,
            "count": 1,
            "reportingComponent": self.component,
            "reportingInstance": self.host,
        }
        # client-go's name: the object's, then the time in nanoseconds, in hex; a nanosecond
        # on if another Event of the object has it (a clock that stands still, as a test's).
        nanos = int(now * 1e9)
        for attempt in range(_NAME_ATTEMPTS):
            name = f"{involved.get('name', 'event')}.{nanos + attempt:x}"
            event["metadata"]["name"] = name
            try:
                await self.writer.create(namespace, event)
            except WriteError as e:
                if e.code != 409 or attempt == _NAME_ATTEMPTS - 1:
                    raise
            else:
                break
        return _Recorded(namespace, name, 1, now)

    async def _count_again(self, seen: _Recorded, now: float) -> None:
        seen.count += 1
        seen.last = now
        await self.writer.count_again(seen.namespace, seen.name, seen.count, rfc3339(now))

    def _remember(self, key: tuple[str, ...], recorded: _Recorded) -> None:
        self._recorded[key] = recorded
        self._recorded.move_to_end(key)
        while len(self._recorded) > REMEMBERED:
            self._recorded.popitem(last=False)
