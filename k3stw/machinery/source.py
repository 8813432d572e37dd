"""
Where an informer reads its resource from: a list, then a watch from the
list's resourceVersion (client-go's ``ListerWatcher``).

Two sources provide L{IListWatch}: the server's own object store, in process
(L{k3stw.apiserver.informers.StoreSource}), and the API over HTTPS for the
node half (L{HTTPSource}, here).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from twisted.internet.defer import Deferred, ensureDeferred, succeed
from twisted.python.failure import Failure
from zope.interface import Attribute, Interface, implementer

from k3stw.kubeclient import KubeAPI, KubeAPIError
from k3stw.machinery.objects import Object

#: Told of each watch event: its type (ADDED, MODIFIED, DELETED, BOOKMARK) and object.
EventSink = Callable[[str, Object], None]

#: A list is read in pages of this many objects, as client-go's pager does.
PAGE_SIZE = 500
#: An HTTP watch asks the server to end it after 5 to 10 minutes, as client-go's reflector.
MIN_WATCH_SECONDS = 300


class Expired(Exception):
    """The resourceVersion a watch resumed from is gone (410): list again."""


@dataclass(frozen=True)
class Listed:
    """One consistent list: the objects and the resourceVersion to watch from."""

    items: list[Object]
    resource_version: str


class IWatchStream(Interface):
    """One running watch."""

    ended = Attribute(
        "A Deferred that fires with None when the watch ends normally (the server "
        "closed it: watch again from the last resourceVersion), fails with L{Expired} "
        "when its resourceVersion is too old, or with the error that ended it."
    )

    def cancel() -> None:
        """Stop the watch; C{ended} then fires (or fails with CancelledError)."""


class IListWatch(Interface):
    """A list and watch of one resource (of one namespace, perhaps through a selector)."""

    description = Attribute("What the logs call this source: ``pods``, ``endpoints in default``.")

    def list() -> Deferred[Listed]:
        """Every object, and the resourceVersion they were read at."""

    def watch(resource_version: str, sink: EventSink) -> Deferred[IWatchStream]:
        """
        Every change after C{resource_version}, handed to C{sink} in order.

        :raises Expired: (the Deferred fails) C{resource_version} is too old.
        """


@implementer(IWatchStream)
class _HTTPWatch:
    def __init__(self, following: Deferred[None]) -> None:
        self._following = following
        self.ended: Deferred[None] = Deferred()
        following.addCallbacks(self._end, self._fail)

    def _end(self, result: None) -> None:
        self.ended.callback(None)

    def _fail(self, failure: Failure) -> None:
        error = failure.value
        if isinstance(error, KubeAPIError) and error.code == 410:
            failure = Failure(Expired(str(error)))
        self.ended.errback(failure)

    def cancel(self) -> None:
        if not self._following.called:
            self._following.cancel()


@implementer(IListWatch)
class HTTPSource:
    """
    One collection of the API through a L{KubeClient}, as client-go's reflector
    reads it: paged lists, watches with bookmarks that the server ends after 5
    to 10 minutes.

    :param path: the collection, ``/api/v1/namespaces/default/endpoints``.
    :param params: selectors (``fieldSelector``, ``labelSelector``) for both verbs.
    """

    def __init__(
        self,
        client: KubeAPI,
        path: str,
        params: dict[str, str] | None = None,
        chance: Callable[[], float] = random.random,
    ) -> None:
        self.client = client
        self.path = path
        self.params = dict(params or {})
        self._chance = chance
        selected = ", ".join(f"{k}={v}" for k, v in sorted(self.params.items()))
        self.description = f"{path} ({selected})" if selected else path

    def list(self) -> Deferred[Listed]:
        return Deferred.fromCoroutine(self._list())

    async def _list(self) -> Listed:
        items: list[Object] = []
        token = ""
        while True:
            params = {**self.params, "limit": str(PAGE_SIZE)}
            if token:
                params["continue"] = token
            page = await self.client.call("GET", self.path, params=params)
            items.extend(item for item in page.get("items") or () if isinstance(item, dict))
            metadata: dict[str, Any] = page.get("metadata") or {}
            token = str(metadata.get("continue") or "")
            if not token:
                return Listed(items, str(metadata.get("resourceVersion") or ""))

    def watch(self, resource_version: str, sink: EventSink) -> Deferred[IWatchStream]:
        seconds = int(MIN_WATCH_SECONDS * (1 + self._chance()))
        params = {
            **self.params,
            "resourceVersion": resource_version,
            "allowWatchBookmarks": "true",
            "timeoutSeconds": str(seconds),
        }
        following: Deferred[None] = ensureDeferred(self.client.watch(self.path, params, sink))
        return succeed(_HTTPWatch(following))
