"""The load balancer's server list: every state transition, its effects, the dial order."""

from __future__ import annotations

from automat import NoTransition
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from k3stw.loadbalancer.servers import (
    ANOTHER_ACTIVE,
    FAILED_CHECK,
    FAILED_DIAL,
    FAILED_SERVER_BACKOFF,
    LISTED,
    SUCCESSFUL_CHECK,
    SUCCESSFUL_DIAL,
    UNLISTED,
    Server,
    ServerList,
    ServerState,
    Transition,
)
from tests.support.loadbalancer import FakeConnection, capture_logs

S = ServerState
DEFAULT = "127.0.10.1:6443"
A = "127.0.10.2:6443"
B = "127.0.10.3:6443"


class ServerListCase(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.logs = capture_logs(self)
        self.list = ServerList(self.clock, DEFAULT)
        self.transitions: list[Transition] = []
        self.list.observers.append(self.transitions.append)

    def server(self, address: str) -> Server:
        server = self.list.get(address)
        assert server is not None
        return server

    def connect(self, address: str, count: int = 1) -> list[FakeConnection]:
        connections = [FakeConnection() for _ in range(count)]
        for connection in connections:
            self.assertTrue(self.list.add_connection(self.server(address), connection))
        return connections

    def bring(self, address: str, state: ServerState) -> Server:
        """Drive a newly listed server to ``state`` through ordinary events."""
        if address not in self.list.addresses:
            self.list.set_addresses([*self.list.addresses, address])
        server = self.server(address)
        self.assertIs(server.state, S.UNCHECKED)
        if state is S.UNCHECKED:
            return server
        if state is S.FAILED:
            self.list.record_dial(server, False)
        else:
            self.list.record_dial(server, True)
            if state in (S.PREFERRED, S.HEALTHY, S.ACTIVE):
                self.list.record_check(server, True)
            if state is S.HEALTHY:
                self.clock.advance(61)
                self.list.record_check(server, True)
            if state is S.ACTIVE:
                self.list.record_dial(server, True)
        self.assertIs(server.state, state)
        return server

    def assertLast(self, server: Server, old: ServerState, new: ServerState, reason: str) -> None:
        self.assertEqual(self.transitions[-1], Transition(server.address, old, new, reason))
        self.assertIs(server.state, new)
        self.assertEqual(server.reason, reason)


class MembershipTests(ServerListCase):
    def test_default_waits_in_standby_and_is_hidden(self) -> None:
        server = self.server(DEFAULT)
        self.assertIs(server.state, S.STANDBY)
        self.assertTrue(server.is_default)
        self.assertEqual(self.list.addresses, [])
        self.assertEqual(self.list.dial_order(), [server])

    def test_added_server_is_unchecked_and_logged(self) -> None:
        self.assertTrue(self.list.set_addresses([A]))
        self.assertIs(self.server(A).state, S.UNCHECKED)
        self.assertIn("Adding server to load balancer k3s-agent-load-balancer: " + A, self.logs)
        self.assertIn(
            f"Updated load balancer k3s-agent-load-balancer server addresses -> ['{A}'] "
            f"[default: {DEFAULT}]",
            self.logs,
        )

    def test_same_set_is_no_change(self) -> None:
        self.list.set_addresses([A, B])
        self.assertFalse(self.list.set_addresses([B, A]))

    def test_listed_default_goes_from_standby_to_unchecked(self) -> None:
        self.list.set_addresses([DEFAULT, A])
        self.assertLast(self.server(DEFAULT), S.STANDBY, S.UNCHECKED, LISTED)
        self.assertIn(f"Server {DEFAULT}@STANDBY*->UNCHECKED from {LISTED}", self.logs)

    def test_unlisted_default_returns_to_standby_and_its_connections_close(self) -> None:
        self.list.set_addresses([DEFAULT, A])
        default = self.bring(DEFAULT, S.ACTIVE)
        [connection] = self.connect(DEFAULT)
        self.list.set_addresses([A])
        self.assertLast(default, S.ACTIVE, S.STANDBY, UNLISTED)
        self.assertEqual(connection.closed, 1)
        self.assertEqual(self.list.addresses, [A])
        self.assertIs(self.list.get(DEFAULT), default)
        self.assertIn(
            f"Removing server from load balancer k3s-agent-load-balancer: {DEFAULT}", self.logs
        )

    def test_removed_server_is_invalid_dropped_and_closed(self) -> None:
        server = self.bring(A, S.PREFERRED)
        connections = self.connect(A, 2)
        self.list.set_addresses([B])
        self.assertLast(server, S.PREFERRED, S.INVALID, UNLISTED)
        self.assertIsNone(self.list.get(A))
        self.assertEqual([c.closed for c in connections], [1, 1])
        self.assertIn(f"Closing 2 connections to load balancer server {A}@INVALID", self.logs)

    def test_events_for_a_removed_server_are_ignored(self) -> None:
        server = self.bring(A, S.RECOVERING)
        self.list.set_addresses([])
        count = len(self.transitions)
        self.list.record_dial(server, False)
        self.list.record_check(server, True)
        self.assertEqual(len(self.transitions), count)
        self.assertFalse(self.list.add_connection(server, FakeConnection()))

    def test_set_default_moves_the_flag_and_drops_an_unlisted_old_default(self) -> None:
        self.list.set_addresses([A])
        self.list.set_default(A)
        self.assertTrue(self.server(A).is_default)
        self.assertIs(self.server(A).state, S.UNCHECKED)
        self.assertIsNone(self.list.get(DEFAULT))
        self.list.set_default(B)
        self.assertFalse(self.server(A).is_default)
        self.assertIs(self.server(B).state, S.STANDBY)
        self.assertEqual(self.list.addresses, [A])

    def test_no_default(self) -> None:
        servers = ServerList(self.clock, "")
        self.assertEqual(servers.dial_order(), [])
        self.assertEqual(servers.default, "")


class TransitionTests(ServerListCase):
    def test_unchecked(self) -> None:
        server = self.bring(A, S.UNCHECKED)
        self.list.record_check(server, False)
        self.assertIs(server.state, S.UNCHECKED)
        self.list.record_dial(server, True)
        self.assertLast(server, S.UNCHECKED, S.RECOVERING, SUCCESSFUL_DIAL)
        other = self.bring(B, S.UNCHECKED)
        self.list.record_check(other, True)
        self.assertLast(other, S.UNCHECKED, S.RECOVERING, SUCCESSFUL_CHECK)

    def test_unchecked_failed_dial(self) -> None:
        server = self.bring(A, S.UNCHECKED)
        self.list.record_dial(server, False)
        self.assertLast(server, S.UNCHECKED, S.FAILED, FAILED_DIAL)
        self.assertIn(f"Server {A}@UNCHECKED->FAILED from failed dial", self.logs)

    def test_recovering_survives_a_failed_check_but_not_a_failed_dial(self) -> None:
        server = self.bring(A, S.RECOVERING)
        self.list.record_check(server, False)
        self.list.record_dial(server, True)
        self.assertIs(server.state, S.RECOVERING)
        self.list.record_dial(server, False)
        self.assertLast(server, S.RECOVERING, S.FAILED, FAILED_DIAL)

    def test_recovering_idle_check_makes_preferred(self) -> None:
        server = self.bring(A, S.RECOVERING)
        self.list.record_check(server, True)
        self.assertLast(server, S.RECOVERING, S.PREFERRED, SUCCESSFUL_CHECK)

    def test_recovering_busy_check_makes_active(self) -> None:
        server = self.bring(A, S.RECOVERING)
        self.connect(A)
        self.list.record_check(server, True)
        self.assertLast(server, S.RECOVERING, S.ACTIVE, SUCCESSFUL_CHECK)

    def test_preferred_dial_makes_active(self) -> None:
        server = self.bring(A, S.PREFERRED)
        self.list.record_check(server, True)
        self.assertIs(server.state, S.PREFERRED)
        self.list.record_dial(server, True)
        self.assertLast(server, S.PREFERRED, S.ACTIVE, SUCCESSFUL_DIAL)

    def test_preferred_becomes_healthy_only_after_a_minute(self) -> None:
        server = self.bring(A, S.PREFERRED)
        self.clock.advance(60)
        self.list.record_check(server, True)
        self.assertIs(server.state, S.PREFERRED)
        self.clock.advance(1)
        self.list.record_check(server, True)
        self.assertLast(server, S.PREFERRED, S.HEALTHY, SUCCESSFUL_CHECK)

    def test_preferred_fails_on_check_or_dial(self) -> None:
        server = self.bring(A, S.PREFERRED)
        self.list.record_check(server, False)
        self.assertLast(server, S.PREFERRED, S.FAILED, FAILED_CHECK)
        other = self.bring(B, S.PREFERRED)
        self.list.record_dial(other, False)
        self.assertLast(other, S.PREFERRED, S.FAILED, FAILED_DIAL)

    def test_healthy(self) -> None:
        server = self.bring(A, S.HEALTHY)
        self.list.record_check(server, True)
        self.assertIs(server.state, S.HEALTHY)
        self.list.record_dial(server, True)
        self.assertLast(server, S.HEALTHY, S.ACTIVE, SUCCESSFUL_DIAL)

    def test_healthy_fails(self) -> None:
        server = self.bring(A, S.HEALTHY)
        self.list.record_check(server, False)
        self.assertLast(server, S.HEALTHY, S.FAILED, FAILED_CHECK)
        other = self.bring(B, S.HEALTHY)
        self.list.record_dial(other, False)
        self.assertLast(other, S.HEALTHY, S.FAILED, FAILED_DIAL)

    def test_active_stays_active_and_fails_with_its_connections_closed(self) -> None:
        server = self.bring(A, S.ACTIVE)
        connections = self.connect(A, 2)
        self.list.record_check(server, True)
        self.list.record_dial(server, True)
        self.assertIs(server.state, S.ACTIVE)
        self.list.record_check(server, False)
        self.assertLast(server, S.ACTIVE, S.FAILED, FAILED_CHECK)
        self.assertEqual([c.closed for c in connections], [1, 1])
        self.assertEqual(server.connections, set())

    def test_active_failed_dial(self) -> None:
        server = self.bring(A, S.ACTIVE)
        self.list.record_dial(server, False)
        self.assertLast(server, S.ACTIVE, S.FAILED, FAILED_DIAL)

    def test_failed_recovers_on_dial_or_check(self) -> None:
        server = self.bring(A, S.FAILED)
        self.list.record_dial(server, True)
        self.assertLast(server, S.FAILED, S.RECOVERING, SUCCESSFUL_DIAL)
        self.assertEqual(server.failures, 0)
        other = self.bring(B, S.FAILED)
        self.list.record_check(other, True)
        self.assertLast(other, S.FAILED, S.RECOVERING, SUCCESSFUL_CHECK)

    def test_failed_backs_off(self) -> None:
        server = self.bring(A, S.FAILED)
        self.assertEqual(server.failures, 1)
        self.assertTrue(server.in_backoff())
        self.assertNotIn(server, self.list.due_for_check())
        self.clock.advance(1)
        self.assertIn(server, self.list.due_for_check())
        self.list.record_check(server, False)
        self.list.record_dial(server, False)
        self.assertEqual(server.failures, 3)
        self.clock.advance(3.9)
        self.assertTrue(server.in_backoff())
        self.clock.advance(0.1)
        self.assertFalse(server.in_backoff())
        self.assertEqual(server.reason, FAILED_DIAL)

    def test_backoff_schedule(self) -> None:
        delay = FAILED_SERVER_BACKOFF
        self.assertEqual([delay(n) for n in range(1, 7)], [1, 2, 4, 8, 15, 15])
        self.assertEqual(delay(10_000), 15)

    def test_standby_ignores_health(self) -> None:
        default = self.server(DEFAULT)
        for record in (self.list.record_dial, self.list.record_check):
            record(default, True)
            record(default, False)
        self.assertIs(default.state, S.STANDBY)
        self.assertEqual(self.transitions, [])

    def test_unexpected_input_fails_loudly(self) -> None:
        server = self.bring(A, S.RECOVERING)
        self.assertRaises(NoTransition, server._inputs.demote)
        self.assertRaises(NoTransition, server._inputs.listed)
        self.assertRaises(NoTransition, server._inputs.check_passed_settled)


class OneActiveServerTests(ServerListCase):
    def test_becoming_active_closes_weaker_servers_connections(self) -> None:
        self.list.set_addresses([A, B, "127.0.10.4:6443", "127.0.10.5:6443"])
        self.bring("127.0.10.4:6443", S.FAILED)
        self.bring(B, S.RECOVERING)
        self.bring("127.0.10.5:6443", S.PREFERRED)
        default_conn = FakeConnection()
        self.list.add_connection(self.server(DEFAULT), default_conn)
        failed = self.connect("127.0.10.4:6443")
        recovering = self.connect(B)
        preferred = self.connect("127.0.10.5:6443")
        self.bring(A, S.ACTIVE)
        self.assertEqual(default_conn.closed, 1)
        self.assertEqual([c.closed for c in failed + recovering + preferred], [1, 1, 0])

    def test_a_busier_active_server_keeps_the_lead(self) -> None:
        first = self.bring(A, S.ACTIVE)
        self.connect(A, 2)
        second = self.bring(B, S.RECOVERING)
        [mine] = self.connect(B)
        self.list.record_check(second, True)
        self.assertIs(first.state, S.ACTIVE)
        self.assertLast(second, S.ACTIVE, S.PREFERRED, ANOTHER_ACTIVE)
        self.assertEqual(mine.closed, 1)

    def test_the_new_active_server_demotes_a_less_busy_one(self) -> None:
        first = self.bring(A, S.ACTIVE)
        [theirs] = self.connect(A)
        second = self.bring(B, S.RECOVERING)
        self.connect(B, 2)
        self.list.record_check(second, True)
        self.assertIs(second.state, S.ACTIVE)
        self.assertLast(first, S.ACTIVE, S.PREFERRED, ANOTHER_ACTIVE)
        self.assertEqual(theirs.closed, 1)

    def test_a_preferred_server_ends_the_fallback_to_the_default(self) -> None:
        [fallback] = self.connect(DEFAULT)
        self.bring(A, S.PREFERRED)
        self.assertEqual(fallback.closed, 1)


class OrderTests(ServerListCase):
    def test_dial_order(self) -> None:
        c, d = "127.0.10.4:6443", "127.0.10.5:6443"
        self.list.set_addresses([A, B, c, d])
        self.bring(A, S.FAILED)
        self.bring(B, S.RECOVERING)
        self.bring(c, S.RECOVERING)
        self.connect(c)
        self.bring(d, S.PREFERRED)
        order = [s.address for s in self.list.dial_order()]
        self.assertEqual(order, [d, c, B, DEFAULT, A])

    def test_failed_servers_out_of_backoff_come_first(self) -> None:
        self.list.set_addresses([A, B])
        self.bring(A, S.FAILED)
        self.clock.advance(0.5)
        self.bring(B, S.FAILED)
        self.clock.advance(0.6)
        self.assertEqual([s.address for s in self.list.dial_order()], [DEFAULT, A, B])

    def test_status(self) -> None:
        self.bring(A, S.RECOVERING)
        self.connect(A)
        self.clock.advance(5)
        self.assertEqual(
            self.list.status(),
            [
                {
                    "address": A,
                    "state": "RECOVERING",
                    "default": False,
                    "connections": 1,
                    "reason": SUCCESSFUL_DIAL,
                    "since": 0.0,
                    "failures": 0,
                },
                {
                    "address": DEFAULT,
                    "state": "STANDBY",
                    "default": True,
                    "connections": 0,
                    "reason": "new",
                    "since": 0.0,
                    "failures": 0,
                },
            ],
        )

    def test_close_all(self) -> None:
        a = self.connect(DEFAULT, 2)
        self.list.close_all()
        self.assertEqual([c.closed for c in a], [1, 1])
        self.assertEqual(self.server(DEFAULT).connections, set())
