"""
The real kubectl against a real ``twistd -n k3s-server`` on SQLite: the
commands k3s users type, with their output and their error messages.
"""

from __future__ import annotations

import base64
import json
import subprocess
import time
from typing import Any

import yaml

from tests.support.kubectl import KUBECTL, KubectlServerCase
from tests.support.twistd import admin_request

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


#: One object of each kind ``test_catalogued_kinds_print_kube_columns`` lists.
PRINTED_MANIFESTS = """\
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: data, namespace: printing}
spec:
  accessModes: [ReadWriteOnce]
  storageClassName: printing-local
  resources: {requests: {storage: 1Gi}}
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {name: shop, namespace: printing}
spec:
  ingressClassName: traefik
  tls: [{hosts: [shop.example.com], secretName: shop-tls}]
  rules:
  - host: shop.example.com
    http:
      paths:
      - {path: /, pathType: Prefix, backend: {service: {name: web, port: {number: 80}}}}
---
apiVersion: autoscaling/v2
kind: HorizontalPodAutoscaler
metadata: {name: web, namespace: printing}
spec:
  scaleTargetRef: {apiVersion: apps/v1, kind: Deployment, name: web}
  minReplicas: 2
  maxReplicas: 5
  metrics:
  - type: Resource
    resource: {name: cpu, target: {type: Utilization, averageUtilization: 50}}
---
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata: {name: web, namespace: printing}
spec:
  minAvailable: 50%
  selector: {matchLabels: {app: web}}
---
apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata:
  name: printing-local
  annotations: {storageclass.kubernetes.io/is-default-class: "true"}
provisioner: rancher.io/local-path
volumeBindingMode: WaitForFirstConsumer
---
apiVersion: scheduling.k8s.io/v1
kind: PriorityClass
metadata: {name: printing-high}
value: 1000
"""


class KubectlTests(KubectlServerCase):
    """One server for the class; each test uses its own names."""

    host = HOST

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
        # The namespace's own kube-root-ca.crt is there too, as on any cluster.
        listed = self.kubectl("get", "cm", "-n", "shop", "-o", "name").split()
        self.assertEqual(set(listed) - {"configmap/kube-root-ca.crt"}, {"configmap/settings"})
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

    def test_every_builtin_kind_lists(self) -> None:
        """get works for every served kind, as a Table and as JSON."""
        kinds = (
            "namespaces",
            "nodes",
            "pods",
            "services",
            "endpoints",
            "secrets",
            "configmaps",
            "events",
            "serviceaccounts",
            "leases",
            "endpointslices",
            "deployments",
            "replicasets",
            "daemonsets",
            "customresourcedefinitions",
        )
        for kind in kinds:
            self.kubectl("get", kind, "-A")
            listed = json.loads(self.kubectl("get", kind, "-A", "-o", "json"))
            self.assertEqual(listed["kind"], "List", kind)

    def test_catalogued_kinds_print_kube_columns(self) -> None:
        """kubectl get pvc,ingress,hpa,pdb,sc,priorityclass prints kube 1.32's headers and cells."""
        self.kubectl("create", "namespace", "printing")
        self.kubectl("apply", "-f", "-", stdin=PRINTED_MANIFESTS)
        out = self.kubectl(
            "get", "pvc,ingress,hpa,pdb,sc,priorityclass", "-n", "printing", "-o", "wide"
        )
        # One table per kind, its cells as kubectl spaces them out, normalised to one space.
        tables = [
            [" ".join(line.split()) for line in block.splitlines()]
            for block in out.strip().split("\n\n")
        ]
        self.assertEqual(
            [table[0] for table in tables],
            [
                "NAME STATUS VOLUME CAPACITY ACCESS MODES STORAGECLASS VOLUMEATTRIBUTESCLASS AGE "
                "VOLUMEMODE",
                "NAME CLASS HOSTS ADDRESS PORTS AGE",
                "NAME REFERENCE TARGETS MINPODS MAXPODS REPLICAS AGE",
                "NAME MIN AVAILABLE MAX UNAVAILABLE ALLOWED DISRUPTIONS AGE",
                "NAME PROVISIONER RECLAIMPOLICY VOLUMEBINDINGMODE ALLOWVOLUMEEXPANSION AGE",
                "NAME VALUE GLOBAL-DEFAULT AGE PREEMPTIONPOLICY",
            ],
        )
        rows = "\n".join(row for table in tables for row in table[1:])
        age = r"\d+s"
        for wanted in (
            rf"persistentvolumeclaim/data Pending printing-local <unset> {age} Filesystem",
            # ADDRESS: the node's, once the Ingress status controller has written it.
            rf"ingress.networking.k8s.io/shop traefik shop.example.com (\S+ )?80, 443 {age}",
            "horizontalpodautoscaler.autoscaling/web Deployment/web "
            rf"cpu: <unknown>/50% 2 5 0 {age}",
            rf"poddisruptionbudget.policy/web 50% N/A 0 {age}",
            r"storageclass.storage.k8s.io/printing-local \(default\) rancher.io/local-path Delete "
            rf"WaitForFirstConsumer false {age}",
            rf"priorityclass.scheduling.k8s.io/printing-high 1000 false {age} PreemptLowerPriority",
        ):
            self.assertRegex(rows, f"(?m)^{wanted}$")

    def test_wide_columns_and_labels(self) -> None:
        """-o wide adds the wide columns; --show-labels and -l select by label."""
        self.kubectl("apply", "-f", "-", stdin=MANIFESTS)
        wide = self.kubectl("get", "pods", "-n", "shop", "-o", "wide")
        for column in ("NAME", "READY", "STATUS", "RESTARTS", "AGE", "IP", "NODE"):
            self.assertIn(column, wide.splitlines()[0])
        self.assertIn("Pending", wide)
        labels = self.kubectl("get", "pods", "-n", "shop", "--show-labels")
        self.assertIn("app=web,tier=frontend", labels)
        selected = self.kubectl("get", "pods,cm", "-n", "shop", "-l", "tier=frontend", "-o", "name")
        self.assertEqual(selected.split(), ["pod/web"])
        by_field = self.kubectl(
            "get", "pods", "-n", "shop", "--field-selector", "metadata.name=web", "-o", "name"
        )
        self.assertEqual(by_field.split(), ["pod/web"])

    def test_label_annotate_patch_replace(self) -> None:
        """label, annotate, the three patch types, and replace all change what they should."""
        doc = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: edited}\ndata: {a: '1'}\n"
        self.kubectl("create", "-f", "-", stdin=doc)
        self.kubectl("label", "cm", "edited", "color=red")
        self.kubectl("annotate", "cm", "edited", "note=hello")
        self.kubectl("patch", "cm", "edited", "--type=merge", "-p", '{"data":{"b":"2"}}')
        self.kubectl(
            "patch",
            "cm",
            "edited",
            "--type=json",
            "-p",
            '[{"op":"replace","path":"/data/a","value":"one"}]',
        )
        self.kubectl("patch", "cm", "edited", "-p", '{"data":{"c":"3"}}')  # strategic
        cm = json.loads(self.kubectl("get", "cm", "edited", "-o", "json"))
        self.assertEqual(cm["data"], {"a": "one", "b": "2", "c": "3"})
        self.assertEqual(cm["metadata"]["labels"], {"color": "red"})
        self.assertEqual(cm["metadata"]["annotations"]["note"], "hello")
        cm["data"] = {"replaced": "yes"}
        self.kubectl("replace", "-f", "-", stdin=json.dumps(cm))
        self.assertEqual(
            self.kubectl("get", "cm", "edited", "-o", "jsonpath={.data}"), '{"replaced":"yes"}'
        )
        stale = self.kubectl_fails("replace", "-f", "-", stdin=json.dumps(cm))
        self.assertIn(
            "the object has been modified; please apply your changes to the latest "
            "version and try again",
            stale,
        )

    def test_reapply_after_edit_keeps_every_field(self) -> None:
        """Client-side apply of a changed Deployment keeps fields set by others."""
        deployment = """\
apiVersion: apps/v1
kind: Deployment
metadata: {name: api}
spec:
  replicas: 2
  selector: {matchLabels: {app: api}}
  template:
    metadata: {labels: {app: api}}
    spec:
      containers:
      - name: api
        image: example/api:1
        ports: [{containerPort: 8080}]
        env: [{name: A, value: "1"}]
"""
        self.kubectl("apply", "-f", "-", stdin=deployment)
        self.kubectl(
            "patch",
            "deployment",
            "api",
            "--type=json",
            "-p",
            '[{"op":"add","path":"/spec/template/spec/containers/0/env/-",'
            '"value":{"name":"ADDED","value":"by-hand"}}]',
        )
        self.kubectl("apply", "-f", "-", stdin=deployment.replace("example/api:1", "example/api:2"))
        container = json.loads(self.kubectl("get", "deploy", "api", "-o", "json"))["spec"][
            "template"
        ]["spec"]["containers"][0]
        self.assertEqual(container["image"], "example/api:2")
        self.assertEqual(container["ports"][0]["containerPort"], 8080)
        self.assertIn({"name": "ADDED", "value": "by-hand"}, container["env"])
        table = self.kubectl("get", "deploy", "api")
        self.assertIn("READY", table)
        self.assertIn("UP-TO-DATE", table)

    def test_server_side_apply(self) -> None:
        """--server-side creates, updates, and reports a conflict with another manager."""
        doc = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: ssa}\ndata: {owner: first}\n"
        self.assertIn(
            "serverside-applied", self.kubectl("apply", "--server-side", "-f", "-", stdin=doc)
        )
        self.kubectl("apply", "--server-side", "-f", "-", stdin=doc.replace("first", "second"))
        self.assertEqual(self.kubectl("get", "cm", "ssa", "-o", "jsonpath={.data.owner}"), "second")
        conflict = self.kubectl_fails(
            "apply",
            "--server-side",
            "--field-manager=other",
            "-f",
            "-",
            stdin=doc.replace("first", "third"),
        )
        self.assertIn("conflict", conflict.lower())
        self.kubectl(
            "apply",
            "--server-side",
            "--field-manager=other",
            "--force-conflicts",
            "-f",
            "-",
            stdin=doc.replace("first", "third"),
        )
        self.assertEqual(self.kubectl("get", "cm", "ssa", "-o", "jsonpath={.data.owner}"), "third")

    def test_watch_sees_create_update_delete(self) -> None:
        """get -w prints the object again for each change."""
        watcher = subprocess.Popen(
            [
                KUBECTL,
                "get",
                "cm",
                "-n",
                "default",
                "-w",
                "--output-watch-events",
                "--request-timeout=20s",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=self.env,
        )
        try:
            time.sleep(1.5)
            doc = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: watched}\n"
            self.kubectl("create", "-f", "-", stdin=doc)
            self.kubectl("label", "cm", "watched", "step=two")
            self.kubectl("delete", "cm", "watched")
            deadline = time.monotonic() + 20
            lines: list[str] = []
            assert watcher.stdout is not None
            while time.monotonic() < deadline and not any("DELETED" in x for x in lines):
                line = watcher.stdout.readline()
                if not line:
                    break
                if "watched" in line:
                    lines.append(line)
        finally:
            watcher.kill()
            watcher.wait()
        self.assertEqual([line.split()[0] for line in lines], ["ADDED", "MODIFIED", "DELETED"])

    def test_delete_waits_for_finalizers(self) -> None:
        """An object with a finalizer is marked, kept, and goes when the finalizer is removed."""
        doc = (
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: held, finalizers: "
            "[example.com/hold]}\n"
        )
        self.kubectl("create", "-f", "-", stdin=doc)
        self.kubectl("delete", "cm", "held", "--wait=false")
        held = json.loads(self.kubectl("get", "cm", "held", "-o", "json"))
        self.assertIn("deletionTimestamp", held["metadata"])
        self.kubectl(
            "patch", "cm", "held", "--type=merge", "-p", '{"metadata":{"finalizers":null}}'
        )
        self.assertIn("NotFound", self.kubectl_fails("get", "cm", "held"))

    def test_namespace_deletion_takes_its_contents(self) -> None:
        """delete namespace --wait returns once everything in it is gone."""
        docs = (
            "apiVersion: v1\nkind: Namespace\nmetadata: {name: doomed-ns}\n---\n"
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c, namespace: doomed-ns}\n"
        )
        self.kubectl("apply", "-f", "-", stdin=docs)
        self.kubectl("delete", "namespace", "doomed-ns", "--wait=true", "--timeout=30s")
        self.assertIn("NotFound", self.kubectl_fails("get", "namespace", "doomed-ns"))

    def test_owner_references_cascade(self) -> None:
        """Deleting an owner deletes its dependents (background propagation)."""
        self.kubectl(
            "create", "-f", "-", stdin="apiVersion: v1\nkind: ConfigMap\nmetadata: {name: parent}\n"
        )
        uid = self.kubectl("get", "cm", "parent", "-o", "jsonpath={.metadata.uid}")
        child = (
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: child\n  ownerReferences:"
            f"\n  - {{apiVersion: v1, kind: ConfigMap, name: parent, uid: {uid}}}\n"
        )
        self.kubectl("create", "-f", "-", stdin=child)
        self.kubectl("delete", "cm", "parent")
        deadline = time.monotonic() + 20
        while self.kubectl_raw("get", "cm", "child").returncode == 0:
            self.assertLess(time.monotonic(), deadline, "dependent was never collected")
            time.sleep(0.1)

    def test_custom_resources(self) -> None:
        """A CRD adds a resource to discovery; its objects apply, list, and go with it."""
        crd = """\
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: gadgets.example.com}
spec:
  group: example.com
  scope: Namespaced
  names: {plural: gadgets, singular: gadget, kind: Gadget, shortNames: [gd]}
  versions:
  - name: v1
    served: true
    storage: true
    schema: {openAPIV3Schema: {type: object, x-kubernetes-preserve-unknown-fields: true}}
"""
        self.kubectl("apply", "-f", "-", stdin=crd)
        gadget = "apiVersion: example.com/v1\nkind: Gadget\nmetadata: {name: g1}\nspec: {n: 1}\n"
        self.assertIn(
            "gadget.example.com/g1 created", self.kubectl("apply", "-f", "-", stdin=gadget)
        )
        table = self.kubectl("get", "gd")
        self.assertIn("g1", table)
        self.assertIn("gadgets", self.kubectl("api-resources", "--api-group=example.com"))
        self.kubectl("delete", "crd", "gadgets.example.com", "--timeout=30s")
        self.assertNotEqual(self.kubectl_raw("get", "gadgets").returncode, 0)

    def test_status_subresource(self) -> None:
        """Pod status changes only through /status; a main-resource patch leaves it alone."""
        pod = "apiVersion: v1\nkind: Pod\nmetadata: {name: statusful}\nspec:\n  containers:\n"
        self.kubectl("apply", "-f", "-", stdin=pod + "  - {name: c, image: busybox}\n")
        self.kubectl(
            "patch",
            "pod",
            "statusful",
            "--subresource=status",
            "--type=merge",
            "-p",
            '{"status":{"phase":"Running"}}',
        )
        self.kubectl(
            "patch",
            "pod",
            "statusful",
            "--type=merge",
            "-p",
            '{"status":{"phase":"Failed"},"metadata":{"labels":{"seen":"yes"}}}',
        )
        live = json.loads(self.kubectl("get", "pod", "statusful", "-o", "json"))
        self.assertEqual(live["status"]["phase"], "Running")
        self.assertEqual(live["metadata"]["labels"]["seen"], "yes")

    def raw_post(self, body: bytes, content_type: str) -> tuple[int, dict[str, Any]]:
        """POST a ConfigMap body as the admin, over the kubeconfig's TLS identity."""
        path = "/api/v1/namespaces/default/configmaps"
        return admin_request(self.root, "POST", path, body, content_type)

    def test_services_get_a_cluster_ip_and_node_ports(self) -> None:
        """As on k3s: a ClusterIP from 10.43.0.0/16, node ports from 30000-32767."""
        manifest = (
            "apiVersion: v1\nkind: Service\nmetadata: {name: exposed}\n"
            "spec: {type: NodePort, selector: {app: web}, ports: [{port: 80}]}\n"
        )
        self.kubectl("apply", "-f", "-", stdin=manifest)
        line = self.kubectl("get", "svc", "exposed", "--no-headers").split()
        self.assertEqual(line[1], "NodePort")
        self.assertTrue(line[2].startswith("10.43."), line)
        port, node_port = line[4].removesuffix("/TCP").split(":")
        self.assertEqual(port, "80")
        self.assertIn(int(node_port), range(30000, 32768))
        # Applied again, unchanged: it keeps both.
        self.kubectl("apply", "-f", "-", stdin=manifest)
        self.assertEqual(
            self.kubectl("get", "svc", "exposed", "--no-headers").split()[2:5], line[2:5]
        )
        self.kubectl("delete", "svc", "exposed")

    MANIFESTS = """\
apiVersion: apps/v1
kind: StatefulSet
metadata: {name: db}
spec:
  serviceName: db
  selector: {matchLabels: {app: db}}
  template:
    metadata: {labels: {app: db}}
    spec:
      containers:
      - {name: db, image: postgres:16, ports: [{containerPort: 5432}]}
      - {name: sidecar, image: busybox, env: [{name: MODE, value: watch}]}
---
apiVersion: batch/v1
kind: Job
metadata: {name: once}
spec:
  template:
    spec: {restartPolicy: Never, containers: [{name: c, image: busybox}]}
---
apiVersion: batch/v1
kind: CronJob
metadata: {name: nightly}
spec:
  schedule: "0 3 * * *"
  jobTemplate:
    spec:
      template:
        spec: {restartPolicy: OnFailure, containers: [{name: c, image: busybox}]}
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {name: web}
spec:
  rules: [{host: a.example, http: {paths: [{path: /, pathType: Prefix,
    backend: {service: {name: web, port: {number: 80}}}}]}}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny}
spec: {podSelector: {}, policyTypes: [Ingress]}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: reader}
rules: [{apiGroups: [""], resources: [pods], verbs: [get, list]}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: reader}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: reader}
subjects: [{kind: ServiceAccount, name: default}]
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: data}
spec: {accessModes: [ReadWriteOnce], resources: {requests: {storage: 1Gi}}}
---
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata: {name: db}
spec: {minAvailable: 1, selector: {matchLabels: {app: db}}}
---
apiVersion: autoscaling/v2
kind: HorizontalPodAutoscaler
metadata: {name: web}
spec:
  scaleTargetRef: {apiVersion: apps/v1, kind: Deployment, name: web}
  minReplicas: 1
  maxReplicas: 3
---
apiVersion: v1
kind: ResourceQuota
metadata: {name: small}
spec: {hard: {pods: "10"}}
---
apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata: {name: local}
provisioner: rancher.io/local-path
---
apiVersion: scheduling.k8s.io/v1
kind: PriorityClass
metadata: {name: high}
value: 1000
"""

    def test_every_common_kind_is_served(self) -> None:
        """Manifests of the kinds users bring are stored, read back, listed by category and
        explained."""
        self.kubectl("create", "namespace", "kinds")
        applied = self.kubectl("apply", "-n", "kinds", "-f", "-", stdin=self.MANIFESTS)
        for created in (
            "statefulset.apps/db created",
            "job.batch/once created",
            "cronjob.batch/nightly created",
            "ingress.networking.k8s.io/web created",
            "networkpolicy.networking.k8s.io/deny created",
            "role.rbac.authorization.k8s.io/reader created",
            "rolebinding.rbac.authorization.k8s.io/reader created",
            "persistentvolumeclaim/data created",
            "poddisruptionbudget.policy/db created",
            "horizontalpodautoscaler.autoscaling/web created",
            "resourcequota/small created",
            "storageclass.storage.k8s.io/local created",
            "priorityclass.scheduling.k8s.io/high created",
        ):
            self.assertIn(created, applied)
        # Applied again, unchanged: the merge of every kind keeps what is stored.
        again = self.kubectl("apply", "-n", "kinds", "-f", "-", stdin=self.MANIFESTS)
        self.assertIn("statefulset.apps/db unchanged", again)
        # A strategic merge patch merges into the container by name (the schema's merge
        # key): the other container and the port stay.
        patch = (
            '{"spec":{"template":{"spec":{"containers":[{"name":"db","image":"postgres:17"}]}}}}'
        )
        self.kubectl("patch", "sts", "db", "-n", "kinds", "--type", "strategic", "-p", patch)
        containers = json.loads(
            self.kubectl(
                "get",
                "sts",
                "db",
                "-n",
                "kinds",
                "-o",
                "jsonpath={.spec.template.spec.containers}",
            )
        )
        self.assertEqual(
            [(c["name"], c["image"]) for c in containers],
            [("db", "postgres:17"), ("sidecar", "busybox")],
        )
        self.assertEqual(containers[0]["ports"][0]["containerPort"], 5432)
        self.assertEqual(containers[1]["env"], [{"name": "MODE", "value": "watch"}])
        every = self.kubectl("get", "all", "-n", "kinds", "-o", "name").split()
        for name in ("statefulset.apps/db", "job.batch/once", "cronjob.batch/nightly"):
            self.assertIn(name, every)
        resources = self.kubectl("api-resources", "--no-headers").splitlines()
        self.assertTrue(any(line.split()[:2] == ["cronjobs", "cj"] for line in resources))
        explained = self.kubectl("explain", "statefulset.spec.serviceName")
        self.assertIn("GROUP:      apps", explained)
        self.assertIn("serviceName", explained)

    def test_kubectl_scale_through_the_scale_subresource(self) -> None:
        """kubectl scale (a PATCH of .../scale) sets replicas; the Scale reads them back."""
        manifest = (
            "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: scaled}\n"
            "spec:\n  selector: {matchLabels: {app: scaled}}\n"
            "  template:\n    metadata: {labels: {app: scaled}}\n"
            "    spec: {containers: [{name: c, image: busybox}]}\n"
        )
        self.kubectl("apply", "-f", "-", stdin=manifest)
        self.assertIn(
            "deployment.apps/scaled scaled", self.kubectl("scale", "deploy/scaled", "--replicas=4")
        )
        replicas = self.kubectl("get", "deploy", "scaled", "-o", "jsonpath={.spec.replicas}")
        self.assertEqual(replicas, "4")
        scale = json.loads(
            self.kubectl(
                "get", "--raw", "/apis/apps/v1/namespaces/default/deployments/scaled/scale"
            )
        )
        self.assertEqual((scale["kind"], scale["apiVersion"]), ("Scale", "autoscaling/v1"))
        self.assertEqual(
            (scale["spec"]["replicas"], scale["status"]["selector"]), (4, "app=scaled")
        )
        refused = self.kubectl_raw("scale", "deploy/scaled", "--replicas=-1")
        self.assertNotEqual(refused.returncode, 0)
        self.kubectl("delete", "deploy", "scaled")

    TYPO = (
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: typo}\n"
        "spec:\n  selector: {matchLabels: {app: typo}}\n"
        "  template:\n    metadata: {labels: {app: typo}}\n"
        "    spec: {containerz: [], containers: [{name: c, image: busybox, imagez: x}]}\n"
    )

    def test_unknown_fields_are_refused_strictly_or_dropped_with_a_warning(self) -> None:
        """kubectl's default validation (Strict) refuses a typo in kube's words; --validate=warn
        stores the object without it and prints kube's warning."""
        refused = self.kubectl_raw("apply", "-f", "-", stdin=self.TYPO)
        self.assertNotEqual(refused.returncode, 0)
        # In the order of the JSON kubectl sends (its keys sorted).
        self.assertIn(
            'Deployment in version "v1" cannot be handled as a Deployment: strict decoding '
            'error: unknown field "spec.template.spec.containers[0].imagez", unknown field '
            '"spec.template.spec.containerz"',
            refused.stderr,
        )
        self.assertNotEqual(self.kubectl_raw("get", "deploy", "typo").returncode, 0)
        warned = self.kubectl_raw("apply", "--validate=warn", "-f", "-", stdin=self.TYPO)
        self.assertEqual(warned.returncode, 0, warned.stderr)
        self.assertIn('Warning: unknown field "spec.template.spec.containerz"', warned.stderr)
        stored = json.loads(self.kubectl("get", "deploy", "typo", "-o", "json"))
        self.assertNotIn("containerz", stored["spec"]["template"]["spec"])
        self.assertNotIn("imagez", stored["spec"]["template"]["spec"]["containers"][0])
        self.kubectl("delete", "deploy", "typo")

    def test_a_value_of_the_wrong_type_is_refused_not_stored(self) -> None:
        """replicas: "three" is refused in kube-apiserver's words (the issue's example), so
        no typed client ever reads it back."""
        manifest = self.TYPO.replace("containerz: [], ", "").replace(", imagez: x", "")
        manifest = manifest.replace("spec:\n  selector", 'spec:\n  replicas: "three"\n  selector')
        refused = self.kubectl_raw("apply", "-f", "-", stdin=manifest)
        self.assertNotEqual(refused.returncode, 0)
        self.assertIn(
            'The Deployment "typo" is invalid: spec.replicas: Invalid value: "string": '
            'spec.replicas in body must be of type integer: "string"',
            refused.stderr,
        )
        self.assertNotEqual(self.kubectl_raw("get", "deploy", "typo").returncode, 0)

    def test_health_endpoints_as_kubectl_reads_them(self) -> None:
        """/healthz, /livez and /readyz answer ok; ?verbose lists kube-apiserver's checks."""
        for endpoint in ("/healthz", "/livez", "/readyz", "/readyz/etcd"):
            self.assertEqual(self.kubectl("get", "--raw", endpoint), "ok")
        verbose = self.kubectl("get", "--raw", "/readyz?verbose").splitlines()
        for line in ("[+]ping ok", "[+]etcd ok", "[+]shutdown ok", "readyz check passed"):
            self.assertIn(line, verbose)
        missing = self.kubectl_raw("get", "--raw", "/livez/shutdown")
        self.assertNotEqual(missing.returncode, 0)
        self.assertIn("NotFound", missing.stderr)

    def test_metrics_in_kube_apiservers_names(self) -> None:
        """/metrics counts requests by verb, resource and code, times them, counts watch
        events and stored objects, as kube-apiserver names them."""
        self.kubectl("get", "configmaps", "-n", "kube-system")
        text = self.kubectl("get", "--raw", "/metrics")
        self.assertIn(
            'apiserver_request_total{code="200",component="apiserver",dry_run="",group="",'
            'resource="configmaps",scope="namespace",subresource="",verb="LIST",version="v1"}',
            text,
        )
        self.assertIn("# TYPE apiserver_request_duration_seconds histogram", text)
        self.assertIn('apiserver_storage_objects{resource="namespaces"}', text)
        self.assertIn("# TYPE apiserver_watch_events_total counter", text)
        self.assertNotIn("_created", text)

    def test_a_pending_deletion_answers_the_object(self) -> None:
        """Held by a finalizer, a deleted object comes back marked; 202 only when the client
        asked to cascade the old way (orphanDependents: false), as kube-apiserver answers."""
        path = "/api/v1/namespaces/default/configmaps"
        held = {"metadata": {"name": "held", "finalizers": ["example.com/hold"]}}
        self.assertEqual(admin_request(self.root, "POST", path, json.dumps(held).encode())[0], 201)
        body = json.dumps({"orphanDependents": False}).encode()
        code, answer = admin_request(self.root, "DELETE", f"{path}/held", body)
        self.assertEqual(code, 202)
        self.assertIn("deletionTimestamp", answer["metadata"])
        code, again = admin_request(self.root, "DELETE", f"{path}/held")
        self.assertEqual((code, again["kind"]), (200, "ConfigMap"))
        self.kubectl(
            "patch", "cm", "held", "--type", "merge", "-p", '{"metadata":{"finalizers":null}}'
        )

    def test_body_over_3_mib_is_413(self) -> None:
        """A request body past 3 MiB is refused with a RequestEntityTooLarge Status."""
        big = json.dumps({"metadata": {"name": "big"}, "data": {"x": "y" * (4 * 1024 * 1024)}})
        code, status = self.raw_post(big.encode(), "application/json")
        self.assertEqual((code, status["reason"]), (413, "RequestEntityTooLarge"))

    def test_protobuf_body_is_415(self) -> None:
        """A protobuf body of a kind the server does not serve gets a clean UnsupportedMediaType."""
        code, status = self.raw_post(
            b"k8s\x00\n\x1a\n\x0capps/v1beta1\x12\nDeployment",
            "application/vnd.kubernetes.protobuf",
        )
        self.assertEqual((code, status["reason"]), (415, "UnsupportedMediaType"))
        self.assertIn("protobuf bodies of Deployment are not supported", status["message"])

    def owner_with_child(self, owner: str) -> None:
        self.kubectl(
            "create",
            "-f",
            "-",
            stdin=f"apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: {owner}}}\n",
        )
        uid = self.kubectl("get", "cm", owner, "-o", "jsonpath={.metadata.uid}")
        child = (
            f"apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {owner}-child\n"
            f"  ownerReferences:\n  - {{apiVersion: v1, kind: ConfigMap, name: {owner}, "
            f"uid: {uid}}}\n"
        )
        self.kubectl("create", "-f", "-", stdin=child)

    def test_cascade_orphan_keeps_dependents(self) -> None:
        """--cascade=orphan deletes the owner and strips the dependents' ownerReferences."""
        self.owner_with_child("orphaner")
        self.kubectl("delete", "cm", "orphaner", "--cascade=orphan", "--timeout=30s")
        self.assertIn("NotFound", self.kubectl_fails("get", "cm", "orphaner"))
        child = json.loads(self.kubectl("get", "cm", "orphaner-child", "-o", "json"))
        self.assertNotIn("ownerReferences", child["metadata"])

    def test_cascade_foreground_deletes_dependents_first(self) -> None:
        """--cascade=foreground returns once dependents and then the owner are gone."""
        self.owner_with_child("foreground")
        self.kubectl("delete", "cm", "foreground", "--cascade=foreground", "--timeout=30s")
        self.assertIn("NotFound", self.kubectl_fails("get", "cm", "foreground-child"))
        self.assertIn("NotFound", self.kubectl_fails("get", "cm", "foreground"))

    def test_server_dry_run_changes_nothing(self) -> None:
        """--dry-run=server validates and answers, and stores nothing."""
        doc = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: dry}\ndata: {a: b}\n"
        self.assertIn(
            "(server dry run)", self.kubectl("apply", "--dry-run=server", "-f", "-", stdin=doc)
        )
        self.assertIn("NotFound", self.kubectl_fails("get", "cm", "dry"))
        self.kubectl("create", "-f", "-", stdin=doc)
        self.kubectl("delete", "cm", "dry", "--dry-run=server")
        self.kubectl("label", "cm", "dry", "x=y", "--dry-run=server")
        live = json.loads(self.kubectl("get", "cm", "dry", "-o", "json"))
        self.assertNotIn("labels", live["metadata"])
        duplicate = self.kubectl_fails("create", "--dry-run=server", "-f", "-", stdin=doc)
        self.assertIn("AlreadyExists", duplicate)

    def test_imperative_creates(self) -> None:
        """kubectl create namespace|configmap|secret|serviceaccount, which send protobuf."""
        self.kubectl("create", "namespace", "imperative")
        self.kubectl("create", "configmap", "conf", "-n", "imperative", "--from-literal=a=1")
        self.kubectl(
            "create",
            "secret",
            "generic",
            "pw",
            "-n",
            "imperative",
            "--from-literal=password=hunter2",
        )
        self.kubectl("create", "serviceaccount", "robot", "-n", "imperative")
        self.assertEqual(
            self.kubectl("get", "cm", "conf", "-n", "imperative", "-o", "jsonpath={.data.a}"), "1"
        )
        secret = self.kubectl(
            "get", "secret", "pw", "-n", "imperative", "-o", "jsonpath={.data.password}"
        )
        self.assertEqual(base64.b64decode(secret), b"hunter2")

    def test_finalize_releases_a_stuck_namespace(self) -> None:
        """A namespace held by a finalizer whose controller is gone goes once an admin clears it."""
        self.kubectl("create", "namespace", "held")
        held = {"metadata": {"name": "held"}, "spec": {"finalizers": ["example.com/gone"]}}
        path = "/api/v1/namespaces/held/finalize"
        self.kubectl("replace", "--raw", path, "-f", "-", stdin=json.dumps(held))
        self.kubectl("delete", "namespace", "held", "--wait=false")
        deadline = time.monotonic() + 10
        while "kubernetes" in self.kubectl("get", "ns", "held", "-o", "jsonpath={.spec}"):
            # The namespace controller empties it and drops its own finalizer; ours stays.
            self.assertLess(time.monotonic(), deadline, "the namespace controller never finished")
            time.sleep(0.1)
        self.assertEqual(
            self.kubectl("get", "ns", "held", "-o", "jsonpath={.status.phase}"), "Terminating"
        )
        cleared = {"metadata": {"name": "held"}, "spec": {"finalizers": []}}
        self.kubectl("replace", "--raw", path, "-f", "-", stdin=json.dumps(cleared))
        self.assertIn("NotFound", self.kubectl_fails("get", "namespace", "held"))
