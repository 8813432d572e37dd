"""
The real kubectl against a real ``twistd -n k3s-server`` on SQLite: the
commands k3s users type, with their output and their error messages.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path
from typing import ClassVar

import yaml
from twisted.trial.unittest import SynchronousTestCase

from tests.support.twistd import Twistd, free_port

KUBECTL = "/usr/bin/kubectl"
HOST = "127.0.0.11"

MANIFESTS = """\
apiVersion: v1
kind: Namespace
metadata:
  name: shop
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: settings
  namespace: shop
  labels: {tier: backend}
data:
  color: blue
---
apiVersion: v1
kind: Pod
metadata:
  name: web
  namespace: shop
  labels: {app: web, tier: frontend}
spec:
  containers:
  - name: nginx
    image: nginx:1.27
    ports:
    - containerPort: 80
      name: http
    env:
    - {name: MODE, value: prod}
"""


class KubectlTests(SynchronousTestCase):
    """One server for the class; each test uses its own names."""

    server: ClassVar[Twistd]
    root: ClassVar[Path]
    env: ClassVar[dict[str, str]]

    @classmethod
    def setUpClass(cls) -> None:
        import tempfile

        cls.root = Path(tempfile.mkdtemp(prefix="k3stw-kubectl-"))
        port = free_port(HOST)
        (cls.root / "config.yaml").write_text("")
        holder = SynchronousTestCase()
        cls.server = Twistd(
            holder,
            cls.root,
            "k3s-server",
            "--config",
            str(cls.root / "config.yaml"),
            "--data-dir",
            str(cls.root / "data"),
            "--bind-address",
            HOST,
            "--https-listen-port",
            str(port),
            "--write-kubeconfig",
            str(cls.root / "k3s.yaml"),
        )
        cls.server.start()
        cls.server.wait_for_ping(HOST, port)
        cls.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("KUBE", "K3S_"))},
            "KUBECONFIG": str(cls.root / "k3s.yaml"),
            "KUBECACHEDIR": str(cls.root / "cache"),
        }
        deadline = time.monotonic() + 30
        while cls.kubectl_raw("get", "--raw", "/v1-k3s/readyz").returncode != 0:
            if time.monotonic() > deadline:
                raise AssertionError("server never became ready:\n" + cls.server.output)
            time.sleep(0.1)

    @classmethod
    def tearDownClass(cls) -> None:
        cls.server.stop()

    @classmethod
    def kubectl_raw(cls, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [KUBECTL, *args], input=stdin, capture_output=True, text=True, env=cls.env, timeout=60
        )

    def kubectl(self, *args: str, stdin: str | None = None) -> str:
        """Run kubectl; its stdout, failing the test on a non-zero exit."""
        result = self.kubectl_raw(*args, stdin=stdin)
        self.assertEqual(result.returncode, 0, f"kubectl {' '.join(args)}:\n{result.stderr}")
        return result.stdout

    def kubectl_fails(self, *args: str, stdin: str | None = None) -> str:
        result = self.kubectl_raw(*args, stdin=stdin)
        self.assertNotEqual(result.returncode, 0, result.stdout)
        return result.stderr

    def test_version_and_api_resources(self) -> None:
        """kubectl version shows 1.32; api-resources lists every built-in kind with short names."""
        self.assertIn("Server Version: v1.32", self.kubectl("version"))
        resources = self.kubectl("api-resources")
        for line in (
            "configmaps",
            "cm",
            "deployments",
            "deploy",
            "apps/v1",
            "leases",
            "coordination.k8s.io/v1",
            "customresourcedefinitions",
        ):
            self.assertIn(line, resources)

    def test_system_namespaces(self) -> None:
        """A new cluster has k3s's four namespaces, Active."""
        out = self.kubectl("get", "namespaces", "-o", "name")
        for name in ("default", "kube-system", "kube-public", "kube-node-lease"):
            self.assertIn(f"namespace/{name}", out)

    def test_apply_multi_document_and_read_back(self) -> None:
        """apply -f of several kinds creates them; get in every output format reads them back."""
        out = self.kubectl("apply", "-f", "-", stdin=MANIFESTS)
        self.assertIn("namespace/shop created", out)
        self.assertIn("configmap/settings created", out)
        self.assertIn("pod/web created", out)
        pod = json.loads(self.kubectl("get", "pod", "web", "-n", "shop", "-o", "json"))
        self.assertEqual(pod["spec"]["containers"][0]["ports"][0]["containerPort"], 80)
        self.assertTrue(pod["metadata"]["uid"])
        self.assertIn(
            "kubectl.kubernetes.io/last-applied-configuration", pod["metadata"]["annotations"]
        )
        as_yaml = yaml.safe_load(self.kubectl("get", "cm", "settings", "-n", "shop", "-o", "yaml"))
        self.assertEqual(as_yaml["data"], {"color": "blue"})
        self.assertEqual(
            self.kubectl("get", "cm", "-n", "shop", "-o", "name").split(), ["configmap/settings"]
        )
        path = self.kubectl(
            "get", "pod", "web", "-n", "shop", "-o", "jsonpath={.spec.containers[0].image}"
        )
        self.assertEqual(path, "nginx:1.27")
        self.assertIn("unchanged", self.kubectl("apply", "-f", "-", stdin=MANIFESTS))

    def test_create_twice_is_already_exists(self) -> None:
        """create of an existing object prints kube-apiserver's AlreadyExists message."""
        doc = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: twice}\ndata: {a: b}\n"
        self.kubectl("create", "-f", "-", stdin=doc)
        error = self.kubectl_fails("create", "-f", "-", stdin=doc)
        self.assertIn(
            'Error from server (AlreadyExists): error when creating "STDIN": '
            'configmaps "twice" already exists',
            error,
        )

    def test_not_found(self) -> None:
        """A missing object is kubectl's NotFound line."""
        error = self.kubectl_fails("get", "configmap", "nothing-here")
        self.assertIn('Error from server (NotFound): configmaps "nothing-here" not found', error)

    def test_namespace_must_exist(self) -> None:
        """Creating in a namespace that does not exist is a NotFound for the namespace."""
        doc = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x, namespace: nowhere}\n"
        error = self.kubectl_fails("create", "-f", "-", stdin=doc)
        self.assertIn('namespaces "nowhere" not found', error)

    def test_delete(self) -> None:
        """delete removes the object; a second delete is NotFound."""
        doc = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: doomed}\n"
        self.kubectl("create", "-f", "-", stdin=doc)
        self.assertIn('configmap "doomed" deleted', self.kubectl("delete", "cm", "doomed"))
        self.assertIn("NotFound", self.kubectl_fails("delete", "cm", "doomed"))

    def test_all_namespaces(self) -> None:
        """-A lists across namespaces with a NAMESPACE column."""
        for ns in ("ns-a", "ns-b"):
            self.kubectl(
                "apply",
                "-f",
                "-",
                stdin=f"apiVersion: v1\nkind: Namespace\nmetadata: {{name: {ns}}}\n"
                f"---\napiVersion: v1\nkind: ConfigMap\nmetadata: {{name: everywhere, "
                f"namespace: {ns}}}\n",
            )
        each = "{range .items[*]}{.metadata.namespace}/{.metadata.name} {end}"
        out = self.kubectl("get", "configmaps", "-A", "-o", f"jsonpath={each}")
        self.assertIn("ns-a/everywhere", out)
        self.assertIn("ns-b/everywhere", out)
