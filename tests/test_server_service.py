"""
A whole server's service tree, built by the same C{build_server} twistd uses,
on a MemoryReactorClock and the in-memory datastore: it becomes ready, runs
its control loops, and stops with nothing left behind.
"""

from __future__ import annotations

import datetime
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

from twisted.internet.defer import Deferred
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from k3stw.apiserver.kinds import namespaces, secrets
from k3stw.datastore.memory import MemoryDatastore
from k3stw.server.config import ServerConfig
from k3stw.server.service import ServerService, build_server, prepare_server
from tests.support.apiserver import START

T = TypeVar("T")
NOW = datetime.datetime.fromtimestamp(START, datetime.UTC)


def server_config(root: Path) -> ServerConfig:
    return ServerConfig(
        data_dir=root / "data",
        hostname="box",
        bind_address="127.0.0.1",
        https_port=6443,
        node_ips=("127.0.0.1",),
        advertise_address=None,
        tls_sans=(),
        token=None,
        agent_token=None,
        kubeconfig=root / "k3s.yaml",
        kubeconfig_mode=0o600,
        service_cidr="10.43.0.0/16",
        cluster_domain="cluster.local",
    )


class ServerServiceTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.reactor.advance(START)
        config = server_config(Path(self.mktemp()))
        self.datastore = MemoryDatastore(self.reactor)
        self.server: ServerService = build_server(
            config, prepare_server(config, NOW), self.reactor, self.datastore
        )

    def done(self, work: Coroutine[Any, Any, T]) -> T:
        result: T = self.successResultOf(Deferred.fromCoroutine(work))
        return result

    def test_starts_ready_with_its_control_plane_and_listener(self) -> None:
        self.server.startService()
        self.assertTrue(self.server.readiness.ready)
        store = self.server.store
        for name in ("default", "kube-system", "kube-public", "kube-node-lease"):
            self.done(store.get(namespaces.RESOURCE, None, name))
        self.assertTrue(self.server.control_plane.running)
        [(port, _, _, _, interface)] = self.reactor.sslServers
        self.assertEqual((port, interface), (6443, "127.0.0.1"))
        self.addCleanup(self.server.stopService)

    def test_the_control_loops_act(self) -> None:
        """An orphaned node-password secret goes after ten minutes, as on a real server."""
        self.server.startService()
        self.addCleanup(self.server.stopService)
        store = self.server.store
        secret = {
            "metadata": {"name": "gone.node-password.k3s"},
            "type": "k3s.cattle.io/node-password",
            "data": {"hash": "eA=="},
        }
        self.done(store.create(secrets.RESOURCE, "kube-system", secret))
        self.reactor.advance(601)
        listed = self.done(store.list(secrets.RESOURCE, "kube-system"))
        self.assertEqual(listed.items, [])

    def test_stops_with_nothing_left_behind(self) -> None:
        self.server.startService()
        self.reactor.advance(30)
        stopped = self.server.stopService()
        assert stopped is not None
        self.successResultOf(stopped)
        self.assertEqual(self.reactor.getDelayedCalls(), [])
