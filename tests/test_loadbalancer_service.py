"""
The load balancer as a service, in memory: health checks under a clock,
persistence, status, metrics, and whole connections pumped with ``iosim``.
"""

from __future__ import annotations

import json
import stat
from pathlib import Path
from typing import cast

from prometheus_client import generate_latest
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure
from twisted.test import iosim
from twisted.trial.unittest import SynchronousTestCase

from k3stw.hostport import split_host_port
from k3stw.loadbalancer.health import HealthCheckService
from k3stw.loadbalancer.metrics import LoadBalancerMetrics
from k3stw.loadbalancer.persistence import (
    default_address,
    load_addresses,
    save_addresses,
    state_file,
)
from k3stw.loadbalancer.servers import (
    FAILED_CHECK,
    Server,
    ServerList,
    ServerState,
)
from k3stw.loadbalancer.service import LoadBalancerService
from tests.support.loadbalancer import capture_logs

S = ServerState
URL = "https://127.0.10.1:6443"
DEFAULT = "127.0.10.1:6443"
A = "127.0.10.2:6443"
B = "127.0.10.3:6443"


class HealthCheckTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.servers = ServerList(self.clock, DEFAULT)
        self.servers.set_addresses([A, B])
        self.asked: list[tuple[str, Deferred[bool]]] = []
        self.health = HealthCheckService(self.clock, self.servers, self.check)

    def check(self, address: str) -> Deferred[bool]:
        answer: Deferred[bool] = Deferred()
        self.asked.append((address, answer))
        return answer

    def server(self, address: str) -> Server:
        server = self.servers.get(address)
        assert server is not None
        return server

    def answer(self, address: str, passed: bool) -> None:
        pending = [d for a, d in self.asked if a == address and not d.called]
        pending[-1].callback(passed)

    def test_every_server_checked_each_second_one_check_at_a_time(self) -> None:
        self.health.startService()
        self.assertEqual(sorted(a for a, _ in self.asked), sorted([A, B, DEFAULT]))
        self.clock.advance(1)
        self.assertEqual(len(self.asked), 3)  # all still running
        for address in (A, B, DEFAULT):
            self.answer(address, True)
        self.clock.advance(1)
        self.assertEqual(len(self.asked), 6)
        self.health.stopService()

    def test_answers_drive_the_states(self) -> None:
        self.health.startService()
        self.answer(A, True)
        self.assertIs(self.server(A).state, S.RECOVERING)
        self.clock.advance(1)
        self.answer(A, True)
        self.assertIs(self.server(A).state, S.PREFERRED)
        self.clock.advance(1)
        self.answer(A, False)
        self.assertIs(self.server(A).state, S.FAILED)
        self.assertEqual(self.server(A).reason, FAILED_CHECK)
        self.health.stopService()

    def test_errback_and_timeout_count_as_failed(self) -> None:
        self.servers.record_check(self.server(A), True)
        self.servers.record_check(self.server(A), True)
        self.servers.record_check(self.server(B), True)
        self.servers.record_check(self.server(B), True)
        self.health.startService()
        [d] = [d for a, d in self.asked if a == A]
        d.errback(Failure(ConnectionRefusedError()))
        self.assertIs(self.server(A).state, S.FAILED)
        self.clock.advance(4.9)
        self.assertIs(self.server(B).state, S.PREFERRED)
        self.clock.advance(0.1)
        self.assertIs(self.server(B).state, S.FAILED)
        self.health.stopService()

    def test_failed_servers_are_checked_with_backoff(self) -> None:
        self.servers.record_dial(self.server(A), False)
        self.servers.record_dial(self.server(A), False)  # backoff: 2 s
        self.health.startService()
        self.assertNotIn(A, [a for a, _ in self.asked])
        self.clock.advance(1)
        self.assertNotIn(A, [a for a, _ in self.asked])
        self.clock.advance(1)
        self.assertIn(A, [a for a, _ in self.asked])
        self.health.stopService()

    def test_per_server_check_and_no_check(self) -> None:
        health = HealthCheckService(self.clock, self.servers, None)
        health.set_check(A, lambda address: succeed(True))
        health.set_check(B, lambda address: fail(ValueError("boom")))
        health.startService()
        self.assertIs(self.server(A).state, S.RECOVERING)
        self.assertIs(self.server(B).state, S.UNCHECKED)
        self.assertIs(self.server(DEFAULT).state, S.STANDBY)
        health.clear_check(A)
        health.stopService()
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_a_raising_check_is_a_failed_check(self) -> None:
        def broken(address: str) -> Deferred[bool]:
            raise RuntimeError("probe crashed")

        self.servers.record_check(self.server(A), True)
        self.servers.record_check(self.server(A), True)
        health = HealthCheckService(self.clock, self.servers, broken)
        health.startService()
        self.assertIs(self.server(A).state, S.FAILED)
        health.stopService()

    def test_stop_cancels_running_checks_and_leaves_no_timers(self) -> None:
        self.health.startService()
        self.health.stopService()
        self.assertTrue(all(d.called for _, d in self.asked))
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertIs(self.server(A).state, S.UNCHECKED)


class PersistenceTests(SynchronousTestCase):
    def test_default_address(self) -> None:
        self.assertEqual(default_address("https://127.0.10.1:6443"), "127.0.10.1:6443")
        self.assertEqual(default_address("https://server.example"), "server.example:443")
        self.assertEqual(default_address("http://server.example/"), "server.example:80")
        self.assertEqual(default_address("https://[fd00::1]:6443"), "[fd00::1]:6443")
        self.assertRaises(ValueError, default_address, "https://")

    def test_round_trip_in_k3s_shape(self) -> None:
        path = state_file(Path(self.mktemp()))
        self.assertEqual(path.parts[-3:], ("agent", "etc", "k3s-agent-load-balancer.json"))
        save_addresses(path, URL, [A, B])
        self.assertEqual(
            json.loads(path.read_text()), {"ServerURL": URL, "ServerAddresses": [A, B]}
        )
        self.assertEqual(stat.S_IMODE(path.stat().st_mode), 0o600)
        self.assertEqual(load_addresses(path, URL), [A, B])

    def test_only_for_the_same_default_server(self) -> None:
        path = state_file(Path(self.mktemp()))
        save_addresses(path, URL, [A, B])
        self.assertIsNone(load_addresses(path, "https://127.0.10.9:6443"))

    def test_missing_or_invalid_files_are_ignored(self) -> None:
        path = state_file(Path(self.mktemp()))
        self.assertIsNone(load_addresses(path, URL))
        path.parent.mkdir(parents=True)
        for text in ("not json", "[]", json.dumps({"ServerURL": URL, "ServerAddresses": [1]})):
            path.write_text(text)
            self.assertIsNone(load_addresses(path, URL))


class EchoProtocol(Protocol):
    def dataReceived(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)


class ClientProtocol(Protocol):
    def __init__(self) -> None:
        self.received = b""
        self.lost = False

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.lost = True


class ServiceCase(SynchronousTestCase):
    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.logs = capture_logs(self)
        self.data_dir = Path(self.mktemp())
        self.metrics = LoadBalancerMetrics()
        self.checks: dict[str, bool] = {}

    def make(self, server_url: str = URL) -> LoadBalancerService:
        service = LoadBalancerService(
            self.reactor,
            server_url,
            data_dir=self.data_dir,
            dial=self.dial,
            metrics=self.metrics,
            health_check=lambda address: succeed(self.checks.get(address, True)),
        )
        return service

    def dial(self, address: str) -> IStreamClientEndpoint:
        host, port = split_host_port(address)
        return TCP4ClientEndpoint(self.reactor, host, port)

    def client_connects(self, service: LoadBalancerService) -> tuple[ClientProtocol, iosim.IOPump]:
        [(_, factory, _, _)] = self.reactor.tcpServers
        accepted = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 50000))
        client = ClientProtocol()
        pump = iosim.connect(
            accepted,
            iosim.makeFakeServer(accepted),
            client,
            iosim.makeFakeClient(client),
            clock=self.reactor,
        )
        return client, pump

    def dialed(self) -> str:
        host, port, _, _, _ = self.reactor.tcpClients[-1]
        return f"{host}:{port}"

    def server_accepts(self) -> iosim.IOPump:
        _, _, factory, _, _ = self.reactor.tcpClients[-1]
        upstream = factory.buildProtocol(None)
        echo = EchoProtocol()
        pump: iosim.IOPump = iosim.connect(
            echo,
            iosim.makeFakeServer(echo),
            upstream,
            iosim.makeFakeClient(upstream),
            clock=self.reactor,
        )
        return pump

    def server_refuses(self) -> None:
        _, _, factory, _, _ = self.reactor.tcpClients[-1]
        factory.clientConnectionFailed(
            self.reactor.connectors[-1], Failure(ConnectionRefusedError())
        )


class ServiceTests(ServiceCase):
    def test_listens_on_loopback_6444(self) -> None:
        service = self.make()
        self.assertEqual(service.local_url, "https://127.0.0.1:6444")
        service.startService()
        [(port, _, _, interface)] = self.reactor.tcpServers
        self.assertEqual((port, interface), (6444, "127.0.0.1"))
        self.assertIn(
            f"Running load balancer k3s-agent-load-balancer 127.0.0.1:6444 -> [] "
            f"[default: {DEFAULT}]",
            self.logs,
        )
        listening = self.successResultOf(service.when_listening())
        self.assertEqual(cast(IPv4Address, listening.getHost()).port, 6444)
        service.stopService()

    def test_ipv6_loopback(self) -> None:
        service = LoadBalancerService(self.reactor, "https://[fd00::1]:6443", bind_host="::1")
        self.assertEqual(service.local_url, "https://[::1]:6444")
        self.assertEqual(service.servers.default, "[fd00::1]:6443")

    def test_echo_through_the_balancer(self) -> None:
        service = self.make()
        service.startService()
        client, down = self.client_connects(service)
        self.assertEqual(self.dialed(), DEFAULT)
        up = self.server_accepts()
        assert client.transport is not None
        client.transport.write(b"ping")
        for _ in range(3):
            down.flush()
            up.flush()
        self.assertEqual(client.received, b"ping")
        [status] = service.status()
        self.assertEqual((status["address"], status["connections"]), (DEFAULT, 1))
        service.stopService()
        for _ in range(3):
            down.flush()
            up.flush()
        self.assertTrue(client.lost)
        self.assertEqual(service.status()[0]["connections"], 0)

    def test_new_connections_go_to_a_live_server_when_one_dies(self) -> None:
        service = self.make()
        service.startService()
        service.update_servers([A, B])
        self.reactor.advance(1)
        self.reactor.advance(1)  # A, B: PREFERRED
        client, down = self.client_connects(service)
        first = self.dialed()
        self.server_accepts()
        self.assertEqual(service.servers.get(first).state, S.ACTIVE)  # type: ignore[union-attr]
        # The active server dies: its check fails, its connections close.
        self.checks[first] = False
        self.reactor.advance(1)
        self.assertEqual(service.servers.get(first).state, S.FAILED)  # type: ignore[union-attr]
        down.flush()
        self.assertTrue(client.lost)
        other = B if first == A else A
        self.client_connects(service)
        self.assertEqual(self.dialed(), other)
        self.server_accepts()
        self.assertEqual(service.servers.get(other).state, S.ACTIVE)  # type: ignore[union-attr]
        # And a refused dial moves on at once, here to the default server.
        self.checks[first] = True
        self.client_connects(service)
        self.assertEqual(self.dialed(), other)
        self.server_refuses()
        self.assertEqual(self.dialed(), DEFAULT)
        service.stopService()

    def test_status_lists_reasons(self) -> None:
        service = self.make()
        service.startService()
        service.update_servers([A])
        self.reactor.advance(1)
        self.reactor.advance(1)
        status = {s["address"]: s for s in service.status()}
        self.assertEqual(status[A]["state"], "PREFERRED")
        self.assertEqual(status[A]["reason"], "successful health check")
        self.assertEqual(status[DEFAULT]["state"], "STANDBY")
        service.stopService()

    def test_stop_leaves_nothing_behind(self) -> None:
        service = self.make()
        service.startService()
        self.client_connects(service)
        self.successResultOf(service.stopService())
        self.assertEqual(self.reactor.getDelayedCalls(), [])
        self.assertFalse(service.factory.pending)


class ServicePersistenceTests(ServiceCase):
    def test_saved_on_change_and_restored_on_restart(self) -> None:
        service = self.make()
        service.startService()
        self.assertTrue(service.update_servers([A, B]))
        self.assertFalse(service.update_servers([B, A]))
        service.stopService()
        path = state_file(self.data_dir)
        self.assertEqual(load_addresses(path, URL), [A, B])
        again = self.make()
        again.startService()
        self.assertEqual(again.servers.addresses, [A, B])
        again.stopService()

    def test_another_default_server_rewrites_the_file(self) -> None:
        path = state_file(self.data_dir)
        save_addresses(path, "https://127.0.10.9:6443", [A, B])
        service = self.make()
        service.startService()
        self.assertEqual(service.servers.addresses, [])
        self.assertEqual(load_addresses(path, URL), [])
        service.stopService()


class MetricsTests(ServiceCase):
    def test_k3s_metric_names(self) -> None:
        service = self.make()
        service.startService()
        self.client_connects(service)
        self.reactor.advance(0.5)
        self.server_accepts()
        text = generate_latest(self.metrics.registry).decode()
        labels = f'name="k3s-agent-load-balancer",server="{DEFAULT}"'
        self.assertIn(f"k3s_loadbalancer_server_connections{{{labels}}} 1.0", text)
        self.assertIn(f"k3s_loadbalancer_server_health{{{labels}}} 2.0", text)
        self.assertIn(
            'k3s_loadbalancer_dial_duration_seconds_count{name="k3s-agent-load-balancer",'
            'status="success"} 1.0',
            text,
        )
        self.assertIn(
            'k3s_loadbalancer_dial_duration_seconds_sum{name="k3s-agent-load-balancer",'
            'status="success"} 0.5',
            text,
        )
        service.stopService()
        self.assertNotIn(
            "k3s_loadbalancer_server_connections{", generate_latest(self.metrics.registry).decode()
        )

    def test_one_metrics_object_for_two_balancers(self) -> None:
        first = self.make()
        second = LoadBalancerService(
            self.reactor,
            URL,
            name="k3s-api-server-agent-load-balancer",
            port=6443,
            metrics=self.metrics,
        )
        first.startService()
        second.startService()
        text = generate_latest(self.metrics.registry).decode()
        self.assertIn('name="k3s-agent-load-balancer"', text)
        self.assertIn('name="k3s-api-server-agent-load-balancer"', text)
        first.stopService()
        second.stopService()


class DefaultServerTests(ServiceCase):
    def test_default_only_when_all_else_failed_and_abandoned_on_recovery(self) -> None:
        service = self.make()
        self.checks.update({A: False, B: False})
        service.startService()
        service.update_servers([A, B])
        client, down = self.client_connects(service)
        self.server_refuses()
        self.server_refuses()
        self.assertEqual(self.dialed(), DEFAULT)
        self.server_accepts()
        self.assertEqual(service.servers.get(DEFAULT).connections.__len__(), 1)  # type: ignore[union-attr]
        # A comes back: once it passes its checks, the fallback connection is closed...
        self.checks[A] = True
        self.reactor.advance(1)  # FAILED (backoff over) -> RECOVERING
        self.reactor.advance(1)  # RECOVERING -> PREFERRED
        self.assertEqual(service.servers.get(A).state, S.PREFERRED)  # type: ignore[union-attr]
        down.flush()
        self.assertTrue(client.lost)
        # ...and the client's next connection goes to A.
        self.client_connects(service)
        self.assertEqual(self.dialed(), A)
        service.stopService()

    def test_saved_servers_are_used_after_a_restart_while_the_default_is_down(self) -> None:
        save_addresses(state_file(self.data_dir), URL, [A, B])
        service = self.make()
        service.startService()
        self.client_connects(service)
        self.assertIn(self.dialed(), (A, B))
        self.server_accepts()
        service.stopService()
