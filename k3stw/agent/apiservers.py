"""
How an agent learns the cluster's servers, as k3s's agent does: ask the
supervisor (``/v1-k3s/apiservers``) at start and whenever the informer on the
Endpoints ``default/kubernetes`` has to list again, and follow that informer
in between.  Changes reach the load balancer after a 1 s debounce, because a
joining server adds, removes and re-adds itself.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable

from twisted.application.service import MultiService
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from zope.interface import implementer

from k3stw.hostport import join_host_port
from k3stw.kubeclient import KubeAPI
from k3stw.logs import Logger
from k3stw.machinery.informer import Informer, each_change
from k3stw.machinery.objects import Object
from k3stw.machinery.source import EventSink, HTTPSource, IListWatch, IWatchStream, Listed

ENDPOINTS = "/api/v1/namespaces/default/endpoints"
ONLY_KUBERNETES = "metadata.name=kubernetes"


def endpoint_addresses(endpoints: Object) -> list[str]:
    """Each ready address of each subset, with that subset's first port (443 if none)."""
    found: list[str] = []
    for subset in endpoints.get("subsets") or ():
        ports = subset.get("ports") or ()
        port = int(ports[0].get("port", 443)) if ports else 443
        for address in subset.get("addresses") or ():
            if address.get("ip"):
                found.append(join_host_port(address["ip"], port))
    return found


def _addresses_document(body: bytes) -> list[str]:
    """``/v1-k3s/apiservers``'s JSON list of ``ip:port``."""
    document = json.loads(body)
    if not isinstance(document, list) or not all(isinstance(a, str) for a in document):
        raise ValueError(f"not a list of addresses: {body[:200]!r}")
    return document


@implementer(IListWatch)
class _SupervisorFirst:
    """An informer source that asks the supervisor for its list before every (re)list."""

    def __init__(self, source: HTTPSource, refresh: Callable[[], Awaitable[None]]) -> None:
        self.source = source
        self.refresh = refresh
        self.description = source.description

    def list(self) -> Deferred[Listed]:
        return Deferred.fromCoroutine(self._list())

    async def _list(self) -> Listed:
        await self.refresh()
        return await self.source.list()

    def watch(self, resource_version: str, sink: EventSink) -> Deferred[IWatchStream]:
        return self.source.watch(resource_version, sink)


class APIServerDiscovery(MultiService):
    """
    Tell C{update} the cluster's server addresses whenever they change.

    :param kube: the API (and supervisor) through the agent's load balancer,
        with the node's identity.
    :param update: given each new, non-empty list of ``host:port``.
    :param debounce: seconds a watch event waits for a later one.
    """

    _log = Logger()

    def __init__(
        self,
        clock: IReactorTime,
        kube: KubeAPI,
        update: Callable[[list[str]], object],
        debounce: float = 1.0,
    ) -> None:
        super().__init__()
        self.clock = clock
        self.kube = kube
        self.update = update
        self.debounce = debounce
        self._pending: IDelayedCall | None = None
        source = HTTPSource(kube, ENDPOINTS, {"fieldSelector": ONLY_KUBERNETES})
        self.informer = Informer(_SupervisorFirst(source, self.refresh), clock)
        self.informer.add_handler(each_change(self._endpoints_changed, deletions=False))
        self.informer.setServiceParent(self)

    def stopService(self) -> Deferred[None] | None:
        stopped: Deferred[None] | None = super().stopService()
        if self._pending is not None and self._pending.active():
            self._pending.cancel()
        self._pending = None
        return stopped

    async def refresh(self) -> None:
        """Take the supervisor's list at once (no debounce); failures only log."""
        try:
            addresses = _addresses_document(await self.kube.fetch_raw("/v1-k3s/apiservers"))
        except CancelledError:
            raise
        except Exception as e:
            self._log.warn("Failed to get apiserver addresses from the supervisor: {e}", e=str(e))
            return
        self._apply(addresses)

    def _endpoints_changed(self, endpoints: Object) -> None:
        if self._pending is not None and self._pending.active():
            self._pending.cancel()
        self._pending = self.clock.callLater(
            self.debounce, self._apply, endpoint_addresses(endpoints)
        )

    def _apply(self, addresses: list[str]) -> None:
        # An empty list means every server's lease lapsed at once: keep what we have.
        if addresses:
            self.update(addresses)
