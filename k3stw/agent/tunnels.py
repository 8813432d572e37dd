"""
The agent's tunnels: one websocket to each server (``wss://<server>/v1-k3s/connect``),
dialled directly rather than through the load balancer, with the kubelet's
client certificate, reconnecting 1 s after it drops.  Through them the
servers reach this node's kubelet; a tunnel's state is its server's health
in the load balancer, as in k3s.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from twisted.application.internet import ClientService
from twisted.application.service import MultiService
from twisted.internet.defer import Deferred, succeed
from twisted.internet.endpoints import wrapClientTLS
from twisted.internet.interfaces import (
    IProtocol,
    IProtocolFactory,
    IReactorTime,
    IStreamClientEndpoint,
)
from twisted.logger import ILogObserver, LogEvent
from twisted.logger import Logger as TwistedLogger
from twisted.python.failure import Failure
from zope.interface import implementer

from k3stw.hostport import hostname_dialer, split_host_port
from k3stw.logs import Logger
from k3stw.machinery.timing import fixed
from k3stw.pki.tls import PinnedCAPolicy
from k3stw.tunnel.address import loopback_ports_authorizer
from k3stw.tunnel.client import AgentTunnelFactory
from k3stw.tunnel.local import TCPDialer
from k3stw.tunnel.session import Session

#: The containerd stream server's port, which k3s's agent also lets servers reach.
CONTAINERD_STREAM_PORT = 10010


@implementer(ILogObserver)
def _nowhere(event: LogEvent) -> None:
    """Drops an event."""


#: Seconds between a tunnel's connection attempts, as remotedialer's client waits.
RETRY_SECONDS = 1.0


@implementer(IStreamClientEndpoint)
class _ServerEndpoint:
    """
    A tunnel's endpoint, which names its server and logs why a dial failed:
    the line a user reads when a server cannot be reached.
    """

    _log = Logger()

    def __init__(self, url: str, endpoint: IStreamClientEndpoint) -> None:
        self.url = url
        self._endpoint = endpoint

    def __repr__(self) -> str:
        return self.url

    def connect(self, factory: IProtocolFactory) -> Deferred[IProtocol]:
        connecting: Deferred[IProtocol] = self._endpoint.connect(factory)
        return connecting.addErrback(self._failed)

    def _failed(self, failure: Failure) -> Failure:
        self._log.warn(
            "Failed to connect to proxy {url}: {error}; retrying in {delay:g} s",
            url=self.url,
            error=failure.getErrorMessage().rstrip("."),
            delay=RETRY_SECONDS,
        )
        return failure


class _Tunnel(ClientService):
    """One server's tunnel: connected or not, and the session while it is."""

    # ClientService logs "Scheduling retry N to connect <endpoint>" without the
    # reason; the endpoint and the session log each failure with its reason.
    _log = TwistedLogger(observer=_nowhere)
    _events = Logger()

    def __init__(
        self, endpoint: _ServerEndpoint, factory: AgentTunnelFactory, clock: IReactorTime
    ) -> None:
        super().__init__(endpoint, factory, retryPolicy=fixed(RETRY_SECONDS), clock=clock)
        self.session: Session | None = None

    def opened(self, server: str, session: Session) -> None:
        self.session = session
        self._events.info("Remotedialer connected to proxy {server}", server=server)
        session.ended.addCallback(self._ended, server, session)

    def stopService(self) -> Deferred[None]:
        """
        Close the session, then stop as C{ClientService} does.

        The session is the streaming producer of the websocket's TLS
        transport, which closes only once its producer is unregistered:
        C{ClientService} alone would close the transport under a session that
        never hears of it, and wait for ever.  Closing the session sends the
        websocket Close and unregisters it.
        """
        if self.session is not None:
            self.session.close("tunnel stopped")
        stopped: Deferred[None] = super().stopService()
        return stopped

    def _ended(self, reason: str, server: str, session: Session) -> None:
        if self.session is session:
            self.session = None
        if self.running:
            self._events.warn(
                "Remotedialer proxy error; reconnecting... {server}: {reason}",
                server=server,
                reason=reason,
            )

    def healthy(self, address: str) -> Deferred[bool]:
        return succeed(self.session is not None)


class TunnelSet(MultiService):
    """
    A tunnel to every server in the list given to L{follow}.

    :param reactor: the reactor (TCP, TLS, time).
    :param policy: the cluster CA and the kubelet's client certificate.
    :param kubelet_port: the one loopback port (with containerd's) servers may reach.
    :param on_change: told of each added tunnel (address, health check) and
        removed one (address, None): the load balancer's health source.
    """

    _log = Logger()

    def __init__(
        self,
        reactor: Any,
        policy: PinnedCAPolicy,
        kubelet_port: int,
        on_change: Callable[[str, Callable[[str], Deferred[bool]] | None], None],
    ) -> None:
        super().__init__()
        self.reactor = reactor
        self.policy = policy
        self.authorizer = loopback_ports_authorizer({kubelet_port, CONTAINERD_STREAM_PORT})
        self.on_change = on_change
        self._tunnels: dict[str, _Tunnel] = {}

    @property
    def addresses(self) -> list[str]:
        return sorted(self._tunnels)

    def connected(self, address: str) -> bool:
        """Whether the tunnel to C{address} has a session now."""
        tunnel = self._tunnels.get(address)
        return tunnel is not None and tunnel.session is not None

    def follow(self, addresses: Iterable[str]) -> None:
        """Tunnel to exactly C{addresses} (``host:port``) from now on."""
        wanted = set(addresses)
        for address in sorted(wanted - self._tunnels.keys()):
            self._start(address)
        for address in sorted(self._tunnels.keys() - wanted):
            tunnel = self._tunnels.pop(address)
            tunnel.disownServiceParent()
            self.on_change(address, None)
            self._log.info("Stopped tunnel to {address}", address=address)

    def _start(self, address: str) -> None:
        host, port = split_host_port(address)
        creator = self.policy.creatorForNetloc(host.encode("ascii"), port)
        url = f"wss://{address}/v1-k3s/connect"
        endpoint = _ServerEndpoint(
            url, wrapClientTLS(creator, hostname_dialer(self.reactor, timeout=10)(address))
        )
        factory = AgentTunnelFactory(
            url,
            clock=self.reactor,
            authorizer=self.authorizer,
            dialer=TCPDialer(self.reactor),
            opened=lambda server, session: tunnel.opened(server, session),
            name=url,
        )
        tunnel = _Tunnel(endpoint, factory, self.reactor)
        self._tunnels[address] = tunnel
        tunnel.setServiceParent(self)
        self.on_change(address, tunnel.healthy)
        self._log.info("Started tunnel to {address}", address=address)
