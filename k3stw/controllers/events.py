"""
Events as kube-controller-manager's and kube-scheduler's recorders write them
(core/v1, ``source.component`` the controller): one Event for an object,
reason and message, counted again (``count``, ``lastTimestamp``) when it
repeats within ten minutes instead of written anew, so a loop that fails on
every retry leaves one line in ``kubectl describe``, not hundreds.

Recording never holds up or fails the loop that records: a write that fails
is logged and dropped, as client-go's broadcaster drops it.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime

from k3stw.apiserver.kinds import events
from k3stw.apiserver.status import StatusError
from k3stw.apiserver.storage import ObjectStore
from k3stw.logs import Logger
from k3stw.machinery.objects import Object, metadata
from k3stw.machinery.times import rfc3339

#: A repeat within this many seconds counts on the same Event (client-go's aggregation window).
REPEAT_WINDOW = 600.0
#: How many (object, reason, message) the recorder remembers (client-go's LRU size).
REMEMBERED = 4096

#: How many names (nanoseconds apart) an Event tries before it is dropped.
_NAME_ATTEMPTS = 16

NORMAL = "Normal"
WARNING = "Warning"


@dataclass
class _Recorded:
    namespace: str
    name: str
    count: int
    last: float


class EventRecorder:
    """
    Writes a component's Events.

    :param component: ``source.component`` and ``reportingComponent``
        (``deployment-controller``, ``default-scheduler``).
    :param host: ``source.host`` and ``reportingInstance`` (the server's name), or "" for
        none (kube-controller-manager's controllers name none).
    """

    _log = Logger()

    def __init__(self, store: ObjectStore, clock: IReactorTime, component: str, host: str) -> None:
        self.store = store
        self.clock = clock
        self.component = component
        self.host = host
        self._recorded: OrderedDict[tuple[str, ...], _Recorded] = OrderedDict()

    def emit(self, obj: Object, kind: str, reason: str, message: str) -> Deferred[None]:
        """Record that C{reason} happened to C{obj}; fires once written (or dropped)."""
        return Deferred.fromCoroutine(self._emit(obj, kind, reason, message))

    async def _emit(self, obj: Object, kind: str, reason: str, message: str) -> None:
        meta = metadata(obj)
        involved = {
            "kind": obj.get("kind", ""),
            "namespace": meta.get("namespace", ""),
            "name": meta.get("name", ""),
            "uid": meta.get("uid", ""),
            "apiVersion": obj.get("apiVersion", ""),
            "resourceVersion": meta.get("resourceVersion", ""),
        }
        involved = {key: value for key, value in involved.items() if value}
        key = (involved.get("uid", ""), involved.get("name", ""), kind, reason, message)
        now = self.clock.seconds()
        try:
            seen = self._recorded.get(key)
            if seen is not None and now - seen.last < REPEAT_WINDOW:
                try:
                    await self._count_again(seen, now)
                    return
                except StatusError as e:
                    if e.code != 404:  # Gone (deleted, expired): recorded anew below.
                        raise
            self._remember(key, await self._create(involved, kind, reason, message, now))
        except StatusError as e:
            self._log.warn(
                "could not record event {reason} for {name}: {error}",
                reason=reason,
                name=involved.get("name"),
                error=e.message,
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
                await self.store.create(events.RESOURCE, namespace, event)
            except StatusError as e:
                if e.code != 409 or attempt == _NAME_ATTEMPTS - 1:
                    raise
            else:
                break
        return _Recorded(namespace, name, 1, now)

    async def _count_again(self, seen: _Recorded, now: float) -> None:
        seen.count += 1
        seen.last = now
        count, stamp = seen.count, rfc3339(now)

        def counted(event: Object) -> Object:
            event["count"] = max(count, int(event.get("count") or 0) + 1)
            event["lastTimestamp"] = stamp
            return event

        await self.store.guaranteed_update(events.RESOURCE, seen.namespace, seen.name, counted)

    def _remember(self, key: tuple[str, ...], recorded: _Recorded) -> None:
        self._recorded[key] = recorded
        self._recorded.move_to_end(key)
        while len(self._recorded) > REMEMBERED:
            self._recorded.popitem(last=False)
