"""The Node and Lease objects the kubelet writes, checked against the Python client's models."""

from __future__ import annotations

import copy
import re
from typing import Any

from kubernetes.client import ApiClient
from pydantic import ValidationError
from twisted.trial.unittest import SynchronousTestCase

from k3stw import KUBERNETES_VERSION
from k3stw.kubelet.config import (
    KubeletConfig,
    NodeFlagError,
    parse_node_labels,
    parse_node_taint,
    parse_node_taints,
)
from k3stw.kubelet.hostinfo import HostFacts
from k3stw.kubelet.node import (
    build_lease,
    build_node,
    node_conditions,
    node_status,
    reconcile_node,
    renew_lease,
)
from k3stw.machinery.nodes import KUBELET_CONDITIONS, Taint
from k3stw.machinery.objects import find_condition
from k3stw.machinery.times import micro_time, parse_time, rfc3339

FACTS = HostFacts(
    hostname="Host-1",
    cpus=4,
    memory_bytes=8 * 1024**3,
    storage_bytes=100 * 1024**3,
    machine_id="3d1219c7c4c5404aaa1f6d2a48adfda4",
    boot_id="52523a81-23ed-4532-86d4-599a2e38714e",
    system_uuid="3d1219c7-c4c5-404a-aa1f-6d2a48adfda4",
    kernel_version="6.1.0-18-amd64",
    os_image="Debian GNU/Linux 12 (bookworm)",
    operating_system="linux",
    architecture="amd64",
)
NOW = "2026-11-27T17:00:00Z"
LATER = "2026-11-27T17:00:10Z"
RFC3339 = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")
MICRO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")


def config(**kwargs: Any) -> KubeletConfig:
    settings: dict[str, Any] = {
        "node_name": "node-1",
        "node_ips": ("127.0.0.11",),
        "data_dir": "/tmp/k3stw-test",
    }
    settings.update(kwargs)
    return KubeletConfig(**settings)


def as_model(obj: dict[str, Any], model: str) -> Any:
    """The object as the Python client reads it: a missing required field raises."""
    return ApiClient()._ApiClient__deserialize(copy.deepcopy(obj), model)  # type: ignore[attr-defined]


class NodeObjectTests(SynchronousTestCase):
    def test_the_python_client_reads_the_node(self) -> None:
        node = as_model(build_node(config(), FACTS, NOW), "V1Node")
        info = node.status.node_info
        self.assertEqual(info.machine_id, FACTS.machine_id)
        self.assertEqual(info.system_uuid, FACTS.system_uuid)
        self.assertEqual(info.boot_id, FACTS.boot_id)
        self.assertEqual(info.kernel_version, FACTS.kernel_version)
        self.assertEqual(info.os_image, FACTS.os_image)
        self.assertEqual(info.operating_system, "linux")
        self.assertEqual(info.architecture, "amd64")
        self.assertEqual(info.kubelet_version, KUBERNETES_VERSION)
        self.assertEqual(info.kube_proxy_version, KUBERNETES_VERSION)
        self.assertTrue(info.container_runtime_version.startswith("runc://"))
        self.assertEqual(node.status.daemon_endpoints.kubelet_endpoint.port, 10250)

    def test_the_check_catches_a_missing_required_field(self) -> None:
        # Proves that the model check above can fail.
        for field in ("machineID", "bootID", "containerRuntimeVersion", "kubeProxyVersion"):
            node = build_node(config(), FACTS, NOW)
            del node["status"]["nodeInfo"][field]
            self.assertRaises(ValidationError, as_model, node, "V1Node")
        node = build_node(config(), FACTS, NOW)
        del node["status"]["conditions"][0]["status"]
        self.assertRaises(ValidationError, as_model, node, "V1Node")

    def test_agent_labels(self) -> None:
        labels = build_node(config(), FACTS, NOW)["metadata"]["labels"]
        self.assertEqual(
            labels,
            {
                "beta.kubernetes.io/arch": "amd64",
                "beta.kubernetes.io/instance-type": "k3s",
                "beta.kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                "kubernetes.io/hostname": "node-1",
                "kubernetes.io/os": "linux",
                "node.kubernetes.io/instance-type": "k3s",
            },
        )

    def test_server_role_labels_and_node_labels(self) -> None:
        labels = build_node(
            config(is_server=True, labels={"team": "blue", "topology.kubernetes.io/zone": "a"}),
            FACTS,
            NOW,
        )["metadata"]["labels"]
        self.assertEqual(labels["node-role.kubernetes.io/control-plane"], "true")
        self.assertEqual(labels["node-role.kubernetes.io/master"], "true")
        self.assertEqual(labels["team"], "blue")
        self.assertEqual(labels["topology.kubernetes.io/zone"], "a")

    def test_taints_from_flags(self) -> None:
        taints = parse_node_taints(["dedicated=db:NoSchedule", "gpu:NoExecute"])
        node = build_node(config(taints=taints), FACTS, NOW)
        self.assertEqual(
            node["spec"]["taints"],
            [
                {"key": "dedicated", "value": "db", "effect": "NoSchedule"},
                {"key": "gpu", "effect": "NoExecute", "timeAdded": NOW},
            ],
        )
        self.assertEqual(len(as_model(node, "V1Node").spec.taints), 2)
        self.assertNotIn("taints", build_node(config(), FACTS, NOW)["spec"])

    def test_addresses(self) -> None:
        node = build_node(
            config(node_ips=("192.0.2.5", "fd00::5"), external_ips=("203.0.113.9",)), FACTS, NOW
        )
        self.assertEqual(
            node["status"]["addresses"],
            [
                {"type": "InternalIP", "address": "192.0.2.5"},
                {"type": "InternalIP", "address": "fd00::5"},
                {"type": "ExternalIP", "address": "203.0.113.9"},
                {"type": "Hostname", "address": "node-1"},
            ],
        )

    def test_capacity_and_allocatable(self) -> None:
        status = build_node(config(), FACTS, NOW)["status"]
        self.assertEqual(
            status["capacity"],
            {
                "cpu": "4",
                "ephemeral-storage": f"{100 * 1024 * 1024}Ki",
                "hugepages-1Gi": "0",
                "hugepages-2Mi": "0",
                "memory": f"{8 * 1024 * 1024}Ki",
                "pods": "110",
            },
        )
        allocatable = status["allocatable"]
        self.assertEqual(allocatable["memory"], f"{8 * 1024 * 1024 - 100 * 1024}Ki")
        self.assertEqual(allocatable["ephemeral-storage"], str(int(100 * 1024**3 * 0.9)))
        self.assertEqual(allocatable["pods"], "110")
        self.assertEqual(allocatable["cpu"], "4")

    def test_conditions_on_registration(self) -> None:
        conditions = build_node(config(), FACTS, NOW)["status"]["conditions"]
        self.assertEqual(
            [(c["type"], c["status"], c["reason"]) for c in conditions],
            [
                ("MemoryPressure", "False", "KubeletHasSufficientMemory"),
                ("DiskPressure", "False", "KubeletHasNoDiskPressure"),
                ("PIDPressure", "False", "KubeletHasSufficientPID"),
                ("Ready", "True", "KubeletReady"),
            ],
        )
        ready = conditions[-1]
        self.assertEqual(ready["message"], "kubelet is posting ready status")
        for condition in conditions:
            self.assertRegex(condition["lastHeartbeatTime"], RFC3339)
            self.assertEqual(condition["lastTransitionTime"], NOW)

    def test_heartbeat_moves_transition_stays(self) -> None:
        first = node_conditions(None, NOW)
        second = node_conditions(first, LATER)
        for condition in second:
            self.assertEqual(condition["lastHeartbeatTime"], LATER)
            self.assertEqual(condition["lastTransitionTime"], NOW)

    def test_transition_moves_when_status_changes(self) -> None:
        before = node_conditions(None, NOW)
        ready = next(c for c in before if c["type"] == "Ready")
        ready.update(status="Unknown", reason="NodeStatusUnknown")
        after = {c["type"]: c for c in node_conditions(before, LATER)}
        self.assertEqual(after["Ready"]["status"], "True")
        self.assertEqual(after["Ready"]["lastTransitionTime"], LATER)
        self.assertEqual(after["DiskPressure"]["lastTransitionTime"], NOW)

    def test_conditions_of_others_are_kept(self) -> None:
        network = {
            "type": "NetworkUnavailable",
            "status": "False",
            "reason": "FlannelIsUp",
            "lastTransitionTime": NOW,
        }
        conditions = node_conditions([network], LATER)
        self.assertIn(network, conditions)
        self.assertEqual(len(conditions), len(KUBELET_CONDITIONS) + 1)

    def test_status_keeps_fields_it_does_not_own(self) -> None:
        status = node_status(config(), FACTS, {"images": [], "volumesInUse": ["x"]}, NOW)
        self.assertEqual(status["volumesInUse"], ["x"])

    def test_reconcile_keeps_what_others_set(self) -> None:
        existing = build_node(config(), FACTS, NOW)
        existing["metadata"].update(uid="u-1", resourceVersion="7")
        existing["metadata"]["labels"]["team"] = "red"
        existing["metadata"]["labels"]["kubernetes.io/hostname"] = "stale"
        existing["metadata"]["annotations"]["note"] = "keep"
        existing["spec"]["taints"] = [{"key": "maintenance", "effect": "NoSchedule"}]
        updated = reconcile_node(existing, config(is_server=True), FACTS)
        labels = updated["metadata"]["labels"]
        self.assertEqual(labels["team"], "red")
        self.assertEqual(labels["kubernetes.io/hostname"], "node-1")
        self.assertEqual(labels["node-role.kubernetes.io/control-plane"], "true")
        self.assertEqual(updated["metadata"]["annotations"]["note"], "keep")
        self.assertEqual(updated["spec"]["taints"], existing["spec"]["taints"])
        self.assertEqual(updated["metadata"]["uid"], "u-1")
        self.assertEqual(updated["metadata"]["resourceVersion"], "7")

    def test_find_condition(self) -> None:
        node = build_node(config(), FACTS, NOW)
        ready = find_condition(node, "Ready")
        assert ready is not None
        self.assertEqual(ready["status"], "True")
        self.assertIsNone(find_condition(node, "NetworkUnavailable"))


class LeaseTests(SynchronousTestCase):
    def test_lease_as_the_python_client_reads_it(self) -> None:
        lease = build_lease("node-1", "uid-1", "2026-11-27T17:00:00.000000Z", 40)
        model = as_model(lease, "V1Lease")
        self.assertEqual(model.metadata.namespace, "kube-node-lease")
        self.assertEqual(model.spec.holder_identity, "node-1")
        self.assertEqual(model.spec.lease_duration_seconds, 40)
        self.assertEqual(lease["spec"]["renewTime"], "2026-11-27T17:00:00.000000Z")
        self.assertEqual(
            lease["metadata"]["ownerReferences"],
            [{"apiVersion": "v1", "kind": "Node", "name": "node-1", "uid": "uid-1"}],
        )

    def test_renewal_moves_time_and_follows_a_new_owner(self) -> None:
        lease = build_lease("node-1", "uid-1", micro_time(1_800_000_000), 40)
        lease["metadata"]["ownerReferences"].append(
            {"apiVersion": "v1", "kind": "ConfigMap", "name": "x", "uid": "c"}
        )
        renewed = renew_lease(lease, "node-1", "uid-2", micro_time(1_800_000_010.25), 40)
        self.assertEqual(renewed["spec"]["renewTime"], "2027-01-15T08:00:10.250000Z")
        self.assertEqual(
            [ref["uid"] for ref in renewed["metadata"]["ownerReferences"]], ["c", "uid-2"]
        )
        self.assertEqual(lease["spec"]["renewTime"], "2027-01-15T08:00:00.000000Z")


class TimeTests(SynchronousTestCase):
    def test_formats(self) -> None:
        self.assertEqual(rfc3339(1_800_000_000.9), "2027-01-15T08:00:00Z")
        self.assertRegex(micro_time(0), MICRO)
        self.assertEqual(micro_time(0.5), "1970-01-01T00:00:00.500000Z")

    def test_parse(self) -> None:
        self.assertEqual(parse_time("2027-01-15T08:00:00Z"), 1_800_000_000)
        self.assertEqual(parse_time("2027-01-15T08:00:00.250000Z"), 1_800_000_000.25)
        self.assertIsNone(parse_time("yesterday"))
        self.assertIsNone(parse_time(None))


class NodeFlagTests(SynchronousTestCase):
    def test_labels(self) -> None:
        self.assertEqual(
            parse_node_labels(["a=1", "example.com/team=blue", "empty=", "node.kubernetes.io/x=y"]),
            {"a": "1", "example.com/team": "blue", "empty": "", "node.kubernetes.io/x": "y"},
        )

    def test_malformed_labels_are_refused(self) -> None:
        for flag in ("novalue", "-bad=1", "a=b c", "Upper.Case/x=1", "a=" + "x" * 64):
            self.assertRaises(NodeFlagError, parse_node_labels, [flag])

    def test_kubernetes_io_labels_a_kubelet_may_not_set(self) -> None:
        error = self.assertRaises(
            NodeFlagError, parse_node_labels, ["node-role.kubernetes.io/worker=true"]
        )
        self.assertIn(
            "unknown 'kubernetes.io' or 'k8s.io' labels specified with --node-labels: "
            "[node-role.kubernetes.io/worker]",
            str(error),
        )

    def test_taints(self) -> None:
        self.assertEqual(parse_node_taint("k=v:NoSchedule"), Taint("k", "v", "NoSchedule"))
        self.assertEqual(parse_node_taint("k:NoExecute"), Taint("k", "", "NoExecute"))
        self.assertEqual(
            parse_node_taints(["k=v:NoSchedule", "k=w:NoSchedule", "k:PreferNoSchedule"]),
            (Taint("k", "v", "NoSchedule"), Taint("k", "", "PreferNoSchedule")),
        )

    def test_malformed_taints_are_refused(self) -> None:
        for flag in ("k=v", "k=v:Sometimes", ":NoSchedule", "bad key=v:NoSchedule"):
            self.assertRaises(NodeFlagError, parse_node_taint, flag)
