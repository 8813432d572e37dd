"""
The agent's client-side load balancer as a service: a TCP proxy on
``127.0.0.1:<port>`` in front of the cluster's servers, with per-server
health, failover, persistence of the server list, status and metrics.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from twisted.application.service import MultiService
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.internet.endpoints import TCP4ServerEndpoint, TCP6ServerEndpoint
from twisted.internet.interfaces import IListeningPort
from twisted.python.failure import Failure

from k3stw.hostport import Dial, hostname_dialer
from k3stw.loadbalancer.health import HealthCheck, HealthCheckService
from k3stw.loadbalancer.persistence import (
    default_address,
    load_addresses,
    save_addresses,
    state_file,
)
from k3stw.loadbalancer.proxy import DIAL_TIMEOUT, LoadBalancerFactory
from k3stw.loadbalancer.servers import ServerList
from k3stw.logs import Logger
from k3stw.machinery.timing import Backoff

if TYPE_CHECKING:
    from k3stw.loadbalancer.metrics import LoadBalancerMetrics

#: k3s's name for the agent's supervisor (and, in stock k3s, apiserver) balancer.
SUPERVISOR_LB = "k3s-agent-load-balancer"


class LoadBalancerService(MultiService):
    """
    A local TCP load balancer whose first server is ``server_url``.

    Clients connect to :attr:`local_url` instead of the server; call
    L{update_servers} with the cluster's server addresses as they are
    learnt (``/v1-k3s/apiservers``, the ``kubernetes`` Endpoints).

    :param reactor: an ``IReactorTCP`` and ``IReactorTime`` (passed in; a
        ``MemoryReactorClock`` in tests).
    :param server_url: ``--server``; its ``host:port`` is the default server.
    :param name: k3s's service name, in logs, metrics and the state file.
    :param port: the local port (``--lb-server-port``; 0 for any).
    :param bind_host: ``127.0.0.1``, or ``::1`` on IPv6-first nodes.
    :param data_dir: where the server list is kept across restarts (None: not kept).
    :param dial: the endpoint of a server address (default: ``HostnameEndpoint``).
    :param health_check: the check of every server (None: none until
        L{set_health_check}).
    :param metrics: shared metrics of the process's load balancers (None: none).
    :param dial_timeout: seconds before a dial counts as failed.
    :param check_interval: seconds between health-check rounds.
    :param max_backoff: the longest wait before re-checking a failed server.
    """

    _log = Logger()

    def __init__(
        self,
        reactor: Any,
        server_url: str,
        *,
        name: str = SUPERVISOR_LB,
        port: int = 6444,
        bind_host: str = "127.0.0.1",
        data_dir: Path | None = None,
        dial: Dial | None = None,
        health_check: HealthCheck | None = None,
        metrics: LoadBalancerMetrics | None = None,
        dial_timeout: float = DIAL_TIMEOUT,
        check_interval: float = 1.0,
        max_backoff: float = 15.0,
    ) -> None:
        super().__init__()
        self.setName(name)
        self.reactor = reactor
        self.server_url = server_url
        self.port = port
        self.bind_host = bind_host
        self.data_dir = data_dir
        self.metrics = metrics
        self.servers = ServerList(
            reactor,
            default_address(server_url) if server_url else "",
            name,
            backoff=Backoff(1.0, max_backoff),
        )
        self.factory = LoadBalancerFactory(
            reactor,
            self.servers,
            dial if dial is not None else hostname_dialer(reactor, dial_timeout),
            dial_timeout,
            metrics.dial_observer(name) if metrics is not None else None,
        )
        self.health = HealthCheckService(
            reactor, self.servers, health_check, interval=check_interval
        )
        self.health.setServiceParent(self)
        self._port: IListeningPort | None = None
        self._listening: Deferred[IListeningPort] | None = None
        self._waiters: list[Deferred[IListeningPort]] = []

    @property
    def state_file(self) -> Path | None:
        """``<data-dir>/agent/etc/<name>.json``, if the list is kept."""
        return state_file(self.data_dir, self.servers.name) if self.data_dir else None

    @property
    def local_url(self) -> str:
        """``https://127.0.0.1:<port>``: the URL clients use instead of ``--server``."""
        port = cast(IPv4Address, self._port.getHost()).port if self._port is not None else self.port
        host = f"[{self.bind_host}]" if ":" in self.bind_host else self.bind_host
        return f"https://{host}:{port}"

    def startService(self) -> None:
        self._restore()
        if self.metrics is not None:
            self.metrics.track(self.servers)
        super().startService()
        endpoint = (
            TCP6ServerEndpoint(self.reactor, self.port, interface=self.bind_host)
            if ":" in self.bind_host
            else TCP4ServerEndpoint(self.reactor, self.port, interface=self.bind_host)
        )
        self._listening = endpoint.listen(self.factory)
        self._listening.addCallbacks(self._listened, self._listen_failed)

    def when_listening(self) -> Deferred[IListeningPort]:
        """Fires with the listening port once the balancer accepts connections."""
        if self._port is not None:
            return succeed(self._port)
        waiter: Deferred[IListeningPort] = Deferred()
        self._waiters.append(waiter)
        return waiter

    def _listened(self, port: IListeningPort) -> IListeningPort:
        self._port = port
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            waiter.callback(port)
        self._log.info(
            "Running load balancer {name} {local} -> {addresses} [default: {default}]",
            name=self.servers.name,
            local=self.local_url.removeprefix("https://"),
            addresses=self.servers.addresses,
            default=self.servers.default,
        )
        return port

    def _listen_failed(self, failure: Failure) -> None:
        self._log.failure(
            "Load balancer {name} cannot listen on {host}:{port}",
            failure,
            name=self.servers.name,
            host=self.bind_host,
            port=self.port,
        )
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            waiter.errback(failure)

    def stopService(self) -> Deferred[None]:
        stops: list[Deferred[Any]] = []
        if self._listening is not None:
            self._listening.addErrback(lambda _: None)
            self._listening.cancel()
            self._listening = None
        if self._port is not None:
            stopped = self._port.stopListening()
            if stopped is not None:
                stops.append(stopped)
            self._port = None
        self.factory.close_pending()
        self.servers.close_all()
        if self.metrics is not None:
            self.metrics.untrack(self.servers)
        parent = super().stopService()
        if parent is not None:
            stops.append(parent)
        done: Deferred[None] = DeferredList(stops).addCallback(lambda _: None)
        return done

    def _restore(self) -> None:
        path = self.state_file
        if path is None or self.servers.addresses:
            return
        saved = load_addresses(path, self.server_url)
        if saved is not None:
            self.servers.set_addresses(saved)
        else:
            self._save()

    def _save(self) -> None:
        path = self.state_file
        if path is None:
            return
        try:
            save_addresses(path, self.server_url, self.servers.addresses)
        except OSError:
            self._log.failure("Cannot save load balancer state to {path}", path=str(path))

    def update_servers(self, addresses: Iterable[str]) -> bool:
        """
        Balance over ``addresses`` (``host:port``) from now on.

        :return: whether the set changed (then it is also saved).
        """
        changed = self.servers.set_addresses(addresses)
        if changed:
            self._save()
        return changed

    def set_default(self, address: str) -> None:
        """Move the default server to ``address`` (k3s's ``SetDefault``)."""
        self.servers.set_default(address)

    def set_health_check(self, address: str, check: HealthCheck | None) -> None:
        """Check ``address`` with ``check`` (for example its tunnel's state)."""
        self.health.set_check(address, check)

    def set_default_health_check(self, check: HealthCheck | None) -> None:
        """Check every server without a check of its own with ``check``."""
        self.health.set_default_check(check)

    def clear_health_check(self, address: str) -> None:
        """Check ``address`` with the default check again (its tunnel is gone)."""
        self.health.clear_check(address)

    def status(self) -> list[dict[str, object]]:
        """Each server's address, state, open connections and last transition reason."""
        return self.servers.status()
