"""
The node lifecycle controller over a real ObjectStore and SQLite datastore:
silent nodes turn Unknown and unreachable, and come back when they report.
"""

from __future__ import annotations

import shutil
import tempfile
from typing import Any

from twisted.internet import reactor
from twisted.internet.task import Clock, deferLater
from twisted.trial.unittest import TestCase

from k3stw.apiserver.bootstrap import bootstrap
from k3stw.apiserver.registry import Registry, ResourceType
from k3stw.apiserver.storage import ObjectStore
from k3stw.controllers.nodelifecycle import NodeLifecycleController
from k3stw.datastore.sqlite import SQLiteDatastore, default_path
from k3stw.kubelet.node import (
    LEASE_NAMESPACE,
    build_lease,
    build_node,
    find_condition,
    micro_time,
    node_status,
    renew_lease,
    rfc3339,
)
from tests.test_kubelet_node import FACTS, as_model, config

START = 1_800_000_000.0
UNREACHABLE_TAINTS = [
    ("node.kubernetes.io/unreachable", "NoSchedule"),
    ("node.kubernetes.io/unreachable", "NoExecute"),
]


def taints_of(node: dict[str, Any]) -> list[tuple[str, str]]:
    return [(t["key"], t["effect"]) for t in node.get("spec", {}).get("taints") or []]


class NodeLifecycleTests(TestCase):
    timeout = 60

    async def setUp(self) -> None:  # type: ignore[override]
        directory = tempfile.mkdtemp(prefix="k3stw-nodelifecycle-")
        self.addCleanup(shutil.rmtree, directory, True)
        self.datastore = SQLiteDatastore(reactor, default_path(directory))
        self.datastore.startService()
        self.addCleanup(self.datastore.stopService)
        await self.datastore.when_ready()
        registry = Registry.with_built_ins()
        self.store = ObjectStore(self.datastore, reactor)
        await bootstrap(self.store, registry)
        nodes = registry.lookup("", "v1", "nodes")
        leases = registry.lookup("coordination.k8s.io", "v1", "leases")
        assert nodes is not None and leases is not None
        self.nodes: ResourceType = nodes
        self.leases: ResourceType = leases
        self.clock = Clock()
        self.clock.advance(START)
        self.controller = NodeLifecycleController(
            self.store, self.nodes, self.leases, self.clock, grace_period=40.0
        )

    # What a kubelet does

    async def register(self, name: str, lease: bool = True) -> None:
        settings = config(node_name=name, taints=())
        now = self.clock.seconds()
        node = await self.store.create(self.nodes, None, build_node(settings, FACTS, rfc3339(now)))
        if lease:
            uid = node["metadata"]["uid"]
            await self.store.create(
                self.leases, LEASE_NAMESPACE, build_lease(name, uid, micro_time(now), 40)
            )

    async def renew(self, name: str) -> None:
        now = micro_time(self.clock.seconds())
        lease = await self.store.get(self.leases, LEASE_NAMESPACE, name)
        node = await self.store.get(self.nodes, None, name)
        renewed = renew_lease(lease, name, node["metadata"]["uid"], now, 40)
        await self.store.update(self.leases, LEASE_NAMESPACE, name, renewed)

    async def post_status(self, name: str) -> None:
        now = rfc3339(self.clock.seconds())
        node = await self.store.get(self.nodes, None, name)
        node["status"] = node_status(config(node_name=name), FACTS, node["status"], now)
        await self.store.update(self.nodes, None, name, node, subresource="status")

    async def node(self, name: str) -> dict[str, Any]:
        return await self.store.get(self.nodes, None, name)

    async def pass_at(self, seconds: float) -> None:
        """Let the controller's clock reach START + C{seconds}, then run one pass."""
        self.clock.advance(START + seconds - self.clock.seconds())
        await self.controller.monitor()

    # Tests

    async def test_a_reporting_node_stays_ready(self) -> None:
        await self.register("n1")
        await self.pass_at(0)
        for t in (10, 20, 30, 40, 50, 60):
            self.clock.advance(10)
            await self.renew("n1")
            await self.pass_at(t)
        node = await self.node("n1")
        ready = find_condition(node, "Ready")
        assert ready is not None
        self.assertEqual(ready["status"], "True")
        self.assertEqual(taints_of(node), [])

    async def test_a_silent_node_turns_unknown_and_unreachable(self) -> None:
        await self.register("n1")
        await self.pass_at(0)
        await self.pass_at(40)
        ready = find_condition(await self.node("n1"), "Ready")
        assert ready is not None
        self.assertEqual(ready["status"], "True")
        await self.pass_at(41)
        node = await self.node("n1")
        for condition in node["status"]["conditions"]:
            self.assertEqual(condition["status"], "Unknown")
            self.assertEqual(condition["reason"], "NodeStatusUnknown")
            self.assertEqual(condition["message"], "Kubelet stopped posting node status.")
            self.assertEqual(condition["lastTransitionTime"], rfc3339(START + 41))
            self.assertEqual(condition["lastHeartbeatTime"], rfc3339(START))
        self.assertEqual(taints_of(node), UNREACHABLE_TAINTS)
        model = as_model(node, "V1Node")
        self.assertIsNotNone(model.spec.taints[1].time_added)
        version = node["metadata"]["resourceVersion"]
        await self.pass_at(50)
        self.assertEqual((await self.node("n1"))["metadata"]["resourceVersion"], version)

    async def test_ready_again_when_the_kubelet_returns(self) -> None:
        await self.register("n1")
        await self.pass_at(0)
        await self.pass_at(60)
        self.assertEqual(taints_of(await self.node("n1")), UNREACHABLE_TAINTS)
        await self.renew("n1")
        await self.pass_at(61)
        self.assertEqual(taints_of(await self.node("n1")), UNREACHABLE_TAINTS)
        await self.post_status("n1")
        await self.pass_at(62)
        node = await self.node("n1")
        ready = find_condition(node, "Ready")
        assert ready is not None
        self.assertEqual(ready["status"], "True")
        self.assertEqual(ready["lastTransitionTime"], rfc3339(START + 61))
        self.assertEqual(taints_of(node), [])

    async def test_other_taints_are_kept(self) -> None:
        await self.register("n1")
        node = await self.node("n1")
        node["spec"]["taints"] = [{"key": "dedicated", "value": "db", "effect": "NoSchedule"}]
        await self.store.update(self.nodes, None, "n1", node)
        await self.pass_at(0)
        await self.pass_at(45)
        self.assertEqual(
            taints_of(await self.node("n1")), [("dedicated", "NoSchedule"), *UNREACHABLE_TAINTS]
        )
        await self.renew("n1")
        await self.post_status("n1")
        await self.pass_at(46)
        self.assertEqual(taints_of(await self.node("n1")), [("dedicated", "NoSchedule")])

    async def test_lease_renewals_alone_keep_a_node_ready(self) -> None:
        await self.register("n1")
        await self.pass_at(0)
        self.clock.advance(30)
        await self.renew("n1")
        await self.pass_at(30)
        await self.pass_at(60)
        ready = find_condition(await self.node("n1"), "Ready")
        assert ready is not None
        self.assertEqual(ready["status"], "True")
        await self.pass_at(71)
        ready = find_condition(await self.node("n1"), "Ready")
        assert ready is not None
        self.assertEqual(ready["status"], "Unknown")

    async def test_without_a_lease_the_ready_heartbeat_counts(self) -> None:
        await self.register("n1", lease=False)
        await self.pass_at(0)
        self.clock.advance(30)
        await self.post_status("n1")
        await self.pass_at(30)
        await self.pass_at(60)
        self.assertEqual(taints_of(await self.node("n1")), [])
        await self.pass_at(71)
        self.assertEqual(taints_of(await self.node("n1")), UNREACHABLE_TAINTS)

    async def test_only_the_silent_node_is_marked(self) -> None:
        await self.register("n1")
        await self.register("n2")
        await self.pass_at(0)
        for t in (10, 20, 30, 40, 50):
            self.clock.advance(10)
            await self.renew("n2")
            await self.pass_at(t)
        self.assertEqual(taints_of(await self.node("n1")), UNREACHABLE_TAINTS)
        self.assertEqual(taints_of(await self.node("n2")), [])

    async def test_the_service_runs_passes_on_its_clock(self) -> None:
        await self.register("n1")
        self.controller.startService()
        await self.until(lambda: bool(self.clock.getDelayedCalls()))
        for _ in range(9):
            await self.step(5)
        node = await self.node("n1")
        self.assertEqual(taints_of(node), UNREACHABLE_TAINTS)
        self.controller.stopService()
        self.assertEqual(self.clock.getDelayedCalls(), [])

    async def step(self, seconds: float) -> None:
        """Advance the controller's clock and wait for the pass that fires to finish."""
        self.clock.advance(seconds)
        await self.until(lambda: bool(self.clock.getDelayedCalls()))

    async def until(self, condition: Any) -> None:
        while not condition():
            await deferLater(reactor, 0.001)
