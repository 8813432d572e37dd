"""
The generated catalogue of what kube-apiserver 1.32 serves by default: the resources
with their discovery facts, and one OpenAPI v3 document per group-version.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from importlib import resources as files
from pathlib import Path
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from k3stw.apiserver import catalogue
from k3stw.apiserver.kinds import built_in_registry

#: Kinds users expect from a 1.32 cluster, as (group, version, kind).
EXPECTED_KINDS = [
    ("", "v1", "Pod"),
    ("", "v1", "ConfigMap"),
    ("", "v1", "Secret"),
    ("", "v1", "Service"),
    ("", "v1", "Endpoints"),
    ("", "v1", "Namespace"),
    ("", "v1", "Node"),
    ("", "v1", "PersistentVolume"),
    ("", "v1", "PersistentVolumeClaim"),
    ("", "v1", "ServiceAccount"),
    ("", "v1", "Event"),
    ("", "v1", "LimitRange"),
    ("", "v1", "ResourceQuota"),
    ("", "v1", "ReplicationController"),
    ("", "v1", "PodTemplate"),
    ("apps", "v1", "Deployment"),
    ("apps", "v1", "StatefulSet"),
    ("apps", "v1", "DaemonSet"),
    ("apps", "v1", "ReplicaSet"),
    ("apps", "v1", "ControllerRevision"),
    ("batch", "v1", "Job"),
    ("batch", "v1", "CronJob"),
    ("autoscaling", "v2", "HorizontalPodAutoscaler"),
    ("autoscaling", "v1", "HorizontalPodAutoscaler"),
    ("networking.k8s.io", "v1", "Ingress"),
    ("networking.k8s.io", "v1", "IngressClass"),
    ("networking.k8s.io", "v1", "NetworkPolicy"),
    ("policy", "v1", "PodDisruptionBudget"),
    ("rbac.authorization.k8s.io", "v1", "Role"),
    ("rbac.authorization.k8s.io", "v1", "RoleBinding"),
    ("rbac.authorization.k8s.io", "v1", "ClusterRole"),
    ("rbac.authorization.k8s.io", "v1", "ClusterRoleBinding"),
    ("storage.k8s.io", "v1", "StorageClass"),
    ("storage.k8s.io", "v1", "CSIDriver"),
    ("storage.k8s.io", "v1", "CSINode"),
    ("storage.k8s.io", "v1", "CSIStorageCapacity"),
    ("storage.k8s.io", "v1", "VolumeAttachment"),
    ("scheduling.k8s.io", "v1", "PriorityClass"),
    ("node.k8s.io", "v1", "RuntimeClass"),
    ("coordination.k8s.io", "v1", "Lease"),
    ("discovery.k8s.io", "v1", "EndpointSlice"),
    ("events.k8s.io", "v1", "Event"),
    ("certificates.k8s.io", "v1", "CertificateSigningRequest"),
    ("admissionregistration.k8s.io", "v1", "MutatingWebhookConfiguration"),
    ("admissionregistration.k8s.io", "v1", "ValidatingWebhookConfiguration"),
    ("admissionregistration.k8s.io", "v1", "ValidatingAdmissionPolicy"),
    ("admissionregistration.k8s.io", "v1", "ValidatingAdmissionPolicyBinding"),
    ("apiextensions.k8s.io", "v1", "CustomResourceDefinition"),
    ("apiregistration.k8s.io", "v1", "APIService"),
    ("flowcontrol.apiserver.k8s.io", "v1", "FlowSchema"),
    ("flowcontrol.apiserver.k8s.io", "v1", "PriorityLevelConfiguration"),
    ("authentication.k8s.io", "v1", "TokenReview"),
    ("authentication.k8s.io", "v1", "SelfSubjectReview"),
    ("authorization.k8s.io", "v1", "SubjectAccessReview"),
    ("authorization.k8s.io", "v1", "SelfSubjectAccessReview"),
    ("authorization.k8s.io", "v1", "SelfSubjectRulesReview"),
    ("authorization.k8s.io", "v1", "LocalSubjectAccessReview"),
]

#: Served by later releases (or only as alpha/beta, off by default) but not by default in 1.32.
NOT_IN_132 = [
    ("networking.k8s.io", "IPAddress"),
    ("networking.k8s.io", "ServiceCIDR"),
    ("resource.k8s.io", "ResourceClaim"),
    ("resource.k8s.io", "DeviceClass"),
    ("storage.k8s.io", "VolumeAttributesClass"),
    ("admissionregistration.k8s.io", "MutatingAdmissionPolicy"),
    ("coordination.k8s.io", "LeaseCandidate"),
    ("certificates.k8s.io", "ClusterTrustBundle"),
    ("internal.apiserver.k8s.io", "StorageVersion"),
    ("storagemigration.k8s.io", "StorageVersionMigration"),
]

VERBS = {"create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"}


def find(group: str, version: str, kind: str) -> dict[str, Any]:
    [entry] = [
        e
        for e in catalogue.resources()
        if (e["group"], e["version"], e["kind"]) == (group, version, kind)
    ]
    return entry


def document(group: str, version: str) -> dict[str, Any]:
    data = catalogue.openapi_document(group, version)
    assert data is not None, (group, version)
    parsed: dict[str, Any] = json.loads(gzip.decompress(data))
    return parsed


def served_group_versions() -> set[tuple[str, str]]:
    return {(e["group"], e["version"]) for e in catalogue.resources()}


def refs(node: object) -> Iterator[str]:
    """Every ``$ref`` value anywhere in a document."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str):
                yield value
            else:
                yield from refs(value)
    elif isinstance(node, list):
        for item in node:
            yield from refs(item)


class ResourceTests(SynchronousTestCase):
    def test_deployment(self) -> None:
        deployment = find("apps", "v1", "Deployment")
        self.assertEqual(deployment["plural"], "deployments")
        self.assertEqual(deployment["singular"], "deployment")
        self.assertTrue(deployment["namespaced"])
        self.assertEqual(deployment["shortNames"], ["deploy"])
        self.assertEqual(deployment["categories"], ["all"])
        self.assertEqual(deployment["schema"], "io.k8s.api.apps.v1.Deployment")
        subresources = {s["name"]: s for s in deployment["subresources"]}
        self.assertEqual(set(subresources), {"scale", "status"})
        scale = subresources["scale"]
        self.assertEqual(
            (scale["group"], scale["version"], scale["kind"]), ("autoscaling", "v1", "Scale")
        )
        self.assertEqual(scale["verbs"], ["get", "patch", "update"])
        self.assertEqual(set(deployment["verbs"]), VERBS)

    def test_pod_subresources_are_exactly_those_of_132(self) -> None:
        pod = find("", "v1", "Pod")
        self.assertEqual(pod["shortNames"], ["po"])
        self.assertEqual(
            {s["name"] for s in pod["subresources"]},
            {
                "status",
                "log",
                "exec",
                "attach",
                "portforward",
                "binding",
                "eviction",
                "ephemeralcontainers",
                "proxy",
            },
        )
        eviction = next(s for s in pod["subresources"] if s["name"] == "eviction")
        self.assertEqual((eviction["group"], eviction["version"]), ("policy", "v1"))
        self.assertEqual(eviction["verbs"], ["create"])
        log = next(s for s in pod["subresources"] if s["name"] == "log")
        self.assertEqual(log["verbs"], ["get"])

    def test_other_discovery_facts(self) -> None:
        namespace = find("", "v1", "Namespace")
        self.assertFalse(namespace["namespaced"])
        self.assertNotIn("deletecollection", namespace["verbs"])
        self.assertEqual({s["name"] for s in namespace["subresources"]}, {"finalize", "status"})
        self.assertEqual(
            find("apiextensions.k8s.io", "v1", "CustomResourceDefinition")["shortNames"],
            ["crd", "crds"],
        )
        self.assertEqual(find("", "v1", "Service")["categories"], ["all"])
        self.assertEqual(find("authentication.k8s.io", "v1", "TokenReview")["verbs"], ["create"])
        self.assertTrue(
            find("authorization.k8s.io", "v1", "LocalSubjectAccessReview")["namespaced"]
        )
        token = find("", "v1", "ServiceAccount")["subresources"]
        self.assertEqual(
            [(s["name"], s["group"], s["kind"]) for s in token],
            [("token", "authentication.k8s.io", "TokenRequest")],
        )

    def test_every_expected_kind_is_served(self) -> None:
        self.assertGreaterEqual(len(EXPECTED_KINDS), 40)
        served = {(e["group"], e["version"], e["kind"]) for e in catalogue.resources()}
        self.assertEqual([k for k in EXPECTED_KINDS if k not in served], [])

    def test_nothing_alpha_beta_or_newer_than_132(self) -> None:
        for entry in catalogue.resources():
            self.assertRegex(entry["version"], r"^v[0-9]+$")
            for sub in entry["subresources"]:
                self.assertNotIn(sub["name"], ("resize", "checkpoint"))
        served = {(e["group"], e["kind"]) for e in catalogue.resources()}
        self.assertEqual([k for k in NOT_IN_132 if k in served], [])
        self.assertNotIn("resource.k8s.io", {e["group"] for e in catalogue.resources()})

    def test_entries_are_well_formed_and_unique(self) -> None:
        keys = [(e["group"], e["version"], e["plural"]) for e in catalogue.resources()]
        self.assertEqual(len(keys), len(set(keys)))
        for entry in catalogue.resources():
            self.assertTrue(entry["plural"] and entry["singular"] and entry["kind"], entry)
            self.assertIsInstance(entry["namespaced"], bool)
            self.assertTrue(set(entry["verbs"]) <= VERBS, entry["verbs"])
            self.assertEqual(entry["preferredVersion"], catalogue.preferred_version(entry["group"]))
            self.assertTrue(entry["schema"].endswith("." + entry["kind"]), entry["schema"])
            for sub in entry["subresources"]:
                self.assertEqual(set(sub), {"name", "kind", "group", "version", "verbs"})
                self.assertTrue(sub["verbs"])
            self.assertIsInstance(entry["deleteReturnsObject"], bool)

    def test_every_kind_deletes_as_the_catalogue_says(self) -> None:
        """A DELETE answers the object exactly where kube-apiserver 1.32's does (pods, PVCs...)."""
        entries = {(e["group"], e["plural"]): e for e in catalogue.resources()}
        returning = {
            r.plural
            for r in built_in_registry()
            if entries[(r.group, r.plural)]["deleteReturnsObject"]
        }
        self.assertTrue({"pods", "services", "persistentvolumeclaims"} <= returning)
        for resource in built_in_registry():
            entry = entries[(resource.group, resource.plural)]
            self.assertEqual(
                resource.strategy.returns_deleted_object,
                entry["deleteReturnsObject"],
                resource.plural,
            )

    def test_preferred_versions(self) -> None:
        self.assertEqual(catalogue.preferred_version(""), "v1")
        self.assertEqual(catalogue.preferred_version("apps"), "v1")
        self.assertEqual(catalogue.preferred_version("autoscaling"), "v2")
        self.assertIsNone(catalogue.preferred_version("resource.k8s.io"))


class OpenAPITests(SynchronousTestCase):
    def test_every_served_group_version_has_a_document_and_no_other(self) -> None:
        folder = files.files(catalogue.__name__) / "openapi"
        stored = {p.name for p in folder.iterdir() if p.name.endswith(".json.gz")}
        wanted = {f"{g or 'core'}_{v}.json.gz" for g, v in served_group_versions()}
        self.assertEqual(stored, wanted)

    def test_documents_are_openapi_30_and_reproducible_gzip(self) -> None:
        for group, version in served_group_versions():
            data = catalogue.openapi_document(group, version)
            assert data is not None
            self.assertEqual(data[:2], b"\x1f\x8b")
            self.assertEqual(data[4:8], b"\0\0\0\0", "gzip mtime must be 0")
            doc = document(group, version)
            self.assertEqual(doc["openapi"], "3.0.0")
            self.assertEqual(doc["info"], {"title": "Kubernetes", "version": "v1.32.0"})
            self.assertEqual(doc["paths"], {})
            self.assertTrue(doc["components"]["schemas"])

    def test_every_resource_schema_is_in_its_document(self) -> None:
        for entry in catalogue.resources():
            schemas = document(entry["group"], entry["version"])["components"]["schemas"]
            self.assertIn(entry["schema"], schemas)
            gvk = schemas[entry["schema"]]["x-kubernetes-group-version-kind"]
            self.assertEqual(
                gvk, [{"group": entry["group"], "kind": entry["kind"], "version": entry["version"]}]
            )

    def test_every_reference_resolves_inside_its_document(self) -> None:
        for group, version in served_group_versions():
            schemas = document(group, version)["components"]["schemas"]
            found = set(refs(schemas))
            self.assertTrue(found)
            prefix = "#/components/schemas/"
            self.assertEqual([r for r in found if not r.startswith(prefix)], [])
            self.assertEqual([r for r in found if r.removeprefix(prefix) not in schemas], [])

    def test_schemas_are_in_openapi_form(self) -> None:
        schemas = document("apps", "v1")["components"]["schemas"]
        deployment = schemas["io.k8s.api.apps.v1.Deployment"]
        self.assertEqual(deployment["type"], "object")
        self.assertEqual(
            deployment["properties"]["apiVersion"],
            {
                "description": deployment["properties"]["apiVersion"]["description"],
                "type": "string",
            },
        )
        self.assertNotIn("enum", deployment["properties"]["kind"])
        self.assertEqual(
            deployment["properties"]["spec"]["allOf"],
            [{"$ref": "#/components/schemas/io.k8s.api.apps.v1.DeploymentSpec"}],
        )
        # Scale answers deployments/scale, so apps/v1 explains it too.
        self.assertIn("io.k8s.api.autoscaling.v1.Scale", schemas)
        containers = schemas["io.k8s.api.core.v1.PodSpec"]["properties"]["containers"]
        self.assertEqual(containers["type"], "array")
        self.assertEqual(containers["x-kubernetes-list-type"], "map")
        self.assertEqual(containers["x-kubernetes-list-map-keys"], ["name"])
        self.assertEqual(containers["x-kubernetes-patch-strategy"], "merge")
        # A property literally named "$ref" (JSONSchemaProps) stays a property name.
        crd = document("apiextensions.k8s.io", "v1")["components"]["schemas"]
        props = crd["io.k8s.apiextensions-apiserver.pkg.apis.apiextensions.v1.JSONSchemaProps"]
        self.assertEqual(props["properties"]["$ref"]["type"], "string")

    def test_no_json_schema_null_types_remain(self) -> None:
        def types(node: object) -> Iterator[object]:
            if isinstance(node, dict):
                for key, value in node.items():
                    if key == "type" and not isinstance(value, dict):
                        yield value
                    else:
                        yield from types(value)
            elif isinstance(node, list):
                for item in node:
                    yield from types(item)

        for group, version in served_group_versions():
            found = set(map(json.dumps, types(document(group, version)["components"])))
            self.assertFalse([t for t in found if "null" in t or t.startswith("[")], found)


class LoaderTests(SynchronousTestCase):
    def test_resources_is_read_once(self) -> None:
        self.assertIs(catalogue.resources(), catalogue.resources())
        self.assertGreater(len(catalogue.resources()), 50)

    def test_openapi_document_is_still_gzipped(self) -> None:
        data = catalogue.openapi_document("", "v1")
        assert data is not None
        self.assertEqual(data[:2], b"\x1f\x8b")
        schemas = json.loads(gzip.decompress(data))["components"]["schemas"]
        self.assertIn("io.k8s.api.core.v1.Pod", schemas)

    def test_unknown_or_malformed_group_versions_have_no_document(self) -> None:
        self.assertIsNone(catalogue.openapi_document("apps", "v1beta1"))
        self.assertIsNone(catalogue.openapi_document("resource.k8s.io", "v1beta1"))
        self.assertIsNone(catalogue.openapi_document("core", "v1"))
        self.assertIsNone(catalogue.openapi_document("../apps", "v1"))
        self.assertIsNone(catalogue.openapi_document("apps", "../v1"))
        self.assertIsNone(catalogue.openapi_document("apps", ""))


class SlimDocumentTests(SynchronousTestCase):
    def test_the_slim_documents_are_the_whole_ones_without_prose(self) -> None:
        """What the schema checks parse is exactly tools/slim_catalogue.py's output of what
        /openapi/v3 serves: the two never drift apart."""
        from tools.slim_catalogue import slim_document

        served = {(r["group"], r["version"]) for r in catalogue.resources()}
        package = Path(catalogue.__file__).parent
        for group, version in sorted(served):
            name = f"{group or 'core'}_{version}.json.gz"
            whole = catalogue.openapi_document(group, version)
            assert whole is not None
            with self.subTest(document=name):
                self.assertEqual((package / "slim" / name).read_bytes(), slim_document(whole))
        self.assertEqual(len(list((package / "slim").glob("*.json.gz"))), len(served))
