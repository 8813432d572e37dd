"""The agent's set of tunnels, on a memory reactor: it follows the server list."""

from __future__ import annotations

import datetime
from typing import Any

from twisted.internet.error import ConnectionRefusedError
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import LogLevel, capturedLogs, formatEvent
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from k3stw.agent.tunnels import TunnelSet
from k3stw.pki.certs import Usage, new_ca, new_leaf
from k3stw.pki.tls import PinnedCAPolicy
from k3stw.tunnel.session import Session
from tests.support.tunnel import QueueTransport


class TunnelSetTests(SynchronousTestCase):
    def setUp(self) -> None:
        now = datetime.datetime.now(datetime.UTC)
        server_ca, client_ca = new_ca("k3s-server-ca@1", now), new_ca("k3s-client-ca@1", now)
        node = new_leaf(client_ca, "system:node:n", Usage.CLIENT, now, ["system:nodes"])
        self.reactor = MemoryReactorClock()
        self.changes: list[tuple[str, Any]] = []
        self.tunnels = TunnelSet(
            self.reactor,
            PinnedCAPolicy(server_ca.certificate_pem, node),
            10250,
            lambda address, check: self.changes.append((address, check)),
        )
        self.tunnels.startService()
        self.addCleanup(self.tunnels.stopService)

    def dialled(self) -> list[tuple[str, int]]:
        return [(host, port) for host, port, *_ in self.reactor.tcpClients]

    def test_one_tunnel_per_server_dialled_directly(self) -> None:
        self.tunnels.follow(["127.0.0.1:6443", "127.0.0.2:6443"])
        self.assertEqual(self.tunnels.addresses, ["127.0.0.1:6443", "127.0.0.2:6443"])
        self.assertEqual(self.dialled(), [("127.0.0.1", 6443), ("127.0.0.2", 6443)])
        self.assertEqual([address for address, _ in self.changes], self.tunnels.addresses)

    def test_health_is_the_tunnels_state(self) -> None:
        self.tunnels.follow(["127.0.0.1:6443"])
        ((address, check),) = self.changes
        self.assertIs(self.successResultOf(check(address)), False)
        tunnel = self.tunnels._tunnels[address]
        session = Session(QueueTransport(), self.reactor, role="client")
        tunnel.opened(address, session)
        self.assertTrue(self.tunnels.connected(address))
        self.assertIs(self.successResultOf(check(address)), True)
        session.connection_lost("websocket closed")
        self.assertIs(self.successResultOf(check(address)), False)

    def test_a_server_that_leaves_the_list_loses_its_tunnel(self) -> None:
        self.tunnels.follow(["127.0.0.1:6443", "127.0.0.2:6443"])
        tunnel = self.tunnels._tunnels["127.0.0.2:6443"]
        self.changes.clear()
        self.tunnels.follow(["127.0.0.1:6443"])
        self.assertEqual(self.changes, [("127.0.0.2:6443", None)])
        self.assertFalse(tunnel.running)
        self.assertEqual(self.tunnels.addresses, ["127.0.0.1:6443"])
        # The same list again changes nothing.
        self.tunnels.follow(["127.0.0.1:6443"])
        self.assertEqual(len(self.changes), 1)

    def test_each_failed_dial_is_one_line_naming_the_server_and_the_error(self) -> None:
        """A server that refuses the tunnel: every retry says which and why, in k3s's words."""
        with capturedLogs() as events:
            self.tunnels.follow(["127.0.0.1:6443"])
            for _ in range(3):
                factory = self.reactor.tcpClients[-1][2]
                connector = self.reactor.connectors[-1]
                factory.clientConnectionFailed(connector, Failure(ConnectionRefusedError()))
                self.reactor.advance(1.0)
        self.assertEqual(len(self.reactor.tcpClients), 4)
        lines = [(event["log_level"], formatEvent(event)) for event in events]
        failures = [text for level, text in lines if level is LogLevel.warn]
        self.assertEqual(len(failures), 3, lines)
        for text in failures:
            self.assertIn("Failed to connect to proxy wss://127.0.0.1:6443/v1-k3s/connect", text)
            self.assertIn("Connection was refused by other side; retrying in 1 s", text)
        for _, text in lines:
            self.assertNotIn("object at 0x", text)
            self.assertNotIn("Scheduling retry", text)
