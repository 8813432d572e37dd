"""
The load balancer on real loopback sockets: echo servers on 127.0.0.61-63
behind a balancer on 127.0.0.60, servers killed and brought back, health
checks that really connect, and the server list kept across a restart.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

from twisted.internet import reactor as _reactor
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.interfaces import IHalfCloseableProtocol, IListeningPort, ITCPTransport
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import deferLater
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase
from zope.interface import implementer

from k3stw.hostport import split_host_port
from k3stw.loadbalancer.service import LoadBalancerService

reactor: Any = _reactor
LB_HOST = "127.0.0.60"
SERVER_HOSTS = ("127.0.0.61", "127.0.0.62")
THREE_HOSTS = ("127.0.0.61", "127.0.0.62", "127.0.0.63")


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


def tcp_check(address: str) -> Deferred[bool]:
    """A real health check: can a TCP connection be opened to ``address``?"""
    host, port = split_host_port(address)
    connecting = connectProtocol(TCP4ClientEndpoint(reactor, host, port, timeout=1), Protocol())

    def connected(protocol: Protocol) -> bool:
        assert protocol.transport is not None
        protocol.transport.loseConnection()
        return True

    checked: Deferred[bool] = connecting.addCallbacks(connected, lambda _: False)
    return checked


class Upstreams:
    """Echo servers on fixed loopback addresses, each of which can go down and come back."""

    def __init__(self, case: TestCase, hosts: tuple[str, ...]) -> None:
        self.live: set[Echo] = set()
        self.ports: dict[str, IListeningPort] = {}
        self.names: dict[str, bytes] = {}
        self.addresses: list[str] = []
        for number, host in enumerate(hosts, 1):
            port = reactor.listenTCP(0, self._factory(b"server%d" % number), interface=host)
            address = f"{host}:{cast(IPv4Address, port.getHost()).port}"
            self.addresses.append(address)
            self.names[address] = b"server%d" % number
            self.ports[address] = port
        case.addCleanup(self.stop_all)

    def _factory(self, name: bytes) -> Factory:
        return Factory.forProtocol(lambda: Echo(name, self.live))

    async def kill(self, address: str) -> None:
        """Stop listening and cut every connection, as a crashed server."""
        port = self.ports.pop(address)
        stopped = port.stopListening()
        if stopped is not None:
            await stopped
        for echo in list(self.live):
            if echo.name == self.names[address] and echo.transport is not None:
                cast(ITCPTransport, echo.transport).abortConnection()

    def revive(self, address: str) -> None:
        host, port = split_host_port(address)
        self.ports[address] = reactor.listenTCP(
            port, self._factory(self.names[address]), interface=host
        )

    async def stop_all(self) -> None:
        for address in list(self.ports):
            await self.kill(address)


class FailoverTests(TestCase):
    """Three upstreams with real health checks, as an agent sees three servers."""

    def balancer(self, default: str, data_dir: Path | None = None) -> LoadBalancerService:
        service = LoadBalancerService(
            reactor,
            f"https://{default}",
            port=0,
            bind_host=LB_HOST,
            data_dir=data_dir,
            health_check=tcp_check,
            check_interval=0.05,
            max_backoff=0.2,
        )
        service.startService()
        self.addCleanup(service.stopService)
        return service

    async def exchange(self, service: LoadBalancerService, message: bytes = b"hi") -> bytes:
        """Which server answered a new connection through ``service``."""
        lb_port = cast(IPv4Address, (await service.when_listening()).getHost()).port
        answer = await LoadBalancerOnLoopbackTests.exchange(cast(Any, None), lb_port, message)
        self.assertTrue(answer.startswith(message + b"<eof from "), answer)
        return answer[len(message + b"<eof from ") : -1]

    async def settle(self, service: LoadBalancerService, address: str, state: str) -> None:
        """Wait (bounded) until the health checks have moved ``address`` to ``state``."""
        for _ in range(200):
            if {s["address"]: s["state"] for s in service.status()}.get(address) == state:
                return
            await deferLater(reactor, 0.02)
        self.fail(f"{address} never became {state}: {service.status()}")

    async def test_killing_the_active_server_loses_no_new_connection(self) -> None:
        upstreams = Upstreams(self, THREE_HOSTS)
        service = self.balancer(upstreams.addresses[0])
        service.update_servers(upstreams.addresses)
        first = await self.exchange(service)
        active = next(a for a, n in upstreams.names.items() if n == first)
        await upstreams.kill(active)
        # Straight after the kill, before any health check noticed: every
        # new connection still succeeds, on one of the two others.
        answered = {await self.exchange(service) for _ in range(20)}
        self.assertNotIn(first, answered)
        self.assertEqual(len(answered), 1)
        await self.settle(service, active, "FAILED")

    async def test_the_default_serves_only_when_all_others_are_down(self) -> None:
        upstreams = Upstreams(self, THREE_HOSTS)
        default, *others = upstreams.addresses
        service = self.balancer(default)
        service.update_servers(others)
        await self.settle(service, default, "STANDBY")
        self.assertIn(await self.exchange(service), {b"server2", b"server3"})
        for address in others:
            await upstreams.kill(address)
        self.assertEqual(await self.exchange(service), b"server1")
        # One comes back: once checked healthy, it is preferred to the default again.
        upstreams.revive(others[1])
        await self.settle(service, others[1], "PREFERRED")
        self.assertEqual(await self.exchange(service), b"server3")
        await self.settle(service, others[1], "ACTIVE")
        await self.settle(service, default, "STANDBY")

    async def test_the_saved_list_is_used_while_the_default_is_down(self) -> None:
        upstreams = Upstreams(self, THREE_HOSTS)
        default, *others = upstreams.addresses
        data_dir = Path(self.mktemp())
        first = self.balancer(default, data_dir)
        first.update_servers(others)
        await first.stopService()
        await upstreams.kill(default)
        # A restarted agent whose --server is down still reaches the cluster.
        second = self.balancer(default, data_dir)
        self.assertEqual(second.servers.addresses, others)
        self.assertIn(await self.exchange(second), {b"server2", b"server3"})

    async def test_a_server_removed_from_the_list_loses_its_connections(self) -> None:
        upstreams = Upstreams(self, THREE_HOSTS)
        default, *others = upstreams.addresses
        service = self.balancer(default)
        service.update_servers(others)
        lb_port = cast(IPv4Address, (await service.when_listening()).getHost()).port
        client = Client()
        await connectProtocol(TCP4ClientEndpoint(reactor, LB_HOST, lb_port), client)
        assert client.transport is not None
        client.transport.write(b"ping")
        for _ in range(100):
            if client.received:
                break
            await deferLater(reactor, 0.01)
        self.assertEqual(client.received, b"ping")
        serving = next(a for a in others if upstreams.names[a] in {e.name for e in upstreams.live})
        remaining = [a for a in others if a != serving]
        service.update_servers(remaining)
        closed = await client.closed
        self.assertEqual(closed, b"ping")
        self.assertEqual(await self.exchange(service), upstreams.names[remaining[0]])
