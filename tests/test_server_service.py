"""
A whole server's service tree, built by the same C{build_server} twistd uses,
on a MemoryReactorClock and the in-memory datastore: it becomes ready, runs
its control loops, and stops with nothing left behind.
"""

from __future__ import annotations

import datetime
from collections.abc import Coroutine
from dataclasses import replace
from ipaddress import ip_address
from pathlib import Path
from typing import Any, TypeVar

from twisted.application.service import MultiService
from twisted.internet.defer import Deferred
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import LogLevel, capturedLogs, formatEvent
from twisted.trial.unittest import SynchronousTestCase

from k3stw.apiserver.kinds import configmaps, endpoints, namespaces, secrets, services
from k3stw.controllers.endpoints import LEASE_PREFIX
from k3stw.datastore.memory import MemoryDatastore
from k3stw.machinery.controller import Controller
from k3stw.server.config import ServerConfig
from k3stw.server.service import ServerService, build_server, prepare_server, server_health
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


def _controllers(service: object) -> list[Controller]:
    """Every controller in a service tree."""
    found = [service] if isinstance(service, Controller) else []
    for child in service if isinstance(service, MultiService) else ():
        found.extend(_controllers(child))
    return found


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

    def test_deploys_local_storage_unless_disabled(self) -> None:
        """k3s's local-path class and config (under <data-dir>/storage), not with --disable."""
        self.server.startService()
        self.addCleanup(self.server.stopService)
        store, registry = self.server.store, self.server.registry
        classes = registry.require("storage.k8s.io", "v1", "storageclasses")
        self.assertEqual(
            self.done(store.get(classes, None, "local-path"))["provisioner"],
            "rancher.io/local-path",
        )
        config = self.done(store.get(configmaps.RESOURCE, "kube-system", "local-path-config"))
        storage = str(self.server.config.data_dir / "storage")
        self.assertIn(f'"paths":["{storage}"]', config["data"]["config.json"])
        disabled = replace(server_config(Path(self.mktemp())), disable=frozenset({"local-storage"}))
        other = build_server(
            disabled, prepare_server(disabled, NOW), self.reactor, MemoryDatastore(self.reactor)
        )
        other.startService()
        self.addCleanup(other.stopService)
        self.assertEqual(self.done(other.store.list(classes, None)).items, [])
        labels = [controller.label for controller in _controllers(other.control_plane)]
        self.assertNotIn("local-path provisioner", labels)
        self.assertIn("persistentvolume-binder", labels)

    def test_runs_servicelb_unless_disabled(self) -> None:
        """``--disable=servicelb``: no controller serves LoadBalancer Services."""
        labels = [controller.label for controller in _controllers(self.server.control_plane)]
        self.assertIn("servicelb controller", labels)
        disabled = replace(server_config(Path(self.mktemp())), disable=frozenset({"servicelb"}))
        other = build_server(
            disabled, prepare_server(disabled, NOW), self.reactor, MemoryDatastore(self.reactor)
        )
        labels = [controller.label for controller in _controllers(other.control_plane)]
        self.assertNotIn("servicelb controller", labels)
        self.assertIn("endpoint controller", labels)

    def test_deploys_cluster_dns_unless_disabled(self) -> None:
        """kube-dns at --cluster-dns, the coredns ConfigMap, its controller; none if disabled."""
        self.server.startService()
        self.addCleanup(self.server.stopService)
        store = self.server.store
        service = self.done(store.get(services.RESOURCE, "kube-system", "kube-dns"))
        self.assertEqual(service["spec"]["clusterIP"], "10.43.0.10")
        self.done(store.get(configmaps.RESOURCE, "kube-system", "coredns"))
        labels = [controller.label for controller in _controllers(self.server.control_plane)]
        self.assertIn("cluster DNS controller", labels)
        disabled = replace(server_config(Path(self.mktemp())), disable=frozenset({"coredns"}))
        other = build_server(
            disabled, prepare_server(disabled, NOW), self.reactor, MemoryDatastore(self.reactor)
        )
        other.startService()
        self.addCleanup(other.stopService)
        self.assertEqual(self.done(other.store.list(services.RESOURCE, "kube-system")).items, [])
        labels = [controller.label for controller in _controllers(other.control_plane)]
        self.assertNotIn("cluster DNS controller", labels)

    def test_stops_with_nothing_left_behind(self) -> None:
        self.server.startService()
        self.reactor.advance(30)
        stopped = self.server.stopService()
        assert stopped is not None
        self.successResultOf(stopped)
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_stopping_leaves_the_endpoints_before_the_datastore_closes(self) -> None:
        """The control plane's last writes (this server's lease) land; nothing is logged as
        an error on the way down."""
        self.server.startService()
        store = self.server.store
        kubernetes = self.done(store.get(endpoints.RESOURCE, "default", "kubernetes"))
        self.assertEqual(kubernetes["subsets"][0]["addresses"], [{"ip": "127.0.0.1"}])
        with capturedLogs() as events:
            stopped = self.server.stopService()
            self.successResultOf(stopped)
        errors = [formatEvent(e) for e in events if e["log_level"] >= LogLevel.error]
        self.assertEqual(errors, [])
        self.assertFalse(self.datastore.running)
        self.assertIsNone(self.datastore.memory.current(LEASE_PREFIX + "127.0.0.1"))

    def test_health_checks_follow_the_datastore_and_the_stop(self) -> None:
        self.server.startService()
        checks = {c.name: c.check for c in server_health(self.server, self.datastore).checks}
        self.assertEqual(
            {name: self.done(check()) for name, check in checks.items()}, dict.fromkeys(checks)
        )
        self.successResultOf(self.server.stopService())
        self.assertIn("shutting down", str(self.done(checks["shutdown"]())))
        self.assertIn("did not answer", str(self.done(checks["etcd"]())))


class AdvertisedAddressTests(SynchronousTestCase):
    def config(self, **changes: Any) -> ServerConfig:
        return replace(server_config(Path(self.mktemp())), **changes)

    def test_k3s_rules(self) -> None:
        """--advertise-address, else the first --node-external-ip, else the first node IP."""
        config = self.config(node_ips=("192.0.2.5", "192.0.2.6"), bind_address="0.0.0.0")
        self.assertEqual(config.advertised, ("192.0.2.5", 6443))
        config = replace(config, node_external_ips=("203.0.113.9",))
        self.assertEqual(config.advertised, ("203.0.113.9", 6443))
        self.assertIn(ip_address("203.0.113.9"), config.serving_alt_names().ip_addresses)
        config = replace(config, advertise_address="192.0.2.8", advertise_port=7443)
        self.assertEqual(config.advertised, ("192.0.2.8", 7443))

    def test_a_server_warns_at_start_when_it_advertises_where_it_does_not_listen(self) -> None:
        config = self.config(bind_address="127.0.0.1", node_ips=("192.0.2.7",))
        reactor = MemoryReactorClock()
        reactor.advance(START)
        server = build_server(
            config, prepare_server(config, NOW), reactor, MemoryDatastore(reactor)
        )
        with capturedLogs() as events:
            server.startService()
        self.addCleanup(server.stopService)
        warnings = [formatEvent(e) for e in events if e["log_level"] is LogLevel.warn]
        self.assertEqual(len(warnings), 1, warnings)
        for fragment in ("192.0.2.7:6443", "127.0.0.1:6443", "--advertise-address"):
            self.assertIn(fragment, warnings[0])

    def test_no_warning_when_it_listens_where_it_advertises(self) -> None:
        for bind, node_ip in (("127.0.0.1", "127.0.0.1"), ("0.0.0.0", "192.0.2.7")):
            config = self.config(bind_address=bind, node_ips=(node_ip,))
            self.assertIsNone(config.advertise_warning())
