"""The load balancer's TCP proxy, in memory: pause, failover, producers, half-close, closing."""

from __future__ import annotations

from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from k3stw.hostport import split_host_port
from k3stw.loadbalancer.proxy import HELD_LIMIT, LoadBalancerFactory
from k3stw.loadbalancer.servers import Server, ServerList, ServerState
from tests.support.loadbalancer import Dialer, HalfCloseTransport, capture_logs

DEFAULT = "127.0.10.1:6443"
A = "127.0.10.2:6443"
B = "127.0.10.3:6443"


class ProxyCase(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.logs = capture_logs(self)
        self.servers = ServerList(self.clock, DEFAULT)
        self.dialer = Dialer()
        self.dials: list[tuple[bool, float]] = []
        self.factory = LoadBalancerFactory(
            self.clock,
            self.servers,
            self.dialer,
            dial_timeout=10.0,
            observe_dial=lambda ok, seconds: self.dials.append((ok, seconds)),
        )

    def accept(self) -> tuple[Any, HalfCloseTransport]:
        protocol = self.factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 50000))
        transport = HalfCloseTransport()
        protocol.makeConnection(transport)
        return protocol, transport

    def server(self, address: str) -> Server:
        server = self.servers.get(address)
        assert server is not None
        return server

    def prefer(self, address: str) -> None:
        """Make ``address`` a PREFERRED server (first in the dial order)."""
        if address not in self.servers.addresses:
            self.servers.set_addresses([*self.servers.addresses, address])
        server = self.server(address)
        self.servers.record_check(server, True)
        self.servers.record_check(server, True)
        self.assertIs(server.state, ServerState.PREFERRED)


class PassThroughTests(ProxyCase):
    def test_paused_until_a_server_connects(self) -> None:
        _, client = self.accept()
        self.assertEqual(client.producerState, "paused")
        self.assertEqual(self.dialer.addresses(), [DEFAULT])
        _, _upstream = self.dialer.last(DEFAULT).succeed()
        self.assertEqual(client.producerState, "producing")
        self.assertEqual(self.server(DEFAULT).connections.__len__(), 1)

    def test_producers_registered_both_ways(self) -> None:
        _, client = self.accept()
        _, upstream = self.dialer.last(DEFAULT).succeed()
        self.assertIs(client.producer, upstream)
        self.assertTrue(client.streaming)
        self.assertIs(upstream.producer, client)
        self.assertTrue(upstream.streaming)

    def test_bytes_flow_both_ways_unchanged(self) -> None:
        down, client = self.accept()
        up, upstream = self.dialer.last(DEFAULT).succeed()
        down.dataReceived(b"\x16\x03\x01 client hello")
        up.dataReceived(b"\x16\x03\x03 server hello")
        self.assertEqual(upstream.value(), b"\x16\x03\x01 client hello")
        self.assertEqual(client.value(), b"\x16\x03\x03 server hello")

    def test_bytes_read_before_the_server_answered_are_held_then_sent(self) -> None:
        down, _client = self.accept()
        down.dataReceived(b"early")
        _, upstream = self.dialer.last(DEFAULT).succeed()
        self.assertEqual(upstream.value(), b"early")

    def test_held_bytes_are_bounded(self) -> None:
        down, client = self.accept()
        down.dataReceived(b"x" * HELD_LIMIT)
        self.assertFalse(client.aborted)
        down.dataReceived(b"x")
        self.assertTrue(client.aborted)

    def test_dial_duration_observed(self) -> None:
        self.accept()
        self.clock.advance(0.25)
        self.dialer.last(DEFAULT).succeed()
        self.assertEqual(self.dials, [(True, 0.25)])


class FailoverTests(ProxyCase):
    def test_refused_dial_moves_on_at_once(self) -> None:
        self.prefer(A)
        self.prefer(B)
        _, client = self.accept()
        first = self.dialer.addresses()[0]
        second = B if first == A else A
        self.dialer.last(first).refuse()
        self.assertEqual(self.dialer.addresses(), [first, second])
        self.assertIs(self.server(first).state, ServerState.FAILED)
        self.assertIn(f"Server {first}@PREFERRED->FAILED from failed dial", self.logs)
        _, upstream = self.dialer.last(second).succeed()
        self.assertIs(client.producer, upstream)
        self.assertIs(self.server(second).state, ServerState.ACTIVE)
        self.assertEqual([ok for ok, _ in self.dials], [False, True])

    def test_default_is_tried_only_after_the_others(self) -> None:
        self.prefer(A)
        self.accept()
        self.dialer.last(A).refuse()
        self.assertEqual(self.dialer.addresses(), [A, DEFAULT])
        self.dialer.last(DEFAULT).succeed()
        self.assertIs(self.server(DEFAULT).state, ServerState.STANDBY)
        self.assertEqual(len(self.server(DEFAULT).connections), 1)

    def test_all_servers_failed_closes_the_client(self) -> None:
        self.prefer(A)
        _, client = self.accept()
        self.dialer.last(A).refuse()
        self.dialer.last(DEFAULT).refuse()
        self.assertTrue(client.disconnecting)
        self.assertTrue(
            any(
                "error dialing load balancer servers: all servers failed" in line
                for line in self.logs
            )
        )

    def test_dial_timeout_moves_on(self) -> None:
        self.prefer(A)
        self.accept()
        self.clock.advance(9.9)
        self.assertEqual(self.dialer.addresses(), [A])
        self.clock.advance(0.1)
        self.assertTrue(self.dialer.last(A).cancelled)
        self.assertEqual(self.dialer.addresses(), [A, DEFAULT])
        # Only the next dial's timeout is pending.
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)

    def test_failed_servers_are_still_tried_last(self) -> None:
        self.prefer(A)
        self.servers.record_dial(self.server(A), False)
        self.accept()
        self.dialer.last(DEFAULT).refuse()
        self.assertEqual(self.dialer.addresses(), [DEFAULT, A])

    def test_client_gone_while_dialing_cancels_the_dial(self) -> None:
        down, _client = self.accept()
        down.connectionLost(Failure(Exception("gone")))
        self.assertTrue(self.dialer.last(DEFAULT).cancelled)
        self.assertEqual(self.dialer.addresses(), [DEFAULT])
        self.assertEqual(self.factory.pending, set())
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_server_removed_while_dialing_is_skipped(self) -> None:
        self.prefer(A)
        self.accept()
        self.servers.set_addresses([B])
        _, first = self.dialer.last(A).succeed()
        self.assertTrue(first.aborted)
        # The order is the snapshot taken when the client connected.
        self.assertEqual(self.dialer.addresses(), [A, DEFAULT])


class ClosingTests(ProxyCase):
    def connected(self) -> tuple[Any, HalfCloseTransport, Any, HalfCloseTransport]:
        self.prefer(A)
        down, client = self.accept()
        up, upstream = self.dialer.last(A).succeed()
        return down, client, up, upstream

    def test_client_half_close_becomes_server_half_close(self) -> None:
        down, client, up, upstream = self.connected()
        down.readConnectionLost()
        self.assertTrue(upstream.write_closed)
        self.assertIsNone(upstream.producer)
        self.assertFalse(upstream.disconnecting)
        self.assertFalse(client.disconnecting)
        up.dataReceived(b"late answer")
        self.assertEqual(client.value(), b"late answer")
        up.readConnectionLost()
        self.assertTrue(client.write_closed)
        self.assertTrue(client.disconnecting)
        self.assertTrue(upstream.disconnecting)

    def test_half_close_before_the_server_answered(self) -> None:
        self.prefer(A)
        down, client = self.accept()
        down.readConnectionLost()
        _, upstream = self.dialer.last(A).succeed()
        self.assertTrue(upstream.write_closed)
        self.assertFalse(client.disconnecting)

    def test_one_side_lost_closes_the_other_and_uncounts(self) -> None:
        _down, client, up, _upstream = self.connected()
        up.connectionLost(Failure(Exception("reset")))
        self.assertTrue(client.disconnecting)
        self.assertIsNone(client.producer)
        self.assertEqual(self.server(A).connections, set())

    def test_removed_server_connections_are_closed(self) -> None:
        _down, client, _up, upstream = self.connected()
        self.servers.set_addresses([B])
        self.assertTrue(client.aborted)
        self.assertTrue(upstream.aborted)

    def test_failed_server_connections_are_closed(self) -> None:
        _down, client, _up, upstream = self.connected()
        self.assertIs(self.server(A).state, ServerState.ACTIVE)
        self.servers.record_check(self.server(A), False)
        self.assertTrue(client.aborted)
        self.assertTrue(upstream.aborted)

    def test_close_pending(self) -> None:
        _, client = self.accept()
        self.factory.close_pending()
        self.assertTrue(client.aborted)


class AddressTests(SynchronousTestCase):
    def test_split_host_port(self) -> None:
        self.assertEqual(split_host_port("127.0.10.1:6443"), ("127.0.10.1", 6443))
        self.assertEqual(split_host_port("[fd00::1]:6443"), ("fd00::1", 6443))
        self.assertEqual(split_host_port("server.example:443"), ("server.example", 443))
        self.assertRaises(ValueError, split_host_port, "127.0.10.1")
