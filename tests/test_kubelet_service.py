"""KubeletService against an in-memory API: registration, Lease renewals, status posts, failures."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any, cast

from twisted.internet.task import Clock
from twisted.logger import ILogObserver, LogEvent, LogLevel, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from k3stw.kubeclient import KubeClient
from k3stw.kubelet.config import KubeletConfig, parse_node_taints
from k3stw.kubelet.containerd import NodeRuntime, RuntimeSettings
from k3stw.kubelet.cri.memory import PAUSE_IMAGE, MemoryRuntime
from k3stw.kubelet.node import LEASES_PATH, NODES_PATH
from k3stw.kubelet.service import KubeletService
from k3stw.machinery.objects import find_condition
from k3stw.machinery.times import micro_time, parse_time, rfc3339
from tests.support.fakes import FakeKubeClient
from tests.test_kubelet_node import FACTS, as_model

NODE = f"{NODES_PATH}/node-1"
STATUS = f"{NODE}/status"
LEASE = f"{LEASES_PATH}/node-1"
START = 1_800_000_000.0


class FakeClientTests(SynchronousTestCase):
    def test_fake_has_the_client_interface(self) -> None:
        for name in (
            "call",
            "watch",
            "get",
            "fetch_raw",
            "create",
            "replace",
            "merge_patch",
            "delete",
        ):
            self.assertEqual(
                inspect.signature(getattr(FakeKubeClient, name)),
                inspect.signature(getattr(KubeClient, name)),
                name,
            )


class KubeletServiceTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(START)
        self.client = FakeKubeClient(self.clock)
        self.logged: list[LogEvent] = []
        observer = cast(ILogObserver, self.logged.append)
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)

    def kubelet(self, runtime: NodeRuntime | None = None, **settings: Any) -> KubeletService:
        values: dict[str, Any] = {
            "node_name": "node-1",
            "node_ips": ("127.0.0.11",),
            "data_dir": "/nonexistent",
            "retry_jitter": 0.0,
        }
        values.update(settings)
        # The fake has the client's methods (FakeClientTests); the service names the class.
        client = self.client
        service = KubeletService(
            self.clock, client, KubeletConfig(**values), host_facts=lambda: FACTS, runtime=runtime
        )
        self.addCleanup(self.stop, service)
        return service

    def stop(self, service: KubeletService) -> None:
        if service.running:
            service.stopService()
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def advance(self, seconds: float) -> None:
        """Let C{seconds} pass in half-second steps, so that chained timers fire as they would."""
        self.clock.pump([0.5] * round(seconds * 2))

    def node(self) -> dict[str, Any]:
        return self.client.objects[NODE]

    def ready(self) -> dict[str, Any]:
        ready = find_condition(self.node(), "Ready")
        assert ready is not None
        return ready

    def errors(self) -> list[LogEvent]:
        return [e for e in self.logged if e["log_level"] in (LogLevel.error, LogLevel.critical)]

    # Registration

    def test_registers_a_complete_node_on_start(self) -> None:
        taints = parse_node_taints(["dedicated=db:NoSchedule"])
        self.kubelet(is_server=True, labels={"team": "blue"}, taints=taints).startService()
        node = self.node()
        self.assertEqual(self.client.requests[0], ("POST", NODES_PATH))
        model = as_model(node, "V1Node")
        self.assertEqual(model.metadata.labels["team"], "blue")
        self.assertEqual(model.metadata.labels["node-role.kubernetes.io/control-plane"], "true")
        self.assertEqual(model.spec.taints[0].key, "dedicated")
        self.assertEqual(self.ready()["status"], "True")
        self.assertEqual(self.ready()["lastHeartbeatTime"], rfc3339(START))

    def test_registers_once_its_runtime_answers_with_its_version(self) -> None:
        memory = MemoryRuntime(self.clock, version="1.6.20~ds1")
        memory.available = False
        runtime = NodeRuntime(
            self.clock,
            Path("/nonexistent"),
            RuntimeSettings(endpoint="unix:///run/cri.sock"),
            connect=lambda endpoint: memory,
        )
        kubelet = self.kubelet(runtime=runtime)
        kubelet.startService()
        self.advance(2)
        self.assertNotIn(NODE, self.client.objects)
        memory.available = True
        self.advance(1)
        info = self.node()["status"]["nodeInfo"]
        self.assertEqual(info["containerRuntimeVersion"], "containerd://1.6.20~ds1")
        self.assertIs(kubelet.runtime, memory)

    def test_with_a_runtime_it_runs_the_pods_bound_to_its_node(self) -> None:
        memory = MemoryRuntime(self.clock, images=(PAUSE_IMAGE, "docker.io/library/busybox:1.36"))
        runtime = NodeRuntime(
            self.clock,
            Path("/nonexistent"),
            RuntimeSettings(endpoint="unix:///run/cri.sock"),
            connect=lambda endpoint: memory,
        )
        kubelet = self.kubelet(runtime=runtime, cluster_dns=("10.43.0.99",))
        kubelet.startService()
        self.advance(1)
        self.client.put_object(
            "/api/v1/namespaces/default/pods/web",
            {
                "metadata": {"name": "web", "namespace": "default"},
                "spec": {
                    "nodeName": "node-1",
                    "containers": [{"name": "main", "image": "busybox:1.36"}],
                },
                "status": {"phase": "Pending"},
            },
        )
        self.advance(1)
        self.assertEqual(len(memory.running()), 1)
        (sandbox,) = memory.sandboxes.values()
        self.assertEqual(list(sandbox.config.dns_config.servers), ["10.43.0.99"])
        pod = self.client.objects["/api/v1/namespaces/default/pods/web"]
        self.assertEqual(pod["status"]["phase"], "Running")
        self.assertEqual(pod["status"]["containerStatuses"][0]["containerID"][:13], "containerd://")
        kubelet.stopService()
        for container_id in memory.running():
            memory.exit(container_id, 137)

    def test_without_a_runtime_the_version_is_unknown(self) -> None:
        kubelet = self.kubelet()
        kubelet.startService()
        self.assertIsNone(kubelet.pod_workers)
        self.assertEqual(
            self.node()["status"]["nodeInfo"]["containerRuntimeVersion"], "runc://unknown"
        )

    def test_without_a_runtime_it_confirms_deletions_at_once(self) -> None:
        """Nothing runs, so a pod of the node marked for deletion is deleted (grace 0, its UID)."""
        self.kubelet().startService()
        path = "/api/v1/namespaces/default/pods/web"
        containers = [{"name": "main", "image": "busybox"}]
        pod: dict[str, Any] = {
            "metadata": {"name": "web", "namespace": "default"},
            "spec": {"nodeName": "node-1", "containers": containers},
        }
        other: dict[str, Any] = {
            "metadata": {"name": "db", "namespace": "default"},
            "spec": {"nodeName": "node-2", "containers": containers},
        }
        stored = self.client.put_object(path, pod)
        self.client.put_object("/api/v1/namespaces/default/pods/db", other)
        self.advance(1)
        self.assertIn(path, self.client.objects)  # not being deleted: left alone
        marked = {**stored, "metadata": {**stored["metadata"], "deletionTimestamp": rfc3339(START)}}
        self.client.put_object(path, marked)
        other["metadata"]["deletionTimestamp"] = rfc3339(START)
        self.client.put_object("/api/v1/namespaces/default/pods/db", other)
        self.advance(1)
        self.assertNotIn(path, self.client.objects)
        # Stopped (nothing ran): Failed first, as a kubelet writes it, then deleted.
        [patch] = self.client.bodies[("PATCH", path + "/status")]
        self.assertEqual(patch, {"status": {"phase": "Failed"}})
        [body] = self.client.bodies[("DELETE", path)]
        self.assertEqual(
            (body["gracePeriodSeconds"], body["preconditions"]),
            (0, {"uid": stored["metadata"]["uid"]}),
        )
        # Another node's pod is its kubelet's business.
        self.assertIn("/api/v1/namespaces/default/pods/db", self.client.objects)

    def test_without_a_runtime_a_failed_confirmation_is_retried(self) -> None:
        self.kubelet().startService()
        self.advance(1)
        path = "/api/v1/namespaces/default/pods/web"
        self.client.fail_next(500)
        self.client.put_object(
            path,
            {
                "metadata": {
                    "name": "web",
                    "namespace": "default",
                    "deletionTimestamp": rfc3339(START),
                },
                "spec": {
                    "nodeName": "node-1",
                    "containers": [{"name": "main", "image": "busybox"}],
                },
            },
        )
        self.assertIn(path, self.client.objects)
        self.assertEqual(self.client.count("PATCH", path + "/status"), 1)
        self.assertEqual(self.client.count("DELETE", path), 0)
        self.advance(1.5)
        self.assertNotIn(path, self.client.objects)
        self.assertEqual(self.client.count("PATCH", path + "/status"), 2)
        self.assertEqual(self.client.count("DELETE", path), 1)

    def test_takes_over_an_existing_node(self) -> None:
        self.client.put_object(
            NODE,
            {
                "apiVersion": "v1",
                "kind": "Node",
                "metadata": {"name": "node-1", "uid": "old", "labels": {"team": "red"}},
                "spec": {"taints": [{"key": "maintenance", "effect": "NoSchedule"}]},
                "status": {
                    "addresses": [{"type": "InternalIP", "address": "192.0.2.99"}],
                    "conditions": [
                        {
                            "type": "Ready",
                            "status": "Unknown",
                            "lastHeartbeatTime": "2020-01-01T00:00:00Z",
                            "lastTransitionTime": "2020-01-01T00:00:00Z",
                        }
                    ],
                },
            },
        )
        kubelet = self.kubelet(taints=parse_node_taints(["gpu=yes:NoSchedule"]))
        kubelet.startService()
        node = self.node()
        self.assertEqual(node["metadata"]["uid"], "old")
        self.assertEqual(node["metadata"]["labels"]["team"], "red")
        self.assertEqual(node["metadata"]["labels"]["kubernetes.io/hostname"], "node-1")
        self.assertEqual(node["spec"]["taints"], [{"key": "maintenance", "effect": "NoSchedule"}])
        self.assertEqual(
            node["status"]["addresses"][0], {"type": "InternalIP", "address": "127.0.0.11"}
        )
        self.assertEqual(self.ready()["status"], "True")
        self.assertEqual(self.ready()["lastTransitionTime"], rfc3339(START))
        self.assertEqual(node["status"]["nodeInfo"]["bootID"], FACTS.boot_id)
        self.assertIn(("PUT", STATUS), self.client.requests)
        self.assertEqual(kubelet.node, node)
        as_model(node, "V1Node")

    def test_registration_waits_for_the_server(self) -> None:
        self.client.down = True
        self.kubelet().startService()
        self.advance(60)
        self.assertNotIn(NODE, self.client.objects)
        self.assertGreater(self.client.count("POST", NODES_PATH), 3)
        self.client.down = False
        self.advance(10)
        self.assertIn(NODE, self.client.objects)
        self.assertEqual(self.errors(), [])

    def test_registration_backs_off(self) -> None:
        self.client.down = True
        self.kubelet(retry_initial=1.0, retry_max=8.0).startService()
        attempts = []
        for _ in range(40):
            attempts.append(self.client.count("POST", NODES_PATH))
            self.clock.advance(1)
        # Attempts at 0, 1, 3, 7, 15, 23, 31, 39 s: doubling waits, capped at 8 s.
        times = [t for t in range(1, 40) if attempts[t] > attempts[t - 1]]
        self.assertEqual(times, [1, 3, 7, 15, 23, 31, 39])

    def test_a_deleted_node_is_registered_again(self) -> None:
        self.kubelet().startService()
        first_uid = self.node()["metadata"]["uid"]
        self.client.remove_object(NODE)
        # The watch tells at once: no wait for the next status check.
        self.assertIn(NODE, self.client.objects)
        second_uid = self.node()["metadata"]["uid"]
        self.assertNotEqual(second_uid, first_uid)
        self.assertEqual(self.ready()["status"], "True")
        self.advance(10)
        owners = self.client.objects[LEASE]["metadata"]["ownerReferences"]
        self.assertEqual([o["uid"] for o in owners], [second_uid])

    # The Lease

    def test_lease_is_created_owned_by_the_node(self) -> None:
        self.kubelet().startService()
        lease = self.client.objects[LEASE]
        self.assertEqual(lease["spec"]["holderIdentity"], "node-1")
        self.assertEqual(lease["spec"]["leaseDurationSeconds"], 40)
        self.assertEqual(lease["spec"]["renewTime"], micro_time(START))
        self.assertEqual(lease["metadata"]["namespace"], "kube-node-lease")
        owner = lease["metadata"]["ownerReferences"][0]
        self.assertEqual((owner["kind"], owner["uid"]), ("Node", self.node()["metadata"]["uid"]))
        as_model(lease, "V1Lease")

    def test_lease_renewed_every_ten_seconds(self) -> None:
        self.kubelet().startService()
        for n in range(1, 7):
            self.advance(5)
            self.assertEqual(self.client.count("PUT", LEASE), n // 2)
        self.assertEqual(self.client.objects[LEASE]["spec"]["renewTime"], micro_time(START + 30))
        self.assertEqual(self.client.count("GET", LEASE), 1)

    def test_lease_renewal_after_another_writer(self) -> None:
        self.kubelet().startService()
        lease = dict(self.client.objects[LEASE])
        self.client.put_object(LEASE, lease)
        self.advance(10)
        self.assertEqual(self.client.objects[LEASE]["spec"]["renewTime"], micro_time(START + 10))

    def test_a_deleted_lease_is_created_again(self) -> None:
        self.kubelet().startService()
        del self.client.objects[LEASE]
        self.advance(10)
        self.assertEqual(self.client.objects[LEASE]["spec"]["renewTime"], micro_time(START + 10))

    # Status

    def test_status_checked_every_ten_seconds_reported_every_five_minutes(self) -> None:
        """
        Unchanged, the status is checked every 10 s against the watched Node (no
        request at all) and written only every 5 minutes.
        """
        self.kubelet().startService()
        self.advance(290)
        self.assertEqual(self.client.count("GET", NODE), 0)
        self.assertEqual(self.client.count("WATCH", NODES_PATH), 1)
        self.assertEqual(self.client.count("PUT", STATUS), 0)
        self.advance(10)
        self.assertEqual(self.client.count("PUT", STATUS), 1)
        self.assertEqual(self.ready()["lastHeartbeatTime"], rfc3339(START + 300))
        self.assertEqual(self.ready()["lastTransitionTime"], rfc3339(START))
        self.advance(290)
        self.assertEqual(self.client.count("PUT", STATUS), 1)
        self.advance(10)
        self.assertEqual(self.client.count("PUT", STATUS), 2)
        self.assertEqual(self.client.count("PUT", NODE), 0)

    def test_a_changed_status_is_reported_at_once(self) -> None:
        """Another port in the Node (someone else wrote it) is put right within 10 s."""
        self.kubelet().startService()
        self.advance(20)
        node = self.node()
        node["status"]["daemonEndpoints"]["kubeletEndpoint"]["Port"] = 22
        self.client.put_object(NODE, node)
        self.advance(10)
        self.assertEqual(self.client.count("PUT", STATUS), 1)
        self.assertEqual(self.node()["status"]["daemonEndpoints"]["kubeletEndpoint"]["Port"], 10250)

    def test_ready_again_after_the_server_marked_it_unknown(self) -> None:
        self.kubelet().startService()
        self.advance(50)
        node = self.node()
        ready = find_condition(node, "Ready")
        assert ready is not None
        ready.update(status="Unknown", reason="NodeStatusUnknown")
        self.client.put_object(NODE, node)
        self.advance(10)
        self.assertEqual(self.ready()["status"], "True")
        self.assertEqual(self.ready()["reason"], "KubeletReady")
        self.assertEqual(self.ready()["lastTransitionTime"], rfc3339(START + 60))

    # Failures

    def renewed_at(self) -> float:
        renewed = parse_time(self.client.objects[LEASE]["spec"]["renewTime"])
        assert renewed is not None
        return renewed - START

    def heartbeat_at(self) -> float:
        heartbeat = parse_time(self.ready()["lastHeartbeatTime"])
        assert heartbeat is not None
        return heartbeat - START

    def test_jobs_survive_server_errors(self) -> None:
        self.kubelet().startService()
        self.client.fail_next(500, 6)
        self.advance(30)
        # Someone changes the Node; then the server goes away before the status is put right.
        node = self.node()
        node["status"]["daemonEndpoints"]["kubeletEndpoint"]["Port"] = 22
        self.client.put_object(NODE, node)
        self.client.down = True
        self.advance(60)
        self.assertLess(self.renewed_at(), 90)
        self.client.down = False
        self.advance(20)
        self.assertGreaterEqual(self.renewed_at(), 90)
        self.assertEqual(self.node()["status"]["daemonEndpoints"]["kubeletEndpoint"]["Port"], 10250)
        warned = {e.get("what") for e in self.logged if e["log_level"] is LogLevel.warn}
        self.assertIn("Failed to update lease", warned)
        self.assertIn("Error updating node status", warned)
        self.assertEqual(self.errors(), [])

    def test_jobs_survive_a_server_that_never_answers(self) -> None:
        self.kubelet(timeout=5.0).startService()
        self.client.hang = True
        self.advance(120)
        self.assertLess(self.renewed_at(), 120)
        self.assertIn("no answer within 5s", {e.get("error") for e in self.logged})
        self.client.hang = False
        self.advance(200)
        self.assertGreaterEqual(self.renewed_at(), 120)
        # The status goes out again at its five-minute report.
        self.assertGreaterEqual(self.heartbeat_at(), 120)
        self.assertEqual(self.errors(), [])

    def test_an_unexpected_error_is_logged_with_its_traceback_and_survived(self) -> None:
        self.kubelet().startService()
        self.client.failures.append(ValueError("bug"))
        self.advance(10)
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1)
        self.advance(20)
        self.assertGreater(self.renewed_at(), 10)

    # Stopping

    def test_stop_leaves_no_delayed_calls(self) -> None:
        kubelet = self.kubelet()
        kubelet.startService()
        self.advance(25)
        self.assertTrue(self.clock.getDelayedCalls())
        kubelet.stopService()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        requests = len(self.client.requests)
        self.advance(100)
        self.assertEqual(len(self.client.requests), requests)

    def test_stop_while_registering(self) -> None:
        self.client.down = True
        kubelet = self.kubelet()
        kubelet.startService()
        self.advance(3)
        kubelet.stopService()
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_stop_during_a_request(self) -> None:
        kubelet = self.kubelet()
        kubelet.startService()
        self.client.hang = True
        self.advance(10)
        kubelet.stopService()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(self.errors(), [])
