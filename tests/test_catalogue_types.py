"""Values of the wrong JSON type for their field, by the 1.32 schemas."""

from __future__ import annotations

from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from k3stw.apiserver.catalogue import types, unknown
from k3stw.apiserver.catalogue.types import schema_errors, wrong_types
from k3stw.machinery.objects import copy_json
from tests.test_catalogue_rules import count_fetches
from tests.test_catalogue_unknown import _examples, _group_version, _manifests


class WrongTypeTests(SynchronousTestCase):
    def test_no_valid_manifest_is_refused(self) -> None:
        """The realistic manifests of every common kind, and a filled-in value of every field
        of every kind, all have the types their schemas state."""
        for manifest in _manifests():
            group, version = _group_version(manifest)
            with self.subTest(kind=manifest["kind"]):
                self.assertEqual(wrong_types(group, version, manifest["kind"], manifest), [])
        for group, version, kind, example in _examples():
            with self.subTest(kind=kind):
                self.assertEqual(wrong_types(group, version, kind, example), [])

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


class ValueTests(SynchronousTestCase):
    """Required fields, quantities and times, by the 1.32 schemas."""

    def test_required_strings_and_lists(self) -> None:
        pod = {"spec": {"containers": [{"image": "x", "env": [{"value": "1"}]}]}}
        self.assertEqual(
            schema_errors("", "v1", "Pod", pod).missing,
            [("spec.containers[0].name", ""), ("spec.containers[0].env[0].name", "")],
        )
        self.assertEqual(
            schema_errors("", "v1", "Pod", {"spec": {}}).missing, [("spec.containers", "")]
        )
        role = {"rules": [{"resources": ["pods"]}]}
        self.assertEqual(
            schema_errors("rbac.authorization.k8s.io", "v1", "Role", role).missing,
            [("rules[0].verbs", "verbs must contain at least one value")],
        )

    def test_not_asked(self) -> None:
        """Numbers, structs, what kube accepts missing, and a kind's status are not required."""
        service = {"spec": {"ports": [{"name": "x"}]}}  # port: a number kube words otherwise
        self.assertEqual(schema_errors("", "v1", "Service", service).missing, [])
        statefulset: dict[str, Any] = {
            "spec": {"selector": {}, "template": {"spec": {"containers": []}}}
        }
        self.assertEqual(schema_errors("apps", "v1", "StatefulSet", statefulset).missing, [])
        status = {"spec": {"containers": [{"name": "c"}]}, "status": {"conditions": [{}]}}
        self.assertEqual(schema_errors("", "v1", "Pod", status).missing, [])

    def test_formats(self) -> None:
        pod = {
            "spec": {
                "containers": [
                    {"name": "c", "resources": {"limits": {"cpu": "2 cpus", "memory": "1Gi"}}}
                ]
            }
        }
        self.assertEqual(
            schema_errors("", "v1", "Pod", pod).bad_formats,
            [
                (
                    "spec.containers[0].resources.limits.cpu",
                    "quantities must match the regular expression "
                    "'^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'",
                )
            ],
        )
        job = {"spec": {"template": {"spec": {"containers": []}}}, "status": {"startTime": "noon"}}
        self.assertEqual(
            schema_errors("batch", "v1", "Job", job).bad_formats,
            [
                (
                    "status.startTime",
                    'parsing time "noon" as "2006-01-02T15:04:05Z07:00": cannot parse "noon" '
                    'as "2006"',
                )
            ],
        )
        self.assertEqual(
            schema_errors(
                "", "v1", "Service", {"spec": {"ports": [{"targetPort": [1]}]}}
            ).wrong_types,
            [("spec.ports[0].targetPort", "integer,string", [1])],
        )

    def test_one_parse_for_both_checks(self) -> None:
        """The value check and the unknown-field check compile from one parse of a document."""
        fetched = count_fetches(self)
        self.patch(unknown, "_COMPILED", {})
        types._group_version_types.cache_clear()
        self.addCleanup(types._group_version_types.cache_clear)
        schema_errors("apps", "v1", "Deployment", {})
        unknown.unknown_fields("apps", "v1", "Deployment", {})
        self.assertEqual(fetched, [("apps", "v1")])


def _scrambled(value: Any, undeclared: bool, retyped: bool) -> Any:
    """C{value} with an undeclared field in every object, and/or every scalar's type changed."""
    if isinstance(value, dict):
        scrambled = {k: _scrambled(v, undeclared, retyped) for k, v in value.items()}
        return {**scrambled, "zz": {"a": 1}} if undeclared else scrambled
    if isinstance(value, list):
        return [_scrambled(v, undeclared, retyped) for v in value] + ([None] if retyped else [])
    if not retyped or value is None:
        return value
    return 1 if isinstance(value, str) else {"x": [value]} if isinstance(value, int) else "s"


class OneWalkTests(SynchronousTestCase):
    def test_decoder_errors_are_both_checks(self) -> None:
        """
        The one walk finds what the value check and the unknown-field check
        find apart, and prunes as the latter does, over every manifest and
        every kind's filled-in example: as given, with undeclared fields
        everywhere, with every scalar of the wrong type, and both.
        """
        objects = [(*_group_version(m), m["kind"], m) for m in _manifests()]
        for group, version, kind, obj in objects + list(_examples()):
            for undeclared, retyped in [(False, False), (True, False), (False, True), (True, True)]:
                scrambled = _scrambled(obj, undeclared, retyped)
                apart, together = copy_json(scrambled), copy_json(scrambled)
                expected = schema_errors(group, version, kind, apart)
                expected.unknown = unknown.unknown_fields(group, version, kind, apart, prune=True)
                with self.subTest(kind=kind, undeclared=undeclared, retyped=retyped):
                    self.assertEqual(
                        types.decoder_errors(group, version, kind, together, prune=True), expected
                    )
                    self.assertEqual(together, apart)
                    self.assertEqual(bool(expected.unknown), undeclared)
