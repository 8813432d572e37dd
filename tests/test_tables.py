"""Server-side Tables: kube-apiserver 1.32's columns and cells for every kind k3stw serves."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from k3stw.apiserver.kinds import (
    BUILT_IN,
    catalogue_resources,
    configmaps,
    converted_versions,
    namespaces,
    nodes,
    pods,
    secrets,
)
from k3stw.apiserver.kinds.custom import resources_of_crd
from k3stw.apiserver.tables import (
    DEFAULT_PRINTER,
    Printer,
    TableOptionError,
    custom_resource_printer,
    human_duration,
    table,
    watch_event_table,
)

#: Each built-in kind's printer, as its module declares it.
BUILTIN_PRINTERS: dict[tuple[str, str], Printer] = {
    (resource.group, resource.kind): resource.strategy.printer for resource in BUILT_IN
}


#: The catalogue's kinds without a module, and each one's printer as served.
CATALOGUED = catalogue_resources()
CATALOGUE_PRINTERS: dict[tuple[str, str], Printer] = {
    (resource.group, resource.kind): resource.strategy.printer for resource in CATALOGUED
}
#: Every printer of its own: the modules' and the catalogued kinds'.
PRINTERS = {
    **BUILTIN_PRINTERS,
    **{key: p for key, p in CATALOGUE_PRINTERS.items() if p is not DEFAULT_PRINTER},
}


def printer_for(group: str, kind: str) -> Printer:
    """The printer of a built-in kind; kube-apiserver's default one for any other."""
    return PRINTERS.get((group, kind), DEFAULT_PRINTER)


NOW = datetime(2025, 3, 1, 12, 0, 0, tzinfo=UTC)


def ago(**delta: float) -> str:
    """The RFC 3339 timestamp that long before NOW."""
    return (NOW - timedelta(**delta)).strftime("%Y-%m-%dT%H:%M:%SZ")


def meta(name: str = "x", namespace: str | None = "default", **extra: Any) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": name, "creationTimestamp": ago(minutes=5), **extra}
    if namespace:
        metadata["namespace"] = namespace
    return metadata


def cells(group: str, kind: str, obj: dict[str, Any]) -> list[Any]:
    row = printer_for(group, kind).row(obj, NOW)
    cells: list[Any] = row["cells"]
    return cells


def named(group: str, kind: str, obj: dict[str, Any]) -> dict[str, Any]:
    """The row as a column-name → cell mapping."""
    printer = printer_for(group, kind)
    return dict(zip([c.name for c in printer.columns], printer.row(obj, NOW)["cells"], strict=True))


class HumanDurationTests(SynchronousTestCase):
    def test_boundaries(self) -> None:
        """Each unit switch of duration.HumanDuration, on both sides."""
        cases = {
            -3.0: "<invalid>",
            -2.0: "<invalid>",
            -1.9: "0s",
            -0.5: "0s",
            0.0: "0s",
            45.0: "45s",
            119.9: "119s",
            120.0: "2m",
            150.0: "2m30s",
            599.0: "9m59s",
            600.0: "10m",
            659.0: "10m",
            3 * 3600 - 1.0: "179m",
            3 * 3600.0: "3h",
            7 * 3600 + 300.0: "7h5m",
            8 * 3600 - 1.0: "7h59m",
            8 * 3600.0: "8h",
            30 * 3600.0: "30h",
            48 * 3600 - 1.0: "47h",
            48 * 3600.0: "2d",
            (2 * 24 + 5) * 3600.0: "2d5h",
            8 * 86400 - 1.0: "7d23h",
            8 * 86400.0: "8d",
            45 * 86400.0: "45d",
            730 * 86400 - 1.0: "729d",
            730 * 86400.0: "2y",
            760 * 86400.0: "2y30d",
            8 * 365 * 86400 - 1.0: "7y364d",
            8 * 365 * 86400.0: "8y",
            20 * 365 * 86400.0: "20y",
        }
        actual = {seconds: human_duration(timedelta(seconds=seconds)) for seconds in cases}
        self.assertEqual(actual, cases)

    def test_age_cells_use_the_injected_clock(self) -> None:
        """Ages count to ``now``, given as a datetime or as POSIX seconds; unset is unknown."""
        namespace = {"metadata": meta("a", None), "status": {"phase": "Active"}}
        self.assertEqual(cells("", "Namespace", namespace), ["a", "Active", "5m"])
        row = namespaces.PRINTER.row(namespace, NOW.timestamp() + 3600)
        self.assertEqual(row["cells"][2], "65m")
        self.assertEqual(cells("", "Namespace", {"metadata": {"name": "b"}})[2], "<unknown>")


def container_status(
    name: str, state: dict[str, Any], ready: bool = False, restarts: int = 0, **extra: Any
) -> dict[str, Any]:
    return {"name": name, "state": state, "ready": ready, "restartCount": restarts, **extra}


RUNNING = {"running": {"startedAt": "2025-03-01T11:00:00Z"}}


def make_pod(
    containers: int = 1,
    statuses: list[dict[str, Any]] | None = None,
    phase: str = "Running",
    init: list[dict[str, Any]] | None = None,
    init_statuses: list[dict[str, Any]] | None = None,
    conditions: list[dict[str, Any]] | None = None,
    **status: Any,
) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "containers": [{"name": f"c{i}", "image": "i"} for i in range(containers)]
    }
    if init is not None:
        spec["initContainers"] = init
    pod_status: dict[str, Any] = {"phase": phase, **status}
    if statuses is not None:
        pod_status["containerStatuses"] = statuses
    if init_statuses is not None:
        pod_status["initContainerStatuses"] = init_statuses
    if conditions is not None:
        pod_status["conditions"] = conditions
    return {"metadata": meta("web"), "spec": spec, "status": pod_status}


READY = [{"type": "Ready", "status": "True"}]
INITIALIZED = [{"type": "Initialized", "status": "True"}]


class PodPrinterTests(SynchronousTestCase):
    def test_status_column(self) -> None:
        """Ready, Status and Restarts for the phases and container states kubelets report."""
        crash = {"waiting": {"reason": "CrashLoopBackOff"}}
        last = {"terminated": {"exitCode": 1, "finishedAt": ago(minutes=3)}}
        sidecar = [{"name": "s", "restartPolicy": "Always"}, {"name": "i"}]
        cases: dict[str, tuple[dict[str, Any], tuple[str, str, str]]] = {
            "pending, no statuses": (make_pod(phase="Pending"), ("0/1", "Pending", "0")),
            "nothing at all": ({"metadata": {"name": "p"}}, ("0/0", "", "0")),
            "running and ready": (
                make_pod(
                    2,
                    [container_status("c0", RUNNING, True), container_status("c1", RUNNING, True)],
                    conditions=READY,
                ),
                ("2/2", "Running", "0"),
            ),
            "running, one not ready": (
                make_pod(
                    2,
                    [container_status("c0", RUNNING, True), container_status("c1", RUNNING, False)],
                ),
                ("1/2", "Running", "0"),
            ),
            "image pull": (
                make_pod(
                    1,
                    [container_status("c0", {"waiting": {"reason": "ErrImagePull"}})],
                    phase="Pending",
                ),
                ("0/1", "ErrImagePull", "0"),
            ),
            "crash loop with restarts": (
                make_pod(1, [container_status("c0", crash, restarts=5, lastState=last)]),
                ("0/1", "CrashLoopBackOff", "5 (3m ago)"),
            ),
            "restarts without a finish time": (
                make_pod(1, [container_status("c0", RUNNING, True, 2)]),
                ("1/1", "Running", "2"),
            ),
            "terminated with reason": (
                make_pod(
                    1,
                    [
                        container_status(
                            "c0", {"terminated": {"reason": "OOMKilled", "exitCode": 137}}
                        )
                    ],
                ),
                ("0/1", "OOMKilled", "0"),
            ),
            "terminated by signal": (
                make_pod(1, [container_status("c0", {"terminated": {"signal": 9, "exitCode": 0}})]),
                ("0/1", "Signal:9", "0"),
            ),
            "terminated with exit code": (
                make_pod(1, [container_status("c0", {"terminated": {"exitCode": 2}})]),
                ("0/1", "ExitCode:2", "0"),
            ),
            "succeeded": (
                make_pod(
                    1,
                    [
                        container_status(
                            "c0", {"terminated": {"reason": "Completed", "exitCode": 0}}
                        )
                    ],
                    phase="Succeeded",
                ),
                ("0/1", "Completed", "0"),
            ),
            "completed beside running, ready": (
                make_pod(
                    2,
                    [
                        container_status("c0", {"terminated": {"reason": "Completed"}}),
                        container_status("c1", RUNNING, True),
                    ],
                    conditions=READY,
                ),
                ("1/2", "Running", "0"),
            ),
            "completed beside running, not ready": (
                make_pod(
                    2,
                    [
                        container_status("c0", {"terminated": {"reason": "Completed"}}),
                        container_status("c1", RUNNING, True),
                    ],
                ),
                ("1/2", "NotReady", "0"),
            ),
            "evicted": (make_pod(1, [], phase="Failed", reason="Evicted"), ("0/1", "Evicted", "0")),
            "scheduling gated": (
                make_pod(
                    phase="Pending",
                    conditions=[{"type": "PodScheduled", "reason": "SchedulingGated"}],
                ),
                ("0/1", "SchedulingGated", "0"),
            ),
            "init waiting to start": (
                make_pod(
                    init=[{"name": "i0"}, {"name": "i1"}],
                    phase="Pending",
                    init_statuses=[
                        container_status("i0", {"waiting": {"reason": "PodInitializing"}})
                    ],
                ),
                ("0/1", "Init:0/2", "0"),
            ),
            "second init running": (
                make_pod(
                    init=[{"name": "i0"}, {"name": "i1"}],
                    phase="Pending",
                    init_statuses=[
                        container_status("i0", {"terminated": {"exitCode": 0}}),
                        container_status("i1", RUNNING),
                    ],
                ),
                ("0/1", "Init:1/2", "0"),
            ),
            "init crash loop": (
                make_pod(
                    init=[{"name": "i0"}],
                    phase="Pending",
                    init_statuses=[container_status("i0", crash, restarts=3, lastState=last)],
                    statuses=[
                        container_status(
                            "c0", {"waiting": {"reason": "PodInitializing"}}, restarts=7
                        )
                    ],
                ),
                ("0/1", "Init:CrashLoopBackOff", "3 (3m ago)"),
            ),
            "init failed with reason": (
                make_pod(
                    init=[{"name": "i0"}],
                    init_statuses=[
                        container_status("i0", {"terminated": {"reason": "Error", "exitCode": 1}})
                    ],
                ),
                ("0/1", "Init:Error", "0"),
            ),
            "init failed by signal": (
                make_pod(
                    init=[{"name": "i0"}],
                    init_statuses=[
                        container_status("i0", {"terminated": {"signal": 15, "exitCode": 143}})
                    ],
                ),
                ("0/1", "Init:Signal:15", "0"),
            ),
            "init failed with exit code": (
                make_pod(
                    init=[{"name": "i0"}],
                    init_statuses=[container_status("i0", {"terminated": {"exitCode": 3}})],
                ),
                ("0/1", "Init:ExitCode:3", "0"),
            ),
            "sidecar started counts as a container": (
                make_pod(
                    1,
                    [container_status("c0", RUNNING, True)],
                    init=sidecar,
                    init_statuses=[
                        container_status("s", RUNNING, True, 4, started=True, lastState=last),
                        container_status("i", {"terminated": {"exitCode": 0}}),
                    ],
                    conditions=READY + INITIALIZED,
                ),
                ("2/2", "Running", "4 (3m ago)"),
            ),
        }
        actual = {}
        for name, (obj, _) in cases.items():
            row = cells("", "Pod", obj)
            actual[name] = (row[1], row[2], row[3])
        self.assertEqual(actual, {name: wanted for name, (_, wanted) in cases.items()})

    def test_deletion(self) -> None:
        """A deleting pod is Terminating unless already finished; on a lost node, Unknown."""
        deleting = {"deletionTimestamp": ago(seconds=10)}
        cases = {
            "running": (make_pod(), "Terminating"),
            "pending": (make_pod(phase="Pending"), "Terminating"),
            "succeeded": (make_pod(phase="Succeeded"), "Succeeded"),
            "failed": (make_pod(phase="Failed", reason="Error"), "Error"),
            "node lost": (make_pod(reason="NodeLost"), "Unknown"),
        }
        actual = {}
        for name, (obj, _) in cases.items():
            obj["metadata"].update(deleting)
            actual[name] = cells("", "Pod", obj)[2]
        self.assertEqual(actual, {name: wanted for name, (_, wanted) in cases.items()})

    def test_wide_columns(self) -> None:
        """IP, Node, Nominated Node and Readiness Gates; ``<none>`` when unset."""
        obj = make_pod(
            podIPs=[{"ip": "203.0.113.7"}, {"ip": "fd00::7"}],
            nominatedNodeName="n2",
            conditions=[
                {"type": "example.com/gate-a", "status": "True"},
                {"type": "example.com/gate-b", "status": "False"},
            ],
        )
        obj["spec"]["nodeName"] = "n1"
        obj["spec"]["readinessGates"] = [
            {"conditionType": "example.com/gate-a"},
            {"conditionType": "example.com/gate-b"},
            {"conditionType": "example.com/gate-c"},
        ]
        self.assertEqual(cells("", "Pod", obj)[5:], ["203.0.113.7", "n1", "n2", "1/3"])
        self.assertEqual(cells("", "Pod", make_pod())[5:], ["<none>"] * 4)
        self.assertEqual(cells("", "Pod", make_pod(podIP="192.0.2.3"))[5], "192.0.2.3")

    def test_finished_pods_carry_a_row_condition(self) -> None:
        """Succeeded and Failed rows carry the Completed condition kubectl greys them by."""
        done = pods.PRINTER.row(make_pod(phase="Succeeded"), NOW)
        failed = pods.PRINTER.row(make_pod(phase="Failed"), NOW)
        running = pods.PRINTER.row(make_pod(), NOW)
        self.assertEqual(
            done["conditions"],
            [
                {
                    "type": "Completed",
                    "status": "True",
                    "reason": "Succeeded",
                    "message": "The pod has completed successfully.",
                }
            ],
        )
        self.assertEqual(failed["conditions"][0]["message"], "The pod failed.")
        self.assertNotIn("conditions", running)


def make_node(
    ready: str | None = "True", unschedulable: bool = False, labels: dict[str, str] | None = None
) -> dict[str, Any]:
    conditions = [{"type": "MemoryPressure", "status": "False"}]
    if ready is not None:
        conditions.append({"type": "Ready", "status": ready})
    return {
        "metadata": meta("n1", None, labels=labels or {}),
        "spec": {"unschedulable": True} if unschedulable else {},
        "status": {
            "conditions": conditions,
            "addresses": [
                {"type": "InternalIP", "address": "192.0.2.5"},
                {"type": "Hostname", "address": "n1"},
            ],
            "nodeInfo": {
                "kubeletVersion": "v1.32.4+k3s1",
                "osImage": "Debian GNU/Linux 12 (bookworm)",
                "kernelVersion": "6.1.0-18-amd64",
                "containerRuntimeVersion": "containerd://1.7.27-k3s1",
            },
        },
    }


class NodePrinterTests(SynchronousTestCase):
    def test_columns_match_kubectl(self) -> None:
        """The node columns and their -o wide priorities, as kubectl expects them."""
        self.assertEqual(
            [
                (c["name"], c["type"], c["format"], c["priority"])
                for c in nodes.PRINTER.column_definitions()
            ],
            [
                ("Name", "string", "name", 0),
                ("Status", "string", "", 0),
                ("Roles", "string", "", 0),
                ("Age", "string", "", 0),
                ("Version", "string", "", 0),
                ("Internal-IP", "string", "", 1),
                ("External-IP", "string", "", 1),
                ("OS-Image", "string", "", 1),
                ("Kernel-Version", "string", "", 1),
                ("Container-Runtime", "string", "", 1),
            ],
        )

    def test_status_and_roles(self) -> None:
        """Ready/NotReady/Unknown, SchedulingDisabled, and sorted roles or ``<none>``."""
        roles = {
            "node-role.kubernetes.io/master": "true",
            "node-role.kubernetes.io/control-plane": "true",
            "node-role.kubernetes.io/": "true",
            "kubernetes.io/role": "edge",
        }
        cases = {
            "ready": (make_node(), ("Ready", "<none>")),
            "not ready": (make_node("False"), ("NotReady", "<none>")),
            "unknown condition": (make_node("Unknown"), ("NotReady", "<none>")),
            "no ready condition": (make_node(None), ("Unknown", "<none>")),
            "cordoned": (make_node(unschedulable=True), ("Ready,SchedulingDisabled", "<none>")),
            "never reported": (
                {"metadata": {"name": "n"}, "spec": {"unschedulable": True}},
                ("Unknown,SchedulingDisabled", "<none>"),
            ),
            "roles": (make_node(labels=roles), ("Ready", "control-plane,edge,master")),
        }
        actual = {}
        for name, (obj, _) in cases.items():
            row = cells("", "Node", obj)
            actual[name] = (row[1], row[2])
        self.assertEqual(actual, {name: wanted for name, (_, wanted) in cases.items()})

    def test_version_and_wide_cells(self) -> None:
        """Version, then the -o wide cells: addresses ``<none>``, node info ``<unknown>``."""
        self.assertEqual(
            cells("", "Node", make_node())[3:],
            [
                "5m",
                "v1.32.4+k3s1",
                "192.0.2.5",
                "<none>",
                "Debian GNU/Linux 12 (bookworm)",
                "6.1.0-18-amd64",
                "containerd://1.7.27-k3s1",
            ],
        )
        self.assertEqual(
            cells("", "Node", {"metadata": {"name": "n"}})[4:],
            ["", "<none>", "<none>", "<unknown>", "<unknown>", "<unknown>"],
        )


def make_service(kind: str, **spec: Any) -> dict[str, Any]:
    return {"metadata": meta("svc"), "spec": {"type": kind, **spec}, "status": {}}


class ServicePrinterTests(SynchronousTestCase):
    def test_service_types(self) -> None:
        """Type, Cluster-IP, External-IP, Port(s) and Selector for each service type."""
        ports = [
            {"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080},
            {"name": "https", "port": 443, "protocol": "TCP", "nodePort": 30443},
            {"name": "dns", "port": 53, "protocol": "UDP"},
        ]
        balancer = make_service("LoadBalancer", clusterIPs=["198.51.100.9"], ports=ports[:1])
        balancer["status"] = {
            "loadBalancer": {"ingress": [{"ip": "192.0.2.1"}, {"hostname": "lb.example.com"}]}
        }
        both = make_service(
            "LoadBalancer", clusterIPs=["198.51.100.9"], externalIPs=["198.51.100.7"]
        )
        both["status"] = balancer["status"]
        cases = {
            "cluster ip": (
                make_service(
                    "ClusterIP",
                    clusterIP="198.51.100.1",
                    clusterIPs=["198.51.100.1"],
                    ports=ports[:1],
                    selector={"tier": "web", "app": "x"},
                ),
                ["ClusterIP", "198.51.100.1", "<none>", "80/TCP", "5m", "app=x,tier=web"],
            ),
            "external ips": (
                make_service(
                    "ClusterIP",
                    clusterIPs=["198.51.100.2"],
                    ports=ports,
                    externalIPs=["198.51.100.1", "198.51.100.2"],
                ),
                [
                    "ClusterIP",
                    "198.51.100.2",
                    "198.51.100.1,198.51.100.2",
                    "80/TCP,443:30443/TCP,53/UDP",
                    "5m",
                    "<none>",
                ],
            ),
            "headless": (
                make_service("ClusterIP", clusterIP="None", clusterIPs=["None"]),
                ["ClusterIP", "None", "<none>", "<none>", "5m", "<none>"],
            ),
            "node port": (
                make_service("NodePort", clusterIPs=["198.51.100.3"], ports=ports[1:2]),
                ["NodePort", "198.51.100.3", "<none>", "443:30443/TCP", "5m", "<none>"],
            ),
            "load balancer pending": (
                make_service("LoadBalancer", clusterIPs=["198.51.100.4"], ports=ports[:1]),
                ["LoadBalancer", "198.51.100.4", "<pending>", "80/TCP", "5m", "<none>"],
            ),
            "load balancer": (
                balancer,
                [
                    "LoadBalancer",
                    "198.51.100.9",
                    "192.0.2.1,lb.example.com",
                    "80/TCP",
                    "5m",
                    "<none>",
                ],
            ),
            "load balancer and external ips": (
                both,
                [
                    "LoadBalancer",
                    "198.51.100.9",
                    "192.0.2.1,lb.example.com,198.51.100.7",
                    "<none>",
                    "5m",
                    "<none>",
                ],
            ),
            "external name": (
                make_service("ExternalName", externalName="db.example.com"),
                ["ExternalName", "<none>", "db.example.com", "<none>", "5m", "<none>"],
            ),
            "no type": (
                {"metadata": meta("svc"), "spec": {"clusterIP": "198.51.100.5"}},
                ["", "198.51.100.5", "<unknown>", "<none>", "5m", "<none>"],
            ),
        }
        actual = {name: cells("", "Service", obj)[1:] for name, (obj, _) in cases.items()}
        self.assertEqual(actual, {name: wanted for name, (_, wanted) in cases.items()})


class EndpointsPrinterTests(SynchronousTestCase):
    def test_endpoints_column(self) -> None:
        """host:port per address and port, three at most, then ``+ N more...``."""
        addresses = [{"ip": f"203.0.113.{i}"} for i in range(1, 5)]
        cases: dict[str, tuple[dict[str, Any], str]] = {
            "none": ({}, "<none>"),
            "one": (
                {"subsets": [{"addresses": addresses[:1], "ports": [{"port": 80}]}]},
                "203.0.113.1:80",
            ),
            "truncated": (
                {"subsets": [{"addresses": addresses, "ports": [{"port": 80}, {"port": 443}]}]},
                "203.0.113.1:80,203.0.113.2:80,203.0.113.3:80 + 5 more...",
            ),
            "exactly three": (
                {"subsets": [{"addresses": addresses[:3], "ports": [{"port": 80}]}]},
                "203.0.113.1:80,203.0.113.2:80,203.0.113.3:80",
            ),
            "headless without ports": (
                {"subsets": [{"addresses": addresses}]},
                "203.0.113.1,203.0.113.2,203.0.113.3 + 1 more...",
            ),
            "ipv6": (
                {"subsets": [{"addresses": [{"ip": "fd00::1"}], "ports": [{"port": 53}]}]},
                "[fd00::1]:53",
            ),
            "not ready addresses are not shown": (
                {"subsets": [{"notReadyAddresses": addresses, "ports": [{"port": 80}]}]},
                "",
            ),
        }
        actual = {
            name: cells("", "Endpoints", {"metadata": meta("kubernetes"), **obj})[1]
            for name, (obj, _) in cases.items()
        }
        self.assertEqual(actual, {name: wanted for name, (_, wanted) in cases.items()})

    def test_endpoint_slices(self) -> None:
        """AddressType, Ports (number, name or ``*``) and Endpoints, ``<unset>`` when empty."""
        slice_ = {
            "metadata": meta("kubernetes-abc"),
            "addressType": "IPv4",
            "ports": [{"port": 443}, {"name": "metrics"}, {}, {"port": 80}],
            "endpoints": [{"addresses": ["192.0.2.1"]}, {"addresses": ["192.0.2.2", "192.0.2.3"]}],
        }
        self.assertEqual(
            cells("discovery.k8s.io", "EndpointSlice", slice_),
            [
                "kubernetes-abc",
                "IPv4",
                "443,metrics,* + 1 more...",
                "192.0.2.1,192.0.2.2,192.0.2.3",
                "5m",
            ],
        )
        self.assertEqual(
            cells("discovery.k8s.io", "EndpointSlice", {"metadata": meta("e")})[1:4],
            ["", "<unset>", "<unset>"],
        )


TEMPLATE = {
    "metadata": {"labels": {"app": "web"}},
    "spec": {
        "containers": [
            {"name": "nginx", "image": "nginx:1.27"},
            {"name": "log", "image": "busybox"},
        ],
        "nodeSelector": {"kubernetes.io/os": "linux"},
    },
}
SELECTOR = {
    "matchLabels": {"app": "web"},
    "matchExpressions": [{"key": "tier", "operator": "In", "values": ["front", "api"]}],
}


class WorkloadPrinterTests(SynchronousTestCase):
    def test_deployment(self) -> None:
        """Ready is ready/desired; the wide cells list containers, images and the selector."""
        deployment = {
            "metadata": meta("web"),
            "spec": {"replicas": 3, "selector": SELECTOR, "template": TEMPLATE},
            "status": {"readyReplicas": 2, "updatedReplicas": 3, "availableReplicas": 2},
        }
        self.assertEqual(
            cells("apps", "Deployment", deployment),
            [
                "web",
                "2/3",
                3,
                2,
                "5m",
                "nginx,log",
                "nginx:1.27,busybox",
                "app=web,tier in (api,front)",
            ],
        )
        self.assertEqual(
            cells("apps", "Deployment", {"metadata": meta("d")}),
            ["d", "0/0", 0, 0, "5m", "", "", ""],
        )

    def test_replica_set(self) -> None:
        """Desired, Current and Ready as integers; an empty selector prints ``<none>``."""
        replica_set = {
            "metadata": meta("web-7d9f"),
            "spec": {
                "replicas": 2,
                "selector": {"matchLabels": {"app": "web"}},
                "template": TEMPLATE,
            },
            "status": {"replicas": 2, "readyReplicas": 1},
        }
        self.assertEqual(
            cells("apps", "ReplicaSet", replica_set),
            ["web-7d9f", 2, 2, 1, "5m", "nginx,log", "nginx:1.27,busybox", "app=web"],
        )
        self.assertEqual(
            cells("apps", "ReplicaSet", {"metadata": meta("r"), "spec": {"selector": {}}})[-1],
            "<none>",
        )

    def test_daemon_set(self) -> None:
        """Scheduling counts, the node selector, then the wide cells."""
        daemon_set = {
            "metadata": meta("svclb"),
            "spec": {"selector": SELECTOR, "template": TEMPLATE},
            "status": {
                "desiredNumberScheduled": 3,
                "currentNumberScheduled": 3,
                "numberReady": 2,
                "updatedNumberScheduled": 3,
                "numberAvailable": 2,
            },
        }
        self.assertEqual(
            cells("apps", "DaemonSet", daemon_set),
            [
                "svclb",
                3,
                3,
                2,
                3,
                2,
                "kubernetes.io/os=linux",
                "5m",
                "nginx,log",
                "nginx:1.27,busybox",
                "app=web,tier in (api,front)",
            ],
        )
        self.assertEqual(
            cells("apps", "DaemonSet", {"metadata": meta("d")}),
            ["d", 0, 0, 0, 0, 0, "<none>", "5m", "", "", "<none>"],
        )


class SmallPrinterTests(SynchronousTestCase):
    def test_small_kinds(self) -> None:
        """Secrets, ConfigMaps, Namespaces, ServiceAccounts, Leases and CRDs."""
        cases: list[tuple[str, str, dict[str, Any], list[Any]]] = [
            (
                "",
                "Secret",
                {
                    "metadata": meta("tok"),
                    "type": "kubernetes.io/service-account-token",
                    "data": {"token": "eA==", "ca.crt": "eA=="},
                },
                ["tok", "kubernetes.io/service-account-token", 2, "5m"],
            ),
            ("", "Secret", {"metadata": meta("s")}, ["s", "", 0, "5m"]),
            (
                "",
                "ConfigMap",
                {"metadata": meta("cm"), "data": {"a": "1"}, "binaryData": {"b": "AA=="}},
                ["cm", 2, "5m"],
            ),
            (
                "",
                "Namespace",
                {
                    "metadata": meta("gone", None, deletionTimestamp=ago(seconds=1)),
                    "status": {"phase": "Terminating"},
                },
                ["gone", "Terminating", "5m"],
            ),
            (
                "",
                "ServiceAccount",
                {"metadata": meta("default"), "secrets": [{"name": "a"}]},
                ["default", 1, "5m"],
            ),
            (
                "coordination.k8s.io",
                "Lease",
                {"metadata": meta("n1", "kube-node-lease"), "spec": {"holderIdentity": "n1"}},
                ["n1", "n1", "5m"],
            ),
            ("coordination.k8s.io", "Lease", {"metadata": meta("l")}, ["l", "", "5m"]),
            (
                "apiextensions.k8s.io",
                "CustomResourceDefinition",
                {
                    "metadata": meta(
                        "widgets.example.com", None, creationTimestamp="2025-02-03T04:05:06.789Z"
                    )
                },
                ["widgets.example.com", "2025-02-03T04:05:06Z"],
            ),
            (
                "apiextensions.k8s.io",
                "CustomResourceDefinition",
                {"metadata": {"name": "c"}},
                ["c", "0001-01-01T00:00:00Z"],
            ),
        ]
        actual = [cells(group, kind, obj) for group, kind, obj, _ in cases]
        self.assertEqual(actual, [wanted for *_, wanted in cases])

    def test_crds_use_the_default_columns(self) -> None:
        """CRDs and kinds without a printer of their own (Role, as in kube) print Name and a
        ``date`` typed Created At."""
        self.assertIs(
            printer_for("apiextensions.k8s.io", "CustomResourceDefinition"), DEFAULT_PRINTER
        )
        self.assertIs(printer_for("rbac.authorization.k8s.io", "Role"), DEFAULT_PRINTER)
        self.assertEqual(
            [(c.name, c.type) for c in DEFAULT_PRINTER.columns],
            [("Name", "string"), ("Created At", "date")],
        )


class EventPrinterTests(SynchronousTestCase):
    def test_event_cells(self) -> None:
        """Last Seen, Type, Reason, Object, Message, and the wide Source/First Seen/Count/Name."""
        event = {
            "metadata": meta("web.17f"),
            "involvedObject": {"kind": "Pod", "name": "web", "fieldPath": "spec.containers{c}"},
            "reason": "BackOff",
            "message": "  Back-off restarting failed container\n",
            "type": "Warning",
            "source": {"component": "kubelet", "host": "n1"},
            "firstTimestamp": ago(hours=2),
            "lastTimestamp": ago(seconds=30),
            "count": 12,
        }
        self.assertEqual(
            named("", "Event", event),
            {
                "Last Seen": "30s",
                "Type": "Warning",
                "Reason": "BackOff",
                "Object": "pod/web",
                "Subobject": "spec.containers{c}",
                "Source": "kubelet, n1",
                "Message": "Back-off restarting failed container",
                "First Seen": "120m",
                "Count": 12,
                "Name": "web.17f",
            },
        )

    def test_new_style_and_sparse_events(self) -> None:
        """eventTime and series stand in for the timestamps; a singleton counts 1."""
        series = {
            "metadata": meta("e"),
            "involvedObject": {"kind": "Node"},
            "eventTime": "2025-03-01T11:50:00.000000Z",
            "series": {"count": 4, "lastObservedTime": "2025-03-01T11:59:00.123456Z"},
            "reportingComponent": "k3s-controller",
            "reportingInstance": "server-1",
        }
        row = named("", "Event", series)
        self.assertEqual(
            [row[k] for k in ("Last Seen", "First Seen", "Count", "Object", "Source")],
            # 59.88 seconds: ages truncate, as Go's integer conversions do
            ["59s", "10m", 4, "node", "k3s-controller, server-1"],
        )
        single = named("", "Event", {"metadata": meta("e"), "lastTimestamp": ago(minutes=1)})
        self.assertEqual(
            [single[k] for k in ("Last Seen", "First Seen", "Count", "Object", "Source")],
            ["60s", "<unknown>", 1, "", ""],
        )
        unseen = named("", "Event", {"metadata": meta("e"), "firstTimestamp": ago(minutes=3)})
        self.assertEqual((unseen["Last Seen"], unseen["First Seen"]), ("3m", "3m"))


class CustomResourcePrinterTests(SynchronousTestCase):
    def test_default_columns_are_name_and_age(self) -> None:
        """Without additionalPrinterColumns a custom resource shows Name and a date Age."""
        printer = custom_resource_printer(())
        self.assertEqual(
            [(c.name, c.type) for c in printer.columns], [("Name", "string"), ("Age", "date")]
        )
        self.assertEqual(printer.row({"metadata": meta("w")}, NOW)["cells"], ["w", "5m"])

    def test_additional_printer_columns(self) -> None:
        """Each column type converts its JSONPath value; missing or mistyped values are null."""
        columns: list[dict[str, Any]] = [
            {"name": "Replicas", "type": "integer", "jsonPath": ".spec.replicas"},
            {"name": "Ratio", "type": "number", "jsonPath": ".spec.ratio", "priority": 1},
            {"name": "Ready", "type": "boolean", "jsonPath": ".status.ready"},
            {
                "name": "Phase",
                "type": "string",
                "jsonPath": ".status.conditions[0].type",
                "description": "The first condition.",
            },
            {"name": "Labels", "type": "string", "jsonPath": ".metadata.labels"},
            {
                "name": "App",
                "type": "string",
                "jsonPath": ".metadata.labels['app.kubernetes.io/name']",
            },
            {"name": "Size", "type": "string", "jsonPath": ".spec.size"},
            {"name": "Started", "type": "date", "jsonPath": ".status.startedAt"},
            {"name": "Broken", "type": "date", "jsonPath": ".status.broken"},
            {"name": "Missing", "type": "string", "jsonPath": ".spec.nothing.here"},
            {"name": "Bad path", "type": "string", "jsonPath": "spec[*].x"},
        ]
        widget = {
            "metadata": meta("w", labels={"b": "2", "app.kubernetes.io/name": "wid"}),
            "spec": {"replicas": 3.7, "ratio": 2, "size": 2500000.0},
            "status": {
                "ready": True,
                "conditions": [{"type": "Synced"}],
                "startedAt": ago(hours=3),
                "broken": "yesterday",
            },
        }
        printer = custom_resource_printer(columns)
        self.assertEqual(
            printer.row(widget, NOW)["cells"],
            [
                "w",
                3,
                2.0,
                True,
                "Synced",
                '{"app.kubernetes.io/name":"wid","b":"2"}',
                "wid",
                "2.5e+06",
                "3h",
                "<invalid>",
                None,
                None,
            ],
        )
        definitions = printer.column_definitions()
        self.assertEqual(
            (
                definitions[2]["priority"],
                definitions[4]["description"],
                definitions[1]["description"],
            ),
            (
                1,
                "The first condition.",
                "Custom resource definition column (in JSONPath format): .spec.replicas",
            ),
        )
        mistyped = printer.row(
            {"metadata": meta("v"), "spec": {"replicas": "three"}, "status": {"ready": "yes"}}, NOW
        )["cells"]
        self.assertEqual(mistyped[1:4], [None, None, None])


def owner(api_version: str, kind: str, name: str, controller: bool = True) -> dict[str, Any]:
    return {
        "apiVersion": api_version,
        "kind": kind,
        "name": name,
        "uid": "u",
        "controller": controller,
    }


GROUP_ADMISSION = "admissionregistration.k8s.io"
GROUP_FLOW = "flowcontrol.apiserver.k8s.io"
TEMPLATE_SPEC = {"containers": [{"name": "nginx", "image": "nginx:1.27"}]}

#: Realistic objects of the catalogue's kinds and the row kube-apiserver 1.32 prints for each.
CATALOGUED_ROWS: list[tuple[str, str, dict[str, Any], list[Any]]] = [
    (
        "",
        "PersistentVolumeClaim",
        {
            "metadata": meta("data"),
            "spec": {
                "accessModes": ["ReadWriteOnce"],
                "resources": {"requests": {"storage": "1Gi"}},
                "storageClassName": "local-path",
                "volumeName": "pv-1",
                "volumeMode": "Filesystem",
            },
            "status": {
                "phase": "Bound",
                "accessModes": ["ReadWriteOnce"],
                "capacity": {"storage": "1024Mi"},
            },
        },
        ["data", "Bound", "pv-1", "1Gi", "RWO", "local-path", "<unset>", "5m", "Filesystem"],
    ),
    (
        "",
        "PersistentVolumeClaim",
        {
            "metadata": meta(
                "claim",
                annotations={"volume.beta.kubernetes.io/storage-class": "slow"},
                deletionTimestamp=ago(seconds=3),
            ),
            "spec": {
                "accessModes": ["ReadWriteMany"],
                "resources": {"requests": {"storage": "5Gi"}},
                "storageClassName": "fast",
                "volumeAttributesClassName": "gold",
            },
            "status": {"phase": "Pending"},
        },
        ["claim", "Terminating", "", "", "", "slow", "gold", "5m", "<unset>"],
    ),
    (
        "",
        "PersistentVolume",
        {
            "metadata": meta("pv-1", None),
            "spec": {
                "capacity": {"storage": "10Gi"},
                "accessModes": ["ReadWriteMany", "ReadWriteOnce", "ReadWriteOnce"],
                "persistentVolumeReclaimPolicy": "Delete",
                "claimRef": {"namespace": "default", "name": "data"},
                "storageClassName": "local-path",
                "volumeMode": "Filesystem",
                "hostPath": {"path": "/var/lib/data"},
            },
            "status": {"phase": "Bound"},
        },
        [
            "pv-1",
            "10Gi",
            "RWO,RWX",
            "Delete",
            "Bound",
            "default/data",
            "local-path",
            "<unset>",
            "",
            "5m",
            "Filesystem",
        ],
    ),
    (
        "",
        "PersistentVolume",
        {"metadata": meta("pv-2", None), "status": {"phase": "Failed", "reason": "Recycle"}},
        ["pv-2", "0", "", "", "Failed", "", "", "<unset>", "Recycle", "5m", "<unset>"],
    ),
    (
        "",
        "PodTemplate",
        {
            "metadata": meta("tmpl"),
            "template": {
                "metadata": {"labels": {"tier": "web", "app": "shop"}},
                "spec": TEMPLATE_SPEC,
            },
        },
        ["tmpl", "nginx", "nginx:1.27", "app=shop,tier=web"],
    ),
    ("", "PodTemplate", {"metadata": meta("bare")}, ["bare", "", "", "<none>"]),
    (
        "",
        "ReplicationController",
        {
            "metadata": meta("nginx"),
            "spec": {
                "replicas": 3,
                "selector": {"app": "nginx"},
                "template": {"metadata": {"labels": {"app": "nginx"}}, "spec": TEMPLATE_SPEC},
            },
            "status": {"replicas": 3, "readyReplicas": 2},
        },
        ["nginx", 3, 3, 2, "5m", "nginx", "nginx:1.27", "app=nginx"],
    ),
    (
        "",
        "ResourceQuota",
        {
            "metadata": meta("compute"),
            "spec": {"hard": {"pods": "10"}},
            "status": {
                "hard": {
                    "requests.cpu": "1",
                    "requests.memory": "1Gi",
                    "limits.cpu": "2000m",
                    "pods": "10",
                },
                "used": {"requests.cpu": "500m", "requests.memory": "512Mi", "pods": "3"},
            },
        },
        [
            "compute",
            "pods: 3/10, requests.cpu: 500m/1, requests.memory: 512Mi/1Gi",
            "limits.cpu: 0/2",
            "5m",
        ],
    ),
    ("", "ResourceQuota", {"metadata": meta("fresh")}, ["fresh", "", "", "5m"]),
    (
        GROUP_ADMISSION,
        "MutatingWebhookConfiguration",
        {"metadata": meta("hooks", None), "webhooks": [{"name": "a.example.com"}, {"name": "b"}]},
        ["hooks", 2, "5m"],
    ),
    (
        GROUP_ADMISSION,
        "ValidatingWebhookConfiguration",
        {"metadata": meta("checks", None)},
        ["checks", 0, "5m"],
    ),
    (
        GROUP_ADMISSION,
        "ValidatingAdmissionPolicy",
        {
            "metadata": meta("replica-limit", None),
            "spec": {
                "paramKind": {"apiVersion": "v1", "kind": "ConfigMap"},
                "validations": [{"expression": "true"}, {"expression": "false"}],
            },
        },
        ["replica-limit", 2, "v1/ConfigMap", "5m"],
    ),
    (
        GROUP_ADMISSION,
        "ValidatingAdmissionPolicy",
        {"metadata": meta("plain", None), "spec": {}},
        ["plain", 0, "<unset>", "5m"],
    ),
    (
        GROUP_ADMISSION,
        "ValidatingAdmissionPolicyBinding",
        {
            "metadata": meta("bound", None),
            "spec": {"policyName": "replica-limit", "paramRef": {"name": "limits"}},
        },
        ["bound", "replica-limit", "*/limits", "5m"],
    ),
    (
        GROUP_ADMISSION,
        "ValidatingAdmissionPolicyBinding",
        {
            "metadata": meta("scoped", None),
            "spec": {"policyName": "p", "paramRef": {"name": "limits", "namespace": "team"}},
        },
        ["scoped", "p", "team/limits", "5m"],
    ),
    (
        GROUP_ADMISSION,
        "ValidatingAdmissionPolicyBinding",
        {
            "metadata": meta("selected", None),
            "spec": {
                "policyName": "p",
                "paramRef": {
                    "selector": {
                        "matchLabels": {"env": "prod", "app": "x"},
                        "matchExpressions": [
                            {"key": "tier", "operator": "In", "values": ["a", "b"]}
                        ],
                    }
                },
            },
        },
        [
            "selected",
            "p",
            "&LabelSelector{MatchLabels:map[string]string{app: x,env: prod,},"
            "MatchExpressions:[]LabelSelectorRequirement{LabelSelectorRequirement{Key:tier,"
            "Operator:In,Values:[a b],},},}",
            "5m",
        ],
    ),
    (
        GROUP_ADMISSION,
        "ValidatingAdmissionPolicyBinding",
        {"metadata": meta("loose", None), "spec": {"policyName": "p"}},
        ["loose", "p", "<unset>", "5m"],
    ),
    (
        "apiregistration.k8s.io",
        "APIService",
        {
            "metadata": meta("v1beta1.metrics.k8s.io", None),
            "spec": {"service": {"namespace": "kube-system", "name": "metrics-server"}},
            "status": {
                "conditions": [
                    {"type": "Available", "status": "False", "reason": "FailedDiscoveryCheck"}
                ]
            },
        },
        [
            "v1beta1.metrics.k8s.io",
            "kube-system/metrics-server",
            "False (FailedDiscoveryCheck)",
            "5m",
        ],
    ),
    (
        "apiregistration.k8s.io",
        "APIService",
        {
            "metadata": meta("v1.apps", None),
            "spec": {"group": "apps", "version": "v1"},
            "status": {"conditions": [{"type": "Available", "status": "True", "reason": "Local"}]},
        },
        ["v1.apps", "Local", "True", "5m"],
    ),
    (
        "apiregistration.k8s.io",
        "APIService",
        {"metadata": meta("v1.new", None)},
        ["v1.new", "Local", "Unknown", "5m"],
    ),
    (
        "apps",
        "ControllerRevision",
        {
            "metadata": meta(
                "svclb-5d8f", ownerReferences=[owner("apps/v1", "DaemonSet", "svclb")]
            ),
            "revision": 2,
        },
        ["svclb-5d8f", "daemonset.apps/svclb", 2, "5m"],
    ),
    (
        "apps",
        "ControllerRevision",
        {
            "metadata": meta(
                "r",
                ownerReferences=[owner("v1", "Pod", "a", False), owner("v1", "Pod", "b")],
            ),
            "revision": 1,
        },
        ["r", "pod/b", 1, "5m"],
    ),
    ("apps", "ControllerRevision", {"metadata": meta("orphan")}, ["orphan", "<none>", 0, "5m"]),
    (
        "autoscaling",
        "HorizontalPodAutoscaler",
        {
            "metadata": meta("web"),
            "spec": {
                "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"},
                "minReplicas": 1,
                "maxReplicas": 10,
                "metrics": [
                    {
                        "type": "Resource",
                        "resource": {
                            "name": "cpu",
                            "target": {"type": "Utilization", "averageUtilization": 50},
                        },
                    },
                    {
                        "type": "Resource",
                        "resource": {
                            "name": "memory",
                            "target": {"type": "AverageValue", "averageValue": "100Mi"},
                        },
                    },
                    {
                        "type": "Pods",
                        "pods": {
                            "metric": {"name": "packets"},
                            "target": {"type": "AverageValue", "averageValue": "1k"},
                        },
                    },
                ],
            },
            "status": {
                "currentReplicas": 3,
                "desiredReplicas": 3,
                "currentMetrics": [
                    {
                        "type": "Resource",
                        "resource": {
                            "name": "cpu",
                            "current": {"averageUtilization": 32, "averageValue": "64m"},
                        },
                    },
                    {
                        "type": "Resource",
                        "resource": {"name": "memory", "current": {"averageValue": "62914560"}},
                    },
                ],
            },
        },
        [
            "web",
            "Deployment/web",
            "cpu: 32%/50%, memory: 62914560/100Mi + 1 more...",
            "1",
            10,
            3,
            "5m",
        ],
    ),
    (
        "autoscaling",
        "HorizontalPodAutoscaler",
        {
            "metadata": meta("queue"),
            "spec": {
                "scaleTargetRef": {"kind": "StatefulSet", "name": "worker"},
                "maxReplicas": 4,
                "metrics": [
                    {
                        "type": "External",
                        "external": {
                            "metric": {"name": "queue_depth"},
                            "target": {"type": "AverageValue", "averageValue": "30"},
                        },
                    },
                    {
                        "type": "Object",
                        "object": {
                            "metric": {"name": "requests"},
                            "describedObject": {"kind": "Ingress", "name": "main"},
                            "target": {"type": "Value", "value": "10k"},
                        },
                    },
                ],
            },
            "status": {
                "currentMetrics": [
                    {"type": "External", "external": {"current": {"value": "12"}}},
                    {"type": "Object", "object": {"current": {"value": "2500"}}},
                ]
            },
        },
        ["queue", "StatefulSet/worker", "<unknown>/30 (avg), 2500/10k", "<unset>", 4, 0, "5m"],
    ),
    (
        "autoscaling",
        "HorizontalPodAutoscaler",
        {
            "metadata": meta("idle"),
            "spec": {"scaleTargetRef": {"kind": "Deployment", "name": "idle"}, "maxReplicas": 2},
        },
        ["idle", "Deployment/idle", "<none>", "<unset>", 2, 0, "5m"],
    ),
    (
        "certificates.k8s.io",
        "CertificateSigningRequest",
        {
            "metadata": meta("csr-admin", None),
            "spec": {
                "signerName": "kubernetes.io/kube-apiserver-client",
                "username": "admin",
                "expirationSeconds": 86400,
                "request": "LS0t",
            },
            "status": {
                "conditions": [{"type": "Approved", "status": "True"}],
                "certificate": "LS0t",
            },
        },
        [
            "csr-admin",
            "5m",
            "kubernetes.io/kube-apiserver-client",
            "admin",
            "24h",
            "Approved,Issued",
        ],
    ),
    (
        "certificates.k8s.io",
        "CertificateSigningRequest",
        {
            "metadata": meta("csr-bad", None),
            "spec": {"request": "LS0t", "username": "system:node:n1"},
            "status": {
                "conditions": [{"type": "Failed"}, {"type": "Denied"}, {"type": "Approved"}]
            },
        },
        ["csr-bad", "5m", "<none>", "system:node:n1", "<none>", "Denied,Failed"],
    ),
    (
        "certificates.k8s.io",
        "CertificateSigningRequest",
        {"metadata": meta("csr-new", None), "spec": {"expirationSeconds": 3600}},
        ["csr-new", "5m", "<none>", "", "60m", "Pending"],
    ),
    (
        GROUP_FLOW,
        "FlowSchema",
        {
            "metadata": meta("exempt", None),
            "spec": {"priorityLevelConfiguration": {"name": "exempt"}, "matchingPrecedence": 1},
            "status": {"conditions": [{"type": "Dangling", "status": "False"}]},
        },
        ["exempt", "exempt", 1, "<none>", "5m", "False"],
    ),
    (
        GROUP_FLOW,
        "FlowSchema",
        {
            "metadata": meta("service-accounts", None),
            "spec": {
                "priorityLevelConfiguration": {"name": "workload-low"},
                "matchingPrecedence": 9000,
                "distinguisherMethod": {"type": "ByUser"},
            },
        },
        ["service-accounts", "workload-low", 9000, "ByUser", "5m", "?"],
    ),
    (
        GROUP_FLOW,
        "PriorityLevelConfiguration",
        {
            "metadata": meta("workload-low", None),
            "spec": {
                "type": "Limited",
                "limited": {
                    "nominalConcurrencyShares": 100,
                    "lendablePercent": 90,
                    "limitResponse": {
                        "type": "Queue",
                        "queuing": {"queues": 128, "handSize": 6, "queueLengthLimit": 50},
                    },
                },
            },
        },
        ["workload-low", "Limited", 100, 128, 6, 50, "5m"],
    ),
    (
        GROUP_FLOW,
        "PriorityLevelConfiguration",
        {
            "metadata": meta("catch-all", None),
            "spec": {
                "type": "Limited",
                "limited": {"nominalConcurrencyShares": 5, "limitResponse": {"type": "Reject"}},
            },
        },
        ["catch-all", "Limited", 5, "<none>", "<none>", "<none>", "5m"],
    ),
    (
        GROUP_FLOW,
        "PriorityLevelConfiguration",
        {"metadata": meta("exempt", None), "spec": {"type": "Exempt", "exempt": {}}},
        ["exempt", "Exempt", "<none>", "<none>", "<none>", "<none>", "5m"],
    ),
    (
        "networking.k8s.io",
        "Ingress",
        {
            "metadata": meta("web"),
            "spec": {
                "ingressClassName": "traefik",
                "rules": [
                    {"host": "a.example.com"},
                    {"http": {"paths": []}},
                    {"host": "b.example.com"},
                    {"host": "c.example.com"},
                    {"host": "d.example.com"},
                ],
                "tls": [{"hosts": ["a.example.com"], "secretName": "tls"}],
            },
            "status": {
                "loadBalancer": {
                    "ingress": [
                        {"ip": "10.0.0.2"},
                        {"hostname": "lb.example.com"},
                        {"ip": "10.0.0.1"},
                    ]
                }
            },
        },
        [
            "web",
            "traefik",
            "a.example.com,b.example.com,c.example.com + 2 more...",
            "10.0.0.1,10.0.0.2,lb.example.com",
            "80, 443",
            "5m",
        ],
    ),
    (
        "networking.k8s.io",
        "Ingress",
        {
            "metadata": meta("default-backend"),
            "spec": {"defaultBackend": {"service": {"name": "web", "port": {"number": 80}}}},
        },
        ["default-backend", "<none>", "*", "", "80", "5m"],
    ),
    (
        "networking.k8s.io",
        "Ingress",
        {
            "metadata": meta("three"),
            "spec": {"rules": [{"host": "a"}, {"host": "b"}, {"host": "c"}]},
        },
        ["three", "<none>", "a,b,c", "", "80", "5m"],
    ),
    (
        "networking.k8s.io",
        "IngressClass",
        {
            "metadata": meta("external-lb", None),
            "spec": {
                "controller": "example.com/ingress-controller",
                "parameters": {
                    "apiGroup": "k8s.example.com",
                    "kind": "IngressParameters",
                    "name": "external-lb",
                },
            },
        },
        [
            "external-lb",
            "example.com/ingress-controller",
            "IngressParameters.k8s.example.com/external-lb",
            "5m",
        ],
    ),
    (
        "networking.k8s.io",
        "IngressClass",
        {
            "metadata": meta("traefik", None),
            "spec": {"controller": "traefik.io/ingress-controller"},
        },
        ["traefik", "traefik.io/ingress-controller", "<none>", "5m"],
    ),
    (
        "networking.k8s.io",
        "NetworkPolicy",
        {
            "metadata": meta("db"),
            "spec": {
                "podSelector": {
                    "matchLabels": {"role": "db"},
                    "matchExpressions": [{"key": "tier", "operator": "Exists"}],
                },
                "policyTypes": ["Ingress"],
            },
        },
        ["db", "role=db,tier", "5m"],
    ),
    (
        "networking.k8s.io",
        "NetworkPolicy",
        {"metadata": meta("deny-all"), "spec": {"podSelector": {}}},
        ["deny-all", "<none>", "5m"],
    ),
    (
        "node.k8s.io",
        "RuntimeClass",
        {"metadata": meta("crun", None), "handler": "crun"},
        ["crun", "crun", "5m"],
    ),
    (
        "policy",
        "PodDisruptionBudget",
        {
            "metadata": meta("web"),
            "spec": {"minAvailable": 2, "selector": {"matchLabels": {"app": "web"}}},
            "status": {"disruptionsAllowed": 1, "currentHealthy": 3, "desiredHealthy": 2},
        },
        ["web", "2", "N/A", 1, "5m"],
    ),
    (
        "policy",
        "PodDisruptionBudget",
        {"metadata": meta("db"), "spec": {"maxUnavailable": "25%"}},
        ["db", "N/A", "25%", 0, "5m"],
    ),
    (
        "scheduling.k8s.io",
        "PriorityClass",
        {
            "metadata": meta("system-cluster-critical", None),
            "value": 2000000000,
            "preemptionPolicy": "PreemptLowerPriority",
        },
        ["system-cluster-critical", 2000000000, False, "5m", "PreemptLowerPriority"],
    ),
    (
        "scheduling.k8s.io",
        "PriorityClass",
        {"metadata": meta("high", None), "value": 1000, "globalDefault": True},
        ["high", 1000, True, "5m", ""],
    ),
    (
        "storage.k8s.io",
        "StorageClass",
        {
            "metadata": meta(
                "local-path",
                None,
                annotations={"storageclass.kubernetes.io/is-default-class": "true"},
            ),
            "provisioner": "rancher.io/local-path",
            "reclaimPolicy": "Delete",
            "volumeBindingMode": "WaitForFirstConsumer",
        },
        [
            "local-path (default)",
            "rancher.io/local-path",
            "Delete",
            "WaitForFirstConsumer",
            False,
            "5m",
        ],
    ),
    (
        "storage.k8s.io",
        "StorageClass",
        {
            "metadata": meta(
                "fast",
                None,
                annotations={"storageclass.beta.kubernetes.io/is-default-class": "false"},
            ),
            "provisioner": "ebs.csi.aws.com",
            "reclaimPolicy": "Retain",
            "allowVolumeExpansion": True,
        },
        ["fast", "ebs.csi.aws.com", "Retain", "Immediate", True, "5m"],
    ),
    (
        "storage.k8s.io",
        "CSIDriver",
        {
            "metadata": meta("secrets.csi.example.com", None),
            "spec": {
                "attachRequired": False,
                "podInfoOnMount": True,
                "volumeLifecycleModes": ["Persistent", "Ephemeral"],
                "tokenRequests": [{"audience": "vault"}, {"audience": "aws"}],
                "requiresRepublish": True,
            },
        },
        [
            "secrets.csi.example.com",
            False,
            True,
            False,
            "vault,aws",
            True,
            "Persistent,Ephemeral",
            "5m",
        ],
    ),
    (
        "storage.k8s.io",
        "CSIDriver",
        {"metadata": meta("plain.csi", None), "spec": {}},
        ["plain.csi", True, False, False, "<unset>", False, "<none>", "5m"],
    ),
    (
        "storage.k8s.io",
        "CSINode",
        {
            "metadata": meta("node-1", None),
            "spec": {"drivers": [{"name": "csi.example.com", "nodeID": "node-1"}]},
        },
        ["node-1", 1, "5m"],
    ),
    (
        "storage.k8s.io",
        "CSIStorageCapacity",
        {
            "metadata": meta("cap-1"),
            "storageClassName": "local-path",
            "capacity": "100Gi",
        },
        ["cap-1", "local-path", "100Gi"],
    ),
    (
        "storage.k8s.io",
        "CSIStorageCapacity",
        {"metadata": meta("cap-2"), "storageClassName": "fast"},
        ["cap-2", "fast", "<unset>"],
    ),
    (
        "storage.k8s.io",
        "VolumeAttachment",
        {
            "metadata": meta("csi-abc", None),
            "spec": {
                "attacher": "csi.example.com",
                "source": {"persistentVolumeName": "pv-1"},
                "nodeName": "node-1",
            },
            "status": {"attached": True},
        },
        ["csi-abc", "csi.example.com", "pv-1", "node-1", True, "5m"],
    ),
    (
        "storage.k8s.io",
        "VolumeAttachment",
        {
            "metadata": meta("inline", None),
            "spec": {
                "attacher": "csi.example.com",
                "source": {"inlineVolumeSpec": {}},
                "nodeName": "n",
            },
        },
        ["inline", "csi.example.com", "", "n", False, "5m"],
    ),
]

#: kubectl's header for the kinds of ``kubectl get pvc,ingress,hpa,pdb,sc,priorityclass``.
KUBE_HEADERS = {
    ("", "PersistentVolumeClaim"): "NAME STATUS VOLUME CAPACITY ACCESS MODES STORAGECLASS "
    "VOLUMEATTRIBUTESCLASS AGE",
    ("networking.k8s.io", "Ingress"): "NAME CLASS HOSTS ADDRESS PORTS AGE",
    ("autoscaling", "HorizontalPodAutoscaler"): "NAME REFERENCE TARGETS MINPODS MAXPODS "
    "REPLICAS AGE",
    ("policy", "PodDisruptionBudget"): "NAME MIN AVAILABLE MAX UNAVAILABLE ALLOWED DISRUPTIONS AGE",
    ("storage.k8s.io", "StorageClass"): "NAME PROVISIONER RECLAIMPOLICY VOLUMEBINDINGMODE "
    "ALLOWVOLUMEEXPANSION AGE",
    # PreemptionPolicy has no priority in kube 1.32: it shows without -o wide.
    ("scheduling.k8s.io", "PriorityClass"): "NAME VALUE GLOBAL-DEFAULT AGE PREEMPTIONPOLICY",
}


class CataloguedPrinterTests(SynchronousTestCase):
    def test_rows_match_kube(self) -> None:
        """Each catalogued kind's row for a realistic object is kube-apiserver 1.32's."""
        actual = [cells(group, kind, obj) for group, kind, obj, _ in CATALOGUED_ROWS]
        self.assertEqual(actual, [wanted for *_, wanted in CATALOGUED_ROWS])

    def test_kinds_without_columns_print_the_default(self) -> None:
        """The catalogue's kinds kube gives no columns (LimitRange, the reviews) print Name
        and Created At; every other one has its own printer."""
        defaults = {
            key for key, printer in CATALOGUE_PRINTERS.items() if printer is DEFAULT_PRINTER
        }
        self.assertEqual(
            defaults,
            {
                ("", "LimitRange"),
                ("authentication.k8s.io", "SelfSubjectReview"),
                ("authentication.k8s.io", "TokenReview"),
                ("authorization.k8s.io", "LocalSubjectAccessReview"),
                ("authorization.k8s.io", "SelfSubjectAccessReview"),
                ("authorization.k8s.io", "SelfSubjectRulesReview"),
                ("authorization.k8s.io", "SubjectAccessReview"),
            },
        )

    def test_headers_and_wide_columns(self) -> None:
        """Column names as kubectl upper-cases them; -o wide columns, types and formats."""
        for key, header in KUBE_HEADERS.items():
            names = [c.name.upper() for c in PRINTERS[key].columns if c.priority == 0]
            self.assertEqual(" ".join(names), header)
        own = {key: PRINTERS[key] for key in CATALOGUE_PRINTERS if key in PRINTERS}
        wide = {
            key: [c.name for c in printer.columns if c.priority]
            for key, printer in own.items()
            if any(c.priority for c in printer.columns)
        }
        self.assertEqual(
            wide,
            {
                ("", "PersistentVolume"): ["VolumeMode"],
                ("", "PersistentVolumeClaim"): ["VolumeMode"],
                ("", "ReplicationController"): ["Containers", "Images", "Selector"],
            },
        )
        typed = {
            (key[1], c.name): (c.type, c.format)
            for key, printer in own.items()
            for c in printer.columns
            if (c.type, c.format) != ("string", "") and c.name != "Name"
        }
        self.assertEqual(
            typed,
            {
                ("ReplicationController", "Desired"): ("integer", ""),
                ("ReplicationController", "Current"): ("integer", ""),
                ("ReplicationController", "Ready"): ("integer", ""),
                ("MutatingWebhookConfiguration", "Webhooks"): ("integer", ""),
                ("ValidatingWebhookConfiguration", "Webhooks"): ("integer", ""),
                ("ValidatingAdmissionPolicy", "Validations"): ("integer", ""),
                ("PodDisruptionBudget", "Allowed Disruptions"): ("integer", ""),
                ("PriorityClass", "Value"): ("integer", ""),
                ("PriorityClass", "Global-Default"): ("boolean", ""),
                ("CSIDriver", "AttachRequired"): ("boolean", ""),
                ("CSIDriver", "PodInfoOnMount"): ("boolean", ""),
                ("CSIDriver", "StorageCapacity"): ("boolean", ""),
                ("CSIDriver", "RequiresRepublish"): ("boolean", ""),
                ("CSINode", "Drivers"): ("integer", ""),
                ("VolumeAttachment", "Attacher"): ("string", "name"),
                ("VolumeAttachment", "Attached"): ("boolean", ""),
            },
        )

    def test_autoscaling_v1_prints_the_v2_columns(self) -> None:
        """An autoscaling/v1 HPA prints as its stored v2 form: its CPU target and reading."""
        (v1,) = converted_versions(CATALOGUED)
        hpa = {
            "apiVersion": "autoscaling/v1",
            "kind": "HorizontalPodAutoscaler",
            "metadata": meta("web"),
            "spec": {
                "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"},
                "minReplicas": 2,
                "maxReplicas": 5,
                "targetCPUUtilizationPercentage": 80,
            },
            "status": {
                "currentReplicas": 2,
                "desiredReplicas": 2,
                "currentCPUUtilizationPercentage": 45,
            },
        }
        self.assertEqual(
            v1.strategy.printer.row(hpa, NOW)["cells"],
            ["web", "Deployment/web", "cpu: 45%/80%", "2", 5, 2, "5m"],
        )


SAMPLES: dict[tuple[str, str], dict[str, Any]] = {
    ("", "Pod"): make_pod(2, [container_status("c0", RUNNING, True)]),
    ("", "Node"): make_node(),
    ("", "Service"): make_service("NodePort", ports=[{"port": 80, "nodePort": 30080}]),
    ("", "Endpoints"): {"metadata": meta("e"), "subsets": [{"addresses": [{"ip": "1.2.3.4"}]}]},
    ("", "Secret"): {"metadata": meta("s"), "type": "Opaque", "data": {}},
    ("", "ConfigMap"): {"metadata": meta("c"), "data": {"k": "v"}},
    ("", "Namespace"): {"metadata": meta("n", None), "status": {"phase": "Active"}},
    ("", "Event"): {"metadata": meta("ev"), "involvedObject": {"kind": "Pod", "name": "p"}},
    ("events.k8s.io", "Event"): {"metadata": meta("ev"), "regarding": {"kind": "Pod", "name": "p"}},
    ("", "ServiceAccount"): {"metadata": meta("default")},
    ("coordination.k8s.io", "Lease"): {"metadata": meta("l"), "spec": {"holderIdentity": "h"}},
    ("discovery.k8s.io", "EndpointSlice"): {"metadata": meta("es"), "addressType": "IPv4"},
    ("apps", "Deployment"): {"metadata": meta("d"), "spec": {"template": TEMPLATE}},
    ("apps", "ReplicaSet"): {"metadata": meta("r"), "spec": {"template": TEMPLATE}},
    ("apps", "DaemonSet"): {"metadata": meta("ds"), "spec": {"template": TEMPLATE}},
    ("apps", "StatefulSet"): {
        "metadata": meta("db"),
        "spec": {"replicas": 3, "template": TEMPLATE},
        "status": {"readyReplicas": 2},
    },
    ("batch", "Job"): {
        "metadata": meta("once"),
        "spec": {"completions": 3, "template": TEMPLATE},
        "status": {"succeeded": 1, "startTime": ago(minutes=2)},
    },
    ("batch", "CronJob"): {
        "metadata": meta("nightly"),
        "spec": {"schedule": "0 3 * * *", "jobTemplate": {"spec": {"template": TEMPLATE}}},
        "status": {"active": [{"name": "nightly-1"}], "lastScheduleTime": ago(hours=3)},
    },
    ("apiextensions.k8s.io", "CustomResourceDefinition"): {"metadata": meta("a.b", None)},
    ("rbac.authorization.k8s.io", "Role"): {"metadata": meta("r"), "rules": []},
    ("rbac.authorization.k8s.io", "ClusterRole"): {"metadata": meta("cr", None), "rules": []},
    ("rbac.authorization.k8s.io", "RoleBinding"): {
        "metadata": meta("rb"),
        "roleRef": {"kind": "ClusterRole", "name": "view"},
        "subjects": [
            {"kind": "User", "name": "bob"},
            {"kind": "Group", "name": "dev"},
            {"kind": "ServiceAccount", "name": "robot", "namespace": "team"},
        ],
    },
    ("rbac.authorization.k8s.io", "ClusterRoleBinding"): {
        "metadata": meta("crb", None),
        "roleRef": {"kind": "ClusterRole", "name": "edit"},
    },
    **{(group, kind): obj for group, kind, obj, _ in reversed(CATALOGUED_ROWS)},
}

SPARSE_OBJECTS: list[dict[str, Any]] = [
    {},
    {"metadata": {}},
    {"metadata": {"name": "x", "creationTimestamp": "not a time"}, "spec": None, "status": None},
    {
        "metadata": {"name": "x"},
        "spec": {"containers": None, "ports": "80", "selector": None},
        "status": {"conditions": [None, "x"], "containerStatuses": [{"state": None}]},
    },
]


class RBACPrinterTests(SynchronousTestCase):
    def test_role_binding(self) -> None:
        """kubectl 1.32's columns: the role as Kind/name, and the subjects with -o wide."""
        row = BUILTIN_PRINTERS[("rbac.authorization.k8s.io", "RoleBinding")].row(
            SAMPLES[("rbac.authorization.k8s.io", "RoleBinding")], NOW
        )
        self.assertEqual(row["cells"], ["rb", "ClusterRole/view", "5m", "bob", "dev", "team/robot"])


class BatchAndStatefulPrinterTests(SynchronousTestCase):
    """The columns kubectl 1.32 prints for StatefulSets, Jobs and CronJobs."""

    def cells(self, key: tuple[str, str]) -> list[Any]:
        row = BUILTIN_PRINTERS[key].row(SAMPLES[key], NOW)
        cells: list[Any] = row["cells"]
        return cells

    def test_statefulset(self) -> None:
        self.assertEqual(self.cells(("apps", "StatefulSet"))[:2], ["db", "2/3"])

    def test_job(self) -> None:
        self.assertEqual(self.cells(("batch", "Job"))[:4], ["once", "Running", "1/3", "2m"])
        done = {
            "metadata": meta("done"),
            "spec": {"parallelism": 2},
            "status": {
                "succeeded": 2,
                "startTime": ago(minutes=5),
                "completionTime": ago(minutes=4),
                "conditions": [{"type": "Complete", "status": "True"}],
            },
        }
        cells = BUILTIN_PRINTERS[("batch", "Job")].row(done, NOW)["cells"]
        self.assertEqual(cells[1:4], ["Complete", "2/1 of 2", "60s"])

    def test_cronjob(self) -> None:
        self.assertEqual(
            self.cells(("batch", "CronJob"))[:6],
            ["nightly", "0 3 * * *", "<none>", "False", 1, "3h"],
        )


class TableTests(SynchronousTestCase):
    def test_every_printer_fills_every_column(self) -> None:
        """Each built-in printer yields one JSON-serialisable cell per column, sparse or not."""
        self.assertEqual(set(SAMPLES), set(PRINTERS))
        widths: dict[tuple[str, str], set[int]] = {}
        for key, printer in PRINTERS.items():
            for obj in [SAMPLES[key], *SPARSE_OBJECTS]:
                row = printer.row(obj, NOW)
                json.dumps(row)
                widths.setdefault(key, set()).add(len(row["cells"]))
        self.assertEqual(widths, {key: {len(printer.columns)} for key, printer in PRINTERS.items()})

    def test_list_table(self) -> None:
        """A list Table carries metadata, column definitions and PartialObjectMetadata rows."""
        objects = [SAMPLES[("", "ConfigMap")], {"metadata": meta("d2", labels={"a": "b"})}]
        result = table(configmaps.PRINTER, objects, NOW, "42", "token", remaining_item_count=3)
        self.assertEqual(
            {k: v for k, v in result.items() if k not in ("columnDefinitions", "rows")},
            {
                "kind": "Table",
                "apiVersion": "meta.k8s.io/v1",
                "metadata": {"resourceVersion": "42", "continue": "token", "remainingItemCount": 3},
            },
        )
        self.assertEqual([c["name"] for c in result["columnDefinitions"]], ["Name", "Data", "Age"])
        self.assertEqual(
            result["rows"][1],
            {
                "cells": ["d2", 0, "5m"],
                "object": {
                    "kind": "PartialObjectMetadata",
                    "apiVersion": "meta.k8s.io/v1",
                    "metadata": objects[1]["metadata"],
                },
            },
        )
        self.assertEqual(table(configmaps.PRINTER, [], NOW)["metadata"], {})

    def test_include_object(self) -> None:
        """includeObject=None nulls the row object, Object embeds it, others are 400s."""
        obj = SAMPLES[("", "Secret")]
        self.assertIsNone(
            table(secrets.PRINTER, [obj], NOW, include_object="None")["rows"][0]["object"]
        )
        self.assertIs(
            table(secrets.PRINTER, [obj], NOW, include_object="Object")["rows"][0]["object"],
            obj,
        )
        self.assertEqual(
            table(secrets.PRINTER, [obj], NOW, include_object=None)["rows"][0]["object"]["kind"],
            "PartialObjectMetadata",
        )
        with self.assertRaises(TableOptionError) as raised:
            table(secrets.PRINTER, [obj], NOW, include_object="Everything")
        self.assertEqual(
            (raised.exception.code, str(raised.exception)),
            (400, 'unrecognized includeObject value: "Everything"'),
        )

    def test_watch_events(self) -> None:
        """A watch event's one-row Table carries the object's resourceVersion; columns once."""
        obj = {"metadata": meta("c", resourceVersion="17"), "data": {}}
        first = watch_event_table(configmaps.PRINTER, obj, NOW, with_columns=True)
        later = watch_event_table(configmaps.PRINTER, obj, NOW, with_columns=False)
        self.assertEqual(first["metadata"], {"resourceVersion": "17"})
        self.assertEqual(len(first["columnDefinitions"]), 3)
        self.assertIsNone(later["columnDefinitions"])
        self.assertEqual(first["rows"], later["rows"])
        self.assertIn('"columnDefinitions": null', json.dumps(later))

    def test_served_resources_carry_their_printer(self) -> None:
        """A served resource prints with its kind's printer; a custom one with its CRD's columns."""
        listed = table(pods.RESOURCE.strategy.printer, [SAMPLES[("", "Pod")]], NOW.timestamp(), "9")
        self.assertEqual(listed["columnDefinitions"][2]["name"], "Status")
        self.assertEqual(listed["rows"][0]["cells"][:3], ["web", "1/2", "Running"])
        widget, gadget = (
            resources_of_crd(
                {
                    "metadata": {"name": f"{plural}.example.com"},
                    "spec": {
                        "group": "example.com",
                        "names": {"kind": plural.title(), "plural": plural},
                        "versions": [{"name": "v1", "additionalPrinterColumns": columns}],
                    },
                }
            )[0]
            for plural, columns in (
                ("widgets", [{"name": "Size", "type": "integer", "jsonPath": ".spec.size"}]),
                ("gadgets", []),
            )
        )
        event = watch_event_table(
            widget.strategy.printer,
            {"metadata": meta("w", resourceVersion="3"), "spec": {"size": 7}},
            NOW.timestamp(),
            with_columns=True,
        )
        self.assertEqual(
            ([c["name"] for c in event["columnDefinitions"]], event["rows"][0]["cells"]),
            (["Name", "Size"], ["w", 7]),
        )
        self.assertEqual(
            table(gadget.strategy.printer, [{"metadata": meta("g")}], NOW)["rows"][0]["cells"],
            ["g", "5m"],
        )
