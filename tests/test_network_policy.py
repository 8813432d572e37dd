"""
The node's network policy controller, on fake time, a fake API and fake
processes: a full sync (save, ipsets, one restore, stale sets destroyed) once
the informers have listed, again after a change that matters and every 5
minutes, one at a time with requests collapsing, retried after a failure.
"""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from k3stw.agent.identity import NodeIdentity
from k3stw.agent.join import Joined
from k3stw.network.iptables import IPTables
from k3stw.network.node import NetworkSettings, NodeNetworking
from k3stw.network.policy import RETRY_DELAY, SYNC_PERIOD, NetworkPolicyController
from k3stw.network.policyrules import PolicySettings
from k3stw.pki.certs import Usage, new_ca, new_leaf
from tests.support.fakes import FakeKubeClient
from tests.support.processes import FakeProcess, FakeProcessReactor

POD = "/api/v1/namespaces/default/pods/web"
POLICY = "/apis/networking.k8s.io/v1/namespaces/default/networkpolicies/deny"
SAVED = b"*filter\n:INPUT ACCEPT [0:0]\n:KUBE-POD-FW-OLDOLDOLDOLDOLDO - [0:0]\nCOMMIT\n"


def web(labels: dict[str, str], **annotations: str) -> dict[str, object]:
    return {
        "metadata": {"name": "web", "namespace": "default", "labels": labels,
                     "annotations": annotations},
        "spec": {"containers": [{"name": "c", "image": "busybox"}]},
        "status": {"phase": "Running", "podIP": "10.42.0.5", "hostIP": "10.199.0.2"},
    }  # fmt: skip


class NetworkPolicyControllerTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.reactor = FakeProcessReactor()
        self.client = FakeKubeClient(self.reactor)
        self.client.put_object("/api/v1/namespaces/default", {"metadata": {"name": "default"}})
        self.client.put_object(POD, web({"app": "web"}))
        # ``env`` runs the commands: found on every PATH, and nothing real runs.
        iptables = IPTables(self.reactor, prefix=("env",))
        self.controller = NetworkPolicyController(
            self.reactor, self.client, PolicySettings(frozenset({"10.199.0.2"})), iptables
        )
        self.controller.startService()

    def tearDown(self) -> None:
        stopped = self.controller.stopService()
        self.successResultOf(stopped)
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def commands(self) -> list[tuple[str, ...]]:
        return [process.args[1:] for process in self.reactor.processes]

    def finish(self, stdout: bytes = b"", code: int = 0) -> FakeProcess:
        process = self.reactor.last
        if stdout:
            process.output(stdout)
        process.exit(code)
        return process

    def complete_sync(self, sets: bytes = b"KUBE-DST-OLD\nKUBE-SRC-OLD\nmine\n") -> None:
        """Answer the four commands of a sync: save, ipset restore, restore, ipset list, destroy."""
        start = len(self.reactor.processes) - 1
        self.finish(SAVED)
        self.finish()
        restore = self.finish()
        self.finish(sets)
        destroy = self.finish()
        self.assertEqual(
            self.commands()[start : start + 5],
            [
                ("iptables-save", "-t", "filter"),
                ("ipset", "restore", "-exist"),
                ("iptables-restore", "-w", "5", "--noflush"),
                ("ipset", "list", "-n"),
                ("ipset", "restore"),
            ],
        )
        text = restore.stdin.decode()
        self.assertIn("-X KUBE-POD-FW-OLDOLDOLDOLDOLDO\n", text)
        self.assertEqual(destroy.stdin, b"destroy KUBE-DST-OLD\ndestroy KUBE-SRC-OLD\n")

    def test_a_sync_once_listed_then_on_changes_and_every_period(self) -> None:
        self.complete_sync()
        self.assertEqual(self.controller.syncs, 1)
        self.assertIn("KUBE-POD-FW-", self.reactor.processes[2].stdin.decode())

        # A change that cannot alter the rules (an annotation) does not sync.
        self.client.put_object(POD, web({"app": "web"}, note="x"))
        self.assertEqual(len(self.reactor.processes), 5)
        # A policy does.
        policy = {"metadata": {"name": "deny", "namespace": "default"},
                  "spec": {"podSelector": {}, "policyTypes": ["Ingress"]}}  # fmt: skip
        self.client.put_object(POLICY, policy)
        self.complete_sync()
        self.assertIn("KUBE-NWPLCY-", self.reactor.processes[7].stdin.decode())

        self.reactor.advance(SYNC_PERIOD)
        self.complete_sync()
        self.assertEqual(self.controller.syncs, 3)

    def test_requests_during_a_sync_collapse_into_one_more(self) -> None:
        self.assertEqual(self.commands(), [("iptables-save", "-t", "filter")])
        self.client.put_object(POD, web({"app": "db"}))
        self.client.put_object(POD, web({"app": "cache"}))
        self.client.remove_object(POD)
        self.complete_sync()
        self.complete_sync()
        self.assertEqual(self.controller.syncs, 2)
        self.assertEqual(len(self.reactor.processes), 10)

    def test_a_failed_sync_is_tried_again(self) -> None:
        self.finish(b"iptables-save: nope\n", code=1)
        self.assertEqual(len(self.reactor.processes), 1)
        self.assertEqual(len(self.flushLoggedErrors()), 1)
        self.reactor.advance(RETRY_DELAY)
        self.complete_sync()
        self.assertEqual(self.controller.syncs, 1)

    def test_stopping_waits_for_the_sync_under_way(self) -> None:
        stopped = self.controller.stopService()
        self.assertNoResult(stopped)
        self.complete_sync()
        self.successResultOf(stopped)
        # Nothing more after the stop, whatever changes.
        self.client.put_object(POD, web({"app": "db"}))
        self.reactor.advance(SYNC_PERIOD)
        self.assertEqual(len(self.reactor.processes), 5)


class NodeNetworkingTests(SynchronousTestCase):
    def networking(self, **settings: Any) -> NodeNetworking:
        now = datetime.datetime.now(datetime.UTC)
        ca = new_ca("k3s-client-ca", now)
        pairs = {
            name: new_leaf(ca, name, Usage.CLIENT, now)
            for name in ("system:node:n1", "system:kube-proxy", "system:k3s-controller")
        }
        joined = Joined(
            NodeIdentity("n1", "secret", Path("/nonexistent")),
            ca.certificate_pem,
            ca.certificate_pem,
            pairs["system:node:n1"],
            pairs["system:node:n1"],
            {},
            pairs["system:kube-proxy"],
            pairs["system:k3s-controller"],
        )
        values = NetworkSettings("n1", ("10.199.0.2",), **settings)
        return NodeNetworking(FakeProcessReactor(), values, joined, "https://127.0.0.1:6443")

    def test_the_controller_runs_unless_disabled(self) -> None:
        (controller,) = [
            child
            for child in self.networking(node_port_range="31000-31999")
            if isinstance(child, NetworkPolicyController)
        ]
        self.assertEqual(
            controller.settings,
            PolicySettings(frozenset({"10.199.0.2"}), ("10.43.0.0/16",), "31000:31999"),
        )
        self.assertFalse(
            any(
                isinstance(child, NetworkPolicyController)
                for child in self.networking(network_policy=False)
            )
        )

    def test_the_ingress_controller_runs_unless_traefik_is_disabled(self) -> None:
        from k3stw.network.ingress import IngressController

        def ingress_controllers(networking: NodeNetworking) -> list[object]:
            return [child for child in networking if isinstance(child, IngressController)]

        self.assertEqual(len(ingress_controllers(self.networking())), 1)
        self.assertEqual(ingress_controllers(self.networking(disabled=frozenset({"traefik"}))), [])
