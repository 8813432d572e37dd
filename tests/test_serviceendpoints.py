"""
The endpoint and endpointslice controllers on the in-memory server, on a
Clock: a Service's Endpoints and EndpointSlices follow the pods it selects
as they get IPs, turn Ready, terminate, change labels, and go.
"""

from __future__ import annotations

from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from k3stw.controllers.endpoints import APIServerEndpoints
from k3stw.controllers.serviceendpoints import (
    HEADLESS,
    MANAGED_BY,
    SERVICE_NAME,
    SLICE_CONTROLLER,
    TRIGGER_TIME,
    EndpointsController,
    EndpointSliceController,
)
from k3stw.machinery.objects import Object
from k3stw.machinery.times import rfc3339
from tests.support.apiserver import MemoryServer


def pod_object(
    name: str, labels: dict[str, str], ports: list[dict[str, Any]] | None = None, **spec: Any
) -> Object:
    container: dict[str, Any] = {"name": "app", "image": "nginx"}
    if ports:
        container["ports"] = ports
    return {
        "metadata": {"name": name, "labels": labels},
        "spec": {"containers": [container], **spec},
    }


class ServiceEndpointsTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.server = MemoryServer(self)
        self.store = self.server.store
        self.clock = self.server.clock
        self.pods = self.server.resource("", "pods")
        self.endpoints = EndpointsController(self.server.informers, self.store)
        self.slices = EndpointSliceController(self.server.informers, self.store, max_per_slice=3)
        self.server.start(self.endpoints, self.slices)

    # Making the world

    def service(
        self, name: str = "web", selector: dict[str, str] | None = None, **spec: Any
    ) -> Object:
        body: dict[str, Any] = {
            "ports": [{"name": "http", "port": 80, "targetPort": 8080}],
            **spec,
        }
        if selector is not None:
            body["selector"] = selector
        return self.server.create(
            "", "services", {"metadata": {"name": name}, "spec": body}, "default"
        )

    def pod(
        self,
        name: str,
        ip: str | None = None,
        ready: bool = False,
        labels: dict[str, str] | None = None,
        ports: list[dict[str, Any]] | None = None,
        **spec: Any,
    ) -> Object:
        created = self.server.create(
            "", "pods", pod_object(name, labels or {"app": "web"}, ports, **spec), "default"
        )
        if ip is not None:
            self.set_status(name, ip, ready)
        return created

    def set_status(self, name: str, ip: str, ready: bool) -> None:
        pod = self.server.get("", "pods", name, "default")
        pod["status"] = {
            "phase": "Running",
            "podIP": ip,
            "podIPs": [{"ip": ip}],
            "conditions": [
                {
                    "type": "Ready",
                    "status": "True" if ready else "False",
                    "lastTransitionTime": rfc3339(self.clock.seconds()),
                }
            ],
        }
        self.server.run(self.store.update(self.pods, "default", name, pod, subresource="status"))

    # Looking at it

    def subsets(self, name: str = "web") -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = self.server.get("", "endpoints", name, "default").get(
            "subsets", []
        )
        return found

    def addresses(self, name: str = "web", which: str = "addresses") -> list[str]:
        return sorted(a["ip"] for s in self.subsets(name) for a in s.get(which, []))

    def slices_of(self, name: str = "web") -> list[Object]:
        listed = self.server.run(
            self.store.list(self.server.resource("discovery.k8s.io", "endpointslices"), "default")
        )
        return [
            s for s in listed.items if (s["metadata"].get("labels") or {}).get(SERVICE_NAME) == name
        ]

    def slice_addresses(self, name: str = "web") -> dict[str, dict[str, bool]]:
        return {
            e["addresses"][0]: e["conditions"]
            for s in self.slices_of(name)
            for e in s.get("endpoints") or []
        }

    # Endpoints

    def test_ready_and_not_ready_pods(self) -> None:
        """Ready pods are addresses, the others notReadyAddresses, with the targetPort."""
        self.service(selector={"app": "web"})
        self.pod("a", "10.42.0.5", ready=True, nodeName="n1")
        self.pod("b", "10.42.0.6", ready=False)
        self.pod("no-ip")
        self.pod("other", "10.42.0.7", ready=True, labels={"app": "other"})
        [subset] = self.subsets()
        self.assertEqual(subset["ports"], [{"name": "http", "port": 8080, "protocol": "TCP"}])
        [address] = subset["addresses"]
        pod = self.server.get("", "pods", "a", "default")
        self.assertEqual(
            address,
            {
                "ip": "10.42.0.5",
                "nodeName": "n1",
                "targetRef": {
                    "kind": "Pod",
                    "namespace": "default",
                    "name": "a",
                    "uid": pod["metadata"]["uid"],
                },
            },
        )
        self.assertEqual(self.addresses(which="notReadyAddresses"), ["10.42.0.6"])
        self.set_status("b", "10.42.0.6", ready=True)
        self.assertEqual(self.addresses(), ["10.42.0.5", "10.42.0.6"])
        endpoints = self.server.get("", "endpoints", "web", "default")
        self.assertIn(TRIGGER_TIME, endpoints["metadata"]["annotations"])

    def test_publish_not_ready(self) -> None:
        self.service(selector={"app": "web"}, publishNotReadyAddresses=True)
        self.pod("b", "10.42.0.6", ready=False)
        self.assertEqual(self.addresses(), ["10.42.0.6"])
        self.assertEqual(self.slice_addresses()["10.42.0.6"]["ready"], True)

    def test_named_target_port_per_resolution(self) -> None:
        """A named targetPort resolves per pod: pods that differ land in different subsets."""
        self.service(
            selector={"app": "web"}, ports=[{"name": "http", "port": 80, "targetPort": "web"}]
        )
        self.pod("a", "10.42.0.5", True, ports=[{"name": "web", "containerPort": 8080}])
        self.pod("b", "10.42.0.6", True, ports=[{"name": "web", "containerPort": 9090}])
        self.pod("c", "10.42.0.7", True, ports=[{"name": "other", "containerPort": 9090}])
        by_port = {s["ports"][0]["port"]: [a["ip"] for a in s["addresses"]] for s in self.subsets()}
        self.assertEqual(by_port, {8080: ["10.42.0.5"], 9090: ["10.42.0.6"]})
        # In slices, a pod none of whose ports resolve is an endpoint without ports.
        slices = {s["ports"][0]["port"] if s["ports"] else None: s for s in self.slices_of()}
        self.assertEqual(set(slices), {8080, 9090, None})
        self.assertEqual(slices[None]["endpoints"][0]["addresses"], ["10.42.0.7"])
        self.assertEqual(slices[9090]["endpoints"][0]["addresses"], ["10.42.0.6"])

    def test_headless_hostnames(self) -> None:
        self.service(selector={"app": "web"}, clusterIP="None", ports=None)
        self.pod("a", "10.42.0.5", True, hostname="a", subdomain="web")
        [subset] = self.subsets()
        self.assertNotIn("ports", subset)
        self.assertEqual(subset["addresses"][0]["hostname"], "a")
        endpoints = self.server.get("", "endpoints", "web", "default")
        self.assertEqual(endpoints["metadata"]["labels"], {HEADLESS: ""})
        [slice_] = self.slices_of()
        self.assertEqual(slice_["endpoints"][0]["hostname"], "a")
        self.assertEqual(slice_["metadata"]["labels"][HEADLESS], "")

    def test_label_change_leaves(self) -> None:
        """A pod whose labels stop matching leaves the Service's endpoints."""
        self.service(selector={"app": "web"})
        self.pod("a", "10.42.0.5", True)
        pod = self.server.get("", "pods", "a", "default")
        pod["metadata"]["labels"] = {"app": "gone"}
        self.server.run(self.store.update(self.pods, "default", "a", pod))
        self.assertEqual(self.subsets(), [])
        self.assertEqual(self.slice_addresses(), {})

    def test_terminating_pod(self) -> None:
        """A terminating pod leaves Endpoints, and stays in slices marked terminating."""
        self.service(selector={"app": "web"})
        self.pod(
            "a",
            "10.42.0.5",
            True,
        )
        self.server.delete("", "pods", "a", "default", finalizers=("example.com/hold",))
        self.assertEqual(self.subsets(), [])
        self.assertEqual(
            self.slice_addresses(),
            {"10.42.0.5": {"ready": False, "serving": True, "terminating": True}},
        )

    def test_deleted_pod_and_service(self) -> None:
        self.service(selector={"app": "web"})
        self.pod("a", "10.42.0.5", True)
        self.server.delete("", "pods", "a", "default")
        self.assertEqual(self.subsets(), [])
        self.server.delete("", "services", "web", "default")
        self.assertFalse(self.server.exists("", "endpoints", "web", "default"))

    def test_no_selector_left_alone(self) -> None:
        """A Service without a selector keeps the Endpoints its user writes."""
        self.service("manual")
        self.server.create(
            "",
            "endpoints",
            {
                "metadata": {"name": "manual"},
                "subsets": [{"addresses": [{"ip": "192.0.2.1"}], "ports": [{"port": 80}]}],
            },
            "default",
        )
        self.pod("a", "10.42.0.5", True)
        self.assertEqual(self.addresses("manual"), ["192.0.2.1"])
        self.assertEqual(self.slices_of("manual"), [])

    def test_kubernetes_service_kept_by_apiserver_reconciler(self) -> None:
        """default/kubernetes stays the apiserver reconciler's: no fight over it."""
        reconciler = APIServerEndpoints(
            self.server.informers, self.store, "127.0.0.9", 6443, "10.43.0.1"
        )
        self.server.start(reconciler)
        self.clock.advance(10)
        self.assertEqual(self.addresses("kubernetes"), ["127.0.0.9"])
        managed = [
            s
            for s in self.slices_of("kubernetes")
            if s["metadata"]["labels"].get(MANAGED_BY) == SLICE_CONTROLLER
        ]
        self.assertEqual(managed, [])

    # EndpointSlices

    def test_slice_shape(self) -> None:
        service = self.service(selector={"app": "web"}, labels=None)
        self.pod("a", "10.42.0.5", True, nodeName="n1")
        [slice_] = self.slices_of()
        self.assertTrue(slice_["metadata"]["name"].startswith("web-"))
        self.assertEqual(
            slice_["metadata"]["labels"],
            {SERVICE_NAME: "web", MANAGED_BY: SLICE_CONTROLLER},
        )
        self.assertEqual(
            slice_["metadata"]["ownerReferences"],
            [
                {
                    "apiVersion": "v1",
                    "kind": "Service",
                    "name": "web",
                    "uid": service["metadata"]["uid"],
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ],
        )
        self.assertEqual(slice_["addressType"], "IPv4")
        self.assertEqual(slice_["ports"], [{"name": "http", "port": 8080, "protocol": "TCP"}])
        [endpoint] = slice_["endpoints"]
        self.assertEqual(
            endpoint["conditions"], {"ready": True, "serving": True, "terminating": False}
        )
        self.assertEqual(endpoint["nodeName"], "n1")
        self.assertEqual(endpoint["targetRef"]["name"], "a")
        self.assertIn(TRIGGER_TIME, slice_["metadata"]["annotations"])

    def test_zone_from_node(self) -> None:
        self.server.create(
            "",
            "nodes",
            {"metadata": {"name": "n1", "labels": {"topology.kubernetes.io/zone": "z1"}}},
        )
        self.service(selector={"app": "web"})
        self.pod("a", "10.42.0.5", True, nodeName="n1")
        [slice_] = self.slices_of()
        self.assertEqual(slice_["endpoints"][0]["zone"], "z1")
        node = self.server.get("", "nodes", "n1")
        node["metadata"]["labels"]["topology.kubernetes.io/zone"] = "z2"
        self.server.run(self.store.update(self.server.resource("", "nodes"), None, "n1", node))
        [slice_] = self.slices_of()
        self.assertEqual(slice_["endpoints"][0]["zone"], "z2")

    def test_slices_hold_at_most_max(self) -> None:
        """Endpoints beyond a slice's capacity go to new slices; existing ones are filled first."""
        self.service(selector={"app": "web"})
        for i in range(4):
            self.pod(f"p{i}", f"10.42.0.{10 + i}", True)
        slices = self.slices_of()
        self.assertEqual(sorted(len(s["endpoints"]) for s in slices), [1, 3])
        self.assertEqual(len(self.slice_addresses()), 4)
        self.server.delete("", "pods", "p0", "default")
        self.pod("p9", "10.42.0.99", True)
        self.assertEqual(len(self.slices_of()), 2)
        self.assertEqual(len(self.slice_addresses()), 4)

    def test_empty_service_placeholder(self) -> None:
        """A Service that selects nothing has one empty slice; it goes once endpoints arrive."""
        self.service(selector={"app": "web"})
        [placeholder] = self.slices_of()
        self.assertEqual(placeholder.get("endpoints") or [], [])
        self.pod("a", "10.42.0.5", True)
        [slice_] = self.slices_of()
        self.assertEqual(len(slice_["endpoints"]), 1)
        self.server.delete("", "pods", "a", "default")
        [empty] = self.slices_of()
        self.assertEqual(empty.get("endpoints") or [], [])

    def test_tampered_slice_repaired(self) -> None:
        self.service(selector={"app": "web"})
        self.pod("a", "10.42.0.5", True)
        [slice_] = self.slices_of()
        self.server.delete(
            "discovery.k8s.io", "endpointslices", slice_["metadata"]["name"], "default"
        )
        self.assertEqual(list(self.slice_addresses()), ["10.42.0.5"])
