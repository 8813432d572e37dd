"""
ServiceLB on the in-memory server, on a Clock: a LoadBalancer Service's
``status.loadBalancer`` lists the Ready nodes its svclb pod would run on
(narrowed by the ``enablelb``/``lbpool`` labels, by ports other Services or
pods hold, by ``externalTrafficPolicy: Local``), with k3s's Events and the
upstream cleanup finalizer.
"""

from __future__ import annotations

from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from k3stw.controllers.events import EventRecorder
from k3stw.controllers.servicelb import (
    CLEANUP_FINALIZER,
    COMPONENT,
    ENABLE_LB,
    LB_POOL,
    LEGACY_FINALIZER,
    TOLERATIONS,
    ServiceLBController,
)
from k3stw.machinery.objects import Object
from tests.support.apiserver import MemoryServer


def node_object(
    name: str,
    internal: str | None,
    external: str | None = None,
    ready: bool = True,
    labels: dict[str, str] | None = None,
    taints: list[dict[str, str]] | None = None,
) -> Object:
    addresses = []
    for kind, address in (("InternalIP", internal), ("ExternalIP", external)):
        for one in (address or "").split(","):
            if one:
                addresses.append({"type": kind, "address": one})
    addresses.append({"type": "Hostname", "address": name})
    node: dict[str, Any] = {
        "metadata": {"name": name, "labels": labels or {}},
        "spec": {"taints": taints} if taints else {},
        "status": {
            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
            "addresses": addresses,
        },
    }
    return node


class ServiceLBTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.server = MemoryServer(self)
        self.store = self.server.store
        self.clock = self.server.clock
        for index in (1, 2, 3):
            self.add_node(f"node-{index}", f"10.0.0.{index}")

    def start(self) -> ServiceLBController:
        events = EventRecorder(self.store, self.clock, COMPONENT, "server-1")
        controller = ServiceLBController(self.server.informers, self.store, events)
        self.server.start(controller)
        return controller

    # Making the world

    def add_node(self, name: str, internal: str | None, **kwargs: Any) -> None:
        self.server.create("", "nodes", node_object(name, internal, **kwargs))

    def replace_node(self, name: str, internal: str | None, **kwargs: Any) -> None:
        """Give the node these addresses, readiness and taints (keeping its labels)."""
        wanted = node_object(name, internal, **kwargs)
        nodes = self.server.resource("", "nodes")
        for subresource, field in ((None, "spec"), ("status", "status")):

            def replace(node: Object, field: str = field) -> Object:
                node[field] = wanted[field]
                return node

            self.server.run(
                self.store.guaranteed_update(nodes, None, name, replace, subresource=subresource)
            )

    def label_node(self, name: str, **labels: str) -> None:
        def label(node: Object) -> Object:
            node["metadata"].setdefault("labels", {}).update(labels)
            return node

        nodes = self.server.resource("", "nodes")
        self.server.run(self.store.guaranteed_update(nodes, None, name, label))

    def service(
        self,
        name: str = "web",
        ports: list[dict[str, Any]] | None = None,
        labels: dict[str, str] | None = None,
        annotations: dict[str, str] | None = None,
        finalizers: list[str] | None = None,
        **spec: Any,
    ) -> Object:
        """A LoadBalancer Service, one second after the one before (first come, first served)."""
        self.clock.advance(1)
        body: dict[str, Any] = {
            "type": "LoadBalancer",
            "selector": {"app": name},
            "ports": ports or [{"port": 80, "targetPort": 8080}],
            **spec,
        }
        meta: dict[str, Any] = {"name": name, "labels": labels or {}}
        if annotations:
            meta["annotations"] = annotations
        if finalizers:
            meta["finalizers"] = finalizers
        return self.server.create("", "services", {"metadata": meta, "spec": body}, "default")

    def change_service(self, name: str, change: Any) -> None:
        services = self.server.resource("", "services")

        def changed(current: Object) -> Object:
            change(current)
            return current

        self.server.run(self.store.guaranteed_update(services, "default", name, changed))
        self.clock.advance(0)

    def host_port_pod(self, name: str, node: str, port: int, protocol: str = "TCP") -> None:
        pod = {
            "metadata": {"name": name},
            "spec": {
                "nodeName": node,
                "containers": [
                    {
                        "name": "app",
                        "image": "nginx",
                        "ports": [{"containerPort": 8080, "hostPort": port, "protocol": protocol}],
                    }
                ],
            },
        }
        self.server.create("", "pods", pod, "default")

    def endpoint_slice(self, service: str, ready_on: dict[str, bool]) -> None:
        endpoints = [
            {
                "addresses": [f"10.42.{index}.5"],
                "conditions": {"ready": ready},
                "nodeName": node,
                "targetRef": {"kind": "Pod", "name": f"{service}-{index}", "namespace": "default"},
            }
            for index, (node, ready) in enumerate(sorted(ready_on.items()))
        ]
        endpoint_slice = {
            "metadata": {
                "name": f"{service}-abcde",
                "labels": {"kubernetes.io/service-name": service},
            },
            "addressType": "IPv4",
            "endpoints": endpoints,
            "ports": [{"name": "", "port": 8080, "protocol": "TCP"}],
        }
        self.server.create("discovery.k8s.io", "endpointslices", endpoint_slice, "default")

    # Reading it

    def ingress(self, name: str = "web") -> list[str]:
        service = self.server.get("", "services", name, "default")
        return [
            point["ip"]
            for point in service.get("status", {}).get("loadBalancer", {}).get("ingress", [])
        ]

    def events(self, name: str = "web") -> list[tuple[str, str, str]]:
        listed = self.server.run(
            self.store.list(self.server.resource("", "events"), "default")
        ).items
        return [
            (e["type"], e["reason"], e["message"])
            for e in sorted(listed, key=lambda e: e["metadata"]["creationTimestamp"])
            if e["involvedObject"]["name"] == name
        ]

    # Which nodes

    def test_every_ready_node_serves_the_service(self) -> None:
        self.add_node("node-4", "10.0.0.4", ready=False)
        self.start()
        self.service()
        self.assertEqual(self.ingress(), ["10.0.0.1", "10.0.0.2", "10.0.0.3"])
        service = self.server.get("", "services", "web", "default")
        self.assertEqual(
            service["status"]["loadBalancer"]["ingress"][0], {"ip": "10.0.0.1", "ipMode": "VIP"}
        )
        self.replace_node("node-2", "10.0.0.2", ready=False)
        self.assertEqual(self.ingress(), ["10.0.0.1", "10.0.0.3"])
        self.replace_node("node-4", "10.0.0.4")
        self.assertEqual(self.ingress(), ["10.0.0.1", "10.0.0.3", "10.0.0.4"])

    def test_external_ips_win_over_internal_ones(self) -> None:
        """Once any serving node has an ExternalIP, only ExternalIPs are listed."""
        self.start()
        self.service()
        self.replace_node("node-3", "10.0.0.3", external="203.0.113.3")
        self.assertEqual(self.ingress(), ["203.0.113.3"])

    def test_service_families_filter_and_order_the_addresses(self) -> None:
        self.replace_node("node-1", "10.0.0.1,fd00::1")
        self.replace_node("node-2", "10.0.0.2,fd00::2")
        self.start()
        self.service("v6", ipFamilies=["IPv6"])
        self.service("dual", ipFamilies=["IPv6", "IPv4"], ports=[{"port": 81}])
        self.service("v4", ports=[{"port": 82}])
        self.assertEqual(self.ingress("v6"), ["fd00::1", "fd00::2"])
        self.assertEqual(
            self.ingress("dual"), ["fd00::1", "fd00::2", "10.0.0.1", "10.0.0.2", "10.0.0.3"]
        )
        self.assertEqual(self.ingress("v4"), ["10.0.0.1", "10.0.0.2", "10.0.0.3"])

    def test_enablelb_label_on_any_node_limits_to_true_ones(self) -> None:
        self.start()
        self.service()
        self.label_node("node-2", **{ENABLE_LB: "true"})
        self.assertEqual(self.ingress(), ["10.0.0.2"])
        self.label_node("node-2", **{ENABLE_LB: "false"})
        self.assertEqual(self.ingress(), [])
        self.label_node("node-1", **{ENABLE_LB: "true"})
        self.label_node("node-3", **{ENABLE_LB: "true"})
        self.assertEqual(self.ingress(), ["10.0.0.1", "10.0.0.3"])

    def test_lbpool_pairs_services_with_nodes_of_their_pool(self) -> None:
        self.label_node("node-1", **{ENABLE_LB: "true", LB_POOL: "blue"})
        self.label_node("node-2", **{ENABLE_LB: "true", LB_POOL: "green"})
        self.label_node("node-3", **{ENABLE_LB: "true"})
        self.start()
        self.service("blue", labels={LB_POOL: "blue"})
        self.service("any", ports=[{"port": 81}])
        self.assertEqual(self.ingress("blue"), ["10.0.0.1"])
        self.assertEqual(self.ingress("any"), ["10.0.0.1", "10.0.0.2", "10.0.0.3"])

    def test_tainted_nodes_serve_only_with_a_toleration(self) -> None:
        """svclb pods tolerate control-plane taints and cordons; others need the annotation."""
        self.replace_node(
            "node-1",
            "10.0.0.1",
            taints=[{"key": "node-role.kubernetes.io/control-plane", "effect": "NoSchedule"}],
        )
        self.replace_node(
            "node-2",
            "10.0.0.2",
            taints=[{"key": "dedicated", "value": "db", "effect": "NoSchedule"}],
        )
        self.replace_node(
            "node-3",
            "10.0.0.3",
            taints=[{"key": "node.kubernetes.io/unschedulable", "effect": "NoSchedule"}],
        )
        self.start()
        self.service()
        self.assertEqual(self.ingress(), ["10.0.0.1", "10.0.0.3"])
        tolerations = '[{"key": "dedicated", "operator": "Equal", "value": "db"}]'
        self.service("tolerant", ports=[{"port": 81}], annotations={TOLERATIONS: tolerations})
        self.assertEqual(self.ingress("tolerant"), ["10.0.0.1", "10.0.0.2", "10.0.0.3"])

    # Ports

    def test_a_port_another_service_holds_is_first_come_first_served(self) -> None:
        self.start()
        self.service("first")
        self.service("second")
        self.service("udp", ports=[{"port": 80, "protocol": "UDP"}])
        self.assertEqual(self.ingress("first"), ["10.0.0.1", "10.0.0.2", "10.0.0.3"])
        self.assertEqual(self.ingress("second"), [])
        self.assertEqual(self.ingress("udp"), ["10.0.0.1", "10.0.0.2", "10.0.0.3"])
        service = self.server.get("", "services", "second", "default")
        self.assertEqual(service["status"]["loadBalancer"], {})
        # The first moves to one node: the second gets the others; then it goes altogether.
        self.label_node("node-1", **{ENABLE_LB: "true", LB_POOL: "one"})
        self.label_node("node-2", **{ENABLE_LB: "true"})
        self.label_node("node-3", **{ENABLE_LB: "true"})
        self.change_service("first", lambda s: s["metadata"]["labels"].update({LB_POOL: "one"}))
        self.assertEqual(self.ingress("first"), ["10.0.0.1"])
        self.assertEqual(self.ingress("second"), ["10.0.0.2", "10.0.0.3"])
        self.server.delete("", "services", "first", "default")
        self.assertFalse(self.server.exists("", "services", "first", "default"))
        self.assertEqual(self.ingress("second"), ["10.0.0.1", "10.0.0.2", "10.0.0.3"])

    def test_a_pods_host_port_keeps_the_service_off_its_node(self) -> None:
        self.host_port_pod("proxy", "node-2", 80)
        self.host_port_pod("dns", "node-3", 80, "UDP")
        self.start()
        self.service()
        self.assertEqual(self.ingress(), ["10.0.0.1", "10.0.0.3"])
        self.server.delete("", "pods", "proxy", "default", grace_period=0)
        self.assertEqual(self.ingress(), ["10.0.0.1", "10.0.0.2", "10.0.0.3"])

    def test_one_held_port_of_several_keeps_the_whole_service_off(self) -> None:
        """A svclb pod needs all its hostPorts: a node holding one of them is out."""
        self.host_port_pod("proxy", "node-1", 443)
        self.start()
        self.service(ports=[{"name": "http", "port": 80}, {"name": "https", "port": 443}])
        self.service("other", ports=[{"port": 80}])
        self.assertEqual(self.ingress(), ["10.0.0.2", "10.0.0.3"])
        self.assertEqual(self.ingress("other"), ["10.0.0.1"])

    # Local traffic

    def test_local_policy_lists_nodes_with_a_ready_endpoint(self) -> None:
        self.start()
        self.service(externalTrafficPolicy="Local")
        self.assertEqual(self.ingress(), [])
        self.endpoint_slice("web", {"node-1": False, "node-3": True})
        self.assertEqual(self.ingress(), ["10.0.0.3"])

    # Events, finalizers

    def test_events_and_finalizer(self) -> None:
        self.start()
        self.service()
        service = self.server.get("", "services", "web", "default")
        self.assertEqual(service["metadata"]["finalizers"], [CLEANUP_FINALIZER])
        for name in ("node-1", "node-2", "node-3"):
            self.replace_node(name, None, ready=False)
        self.assertEqual(
            self.events(),
            [
                ("Normal", "EnsuringLoadBalancer", "Ensuring load balancer"),
                (
                    "Normal",
                    "UpdatedLoadBalancer",
                    "Updated LoadBalancer with new IPs: [] -> [10.0.0.1 10.0.0.2 10.0.0.3]",
                ),
                (
                    "Normal",
                    "UpdatedLoadBalancer",
                    "Updated LoadBalancer with new IPs: [10.0.0.1 10.0.0.2 10.0.0.3] -> "
                    "[10.0.0.2 10.0.0.3]",
                ),
                (
                    "Normal",
                    "UpdatedLoadBalancer",
                    "Updated LoadBalancer with new IPs: [10.0.0.2 10.0.0.3] -> [10.0.0.3]",
                ),
                (
                    "Warning",
                    "UnAvailableLoadBalancer",
                    "There are no available nodes for LoadBalancer",
                ),
            ],
        )
        event = self.server.run(
            self.store.list(self.server.resource("", "events"), "default")
        ).items[0]
        self.assertEqual(event["source"]["component"], "service-controller")
        self.assertEqual(event["involvedObject"]["kind"], "Service")

    def test_deleting_clears_status_and_finalizer(self) -> None:
        self.start()
        self.service()
        self.assertEqual(len(self.ingress()), 3)
        self.server.delete("", "services", "web", "default")
        self.assertFalse(self.server.exists("", "services", "web", "default"))
        reasons = [reason for _, reason, _ in self.events()]
        self.assertEqual(reasons[-2:], ["DeletingLoadBalancer", "DeletedLoadBalancer"])

    def test_no_longer_a_load_balancer_clears_status_and_finalizer(self) -> None:
        self.start()
        self.service()
        self.assertEqual(len(self.ingress()), 3)

        def to_cluster_ip(service: Object) -> None:
            service["spec"]["type"] = "ClusterIP"
            for field in ("externalTrafficPolicy", "allocateLoadBalancerNodePorts"):
                service["spec"].pop(field, None)

        self.change_service("web", to_cluster_ip)
        service = self.server.get("", "services", "web", "default")
        self.assertEqual(service["status"]["loadBalancer"], {})
        self.assertNotIn(CLEANUP_FINALIZER, service["metadata"].get("finalizers") or [])

    def test_services_with_a_class_or_of_other_types_are_left_alone(self) -> None:
        self.start()
        self.service("classy", loadBalancerClass="example.com/lb")
        self.service("plain", type="ClusterIP", ports=[{"port": 81}])
        for name in ("classy", "plain"):
            service = self.server.get("", "services", name, "default")
            self.assertEqual(service.get("status", {}).get("loadBalancer", {}), {})
            self.assertEqual(service["metadata"].get("finalizers") or [], [])
            self.assertEqual(self.events(name), [])

    def test_legacy_finalizer_is_stripped(self) -> None:
        self.service("old", finalizers=[LEGACY_FINALIZER])
        self.service("plain", type="ClusterIP", ports=[{"port": 81}], finalizers=[LEGACY_FINALIZER])
        self.start()
        self.assertEqual(
            self.server.get("", "services", "old", "default")["metadata"]["finalizers"],
            [CLEANUP_FINALIZER],
        )
        self.assertEqual(
            self.server.get("", "services", "plain", "default")["metadata"].get("finalizers") or [],
            [],
        )

    def test_restarted_controller_keeps_what_it_wrote(self) -> None:
        """A new leader computes the same placements: nothing changes, no new Events."""
        controller = self.start()
        self.service("first")
        self.service("second")
        before = len(self.events("first")) + len(self.events("second"))
        stopped = controller.stopService()
        assert stopped is not None
        self.successResultOf(stopped)
        controller.startService()
        self.clock.advance(1)
        self.assertEqual(self.ingress("first"), ["10.0.0.1", "10.0.0.2", "10.0.0.3"])
        self.assertEqual(self.ingress("second"), [])
        self.assertEqual(len(self.events("first")) + len(self.events("second")), before)
