"""
How an agent learns the cluster's servers, as k3s's agent does: ask the
supervisor (``/v1-k3s/apiservers``) at start and whenever the watch has to
re-list, and watch the Endpoints ``default/kubernetes`` in between.  Watch
events reach the load balancer after a 1 s debounce, because a joining
server adds, removes and re-adds itself.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.task import deferLater
from twisted.python.failure import Failure

from k3stw.hostport import join_host_port
from k3stw.kubeclient import KubeClient, Object
from k3stw.logs import Logger

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


class APIServerDiscovery(Service):
    """
    Tell C{update} the cluster's server addresses whenever they change.

    :param kube: the API (and supervisor) through the agent's load balancer,
        with the node's identity.
    :param update: given each new, non-empty list of ``host:port``.
    :param debounce: seconds a watch event waits for a later one.
    :param retry: seconds before re-listing after a broken watch.
    """

    _log = Logger()

    def __init__(
        self,
        clock: IReactorTime,
        kube: KubeClient,
        update: Callable[[list[str]], object],
        debounce: float = 1.0,
        retry: float = 5.0,
    ) -> None:
        self.clock = clock
        self.kube = kube
        self.update = update
        self.debounce = debounce
        self.retry = retry
        self._pending: IDelayedCall | None = None
        self._running: Deferred[None] | None = None

    def startService(self) -> None:
        super().startService()
        self._running = Deferred.fromCoroutine(self._run())
        self._running.addErrback(self._stopped)

    def stopService(self) -> None:
        super().stopService()
        if self._running is not None:
            self._running.cancel()
            self._running = None
        if self._pending is not None and self._pending.active():
            self._pending.cancel()
        self._pending = None

    def _stopped(self, failure: Failure) -> None:
        if not failure.check(CancelledError):
            self._log.failure("Watching the cluster's servers stopped", failure)

    async def _run(self) -> None:
        while True:
            await self.refresh()
            try:
                version = await self._list()
                while True:
                    version = await self._watch(version)
            except CancelledError:
                raise
            except Exception as e:
                self._log.warn(
                    "Failed to watch the kubernetes endpoints, re-listing in {delay}s: {error}",
                    delay=self.retry,
                    error=str(e),
                )
            await deferLater(self.clock, self.retry)

    async def refresh(self) -> None:
        """Take the supervisor's list at once (no debounce); failures only log."""
        try:
            body = await self.kube.http.fetch(self.kube.server_url + "/v1-k3s/apiservers")
            addresses = _addresses_document(body)
        except CancelledError:
            raise
        except Exception as e:
            self._log.warn("Failed to get apiserver addresses from the supervisor: {e}", e=str(e))
            return
        self._apply(addresses)

    async def _list(self) -> str:
        listed = await self.kube.call("GET", ENDPOINTS, params={"fieldSelector": ONLY_KUBERNETES})
        for item in listed.get("items") or ():
            self._changed(endpoint_addresses(item))
        return str(listed.get("metadata", {}).get("resourceVersion", ""))

    async def _watch(self, version: str) -> str:
        """One watch from C{version} until the server ends it; the last version seen."""
        latest = [version]

        def on_event(kind: str, obj: Any) -> None:
            seen = obj.get("metadata", {}).get("resourceVersion")
            if seen:
                latest[0] = str(seen)
            if kind in ("ADDED", "MODIFIED"):
                self._changed(endpoint_addresses(obj))

        params = {
            "fieldSelector": ONLY_KUBERNETES,
            "resourceVersion": version,
            "allowWatchBookmarks": "true",
            "timeoutSeconds": "300",
        }
        await self.kube.watch(ENDPOINTS, params, on_event)
        return latest[0]

    def _changed(self, addresses: list[str]) -> None:
        if self._pending is not None and self._pending.active():
            self._pending.cancel()
        self._pending = self.clock.callLater(self.debounce, self._apply, addresses)

    def _apply(self, addresses: list[str]) -> None:
        # An empty list means every server's lease lapsed at once: keep what we have.
        if addresses:
            self.update(addresses)
