"""
Merge rules derived from the catalogue's OpenAPI schemas, checked against the hand-written
tables of the built-in kinds and against what the 1.32 Go markers say of kinds without one.
"""

from __future__ import annotations

from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from k3stw.apiserver import catalogue
from k3stw.apiserver.catalogue.rules import MAX_DEPTH, merge_rules, schema_rules
from k3stw.apiserver.kinds import BUILT_IN
from k3stw.apiserver.patch.rules import (
    ATOMIC,
    MERGED_SET,
    POD_TEMPLATE_SPEC_RULES,
    FieldRule,
    keyed_list,
)

#: Hand-table paths whose rule the 1.32 schemas contradict, with the reason. The comparison
#: below found none: every path every hand table names agrees with the published definitions.
EXPECTED_DIFFERENCES: dict[tuple[str, str], str] = {}

#: Paths the schemas give a rule that the hand tables leave out (so those kinds merge them as
#: plain fields). Each is confirmed by the 1.32 Go markers; the hand tables may adopt them.
KNOWN_OMISSIONS: dict[str, set[str]] = {
    # EndpointAddress.targetRef is an ObjectReference, +structType=atomic.
    "Endpoints": {"subsets.addresses.targetRef", "subsets.notReadyAddresses.targetRef"},
    # discovery/v1 Endpoint.addresses is +listType=set; targetRef is an atomic ObjectReference.
    "EndpointSlice": {"endpoints.addresses", "endpoints.targetRef"},
    # CustomResourceDefinitionStatus.conditions is +listType=map +listMapKey=type (no
    # patchStrategy); JSONSchemaProps.x-kubernetes-validations is merged by rule.
    "CustomResourceDefinition": {
        "status.conditions",
        "spec.versions.schema.openAPIV3Schema.x-kubernetes-validations",
    },
}

#: Kinds the task requires a hand-table comparison for.
REQUIRED_COMPARISONS = {
    "Pod",
    "Service",
    "Node",
    "Deployment",
    "ReplicaSet",
    "DaemonSet",
    "EndpointSlice",
}

CONTAINERS = keyed_list("name")
CONTAINER_PORTS = keyed_list("containerPort", "containerPort", "protocol")


def _below(table: dict[str, FieldRule], prefix: str) -> dict[str, FieldRule]:
    """The part of ``table`` below the field at ``prefix``, its paths made relative."""
    start = prefix + "."
    return {path[len(start) :]: rule for path, rule in table.items() if path.startswith(start)}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": "#/components/schemas/" + name}


class HandTableTests(SynchronousTestCase):
    """The derived tables agree with every hand-written one on every path it names."""

    def test_agree(self) -> None:
        mismatches = []
        for resource in BUILT_IN:
            derived = merge_rules(resource.group, resource.version, resource.kind)
            for path, rule in resource.strategy.merge_rules.items():
                if (resource.kind, path) in EXPECTED_DIFFERENCES:
                    continue
                if derived.get(path) != rule:
                    mismatches.append((resource.kind, path, rule, derived.get(path)))
        self.assertEqual(mismatches, [])

    def test_kinds_compared(self) -> None:
        """Every built-in kind is in the catalogue, so none escapes the comparison."""
        compared = {
            resource.kind
            for resource in BUILT_IN
            if merge_rules(resource.group, resource.version, resource.kind)
        }
        self.assertEqual(compared, {resource.kind for resource in BUILT_IN})
        self.assertLessEqual(REQUIRED_COMPARISONS, compared)

    def test_schema_only_paths(self) -> None:
        """Where the schemas say more than a hand table, it is one of the known omissions."""
        for resource in BUILT_IN:
            derived = merge_rules(resource.group, resource.version, resource.kind)
            extra = set(derived) - set(resource.strategy.merge_rules)
            self.assertLessEqual(extra, KNOWN_OMISSIONS.get(resource.kind, set()), resource.kind)

    def test_omissions(self) -> None:
        endpoint_slice = merge_rules("discovery.k8s.io", "v1", "EndpointSlice")
        self.assertEqual(endpoint_slice["endpoints.addresses"], FieldRule(list_type="set"))
        self.assertEqual(endpoint_slice["endpoints.targetRef"], ATOMIC)
        crd = merge_rules("apiextensions.k8s.io", "v1", "CustomResourceDefinition")
        self.assertEqual(crd["status.conditions"], FieldRule(list_type="map", map_keys=("type",)))


class DerivedTableTests(SynchronousTestCase):
    """Kinds with no hand table get the rules their Go markers give them."""

    def test_stateful_set(self) -> None:
        table = merge_rules("apps", "v1", "StatefulSet")
        self.assertEqual(table["spec.template.spec.containers"], CONTAINERS)
        self.assertEqual(table["spec.template.spec.containers.ports"], CONTAINER_PORTS)
        self.assertEqual(table["spec.selector"], ATOMIC)
        # volumeClaimTemplates is +listType=atomic; its items' own fields still have rules.
        self.assertNotIn("spec.volumeClaimTemplates", table)
        self.assertEqual(
            _below(table, "spec.volumeClaimTemplates"),
            {
                "metadata.ownerReferences": keyed_list("uid"),
                "metadata.finalizers": MERGED_SET,
                "spec.selector": ATOMIC,
                "spec.dataSource": ATOMIC,
                "status.conditions": keyed_list("type"),
            },
        )

    def test_pod_templates(self) -> None:
        """Jobs, CronJobs and workloads share the pod template rules the hand tables give."""
        for group, kind, prefix in [
            ("apps", "StatefulSet", "spec.template"),
            ("batch", "Job", "spec.template"),
            ("batch", "CronJob", "spec.jobTemplate.spec.template"),
            ("", "PodTemplate", "template"),
            ("", "ReplicationController", "spec.template"),
        ]:
            table = merge_rules(group, "v1", kind)
            self.assertEqual(_below(table, prefix), POD_TEMPLATE_SPEC_RULES, kind)
        cron_job = merge_rules("batch", "v1", "CronJob")
        self.assertEqual(cron_job["spec.jobTemplate.spec.template.spec.containers"], CONTAINERS)
        self.assertEqual(cron_job["spec.jobTemplate.spec.selector"], ATOMIC)

    def test_role_rules_atomic(self) -> None:
        for kind in ("Role", "ClusterRole"):
            table = merge_rules("rbac.authorization.k8s.io", "v1", kind)
            self.assertFalse([path for path in table if path.startswith("rules")], kind)

    def test_replace_strategy(self) -> None:
        table = merge_rules("policy", "v1", "PodDisruptionBudget")
        self.assertEqual(table["spec.selector"], FieldRule(strategy="replace", atomic=True))

    def test_key_defaults(self) -> None:
        """Only ``protocol`` map keys get a default, and every one of them gets it."""
        for entry in catalogue.resources():
            table = merge_rules(entry["group"], entry["version"], entry["kind"])
            for path, rule in table.items():
                expected = (("protocol", "TCP"),) if "protocol" in rule.map_keys else ()
                self.assertEqual(rule.key_defaults, expected, (entry["kind"], path))

    def test_unknown_kind(self) -> None:
        self.assertEqual(merge_rules("", "v1", "Widget"), {})
        self.assertEqual(merge_rules("example.com", "v1", "Widget"), {})
        self.assertEqual(merge_rules("apps", "v2", "Deployment"), {})

    def test_cached(self) -> None:
        self.assertIs(merge_rules("", "v1", "Pod"), merge_rules("", "v1", "Pod"))

    def test_one_document_per_call(self) -> None:
        """Building a table fetches (and so parses) its group-version document once."""
        fetched = count_fetches(self)
        merge_rules.cache_clear()
        self.addCleanup(merge_rules.cache_clear)
        merge_rules("apps", "v1", "Deployment")
        merge_rules("batch", "v1", "CronJob")
        self.assertEqual(fetched, [("apps", "v1"), ("batch", "v1")])


def count_fetches(case: SynchronousTestCase) -> list[tuple[str, str]]:
    """The group versions whose slim documents are fetched from now on, in order."""
    fetched: list[tuple[str, str]] = []
    fetch = catalogue.slim_document

    def counting(group: str, version: str) -> bytes | None:
        fetched.append((group, version))
        return fetch(group, version)

    case.patch(catalogue, "slim_document", counting)
    return fetched


class RecursionTests(SynchronousTestCase):
    """Recursive definitions end the walk instead of looping."""

    def test_json_schema_props(self) -> None:
        """A CRD's JSONSchemaProps refers to itself (``not``, ``allOf``, ...)."""
        table = merge_rules("apiextensions.k8s.io", "v1", "CustomResourceDefinition")
        schema = "spec.versions.schema.openAPIV3Schema"
        self.assertIn(f"{schema}.x-kubernetes-validations", table)
        self.assertFalse([path for path in table if path.startswith(f"{schema}.not.")])

    def test_mutual(self) -> None:
        schemas: dict[str, Any] = {
            "A": {
                "properties": {
                    "b": {"allOf": [_ref("B")], "description": "a B"},
                    "tags": {"type": "array", "items": {"type": "string"}},
                },
            },
            "B": {
                "x-kubernetes-map-type": "atomic",
                "properties": {
                    "a": _ref("A"),
                    "as": {
                        "type": "array",
                        "items": _ref("A"),
                        "x-kubernetes-list-type": "map",
                        "x-kubernetes-list-map-keys": ["name"],
                    },
                },
            },
        }
        self.assertEqual(
            schema_rules(schemas, "A"),
            {"b": ATOMIC, "b.as": FieldRule(list_type="map", map_keys=("name",))},
        )

    def test_depth_bound(self) -> None:
        """A chain of distinct definitions longer than the bound is cut off at it."""
        count = MAX_DEPTH + 5
        schemas: dict[str, Any] = {
            f"D{i}": {
                "properties": {
                    "next": _ref(f"D{i + 1}"),
                    "set": {"type": "array", "x-kubernetes-list-type": "set"},
                },
            }
            for i in range(count)
        }
        table = schema_rules(schemas, "D0")
        self.assertEqual(len(table), MAX_DEPTH)
        self.assertEqual(set(table.values()), {FieldRule(list_type="set")})
