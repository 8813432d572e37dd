"""Values of the wrong JSON type for their field, by the 1.32 schemas."""

from __future__ import annotations

import gzip
import json

from twisted.trial.unittest import SynchronousTestCase

from k3stw.apiserver import catalogue
from k3stw.apiserver.catalogue.types import wrong_types
from tests.test_catalogue_unknown import _REF, _example, _group_version, _manifests


class WrongTypeTests(SynchronousTestCase):
    def test_no_valid_manifest_is_refused(self) -> None:
        """The realistic manifests of every common kind, and a filled-in value of every field
        of every kind, all have the types their schemas state."""
        for manifest in _manifests():
            group, version = _group_version(manifest)
            with self.subTest(kind=manifest["kind"]):
                self.assertEqual(wrong_types(group, version, manifest["kind"], manifest), [])
        for entry in catalogue.resources():
            group, version = entry["group"], entry["version"]
            document = catalogue.openapi_document(group, version)
            assert document is not None
            schemas = json.loads(gzip.decompress(document))["components"]["schemas"]
            example = _example(schemas, {"$ref": _REF + entry["schema"]}, 8)
            with self.subTest(kind=entry["kind"]):
                self.assertEqual(wrong_types(group, version, entry["kind"], example), [])

    def test_wrong_types_are_named_where_they_sit(self) -> None:
        deployment = _manifests()[0]
        deployment["spec"]["replicas"] = "three"
        deployment["metadata"]["labels"]["version"] = 2
        containers = deployment["spec"]["template"]["spec"]["containers"]
        containers[0]["ports"][0]["containerPort"] = True
        containers[0]["stdin"] = "yes"
        containers[1]["args"] = "not a list"
        self.assertEqual(
            wrong_types("apps", "v1", "Deployment", deployment),
            [
                ("metadata.labels.version", "string", 2),
                ("spec.replicas", "integer", "three"),
                ("spec.template.spec.containers[0].ports[0].containerPort", "integer", True),
                ("spec.template.spec.containers[0].stdin", "boolean", "yes"),
                ("spec.template.spec.containers[1].args", "array", "not a list"),
            ],
        )

    def test_int_or_string_quantities_and_null_pass(self) -> None:
        service = {
            "spec": {
                "ports": [{"port": 80, "targetPort": "http"}, {"port": 81, "targetPort": 8080}]
            }
        }
        self.assertEqual(wrong_types("", "v1", "Service", service), [])
        pod = {
            "spec": {
                "containers": [{"name": "c", "resources": {"limits": {"cpu": 1, "memory": "1Gi"}}}],
                "nodeName": None,
            }
        }
        self.assertEqual(wrong_types("", "v1", "Pod", pod), [])
        self.assertEqual(wrong_types("example.com", "v1", "Widget", {"spec": 1}), [])
