"""
Every kind the server stores, generated from the catalogue: create, get,
list, watch, update, patch and delete through the real kubectl and through
the Python client's typed API, and ``kubectl explain`` of the kind.

Each kind has a sample object below (the least a real cluster accepts); a
kind served without one fails L{SampleTests}, so a new kind cannot go
untested.
"""

from __future__ import annotations

import base64
import json
import re
import time
from pathlib import Path
from typing import Any, ClassVar

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from kubernetes import client, config, watch
from kubernetes.client.exceptions import ApiException
from twisted.trial.unittest import SynchronousTestCase

from k3stw.apiserver.kinds import built_in_registry
from k3stw.apiserver.registry import ResourceType
from k3stw.apiserver.reviews import is_review
from tests.test_api_clients import ServerTestCase

NAMESPACE = "every-kind"
LABELS = {"app": "sample"}
TEMPLATE: dict[str, Any] = {
    "metadata": {"labels": LABELS},
    "spec": {"containers": [{"name": "main", "image": "busybox:1.36"}]},
}
JOB_TEMPLATE: dict[str, Any] = {
    "metadata": {"labels": LABELS},
    "spec": {**TEMPLATE["spec"], "restartPolicy": "Never"},
}
WORKLOAD = {"selector": {"matchLabels": LABELS}, "template": TEMPLATE}
RULES = [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list"]}]
WEBHOOK = {
    "name": "sample.example.com",
    # Stored only: nothing in these tests sends an admission request.
    "clientConfig": {"url": "https://127.0.0.1:1/admit"},
    "admissionReviewVersions": ["v1"],
    "sideEffects": "None",
}


def certificate_request() -> str:
    """A PEM CSR, base64 encoded as a CertificateSigningRequest carries it."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sample")])
    csr = x509.CertificateSigningRequestBuilder().subject_name(subject).sign(key, hashes.SHA256())
    return base64.b64encode(csr.public_bytes(serialization.Encoding.PEM)).decode()


#: What each kind's sample holds besides its metadata, by (group, kind).
SAMPLES: dict[tuple[str, str], dict[str, Any]] = {
    ("", "ConfigMap"): {"data": {"color": "blue"}},
    ("", "Endpoints"): {"subsets": [{"addresses": [{"ip": "10.42.0.5"}], "ports": [{"port": 80}]}]},
    ("", "Event"): {
        "involvedObject": {"kind": "Pod", "name": "p", "namespace": NAMESPACE},
        "reason": "Sampled",
        "message": "a sample event",
        "type": "Normal",
        "source": {"component": "tests"},
    },
    ("", "LimitRange"): {"spec": {"limits": [{"type": "Container", "default": {"cpu": "500m"}}]}},
    ("", "Namespace"): {},
    ("", "Node"): {},
    ("", "PersistentVolumeClaim"): {
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}
    },
    ("", "PersistentVolume"): {
        "spec": {
            "capacity": {"storage": "1Gi"},
            "accessModes": ["ReadWriteOnce"],
            "hostPath": {"path": "/srv/sample"},
        }
    },
    ("", "Pod"): {"spec": TEMPLATE["spec"]},
    ("", "PodTemplate"): {"template": TEMPLATE},
    ("", "ReplicationController"): {
        "spec": {"replicas": 0, "selector": LABELS, "template": TEMPLATE}
    },
    ("", "ResourceQuota"): {"spec": {"hard": {"pods": "10"}}},
    ("", "Secret"): {"data": {"password": base64.b64encode(b"s3cret").decode()}},
    ("", "ServiceAccount"): {},
    ("", "Service"): {"spec": {"selector": LABELS, "ports": [{"port": 80}]}},
    ("apps", "ControllerRevision"): {"revision": 1, "data": {}},
    ("apps", "DaemonSet"): {"spec": WORKLOAD},
    ("apps", "Deployment"): {"spec": {"replicas": 0, **WORKLOAD}},
    ("apps", "ReplicaSet"): {"spec": {"replicas": 0, **WORKLOAD}},
    ("apps", "StatefulSet"): {"spec": {"replicas": 0, "serviceName": "sample", **WORKLOAD}},
    ("events.k8s.io", "Event"): {
        "eventTime": "2027-01-15T08:00:00.000000Z",
        "reportingController": "example.com/tests",
        "reportingInstance": "tests-1",
        "action": "Sampling",
        "reason": "Sampled",
        "type": "Normal",
        "note": "a sample event",
        "regarding": {"kind": "Pod", "name": "p", "namespace": NAMESPACE},
    },
    ("coordination.k8s.io", "Lease"): {"spec": {"holderIdentity": "sample"}},
    ("discovery.k8s.io", "EndpointSlice"): {
        "addressType": "IPv4",
        "endpoints": [{"addresses": ["10.42.0.5"]}],
        "ports": [{"name": "http", "port": 80, "protocol": "TCP"}],
    },
    ("apiextensions.k8s.io", "CustomResourceDefinition"): {
        "spec": {
            "group": "example.com",
            "scope": "Namespaced",
            "names": {"plural": "samples", "singular": "sample", "kind": "Sample"},
            "versions": [
                {
                    "name": "v1",
                    "served": True,
                    "storage": True,
                    "schema": {"openAPIV3Schema": {"type": "object"}},
                }
            ],
        }
    },
    ("admissionregistration.k8s.io", "MutatingWebhookConfiguration"): {"webhooks": [WEBHOOK]},
    ("admissionregistration.k8s.io", "ValidatingWebhookConfiguration"): {"webhooks": [WEBHOOK]},
    ("admissionregistration.k8s.io", "ValidatingAdmissionPolicy"): {
        "spec": {
            "matchConstraints": {
                "resourceRules": [
                    {
                        "apiGroups": ["apps"],
                        "apiVersions": ["v1"],
                        "operations": ["CREATE"],
                        "resources": ["deployments"],
                    }
                ]
            },
            "validations": [{"expression": "object.spec.replicas <= 5"}],
        }
    },
    ("admissionregistration.k8s.io", "ValidatingAdmissionPolicyBinding"): {
        "spec": {"policyName": "sample", "validationActions": ["Deny"]}
    },
    ("apiregistration.k8s.io", "APIService"): {
        "spec": {
            "group": "example.com",
            "version": "v1",
            "groupPriorityMinimum": 100,
            "versionPriority": 10,
        }
    },
    ("autoscaling", "HorizontalPodAutoscaler"): {
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "sample"},
            "minReplicas": 1,
            "maxReplicas": 3,
        }
    },
    ("batch", "CronJob"): {
        "spec": {"schedule": "*/5 * * * *", "jobTemplate": {"spec": {"template": JOB_TEMPLATE}}}
    },
    ("batch", "Job"): {"spec": {"template": JOB_TEMPLATE}},
    ("certificates.k8s.io", "CertificateSigningRequest"): {
        "spec": {
            "request": certificate_request(),
            "signerName": "kubernetes.io/kube-apiserver-client",
            "usages": ["client auth"],
        }
    },
    ("flowcontrol.apiserver.k8s.io", "FlowSchema"): {
        "spec": {
            "priorityLevelConfiguration": {"name": "sample"},
            "matchingPrecedence": 1000,
            "rules": [
                {
                    "subjects": [{"kind": "Group", "group": {"name": "system:authenticated"}}],
                    "nonResourceRules": [{"verbs": ["get"], "nonResourceURLs": ["/sample"]}],
                }
            ],
        }
    },
    ("flowcontrol.apiserver.k8s.io", "PriorityLevelConfiguration"): {
        "spec": {
            "type": "Limited",
            "limited": {"nominalConcurrencyShares": 10, "limitResponse": {"type": "Reject"}},
        }
    },
    ("networking.k8s.io", "IngressClass"): {"spec": {"controller": "example.com/ingress"}},
    ("networking.k8s.io", "Ingress"): {
        "spec": {
            "rules": [
                {
                    "host": "sample.example.com",
                    "http": {
                        "paths": [
                            {
                                "path": "/",
                                "pathType": "Prefix",
                                "backend": {"service": {"name": "sample", "port": {"number": 80}}},
                            }
                        ]
                    },
                }
            ]
        }
    },
    ("networking.k8s.io", "NetworkPolicy"): {
        "spec": {"podSelector": {"matchLabels": LABELS}, "policyTypes": ["Ingress"]}
    },
    ("node.k8s.io", "RuntimeClass"): {"handler": "runc"},
    ("policy", "PodDisruptionBudget"): {
        "spec": {"minAvailable": 1, "selector": {"matchLabels": LABELS}}
    },
    ("rbac.authorization.k8s.io", "ClusterRoleBinding"): {
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "view"},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "alice"}],
    },
    ("rbac.authorization.k8s.io", "ClusterRole"): {"rules": RULES},
    ("rbac.authorization.k8s.io", "RoleBinding"): {
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "sample"},
        "subjects": [{"kind": "ServiceAccount", "name": "default", "namespace": NAMESPACE}],
    },
    ("rbac.authorization.k8s.io", "Role"): {"rules": RULES},
    ("scheduling.k8s.io", "PriorityClass"): {"value": 1000, "description": "a sample"},
    ("storage.k8s.io", "CSIDriver"): {"spec": {"attachRequired": False}},
    ("storage.k8s.io", "CSINode"): {"spec": {"drivers": []}},
    ("storage.k8s.io", "CSIStorageCapacity"): {
        "storageClassName": "sample",
        "capacity": "1Gi",
    },
    ("storage.k8s.io", "StorageClass"): {"provisioner": "example.com/sample"},
    ("storage.k8s.io", "VolumeAttachment"): {
        "spec": {
            "attacher": "example.com/sample",
            "nodeName": "sample",
            "source": {"persistentVolumeName": "sample"},
        }
    },
}


def stored_kinds() -> list[ResourceType]:
    """Every built-in resource the server stores (reviews are answered, not stored)."""
    return [r for r in built_in_registry() if r.crd is None and not is_review(r)]


def sample(resource: ResourceType, name: str) -> dict[str, Any]:
    """C{resource}'s sample called C{name} (or, where a name says more, derived from it)."""
    body = json.loads(json.dumps(SAMPLES[(resource.group, resource.kind)]))
    if resource.kind == "APIService":
        # An APIService is named <version>.<group>.
        body["spec"]["group"] = f"{name}.example.com"
        name = f"v1.{name}.example.com"
    elif resource.kind == "CustomResourceDefinition":
        # A CRD is named <plural>.<group>.
        body["spec"]["group"] = f"{name}.example.com"
        name = f"samples.{name}.example.com"
    metadata: dict[str, Any] = {"name": name, "labels": {"made-by": "test-every-kind"}}
    if resource.namespaced:
        metadata["namespace"] = NAMESPACE
    return {
        "apiVersion": resource.group_version,
        "kind": resource.kind,
        "metadata": metadata,
        **body,
    }


def snake(kind: str) -> str:
    """The Python client's name for a kind (``CSIDriver`` -> ``csi_driver``)."""
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", "_", kind).lower()


def typed_api(resource: ResourceType, api: client.ApiClient) -> Any:
    """The Python client's API class of C{resource}'s group version (``AppsV1Api``)."""
    group = resource.group.removesuffix(".k8s.io") or "core"
    name = "".join(part.capitalize() for part in group.split(".")) + resource.version.capitalize()
    return getattr(client, f"{name}Api")(api)


class SampleTests(SynchronousTestCase):
    def test_every_stored_kind_has_a_sample(self) -> None:
        """A kind the server stores without a sample here would go untested."""
        missing = [(r.group, r.kind) for r in stored_kinds() if (r.group, r.kind) not in SAMPLES]
        self.assertEqual(missing, [])
        self.assertGreaterEqual(len(SAMPLES), 50)


class EveryKindTests(ServerTestCase):
    """One server; each kind's test uses its own objects."""

    admin: ClassVar[Path]

    @classmethod
    def setUpClass(cls) -> None:
        super().setUpClass()
        cls.admin = cls.root / "k3s.yaml"
        created = client.CoreV1Api(config.new_client_from_config(config_file=str(cls.admin)))
        created.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=NAMESPACE)))

    def run_kubectl(self, *args: str, stdin: str | None = None) -> str:
        result = self.kubectl(self.admin, *args, stdin=stdin)
        self.assertEqual(result.returncode, 0, f"kubectl {' '.join(args)}:\n{result.stderr}")
        return str(result.stdout)

    def with_kubectl(self, resource: ResourceType) -> None:
        """create, get, list, patch (label), replace, explain and delete with kubectl."""
        made = sample(resource, "by-kubectl")
        name = made["metadata"]["name"]
        where = ["-n", NAMESPACE] if resource.namespaced else []
        what = f"{resource.plural}.{resource.group}" if resource.group else resource.plural
        created = self.run_kubectl("create", "-f", "-", stdin=json.dumps(made))
        self.assertIn(f"{name} created", created)
        got = json.loads(self.run_kubectl("get", what, name, *where, "-o", "json"))
        self.assertEqual((got["kind"], got["metadata"]["name"]), (resource.kind, name))
        selected = ("-l", "made-by=test-every-kind")
        listed = self.run_kubectl("get", what, *where, *selected, "-o", "name")
        self.assertIn(f"/{name}\n", listed)
        table = self.run_kubectl("get", what, *where, *selected)
        self.assertEqual(len(table.splitlines()), 2, table)  # its columns' header, then it
        self.run_kubectl("label", what, name, *where, "patched=yes")
        labelled = json.loads(self.run_kubectl("get", what, name, *where, "-o", "json"))
        labelled["metadata"]["labels"]["replaced"] = "yes"
        self.run_kubectl("replace", "-f", "-", stdin=json.dumps(labelled))
        replaced = json.loads(self.run_kubectl("get", what, name, *where, "-o", "json"))
        labels = replaced["metadata"]["labels"]
        self.assertEqual((labels["patched"], labels["replaced"]), ("yes", "yes"))
        explained = self.run_kubectl(
            "explain", resource.plural, f"--api-version={resource.group_version}"
        )
        self.assertIn(f"KIND:       {resource.kind}", explained)
        self.run_kubectl("delete", what, name, *where, "--wait=false")

    def with_python_client(self, resource: ResourceType) -> None:
        """create, read, list, watch, patch, replace and delete with the typed Python client."""
        api = typed_api(resource, self.api())
        made = sample(resource, "by-python")
        name = made["metadata"]["name"]
        scope = "namespaced_" if resource.namespaced else ""
        at = (NAMESPACE,) if resource.namespaced else ()
        kind = snake(resource.kind)
        list_objects = getattr(api, f"list_{scope}{kind}")
        # Only this test's objects: the controllers' Events (as kube's, without the eventTime
        # the typed client requires of events.k8s.io) share the namespace.
        mine = "made-by=test-every-kind"
        before = list_objects(*at, label_selector=mine).metadata.resource_version
        created = getattr(api, f"create_{scope}{kind}")(*at, made)
        self.assertEqual(created.metadata.name, name)
        read = getattr(api, f"read_{scope}{kind}")(name, *at)
        self.assertEqual(read.metadata.uid, created.metadata.uid)
        listed = list_objects(*at, label_selector=mine)
        self.assertIn(name, [item.metadata.name for item in listed.items])
        events = watch.Watch().stream(
            list_objects, *at, resource_version=before, timeout_seconds=1, label_selector=mine
        )
        seen = [(e["type"], e["object"].metadata.name) for e in events]
        self.assertIn(("ADDED", name), seen)
        patched = getattr(api, f"patch_{scope}{kind}")(
            name, *at, {"metadata": {"labels": {"patched": "yes"}}}
        )
        self.assertEqual(patched.metadata.labels["patched"], "yes")
        patched.metadata.labels["replaced"] = "yes"
        replaced = getattr(api, f"replace_{scope}{kind}")(name, *at, patched)
        self.assertEqual(replaced.metadata.labels["replaced"], "yes")
        getattr(api, f"delete_{scope}{kind}")(name, *at)
        if resource.kind in ("Namespace", "CustomResourceDefinition"):
            return  # Their deletion is a process with finalizers, tested on its own.
        # A pod the scheduler bound is Terminating until the node's kubelet confirms it.
        deadline = time.monotonic() + (30 if resource.kind == "Pod" else 0)
        with self.assertRaises(ApiException) as gone:
            while True:
                getattr(api, f"read_{scope}{kind}")(name, *at)
                if time.monotonic() > deadline:
                    break
                time.sleep(0.1)
        self.assertEqual(gone.exception.status, 404)


def _kind_test(resource: ResourceType, how: str) -> Any:
    def test(self: EveryKindTests) -> None:
        getattr(self, how)(resource)

    test.__doc__ = f"{resource.kind} ({resource.group_version}): {how.replace('_', ' ')}."
    return test


for _resource in stored_kinds():
    for _how in ("with_kubectl", "with_python_client"):
        _group = (_resource.group or "core").split(".")[0]
        _name = f"test_{_resource.plural}_{_group}_{_resource.version}_{_how}"
        setattr(EveryKindTests, _name, _kind_test(_resource, _how))


class CertificateApprovalTests(ServerTestCase):
    def test_kubectl_certificate_approve_and_deny(self) -> None:
        """kubectl certificate approve|deny set the request's condition, and nothing else."""
        admin = self.root / "k3s.yaml"
        for name in ("approved", "denied"):
            csr = sample(self.resource(), name)
            result = self.kubectl(admin, "create", "-f", "-", stdin=json.dumps(csr))
            self.assertEqual(result.returncode, 0, result.stderr)
        for verb, name in (("approve", "approved"), ("deny", "denied")):
            result = self.kubectl(admin, "certificate", verb, name)
            self.assertEqual(result.returncode, 0, result.stderr)
        for name, condition in (("approved", "Approved"), ("denied", "Denied")):
            got = self.kubectl(admin, "get", "csr", name, "-o", "json")
            stored = json.loads(got.stdout)
            [found] = stored["status"]["conditions"]
            self.assertEqual((found["type"], found["status"]), (condition, "True"))
            self.assertEqual(stored["spec"]["signerName"], "kubernetes.io/kube-apiserver-client")

    def resource(self) -> ResourceType:
        return built_in_registry().require(
            "certificates.k8s.io", "v1", "certificatesigningrequests"
        )
