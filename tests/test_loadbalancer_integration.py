"""
The load balancer on real loopback sockets (127.0.0.60-62): two echo servers
behind it, one killed, and new client connections still succeed.
"""

from __future__ import annotations

from typing import Any, cast

from twisted.internet import reactor as _reactor
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.interfaces import IHalfCloseableProtocol, IListeningPort, ITCPTransport
from twisted.internet.protocol import Factory, Protocol
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase
from zope.interface import implementer

from k3stw.loadbalancer.service import LoadBalancerService

reactor: Any = _reactor
LB_HOST = "127.0.0.60"
SERVER_HOSTS = ("127.0.0.61", "127.0.0.62")


@implementer(IHalfCloseableProtocol)
class Echo(Protocol):
    """Echoes; on end of stream, says which server it was and closes."""

    def __init__(self, name: bytes, live: set[Echo]) -> None:
        self.name = name
        self.live = live

    def connectionMade(self) -> None:
        self.live.add(self)

    def dataReceived(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)

    def readConnectionLost(self) -> None:
        assert self.transport is not None
        self.transport.write(b"<eof from " + self.name + b">")
        self.transport.loseConnection()

    def writeConnectionLost(self) -> None:
        pass

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.live.discard(self)


class Client(Protocol):
    def __init__(self) -> None:
        self.received = b""
        self.closed: Deferred[bytes] = Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.closed.callback(self.received)


class LoadBalancerOnLoopbackTests(TestCase):
    async def exchange(self, lb_port: int, message: bytes) -> bytes:
        """Send ``message`` through the balancer, half-close, return all that came back."""
        client = Client()
        endpoint = TCP4ClientEndpoint(reactor, LB_HOST, lb_port)
        await connectProtocol(endpoint, client)
        transport = client.transport
        assert transport is not None
        transport.write(message)
        cast(ITCPTransport, transport).loseWriteConnection()
        return await client.closed

    async def test_new_connections_survive_the_loss_of_a_server(self) -> None:
        live: set[Echo] = set()
        ports: dict[bytes, IListeningPort] = {}
        for number, host in enumerate(SERVER_HOSTS, 1):
            name = b"server%d" % number
            factory = Factory.forProtocol(lambda name=name: Echo(name, live))  # type: ignore[misc]
            ports[name] = reactor.listenTCP(0, factory, interface=host)
        for port in ports.values():
            self.addCleanup(port.stopListening)
        addresses = {
            name: f"{cast(IPv4Address, p.getHost()).host}:{cast(IPv4Address, p.getHost()).port}"
            for name, p in ports.items()
        }

        service = LoadBalancerService(
            reactor, f"https://{addresses[b'server1']}", port=0, bind_host=LB_HOST
        )
        service.startService()
        self.addCleanup(service.stopService)
        listening = await service.when_listening()
        lb_port = cast(IPv4Address, listening.getHost()).port
        self.assertEqual(service.local_url, f"https://{LB_HOST}:{lb_port}")
        service.update_servers(list(addresses.values()))

        # Bytes pass through unchanged, and a half-close reaches the server.
        answer = await self.exchange(lb_port, b"hello")
        self.assertTrue(answer.startswith(b"hello<eof from server"), answer)
        served = answer[len(b"hello<eof from ") : -1]
        survivor = b"server2" if served == b"server1" else b"server1"

        # Kill the server that answered: no more listener, its connections cut.
        stopped = ports.pop(served).stopListening()
        if stopped is not None:
            await stopped
        for echo in list(live):
            if echo.name == served and echo.transport is not None:
                cast(ITCPTransport, echo.transport).abortConnection()

        for attempt in range(5):
            message = b"after %d" % attempt
            answer = await self.exchange(lb_port, message)
            self.assertEqual(answer, message + b"<eof from " + survivor + b">")
        states = {s["address"]: s["state"] for s in service.status()}
        self.assertEqual(states[addresses[served]], "FAILED")
        # No health check here: the survivor is known only by its successful dials.
        self.assertEqual(states[addresses[survivor]], "RECOVERING")
