"""Service cluster IPs and node ports: handed out once, refused in kube's words, given back."""

from __future__ import annotations

import ipaddress
import json
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from k3stw.apiserver.allocation import (
    IPS_PREFIX,
    PORTS_PREFIX,
    REPAIR_GRACE,
    ServiceAllocator,
)
from k3stw.apiserver.kinds import services
from k3stw.apiserver.storage import ObjectStore
from k3stw.machinery.objects import Object
from tests.support.apiserver import MemoryServer


def service(name: str, **spec: Any) -> Object:
    return {
        "metadata": {"name": name},
        "spec": {"ports": [{"port": 80}], "selector": {"app": name}, **spec},
    }


class AllocationTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.server = MemoryServer(self)
        self.allocator = ServiceAllocator(self.server.datastore, self.server.clock, "10.43.0.0/16")
        self.server.store.allocators[("", "services")] = self.allocator

    def create(self, obj: Object, store: ObjectStore | None = None) -> Object:
        return self.server.run(
            (store or self.server.store).create(services.RESOURCE, "default", obj)
        )

    def refused(self, obj: Object) -> str:
        error = self.server.fails(self.server.store.create(services.RESOURCE, "default", obj))
        self.assertEqual(error.code, 422, error.message)
        return error.message

    def keys(self, prefix: str) -> set[str]:
        listed = self.server.run(self.server.datastore.list(prefix))
        return {kv.key.removeprefix(prefix) for kv in listed.items}

    def update(self, name: str, change: Any) -> Object:
        def mutate(current: Object) -> Object:
            change(current)
            return current

        return self.server.run(
            self.server.store.guaranteed_update(services.RESOURCE, "default", name, mutate)
        )

    def test_a_cluster_ip_from_the_service_cidr(self) -> None:
        created = self.create(service("web"))
        spec = created["spec"]
        address = ipaddress.ip_address(spec["clusterIP"])
        self.assertIn(address, ipaddress.ip_network("10.43.0.0/16"))
        # Dynamic addresses come from above the lower band users pick from (.10 for DNS).
        self.assertGreaterEqual(int(address) - int(ipaddress.ip_address("10.43.0.0")), 256)
        self.assertEqual(spec["clusterIPs"], [spec["clusterIP"]])
        self.assertEqual((spec["ipFamilies"], spec["ipFamilyPolicy"]), (["IPv4"], "SingleStack"))
        self.assertIn(spec["clusterIP"], self.keys(IPS_PREFIX))

    def test_a_chosen_ip_once_and_in_range(self) -> None:
        self.create(service("dns", clusterIP="10.43.0.10"))
        self.assertIn(
            'Service "dns2" is invalid: spec.clusterIPs: Invalid value: []string{"10.43.0.10"}: '
            "failed to allocate IP 10.43.0.10: provided IP is already allocated",
            self.refused(service("dns2", clusterIP="10.43.0.10")),
        )
        self.assertIn(
            "the provided IP (192.0.2.1) is not in the valid range. The range of valid IPs is "
            "10.43.0.0/16",
            self.refused(service("far", clusterIP="192.0.2.1")),
        )
        self.assertEqual(self.keys(IPS_PREFIX), {"10.43.0.10"})

    def test_headless_and_external_name_services_take_no_ip(self) -> None:
        headless = self.create(service("headless", clusterIP="None"))
        self.assertEqual(headless["spec"]["clusterIPs"], ["None"])
        # Headless, it still has the cluster's family, as kube-apiserver stores it.
        self.assertEqual(
            (headless["spec"]["ipFamilies"], headless["spec"]["ipFamilyPolicy"]),
            (["IPv4"], "SingleStack"),
        )
        self.create(
            {"metadata": {"name": "ext"}, "spec": {"type": "ExternalName", "externalName": "a.b"}}
        )
        self.assertEqual(self.keys(IPS_PREFIX), set())

    def test_node_ports_from_the_range_once_each(self) -> None:
        created = self.create(
            service(
                "np",
                type="NodePort",
                ports=[{"name": "http", "port": 80}, {"name": "https", "port": 443}],
            )
        )
        ports = [p["nodePort"] for p in created["spec"]["ports"]]
        self.assertEqual(len(set(ports)), 2)
        self.assertTrue(all(30000 <= p <= 32767 for p in ports), ports)
        chosen = service("np2", type="NodePort", ports=[{"port": 80, "nodePort": ports[0]}])
        self.assertIn(
            f"spec.ports[0].nodePort: Invalid value: {ports[0]}: provided port is already "
            "allocated",
            self.refused(chosen),
        )
        low = service("np3", type="NodePort", ports=[{"port": 80, "nodePort": 80}])
        self.assertIn(
            "provided port is not in the valid range. The range of valid ports is 30000-32767",
            self.refused(low),
        )
        self.assertEqual(self.keys(PORTS_PREFIX), {str(p) for p in ports})

    def test_updates_keep_what_was_given_and_give_back_what_is_dropped(self) -> None:
        created = self.create(service("svc", type="NodePort"))
        ip, port = created["spec"]["clusterIP"], created["spec"]["ports"][0]["nodePort"]

        def reapply(current: Object) -> None:
            # kubectl apply of the manifest, which names neither.
            current["spec"].pop("clusterIP")
            current["spec"].pop("clusterIPs")
            current["spec"]["ports"][0].pop("nodePort")

        applied = self.update("svc", reapply)
        self.assertEqual(applied["spec"]["clusterIP"], ip)
        self.assertEqual(applied["spec"]["ports"][0]["nodePort"], port)

        def to_cluster_ip(current: Object) -> None:
            current["spec"]["type"] = "ClusterIP"
            current["spec"]["ports"][0].pop("nodePort")

        self.update("svc", to_cluster_ip)
        self.assertEqual(self.keys(PORTS_PREFIX), set())

        def move(current: Object) -> Object:
            current["spec"]["clusterIP"] = "10.43.0.99"
            return current

        error = self.server.fails(
            self.server.store.guaranteed_update(services.RESOURCE, "default", "svc", move)
        )
        self.assertIn(
            'spec.clusterIPs[0]: Invalid value: []string{"10.43.0.99"}: may not change once set',
            error.message,
        )

    def test_deleting_gives_back_and_a_failed_create_takes_nothing(self) -> None:
        self.create(service("gone", clusterIP="10.43.0.20", type="NodePort"))
        self.server.delete("", "services", "gone", "default")
        self.assertEqual(self.keys(IPS_PREFIX) | self.keys(PORTS_PREFIX), set())
        self.create(service("again", clusterIP="10.43.0.20"))
        # A create that fails after the claim (the name exists) leaves nothing behind.
        error = self.server.fails(
            self.server.store.create(
                services.RESOURCE, "default", service("again", type="NodePort")
            )
        )
        self.assertEqual(error.code, 409)
        self.assertEqual(self.keys(PORTS_PREFIX), set())
        self.assertEqual(self.keys(IPS_PREFIX), {"10.43.0.20"})

    def test_two_servers_on_one_datastore_never_share_a_value(self) -> None:
        """A /27 (30 addresses): two stores fill it, each address once, then it is full."""
        small = [
            ServiceAllocator(self.server.datastore, self.server.clock, "10.44.0.0/27")
            for _ in range(2)
        ]
        stores = []
        for allocator in small:
            store = ObjectStore(self.server.datastore, self.server.clock)
            store.allocators[("", "services")] = allocator
            stores.append(store)
        given = [
            self.create(service(f"s{i}"), stores[i % 2])["spec"]["clusterIP"] for i in range(30)
        ]
        self.assertEqual(len(set(given)), 30)
        error = self.server.fails(stores[0].create(services.RESOURCE, "default", service("more")))
        self.assertEqual(error.code, 500)
        self.assertIn("failed to allocate a serviceIP: range is full", error.message)

    def test_repair_gives_back_leaked_keys_and_claims_held_values(self) -> None:
        leaked = {"namespace": "default", "name": "crashed", "at": self.server.clock.seconds()}
        self.server.run(
            self.server.datastore.create(IPS_PREFIX + "10.43.7.7", json.dumps(leaked).encode())
        )
        held = self.create(service("held"))
        self.server.run(self.server.datastore.delete(IPS_PREFIX + held["spec"]["clusterIP"]))
        listing = self.server.run(self.server.store.list(services.RESOURCE, None))
        # Within the grace period a key may belong to a create between its writes.
        self.server.run(self.allocator.repair(listing.items))
        self.assertEqual(self.keys(IPS_PREFIX), {"10.43.7.7", held["spec"]["clusterIP"]})
        self.server.clock.advance(REPAIR_GRACE + 1)
        self.server.run(self.allocator.repair(listing.items))
        self.assertEqual(self.keys(IPS_PREFIX), {held["spec"]["clusterIP"]})


class ServiceDefaultsTests(SynchronousTestCase):
    """What kube-apiserver 1.32 stores for a bare Service of each type."""

    def setUp(self) -> None:
        self.server = MemoryServer(self)

    def spec(self, **spec: Any) -> Object:
        created = self.server.create("", "services", service("s", **spec), "default")
        result: Object = created["spec"]
        return result

    def test_cluster_ip(self) -> None:
        spec = self.spec()
        self.assertEqual(
            {k: spec.get(k) for k in ("type", "sessionAffinity", "internalTrafficPolicy")},
            {"type": "ClusterIP", "sessionAffinity": "None", "internalTrafficPolicy": "Cluster"},
        )
        self.assertNotIn("externalTrafficPolicy", spec)
        self.assertEqual(spec["ports"][0], {"port": 80, "protocol": "TCP", "targetPort": 80})

    def test_load_balancer_with_client_ip_affinity(self) -> None:
        spec = self.spec(type="LoadBalancer", sessionAffinity="ClientIP")
        self.assertEqual(spec["externalTrafficPolicy"], "Cluster")
        self.assertIs(spec["allocateLoadBalancerNodePorts"], True)
        self.assertEqual(spec["sessionAffinityConfig"], {"clientIP": {"timeoutSeconds": 10800}})
