"""
The API from the other side: the kubernetes Python client, node and user
credentials against the authorizer, and watches that resume or expire.
"""

from __future__ import annotations

import datetime
import os
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any, ClassVar

from kubernetes import client, config, watch
from kubernetes.client.exceptions import ApiException
from twisted.trial.unittest import SynchronousTestCase

from k3stw.pki.certs import KeyPair, Usage, load_pem_certificates, load_pem_key, new_leaf
from k3stw.pki.kubeconfig import render_kubeconfig
from tests.support.net import free_port
from tests.support.twistd import Twistd, https_get, k3s_server

KUBECTL = "/usr/bin/kubectl"
HOST = "127.0.0.13"


def named(name: str) -> client.V1ConfigMap:
    """A ConfigMap with only a name."""
    return client.V1ConfigMap(metadata=client.V1ObjectMeta(name=name))


def name_of(item: client.V1ConfigMap) -> str:
    assert item.metadata is not None and item.metadata.name is not None
    return item.metadata.name


def resource_version(listed: client.V1ConfigMapList) -> str:
    assert listed.metadata is not None and listed.metadata.resource_version is not None
    return listed.metadata.resource_version


def start_server(root: Path, *extra: str) -> tuple[Twistd, int]:
    port = free_port(HOST)
    server = k3s_server(SynchronousTestCase(), root, HOST, port, *extra).start()
    server.wait_for_answer(HOST, port)
    ca = root / "data" / "server" / "tls" / "server-ca.crt"
    deadline = time.monotonic() + 60
    while True:
        try:
            if https_get(HOST, port, "/v1-k3s/readyz", ca)[0] == 200:
                return server, port
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise AssertionError("server never became ready:\n" + server.output)
        time.sleep(0.1)


class ServerTestCase(SynchronousTestCase):
    server: ClassVar[Twistd]
    root: ClassVar[Path]
    port: ClassVar[int]
    extra_flags: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def setUpClass(cls) -> None:
        cls.root = Path(tempfile.mkdtemp(prefix=f"k3stw-{cls.__name__}-"))
        cls.server, cls.port = start_server(cls.root, *cls.extra_flags)

    @classmethod
    def tearDownClass(cls) -> None:
        cls.server.stop()

    def api(self) -> client.ApiClient:
        api: client.ApiClient = config.new_client_from_config(
            config_file=str(self.root / "k3s.yaml")
        )
        return api

    def credentials(self, user: str, groups: list[str]) -> Path:
        """A kubeconfig for C{user} in C{groups}, signed by the cluster's client CA."""
        tls = self.root / "data" / "server" / "tls"
        ca = KeyPair(
            load_pem_certificates((tls / "client-ca.crt").read_bytes())[0],
            load_pem_key((tls / "client-ca.key").read_bytes()),
        )
        now = datetime.datetime.now(datetime.UTC)
        pair = new_leaf(ca, user, Usage.CLIENT, now, groups)
        path = self.root / f"{user.replace(':', '-')}.kubeconfig"
        server_ca = (tls / "server-ca.crt").read_bytes()
        path.write_bytes(render_kubeconfig(f"https://{HOST}:{self.port}", server_ca, pair))
        return path

    def kubectl(self, kubeconfig: Path, *args: str, stdin: str | None = None) -> Any:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("KUBE", "K3S_"))}
        env.update(KUBECONFIG=str(kubeconfig), KUBECACHEDIR=str(kubeconfig) + ".cache")
        return subprocess.run(
            [KUBECTL, *args], input=stdin, capture_output=True, text=True, env=env, timeout=60
        )


class PythonClientTests(ServerTestCase):
    def test_create_read_patch_list_delete(self) -> None:
        """The typed client round-trips a ConfigMap through every verb."""
        core = client.CoreV1Api(self.api())
        body = client.V1ConfigMap(
            metadata=client.V1ObjectMeta(name="py", labels={"from": "python"}), data={"a": "1"}
        )
        created = core.create_namespaced_config_map("default", body)
        self.assertEqual(created.data, {"a": "1"})
        patched = core.patch_namespaced_config_map("py", "default", {"data": {"b": "2"}})
        self.assertEqual(patched.data, {"a": "1", "b": "2"})
        listed = core.list_namespaced_config_map("default", label_selector="from=python")
        self.assertEqual([name_of(c) for c in listed.items], ["py"])
        core.delete_namespaced_config_map("py", "default")
        with self.assertRaises(ApiException) as caught:
            core.read_namespaced_config_map("py", "default")
        self.assertEqual(caught.exception.status, 404)

    def test_deleting_a_pod_answers_the_pod(self) -> None:
        """As kube-apiserver (ReturnDeletedObject): the typed client reads back a V1Pod,
        while a ConfigMap's delete answers a Status."""
        core = client.CoreV1Api(self.api())
        pod = client.V1Pod(
            metadata=client.V1ObjectMeta(name="gone"),
            spec=client.V1PodSpec(containers=[client.V1Container(name="c", image="busybox")]),
        )
        core.create_namespaced_pod("default", pod)
        deleted = core.delete_namespaced_pod("gone", "default")
        self.assertIsInstance(deleted, client.V1Pod)
        assert deleted.metadata is not None
        self.assertEqual(deleted.metadata.name, "gone")
        configmap = client.V1ConfigMap(metadata=client.V1ObjectMeta(name="cm"))
        core.create_namespaced_config_map("default", configmap)
        status = client.ApiClient().sanitize_for_serialization(
            core.delete_namespaced_config_map("cm", "default")
        )
        self.assertEqual((status["status"], status["details"]["kind"]), ("Success", "configmaps"))

    def test_a_scheduler_binds_a_pod(self) -> None:
        """The typed client's create_namespaced_pod_binding, as a second scheduler binds."""
        core = client.CoreV1Api(self.api())
        pod = client.V1Pod(
            metadata=client.V1ObjectMeta(name="unbound"),
            spec=client.V1PodSpec(
                containers=[client.V1Container(name="c", image="busybox")],
                scheduler_name="my-scheduler",  # not default-scheduler's to place
            ),
        )
        core.create_namespaced_pod("default", pod)
        binding = client.V1Binding(
            metadata=client.V1ObjectMeta(name="unbound"),
            target=client.V1ObjectReference(kind="Node", name="n7"),
        )
        core.create_namespaced_pod_binding("unbound", "default", binding, _preload_content=False)
        bound = core.read_namespaced_pod("unbound", "default")
        assert bound.spec is not None
        self.assertEqual(bound.spec.node_name, "n7")
        with self.assertRaises(ApiException) as caught:
            core.create_namespaced_pod_binding(
                "unbound", "default", binding, _preload_content=False
            )
        self.assertEqual(caught.exception.status, 409)
        core.delete_namespaced_pod("unbound", "default")

    def test_an_eviction_deletes_a_pod_without_a_budget(self) -> None:
        """The typed client's create_namespaced_pod_eviction, as kubectl drain evicts."""
        core = client.CoreV1Api(self.api())
        pod = client.V1Pod(
            metadata=client.V1ObjectMeta(name="evicted"),
            spec=client.V1PodSpec(containers=[client.V1Container(name="c", image="busybox")]),
        )
        core.create_namespaced_pod("default", pod)
        eviction = client.V1Eviction(metadata=client.V1ObjectMeta(name="evicted"))
        core.create_namespaced_pod_eviction("evicted", "default", eviction, _preload_content=False)
        # Bound by the scheduler, it is Terminating until the node's kubelet confirms it (as
        # kubectl drain, the test waits for that); unbound, it is gone at once.
        deadline = time.monotonic() + 30
        with self.assertRaises(ApiException) as caught:
            while True:
                left = core.read_namespaced_pod("evicted", "default")
                assert left.metadata is not None
                self.assertIsNotNone(left.metadata.deletion_timestamp)
                if time.monotonic() > deadline:
                    break
                time.sleep(0.1)
        self.assertEqual(caught.exception.status, 404)

    def test_paging(self) -> None:
        """limit and continue page through a list without loss or repeat."""
        core = client.CoreV1Api(self.api())
        core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name="paging")))
        names = {f"item-{i:02d}" for i in range(25)}
        for name in names:
            core.create_namespaced_config_map("paging", named(name))
        seen: list[str] = []
        token = None
        while True:
            page = core.list_namespaced_config_map("paging", limit=10, _continue=token)
            seen += [name_of(c) for c in page.items]
            assert page.metadata is not None
            token = page.metadata._continue
            if not token:
                break
        # Each once; the namespace's own kube-root-ca.crt may be among them.
        self.assertEqual(len(seen), len(set(seen)))
        self.assertEqual(set(seen) - {"kube-root-ca.crt"}, names)

    def test_watch_resumes_from_a_resource_version(self) -> None:
        """A watch from a list's resourceVersion sees the later create, update and delete."""
        core = client.CoreV1Api(self.api())
        version = resource_version(core.list_namespaced_config_map("default"))
        core.create_namespaced_config_map("default", named("watched"))
        core.patch_namespaced_config_map("watched", "default", {"data": {"x": "y"}})
        core.delete_namespaced_config_map("watched", "default")
        events = [
            (e["type"], e["object"].metadata.name)
            for e in watch.Watch().stream(
                core.list_namespaced_config_map,
                "default",
                resource_version=version,
                timeout_seconds=2,
            )
        ]
        self.assertEqual(
            events, [("ADDED", "watched"), ("MODIFIED", "watched"), ("DELETED", "watched")]
        )

    def test_nodes_created_by_the_server_pass_the_client_models(self) -> None:
        """Lists of every built-in kind deserialize into the client's strict models."""
        api = self.api()
        core = client.CoreV1Api(api)
        for listing in (
            core.list_namespace,
            core.list_node,
            core.list_pod_for_all_namespaces,
            core.list_service_for_all_namespaces,
            core.list_secret_for_all_namespaces,
            client.AppsV1Api(api).list_deployment_for_all_namespaces,
            client.CoordinationV1Api(api).list_lease_for_all_namespaces,
        ):
            self.assertIsNotNone(listing().items)


class AuthorizationTests(ServerTestCase):
    NODES = """\
apiVersion: v1
kind: Node
metadata: {name: n1}
---
apiVersion: v1
kind: Node
metadata: {name: n2}
---
apiVersion: v1
kind: Secret
metadata: {name: private}
stringData: {password: hunter2}
"""

    def setUp(self) -> None:
        admin = self.root / "k3s.yaml"
        applied = self.kubectl(admin, "apply", "-f", "-", stdin=self.NODES)
        self.assertEqual(applied.returncode, 0, applied.stderr)

    def test_node_reads_nodes_and_patches_only_itself(self) -> None:
        """A kubelet identity reads nodes, labels its own Node, not another's."""
        node = self.credentials("system:node:n1", ["system:nodes"])
        listed = self.kubectl(node, "get", "nodes", "-o", "name")
        self.assertEqual(listed.returncode, 0, listed.stderr)
        self.assertIn("node/n2", listed.stdout)
        own = self.kubectl(node, "label", "node", "n1", "seen=yes", "--overwrite")
        self.assertEqual(own.returncode, 0, own.stderr)
        other = self.kubectl(node, "label", "node", "n2", "seen=yes", "--overwrite")
        self.assertNotEqual(other.returncode, 0)
        self.assertIn(
            'Error from server (Forbidden): nodes "n2" is forbidden: User '
            '"system:node:n1" cannot patch resource "nodes"',
            other.stderr,
        )
        self.assertIn('node "n1" is not allowed to modify node "n2"', other.stderr)

    def test_node_cannot_read_secrets(self) -> None:
        """A kubelet reads no secret its pods do not use."""
        node = self.credentials("system:node:n1", ["system:nodes"])
        denied = self.kubectl(node, "get", "secret", "private")
        self.assertIn("Forbidden", denied.stderr)
        listed = self.kubectl(node, "get", "secrets")
        self.assertIn('User "system:node:n1" cannot list resource "secrets"', listed.stderr)

    def test_metrics_are_for_admins_and_health_for_everyone(self) -> None:
        """As kube's default roles: /metrics needs system:monitoring (here the admins);
        any authenticated user reads /readyz."""
        node = self.credentials("system:node:n1", ["system:nodes"])
        denied = self.kubectl(node, "get", "--raw", "/metrics")
        self.assertIn(
            'Error from server (Forbidden): forbidden: User "system:node:n1" cannot get path '
            '"/metrics"',
            denied.stderr,
        )
        ready = self.kubectl(node, "get", "--raw", "/readyz")
        self.assertEqual((ready.returncode, ready.stdout), (0, "ok"))

    def test_other_users_are_forbidden(self) -> None:
        """A user outside system:masters gets kube-apiserver's RBAC message."""
        bob = self.credentials("bob", [])
        denied = self.kubectl(bob, "get", "configmaps", "-n", "kube-system")
        self.assertIn(
            'Error from server (Forbidden): configmaps is forbidden: User "bob" cannot '
            'list resource "configmaps" in API group "" in the namespace '
            '"kube-system"',
            denied.stderr,
        )

    BOB_EDITS_DEFAULT = """\
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: bob-edit, namespace: default}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: edit}
subjects:
- {apiGroup: rbac.authorization.k8s.io, kind: User, name: bob}
"""

    def wait_for_rbac(self, admin: Path) -> None:
        """/readyz holds until the bootstrap roles are written and RBAC's caches are filled."""
        deadline = time.monotonic() + 30
        while self.kubectl(admin, "get", "--raw", "/readyz").stdout != "ok":
            self.assertLess(time.monotonic(), deadline, "RBAC never became ready")
            time.sleep(0.1)

    def can_i(self, kubeconfig: Path, *args: str) -> str:
        return str(self.kubectl(kubeconfig, "auth", "can-i", *args).stdout.strip())

    def test_auth_can_i_before_and_after_a_rolebinding(self) -> None:
        """A certificate user outside system:masters may what RBAC grants, no more."""
        admin = self.root / "k3s.yaml"
        self.wait_for_rbac(admin)
        bob = self.credentials("bob", [])
        matrix = [
            (("list", "pods", "-n", "default"), "no", "yes"),
            (("create", "deployments.apps", "-n", "default"), "no", "yes"),
            (("get", "pods", "--subresource=log", "-n", "default"), "no", "yes"),
            (("update", "deployments.apps", "--subresource=scale", "-n", "default"), "no", "yes"),
            (("list", "pods", "-n", "kube-system"), "no", "no"),
            (("list", "nodes"), "no", "no"),
            (("create", "roles", "-n", "default"), "no", "no"),
            (("create", "selfsubjectaccessreviews.authorization.k8s.io"), "yes", "yes"),
        ]
        for question, before, _ in matrix:
            self.assertEqual(self.can_i(bob, *question), before, question)
        applied = self.kubectl(admin, "apply", "-f", "-", stdin=self.BOB_EDITS_DEFAULT)
        self.assertEqual(applied.returncode, 0, applied.stderr)
        for question, _, after in matrix:
            self.assertEqual(self.can_i(bob, *question), after, question)
        listed = self.kubectl(bob, "get", "pods", "-n", "default")
        self.assertEqual(listed.returncode, 0, listed.stderr)
        rules = self.kubectl(bob, "auth", "can-i", "--list", "-n", "default").stdout
        self.assertIn("deployments.apps/scale", rules)
        self.assertIn("selfsubjectaccessreviews.authorization.k8s.io", rules)
        self.assertNotIn("*.*", rules)
        everything = self.kubectl(admin, "auth", "can-i", "--list").stdout
        self.assertIn("*.*", everything)

    def test_kubectl_as_another_user(self) -> None:
        """The admin impersonates; bob may not."""
        admin = self.root / "k3s.yaml"
        self.wait_for_rbac(admin)
        denied = self.kubectl(admin, "--as", "carol", "get", "pods", "-n", "kube-system")
        self.assertIn(
            'Error from server (Forbidden): pods is forbidden: User "carol" cannot list '
            'resource "pods" in API group "" in the namespace "kube-system"',
            denied.stderr,
        )
        self.assertEqual(self.can_i(admin, "list", "pods", "--as", "carol"), "no")
        self.assertEqual(
            self.can_i(admin, "list", "pods", "--as", "carol", "--as-group", "system:masters"),
            "yes",
        )
        bob = self.credentials("bob", [])
        refused = self.kubectl(bob, "--as", "system:admin", "get", "pods")
        self.assertIn(
            'users "system:admin" is forbidden: User "bob" cannot impersonate resource "users" '
            'in API group "" at the cluster scope',
            refused.stderr,
        )

    def test_aggregated_clusterrole(self) -> None:
        """A ClusterRole with an aggregation rule gathers the rules of the roles it selects."""
        admin = self.root / "k3s.yaml"
        gather = self.kubectl(
            admin, "create", "clusterrole", "monitoring", "--dry-run=client", "-o", "yaml",
            "--aggregation-rule=rbac.example.com/aggregate-to-monitoring=true",
        )  # fmt: skip
        self.assertEqual(gather.returncode, 0, gather.stderr)
        created = self.kubectl(admin, "apply", "-f", "-", stdin=gather.stdout)
        self.assertEqual(created.returncode, 0, created.stderr)
        part = """\
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata:
  name: monitoring-endpoints
  labels: {rbac.example.com/aggregate-to-monitoring: "true"}
rules:
- {apiGroups: [""], resources: [services, endpoints, pods], verbs: [get, list, watch]}
"""
        self.assertEqual(self.kubectl(admin, "apply", "-f", "-", stdin=part).returncode, 0)
        deadline = time.monotonic() + 10
        while True:
            shown = self.kubectl(admin, "get", "clusterrole", "monitoring", "-o", "yaml").stdout
            if "endpoints" in shown:
                break
            self.assertLess(time.monotonic(), deadline, shown)
            time.sleep(0.1)
        described = self.kubectl(admin, "describe", "clusterrole", "monitoring").stdout
        self.assertIn("endpoints", described)

    def test_anonymous_is_unauthorized(self) -> None:
        """No client certificate: 401 from every API path."""
        ca = self.root / "data" / "server" / "tls" / "server-ca.crt"
        for path in ("/api/v1/namespaces", "/apis", "/version"):
            code, body = https_get(HOST, self.port, path, ca)
            self.assertEqual(code, 401, path)
            self.assertIn(b'"reason":"Unauthorized"', body)


class ExpiredWatchTests(ServerTestCase):
    """A watch from a compacted resourceVersion ends with 410, on the etcd backend."""

    etcd: ClassVar[subprocess.Popen[bytes]]
    etcd_url: ClassVar[str]

    @classmethod
    def setUpClass(cls) -> None:
        cls.root = Path(tempfile.mkdtemp(prefix="k3stw-expired-"))
        client_port, peer_port = free_port(HOST), free_port(HOST)
        cls.etcd_url = f"http://{HOST}:{client_port}"
        cls.etcd = subprocess.Popen(
            [
                "etcd",
                "--name",
                "solo",
                "--data-dir",
                str(cls.root / "etcd"),
                "--listen-client-urls",
                cls.etcd_url,
                "--advertise-client-urls",
                cls.etcd_url,
                "--listen-peer-urls",
                f"http://{HOST}:{peer_port}",
                "--initial-advertise-peer-urls",
                f"http://{HOST}:{peer_port}",
                "--initial-cluster",
                f"solo=http://{HOST}:{peer_port}",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        cls.extra_flags = ("--datastore-endpoint", cls.etcd_url)
        try:
            cls.server, cls.port = start_server(cls.root, *cls.extra_flags)
        except BaseException:
            cls.etcd.send_signal(signal.SIGTERM)
            cls.etcd.wait(10)
            raise

    @classmethod
    def tearDownClass(cls) -> None:
        cls.server.stop()
        cls.etcd.send_signal(signal.SIGTERM)
        cls.etcd.wait(10)

    def test_compacted_resource_version_is_410(self) -> None:
        """After etcd compacts, a watch from before it raises the client's 410 ApiException."""
        core = client.CoreV1Api(self.api())
        old = resource_version(core.list_namespaced_config_map("default"))
        for i in range(3):
            core.create_namespaced_config_map("default", named(f"c{i}"))
        newest = resource_version(core.list_namespaced_config_map("default"))
        compacted = subprocess.run(
            ["etcdctl", "--endpoints", self.etcd_url, "compact", newest],
            capture_output=True,
            text=True,
            timeout=30,
            env={**os.environ, "ETCDCTL_API": "3"},
        )
        self.assertEqual(compacted.returncode, 0, compacted.stderr)
        stream = watch.Watch().stream(
            core.list_namespaced_config_map, "default", resource_version=old, timeout_seconds=5
        )
        with self.assertRaises(ApiException) as caught:
            list(stream)
        self.assertEqual(caught.exception.status, 410)
