"""The API's pure parts, in memory: registry, discovery, authorization, watch translation."""

from __future__ import annotations

import gzip
import json
from typing import Any

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.test.requesthelper import DummyChannel

from k3stw.apiserver import discovery
from k3stw.apiserver.auth import Attributes, NodePods, authorize
from k3stw.apiserver.kinds import built_in_registry
from k3stw.apiserver.kinds.custom import resources_of_crd
from k3stw.apiserver.registry import ResourceType
from k3stw.apiserver.request import MAX_BODY, APIRequest
from k3stw.apiserver.status import StatusError
from k3stw.apiserver.storage import decode_continue, encode_continue, translate
from k3stw.datastore.interface import Event, EventType, KeyValue
from k3stw.machinery.identity import User
from tests.support.apiserver import MemoryServer

CRD: dict[str, Any] = {
    "metadata": {"name": "widgets.example.com"},
    "spec": {
        "group": "example.com",
        "scope": "Namespaced",
        "names": {
            "plural": "widgets",
            "singular": "widget",
            "kind": "Widget",
            "shortNames": ["wd"],
        },
        "versions": [
            {"name": "v1", "served": True, "storage": True},
            {"name": "v0", "served": False},
        ],
    },
}


class RegistryTests(SynchronousTestCase):
    def test_storage_keys(self) -> None:
        """Built-in objects live at /registry/<resource>/<namespace>/<name>."""
        registry = built_in_registry()
        pods = registry.lookup("", "v1", "pods")
        nodes = registry.lookup("", "v1", "nodes")
        deployments = registry.lookup("apps", "v1", "deployments")
        assert pods and nodes and deployments
        self.assertEqual(pods.storage_key("default", "web"), "/registry/pods/default/web")
        self.assertEqual(nodes.storage_key(None, "n1"), "/registry/nodes/n1")
        self.assertEqual(deployments.storage_key("a", "b"), "/registry/deployments/a/b")

    def test_crd_adds_and_removes_resources(self) -> None:
        """A CRD serves one resource per served version, keyed under its group; listeners hear."""
        registry = built_in_registry()
        heard: list[bool] = []
        registry.on_change(lambda: heard.append(True))
        registry.replace_crd("widgets.example.com", resources_of_crd(CRD))
        widget = registry.lookup("example.com", "v1", "widgets")
        assert widget is not None
        self.assertIsNone(registry.lookup("example.com", "v0", "widgets"))
        self.assertEqual(widget.storage_key("ns", "w"), "/registry/example.com/widgets/ns/w")
        registry.replace_crd("widgets.example.com", [])
        self.assertIsNone(registry.lookup("example.com", "v1", "widgets"))
        self.assertEqual(heard, [True, True])


class DiscoveryTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.registry = built_in_registry()

    def test_version_selects_kubectl_1_32(self) -> None:
        """/version says 1.32, which is what kubectl's dispatcher picks its binary by."""
        info = discovery.version_info()
        self.assertEqual((info["major"], info["minor"]), ("1", "32"))

    def test_aggregated_core(self) -> None:
        """/api lists core resources with short names, scope and verbs."""
        document = discovery.aggregated_discovery(self.registry, core=True)
        resources = {r["resource"]: r for r in document["items"][0]["versions"][0]["resources"]}
        self.assertEqual(resources["pods"]["shortNames"], ["po"])
        self.assertEqual(resources["nodes"]["scope"], "Cluster")
        self.assertIn("watch", resources["configmaps"]["verbs"])
        self.assertNotIn("deployments", resources)

    def test_aggregated_groups_follow_crds(self) -> None:
        """/apis gains a CRD's group while it is served."""
        self.registry.replace_crd("widgets.example.com", resources_of_crd(CRD))
        groups = [
            i["metadata"]["name"]
            for i in discovery.aggregated_discovery(self.registry, core=False)["items"]
        ]
        self.assertEqual(
            groups[:4], ["apps", "coordination.k8s.io", "discovery.k8s.io", "apiextensions.k8s.io"]
        )
        self.assertIn("example.com", groups)

    def test_legacy_resource_list(self) -> None:
        """/api/v1 lists subresources as resource/sub entries."""
        listed = discovery.api_resource_list(self.registry, "", "v1")
        assert listed is not None
        names = [r["name"] for r in listed["resources"]]
        self.assertIn("pods/status", names)
        self.assertIsNone(discovery.api_resource_list(self.registry, "nope", "v1"))

    def test_openapi_has_patch_with_gvk_and_field_validation(self) -> None:
        """Each kind's PATCH carries the GVK and fieldValidation, so kubectl apply validates."""
        openapi = discovery.OpenAPI(self.registry)
        index = json.loads(openapi.index())
        self.assertIn("api/v1", index["paths"])
        self.assertIn("apis/apps/v1", index["paths"])
        document = openapi.document("api/v1")
        assert document is not None
        paths = json.loads(gzip.decompress(document))["paths"]
        patch = paths["/api/v1/namespaces/{namespace}/configmaps/{name}"]["patch"]
        self.assertEqual(
            patch["x-kubernetes-group-version-kind"],
            {"group": "", "version": "v1", "kind": "ConfigMap"},
        )
        self.assertIn("fieldValidation", [p["name"] for p in patch["parameters"]])

    def test_openapi_carries_the_catalogue_schemas(self) -> None:
        """The schemas kubectl explain reads: each served kind's, tagged with its GVK."""
        openapi = discovery.OpenAPI(self.registry)
        document = openapi.document("apis/apps/v1")
        assert document is not None
        schemas = json.loads(gzip.decompress(document))["components"]["schemas"]
        deployment = schemas["io.k8s.api.apps.v1.Deployment"]
        self.assertEqual(
            deployment["x-kubernetes-group-version-kind"],
            [{"group": "apps", "kind": "Deployment", "version": "v1"}],
        )
        self.assertIn("replicas", schemas["io.k8s.api.apps.v1.DeploymentSpec"]["properties"])

    def test_openapi_hash_changes_with_the_registry(self) -> None:
        """A new CRD changes the documents' hashes, so kubectl's cache refreshes."""
        openapi = discovery.OpenAPI(self.registry)
        before = openapi.index()
        self.registry.replace_crd("widgets.example.com", resources_of_crd(CRD))
        self.assertNotEqual(openapi.index(), before)
        self.assertIsNotNone(openapi.document("apis/example.com/v1"))


class NodeAuthorizerTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.registry = built_in_registry()
        self.node = User("system:node:n1", ("system:nodes",))
        self.pods_of_n1 = {("pods", "web"), ("secrets", "web-token")}

    async def _uses(self, node: str, namespace: str, kind: str, name: str) -> bool:
        return node == "n1" and (kind, name) in self.pods_of_n1

    def check(
        self,
        user: User,
        verb: str,
        plural: str,
        name: str | None = None,
        namespace: str | None = None,
        sub: str | None = None,
        group: str = "",
    ) -> int:
        resource = self.registry.lookup(group, "v1", plural)
        assert resource is not None
        attributes = Attributes.of(verb, resource, namespace, name, sub)
        result: Deferred[None] = Deferred.fromCoroutine(authorize(user, attributes, self._uses))
        failures: list[StatusError] = []

        def failed(failure: Failure) -> None:
            failure.trap(StatusError)
            assert isinstance(failure.value, StatusError)
            failures.append(failure.value)

        result.addErrback(failed)
        return failures[0].code if failures else 200

    def test_masters_may_do_anything(self) -> None:
        """system:masters passes every check."""
        admin = User("system:admin", ("system:masters",))
        self.assertEqual(self.check(admin, "delete", "secrets", "x", "default"), 200)

    def test_node_rules(self) -> None:
        """A kubelet reads cluster state, writes its own Node, Lease, events and pod status."""
        cases = [
            ("list", "nodes", None, None, None, "", 200),
            ("patch", "nodes", "n1", None, None, "", 200),
            ("patch", "nodes", "n2", None, None, "", 403),
            ("update", "nodes", "n1", None, "status", "", 200),
            ("update", "leases", "n1", "kube-node-lease", None, "coordination.k8s.io", 200),
            ("update", "leases", "n2", "kube-node-lease", None, "coordination.k8s.io", 403),
            ("create", "events", None, "default", None, "", 200),
            ("patch", "pods", "web", "default", "status", "", 200),
            ("patch", "pods", "other", "default", "status", "", 403),
            ("get", "secrets", "web-token", "default", None, "", 200),
            ("get", "secrets", "private", "default", None, "", 403),
            ("list", "secrets", None, "default", None, "", 403),
            ("create", "configmaps", None, "default", None, "", 403),
        ]
        for verb, plural, name, namespace, sub, group, expected in cases:
            self.assertEqual(
                self.check(self.node, verb, plural, name, namespace, sub, group),
                expected,
                (verb, plural, name, sub),
            )

    def test_unknown_user(self) -> None:
        """Anyone else is refused."""
        self.assertEqual(self.check(User("bob", ()), "list", "pods", None, "default"), 403)


class NodePodsTests(SynchronousTestCase):
    """The node authorizer's view of a node's pods, from the store or the pods informer."""

    def setUp(self) -> None:
        self.server = MemoryServer(self)
        self.pods = self.server.resource("", "pods")
        pod = {
            "metadata": {"name": "web"},
            "spec": {
                "nodeName": "n1",
                "containers": [{"name": "c", "image": "busybox"}],
                "volumes": [{"name": "s", "secret": {"secretName": "web-token"}}],
            },
        }
        self.server.create("", "pods", pod, "default")

    def uses(self, node_pods: NodePods, node: str, name: str) -> bool:
        return bool(
            self.successResultOf(
                Deferred.fromCoroutine(node_pods(node, "default", "secrets", name))
            )
        )

    def test_from_the_store(self) -> None:
        node_pods = NodePods(self.server.store, self.pods)
        self.assertEqual(
            (self.uses(node_pods, "n1", "web-token"), self.uses(node_pods, "n2", "web-token")),
            (True, False),
        )

    def test_from_the_informer_once_synced(self) -> None:
        """
        Synced, the informer's index answers and the store is not listed: the
        store side here is told to list configmaps, where no pod is found.
        """
        informer = self.server.informers.for_resource(self.pods)
        configmaps = self.server.resource("", "configmaps")
        node_pods = NodePods(self.server.store, configmaps, None, informer)
        self.assertFalse(self.uses(node_pods, "n1", "web-token"))
        self.server.start()
        self.assertTrue(informer.synced)
        self.assertEqual(
            (self.uses(node_pods, "n1", "web-token"), self.uses(node_pods, "n1", "other")),
            (True, False),
        )
        self.assertFalse(self.uses(node_pods, "n2", "web-token"))


class WatchTranslationTests(SynchronousTestCase):
    def kv(self, labels: dict[str, str], revision: int) -> KeyValue:
        obj = {"metadata": {"name": "a", "labels": labels}}
        return KeyValue("/registry/configmaps/default/a", json.dumps(obj).encode(), 1, revision)

    def matches(self, obj: dict[str, Any]) -> bool:
        return bool(obj["metadata"]["labels"].get("app") == "web")

    def test_objects_entering_and_leaving_a_selector(self) -> None:
        """Through a selector, starting to match is ADDED and stopping is DELETED."""
        web, other = {"app": "web"}, {"app": "db"}
        cases = [
            (Event(EventType.CREATE, 2, self.kv(web, 2), None), "ADDED"),
            (Event(EventType.CREATE, 2, self.kv(other, 2), None), None),
            (Event(EventType.UPDATE, 3, self.kv(web, 3), self.kv(web, 2)), "MODIFIED"),
            (Event(EventType.UPDATE, 3, self.kv(other, 3), self.kv(web, 2)), "DELETED"),
            (Event(EventType.UPDATE, 3, self.kv(web, 3), self.kv(other, 2)), "ADDED"),
            (Event(EventType.DELETE, 4, self.kv(web, 3), self.kv(web, 3)), "DELETED"),
        ]
        for event, expected in cases:
            result = translate(event, self.matches)
            self.assertEqual(result[0] if result else None, expected, event)

    def test_deleted_carries_the_delete_revision(self) -> None:
        """A DELETED object's resourceVersion is the delete's revision, as clients resume from."""
        event = Event(EventType.DELETE, 9, self.kv({}, 5), None)
        result = translate(event, None)
        assert result is not None
        self.assertEqual(result[1]["metadata"]["resourceVersion"], "9")


class ContinueTokenTests(SynchronousTestCase):
    def test_round_trip_and_garbage(self) -> None:
        """A continue token carries revision and key; garbage is a 400."""
        self.assertEqual(
            decode_continue(encode_continue(42, "/registry/x/ü")), (42, "/registry/x/ü")
        )
        error = self.assertRaises(StatusError, decode_continue, "not base64!")
        self.assertEqual(error.code, 400)


class BodyLimitTests(SynchronousTestCase):
    def test_large_body_is_dropped_not_buffered(self) -> None:
        """Past 3 MiB the request keeps nothing and is marked for a 413."""
        request = APIRequest(DummyChannel())
        request.gotLength(None)
        chunk = b"x" * (1024 * 1024)
        for _ in range(4):
            request.handleContentChunk(chunk)
        self.assertTrue(request.body_too_large)
        assert request.content is not None
        self.assertEqual(request.content.tell(), 0)

    def test_form_bodies_are_not_parsed_into_args(self) -> None:
        """A POST body is the object, never HTML form fields in C{args}."""
        request = APIRequest(DummyChannel())
        request.requestHeaders.setRawHeaders(
            b"Content-Type", [b"application/x-www-form-urlencoded"]
        )
        request.gotLength(3)
        request.handleContentChunk(b"a=b")
        request.requestReceived(b"POST", b"/api/v1/namespaces/default/configmaps", b"HTTP/1.1")
        self.assertEqual(request.args, {})

    def test_declared_length_over_limit(self) -> None:
        """A Content-Length over the limit is refused before any byte arrives."""
        request = APIRequest(DummyChannel())
        request.gotLength(MAX_BODY + 1)
        self.assertTrue(request.body_too_large)


def apply_defaults(resource: ResourceType | None, obj: dict[str, Any]) -> dict[str, Any]:
    assert resource is not None
    resource.strategy.default(obj)
    return obj


class DefaultsTests(SynchronousTestCase):
    def test_kind_defaults(self) -> None:
        """Secrets are Opaque, services ClusterIP with TCP ports, deployments one replica."""
        registry = built_in_registry()
        secret = apply_defaults(registry.lookup("", "v1", "secrets"), {})
        self.assertEqual(secret["type"], "Opaque")
        service = apply_defaults(
            registry.lookup("", "v1", "services"), {"spec": {"ports": [{"port": 80}]}}
        )
        self.assertEqual(service["spec"]["type"], "ClusterIP")
        self.assertEqual(
            service["spec"]["ports"][0], {"port": 80, "protocol": "TCP", "targetPort": 80}
        )
        deployment = apply_defaults(
            registry.lookup("apps", "v1", "deployments"), {"kind": "Deployment", "spec": {}}
        )
        self.assertEqual(deployment["spec"]["replicas"], 1)


class RawObjectTests(SynchronousTestCase):
    def test_splice_equals_decode(self) -> None:
        """The spliced JSON is the decoded object, resourceVersion included."""
        from k3stw.apiserver.storage import decode, encode, raw_object

        for obj in (
            {"kind": "ConfigMap", "metadata": {"name": "a", "uid": "u"}, "data": {"k": "ü"}},
            {"kind": "Pod", "metadata": {}, "spec": {"template": {"metadata": {"x": 1}}}},
            {"spec": {"template": {"metadata": {}}}, "metadata": {"name": "late"}},
        ):
            kv = KeyValue("/registry/x/a", encode(obj), 3, 7)
            self.assertEqual(json.loads(raw_object(kv)), decode(kv))
            self.assertEqual(json.loads(raw_object(kv))["metadata"]["resourceVersion"], "7")

    def test_objects_stored_before_metadata_came_first(self) -> None:
        """Values written in another key order are decoded and re-encoded instead."""
        from k3stw.apiserver.storage import raw_object

        legacy = json.dumps({"kind": "ConfigMap", "metadata": {"name": "old"}}).encode()
        kv = KeyValue("/registry/x/old", legacy, 2, 9)
        self.assertEqual(
            json.loads(raw_object(kv))["metadata"], {"name": "old", "resourceVersion": "9"}
        )
