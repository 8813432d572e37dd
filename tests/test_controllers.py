"""
The server's controllers on the real object store over the in-memory
datastore, on a Clock: garbage collection, CRDs, the kubernetes endpoints and
node-password secrets.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from k3stw.apiserver.kinds import crds
from k3stw.apiserver.storage import ObjectStore
from k3stw.controllers.crds import CRDController
from k3stw.controllers.endpoints import LEASE_PREFIX, APIServerEndpoints
from k3stw.controllers.garbage import OWNED_OR_DELETING, GarbageCollector
from k3stw.controllers.namespacedefaults import (
    ROOT_CA_CONFIGMAP,
    default_service_accounts,
    root_ca_publisher,
)
from k3stw.datastore.memory import MemoryDatastore
from k3stw.machinery.identity import User
from k3stw.machinery.objects import Object
from k3stw.supervisor.nodecontroller import NodePasswordController
from k3stw.supervisor.nodepassword import SECRET_TYPE, secret_name
from tests.support.apiserver import ANY_SCHEMA, MemoryAPI, MemoryServer


def owned_by(owner: Object, name: str, **extra: Any) -> Object:
    reference = {
        "apiVersion": owner["apiVersion"],
        "kind": owner["kind"],
        "name": owner["metadata"]["name"],
        "uid": owner["metadata"]["uid"],
    }
    return {"metadata": {"name": name, "ownerReferences": [reference]}, **extra}


class GarbageCollectorTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.server = MemoryServer(self)
        self.collector = GarbageCollector(
            self.server.informers, self.server.store, self.server.registry
        )
        self.server.start(self.collector)

    def owner_and_dependents(self, count: int = 2) -> Object:
        owner = self.server.create("", "configmaps", {"metadata": {"name": "owner"}}, "default")
        for index in range(count):
            self.server.create("", "configmaps", owned_by(owner, f"child-{index}"), "default")
        return owner

    def children(self) -> list[str]:
        names = [f"child-{index}" for index in range(2)]
        return [n for n in names if self.server.exists("", "configmaps", n, "default")]

    def test_background_deletion_takes_the_dependents(self) -> None:
        self.owner_and_dependents()
        self.server.delete("", "configmaps", "owner", "default")
        self.assertEqual(self.children(), [])

    def test_a_dependent_with_a_live_owner_stays(self) -> None:
        self.owner_and_dependents()
        self.server.clock.advance(10)
        self.assertEqual(self.children(), ["child-0", "child-1"])

    def test_a_dependent_of_an_owner_gone_before_it_came_is_collected(self) -> None:
        owner = self.server.create("", "configmaps", {"metadata": {"name": "owner"}}, "default")
        self.server.delete("", "configmaps", "owner", "default")
        self.server.create("", "configmaps", owned_by(owner, "late"), "default")
        self.assertFalse(self.server.exists("", "configmaps", "late", "default"))

    def test_an_owner_of_an_unserved_kind_is_never_collected_against(self) -> None:
        foreign: Object = {
            "apiVersion": "example.com/v1",
            "kind": "Gizmo",
            "metadata": {"name": "g"},
        }
        foreign["metadata"]["uid"] = "u-1"
        self.server.create("", "configmaps", owned_by(foreign, "kept"), "default")
        self.assertTrue(self.server.exists("", "configmaps", "kept", "default"))

    def test_orphan_deletion_releases_the_dependents(self) -> None:
        self.owner_and_dependents()
        self.server.delete("", "configmaps", "owner", "default", ("orphan",))
        self.assertFalse(self.server.exists("", "configmaps", "owner", "default"))
        child = self.server.get("", "configmaps", "child-0", "default")
        self.assertNotIn("ownerReferences", child["metadata"])

    def test_a_dependent_released_after_the_cache_saw_it_stays(self) -> None:
        """
        The collector decides on the dependent as stored, not as cached: a
        dependent released by orphan deletion whose release the cache has
        not seen yet (another resource's watch ran ahead) is not collected.
        """
        owner = self.owner_and_dependents(count=1)
        configmaps = self.server.resource("", "configmaps")
        cached = self.collector.shared.for_resource(configmaps, OWNED_OR_DELETING)
        # The cache stops hearing of changes, and keeps the child with its owner,
        # while the child is released (as orphan deletion does) and the owner goes.
        cached.stopService()
        released = self.server.get("", "configmaps", "child-0", "default")
        del released["metadata"]["ownerReferences"]
        self.server.run(
            self.server.store.update(configmaps, "default", "child-0", released, manager="test")
        )
        self.server.delete("", "configmaps", "owner", "default")
        self.assertEqual(
            cached.get("default/child-0")["metadata"]["ownerReferences"][0]["uid"],  # type: ignore[index]
            owner["metadata"]["uid"],
        )
        self.server.run(self.collector.sync("configmaps/default/child-0"))
        self.assertEqual(self.children(), ["child-0"])

    def test_foreground_deletion_removes_the_dependents_first(self) -> None:
        self.owner_and_dependents()
        # A dependent held by a finalizer keeps the owner waiting.
        blocked = self.server.get("", "configmaps", "child-1", "default")
        blocked["metadata"]["finalizers"] = ["example.com/hold"]
        configmaps = self.server.resource("", "configmaps")
        self.server.run(
            self.server.store.update(configmaps, "default", "child-1", blocked, manager="test")
        )
        self.server.delete("", "configmaps", "owner", "default", ("foregroundDeletion",))
        owner = self.server.get("", "configmaps", "owner", "default")
        self.assertIn("foregroundDeletion", owner["metadata"]["finalizers"])
        self.assertEqual(self.children(), ["child-1"])

        def release(current: Object) -> Object:
            current["metadata"]["finalizers"] = []
            return current

        self.server.run(
            self.server.store.guaranteed_update(configmaps, "default", "child-1", release)
        )
        self.assertEqual(self.children(), [])
        self.assertFalse(self.server.exists("", "configmaps", "owner", "default"))

    def test_a_terminating_namespace_is_emptied_then_deleted(self) -> None:
        self.server.create("", "namespaces", {"metadata": {"name": "team"}})
        for name in ("a", "b"):
            self.server.create("", "configmaps", {"metadata": {"name": name}}, "team")
        self.server.create("", "secrets", {"metadata": {"name": "s"}}, "team")

        def terminate(current: Object) -> Object:
            current["metadata"]["deletionTimestamp"] = self.server.store.now()
            return current

        namespaces = self.server.resource("", "namespaces")
        self.server.run(
            self.server.store.guaranteed_update(
                namespaces, None, "team", terminate, marks_deletion=True
            )
        )
        self.assertFalse(self.server.exists("", "configmaps", "a", "team"))
        self.assertFalse(self.server.exists("", "secrets", "s", "team"))
        self.assertFalse(self.server.exists("", "namespaces", "team"))

    def test_a_terminating_namespace_waits_for_its_terminating_pods(self) -> None:
        """A bound pod is Terminating until its kubelet confirms; the namespace waits for it."""
        self.server.create("", "namespaces", {"metadata": {"name": "team"}})
        containers = [{"name": "c", "image": "busybox"}]
        bound = {"metadata": {"name": "p"}, "spec": {"nodeName": "n1", "containers": containers}}
        self.server.create("", "pods", bound, "team")
        unbound = {"metadata": {"name": "unbound"}, "spec": {"containers": containers}}
        self.server.create("", "pods", unbound, "team")
        api = MemoryAPI(self.server, {"admin": User("admin", ("system:masters",))})
        code, _ = api.request(b"DELETE", "/api/v1/namespaces/team")
        self.assertEqual(code, 200)
        self.assertFalse(self.server.exists("", "pods", "unbound", "team"))
        marked = self.server.get("", "pods", "p", "team")
        self.assertEqual(marked["metadata"]["deletionGracePeriodSeconds"], 30)
        self.server.clock.advance(60)
        self.assertTrue(self.server.exists("", "namespaces", "team"))
        self.server.confirm_pod_deletions()
        self.server.clock.advance(60)
        self.assertFalse(self.server.exists("", "namespaces", "team"))

    def test_its_caches_hold_only_the_metadata_of_what_it_may_act_on(self) -> None:
        owner = self.server.create(
            "",
            "configmaps",
            {"metadata": {"name": "owner"}, "data": {"big": "x" * 1000}},
            "default",
        )
        self.server.create("", "configmaps", owned_by(owner, "child", data={"k": "v"}), "default")
        configmaps = self.server.resource("", "configmaps")
        cached = self.server.informers.for_resource(configmaps, OWNED_OR_DELETING).cache.list()
        self.assertEqual([obj["metadata"]["name"] for obj in cached], ["child"])
        self.assertEqual(set(cached[0]), {"apiVersion", "kind", "metadata"})

    def test_custom_resources_are_followed_as_their_crd_is_served(self) -> None:
        self.server.create("apiextensions.k8s.io", "customresourcedefinitions", widget_crd())
        owner = self.server.create("", "configmaps", {"metadata": {"name": "owner"}}, "default")
        widget = {"apiVersion": "example.com/v1", "kind": "Widget", **owned_by(owner, "w")}
        self.server.create("example.com", "widgets", widget, "default")
        self.server.delete("", "configmaps", "owner", "default")
        self.assertFalse(self.server.exists("example.com", "widgets", "w", "default"))


def widget_crd() -> Object:
    return {
        "metadata": {"name": "widgets.example.com"},
        "spec": {
            "group": "example.com",
            "scope": "Namespaced",
            "names": {"plural": "widgets", "singular": "widget", "kind": "Widget"},
            "versions": [{"name": "v1", "served": True, "storage": True, "schema": ANY_SCHEMA}],
        },
    }


class CRDControllerTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.server = MemoryServer(self)
        # Another server on the same datastore: its writes reach this one only by watching.
        self.other = ObjectStore(
            MemoryDatastore(self.server.clock, self.server.datastore.memory), self.server.clock
        )
        self.other.datastore.startService()  # type: ignore[attr-defined]
        self.addCleanup(self.other.datastore.stopService)  # type: ignore[attr-defined]
        self.controller = CRDController(
            self.server.informers, self.server.store, self.server.registry
        )
        self.server.start(self.controller)

    def test_a_crd_written_elsewhere_is_served(self) -> None:
        self.server.run(self.other.create(crds.RESOURCE, None, widget_crd()))
        self.assertIsNotNone(self.server.registry.lookup("example.com", "v1", "widgets"))

    def test_a_deleted_crd_takes_its_resources_then_goes(self) -> None:
        self.server.create("apiextensions.k8s.io", "customresourcedefinitions", widget_crd())
        widget = {"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}}
        self.server.create("example.com", "widgets", widget, "default")
        self.server.run(self.other.delete(crds.RESOURCE, None, "widgets.example.com"))
        self.assertFalse(
            self.server.exists(
                "apiextensions.k8s.io", "customresourcedefinitions", "widgets.example.com"
            )
        )
        self.assertIsNone(self.server.registry.lookup("example.com", "v1", "widgets"))
        widgets = [
            kv.key
            for kv in self.server.run(self.server.datastore.list("/registry/example.com/")).items
        ]
        self.assertEqual(widgets, [])


class KubernetesEndpointsTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.server = MemoryServer(self)
        self.endpoints = APIServerEndpoints(
            self.server.informers, self.server.store, "127.0.0.1", 6443, "10.43.0.1"
        )
        self.server.start(self.endpoints)

    def addresses(self) -> list[str]:
        endpoints = self.server.get("", "endpoints", "kubernetes", "default")
        return [a["ip"] for s in endpoints["subsets"] for a in s["addresses"]]

    def test_this_server_is_listed_with_the_service(self) -> None:
        self.assertEqual(self.addresses(), ["127.0.0.1"])
        service = self.server.get("", "services", "kubernetes", "default")
        self.assertEqual(service["spec"]["clusterIP"], "10.43.0.1")
        slice_ = self.server.get("discovery.k8s.io", "endpointslices", "kubernetes", "default")
        self.assertEqual(
            slice_["endpoints"], [{"addresses": ["127.0.0.1"], "conditions": {"ready": True}}]
        )

    def test_another_server_joins_and_its_lapsed_lease_drops_it(self) -> None:
        self.server.run(
            self.server.datastore.create(
                LEASE_PREFIX + "127.0.0.2", b"127.0.0.2:6443", lease_ttl=15
            )
        )
        self.server.clock.advance(10)
        self.assertEqual(self.addresses(), ["127.0.0.1", "127.0.0.2"])
        self.server.clock.advance(20)
        self.assertEqual(self.addresses(), ["127.0.0.1"])

    def test_endpoints_someone_changed_are_put_back_at_once(self) -> None:
        self.server.delete("", "endpoints", "kubernetes", "default")
        self.assertEqual(self.addresses(), ["127.0.0.1"])

    def test_a_stopping_server_leaves_the_endpoints(self) -> None:
        self.server.run(
            self.server.datastore.create(
                LEASE_PREFIX + "127.0.0.2", b"127.0.0.2:6443", lease_ttl=15
            )
        )
        self.server.clock.advance(10)
        self.successResultOf(self.endpoints.stopService())  # type: ignore[arg-type]
        self.assertEqual(self.addresses(), ["127.0.0.2"])


class NodePasswordControllerTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.server = MemoryServer(self, Clock())
        self.controller = NodePasswordController(self.server.informers, self.server.store)
        self.server.start(self.controller)

    def password_secret(self, node: str) -> Object:
        secret = {
            "metadata": {"name": secret_name(node)},
            "type": SECRET_TYPE,
            "immutable": True,
            "data": {"hash": "JDE6YWJj"},
        }
        return self.server.create("", "secrets", secret, "kube-system")

    def test_the_secret_is_owned_by_its_node(self) -> None:
        self.password_secret("n1")
        node = self.server.create("", "nodes", {"metadata": {"name": "n1"}})
        secret = self.server.get("", "secrets", secret_name("n1"), "kube-system")
        owners = [(o["kind"], o["uid"]) for o in secret["metadata"]["ownerReferences"]]
        self.assertEqual(owners, [("Node", node["metadata"]["uid"])])

    def test_the_secret_of_a_node_that_never_came_goes_after_ten_minutes(self) -> None:
        self.password_secret("ghost")
        self.server.clock.advance(599)
        self.assertTrue(self.server.exists("", "secrets", secret_name("ghost"), "kube-system"))
        self.server.clock.advance(1.5)
        self.assertFalse(self.server.exists("", "secrets", secret_name("ghost"), "kube-system"))

    def test_a_node_that_registers_in_time_keeps_its_secret(self) -> None:
        self.password_secret("late")
        self.server.clock.advance(300)
        self.server.create("", "nodes", {"metadata": {"name": "late"}})
        self.server.clock.advance(600)
        self.assertTrue(self.server.exists("", "secrets", secret_name("late"), "kube-system"))


class NamespaceDefaultsTests(SynchronousTestCase):
    """The default ServiceAccount and kube-root-ca.crt in every namespace, kept there."""

    CA = b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"

    def setUp(self) -> None:
        self.server = MemoryServer(self, Clock())
        informers, store = self.server.informers, self.server.store
        self.server.start(
            default_service_accounts(informers, store), root_ca_publisher(informers, store, self.CA)
        )

    def test_a_new_namespace_gets_both(self) -> None:
        self.server.create("", "namespaces", {"metadata": {"name": "team"}})
        self.assertTrue(self.server.exists("", "serviceaccounts", "default", "team"))
        configmap = self.server.get("", "configmaps", ROOT_CA_CONFIGMAP, "team")
        self.assertEqual(configmap["data"], {"ca.crt": self.CA.decode()})
        description = configmap["metadata"]["annotations"]["kubernetes.io/description"]
        self.assertTrue(description.startswith("Contains a CA bundle that can be used to verify"))

    def test_the_namespaces_that_exist_get_them_too(self) -> None:
        for name in ("default", "kube-system", "kube-public", "kube-node-lease"):
            self.assertTrue(self.server.exists("", "serviceaccounts", "default", name), name)
            self.assertTrue(self.server.exists("", "configmaps", ROOT_CA_CONFIGMAP, name), name)

    def test_deleted_or_changed_they_come_back(self) -> None:
        self.server.delete("", "serviceaccounts", "default", "default")
        self.assertTrue(self.server.exists("", "serviceaccounts", "default", "default"))
        configmaps = self.server.resource("", "configmaps")

        def tamper(current: Object) -> Object:
            current["data"] = {"ca.crt": "not a CA"}
            return current

        self.server.run(
            self.server.store.guaranteed_update(configmaps, "default", ROOT_CA_CONFIGMAP, tamper)
        )
        configmap = self.server.get("", "configmaps", ROOT_CA_CONFIGMAP, "default")
        self.assertEqual(configmap["data"], {"ca.crt": self.CA.decode()})
