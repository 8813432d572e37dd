"""
Events as kube-controller-manager's and kube-scheduler's recorders write them
(L{k3stw.machinery.events}: ``source.component`` the controller), straight
into the server's store.
"""

from __future__ import annotations

from twisted.internet.interfaces import IReactorTime

from k3stw.apiserver.kinds import events
from k3stw.apiserver.status import StatusError
from k3stw.apiserver.storage import ObjectStore
from k3stw.machinery import events as recording
from k3stw.machinery.events import NORMAL, REPEAT_WINDOW, WARNING, WriteError
from k3stw.machinery.objects import Object

__all__ = ["NORMAL", "REPEAT_WINDOW", "WARNING", "EventRecorder", "StoreEvents"]


class StoreEvents:
    """An L{recording.EventWriter} into the server's store."""

    def __init__(self, store: ObjectStore) -> None:
        self.store = store

    async def create(self, namespace: str, event: Object) -> None:
        try:
            await self.store.create(events.RESOURCE, namespace, event)
        except StatusError as e:
            raise WriteError(e.code, e.message) from e

    async def count_again(self, namespace: str, name: str, count: int, stamp: str) -> None:
        def counted(event: Object) -> Object:
            event["count"] = max(count, int(event.get("count") or 0) + 1)
            event["lastTimestamp"] = stamp
            return event

        try:
            await self.store.guaranteed_update(events.RESOURCE, namespace, name, counted)
        except StatusError as e:
            raise WriteError(e.code, e.message) from e


class EventRecorder(recording.EventRecorder):
    """
    A server component's recorder.

    :param component: ``source.component`` and ``reportingComponent``
        (``deployment-controller``, ``default-scheduler``).
    :param host: ``source.host`` and ``reportingInstance`` (the server's name), or "" for
        none (kube-controller-manager's controllers name none).
    """

    def __init__(self, store: ObjectStore, clock: IReactorTime, component: str, host: str) -> None:
        super().__init__(StoreEvents(store), clock, component, host)
