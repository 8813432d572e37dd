"""
CustomResourceDefinitions' schemas as kube-apiserver uses them: a CRD's
schemas must be structural; a custom object loses the fields its schema
does not declare, gets the schema's defaults, and is refused, in kube's
words, where it breaks the schema; ``/openapi/v3`` serves the schema so
that ``kubectl explain`` reads it.
"""

from __future__ import annotations

import gzip
import json
from typing import Any

import yaml
from twisted.trial.unittest import SynchronousTestCase

from k3stw.apiserver.discovery import OpenAPI
from k3stw.apiserver.kinds import crds
from k3stw.machinery.objects import Object
from tests.support.apiserver import MemoryServer
from tests.support.kubectl import KubectlServer

SCHEMA: Object = {
    "type": "object",
    "description": "A Widget is a thing made of parts.",
    "properties": {
        "spec": {
            "type": "object",
            "description": "What the widget should be.",
            "required": ["size"],
            "properties": {
                "size": {"type": "integer", "minimum": 1, "maximum": 10},
                "color": {"type": "string", "enum": ["red", "blue"], "default": "red"},
                "name": {"type": "string", "pattern": "^[a-z]+$", "maxLength": 8},
                "owner": {"type": "string", "format": "email"},
                "port": {"x-kubernetes-int-or-string": True},
                "tags": {"type": "array", "items": {"type": "string"}, "maxItems": 2},
                "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                "extra": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
                "template": {
                    "type": "object",
                    "x-kubernetes-embedded-resource": True,
                    "properties": {"spec": {"type": "object", "properties": {}}},
                },
                "parts": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "properties": {
                            "name": {"type": "string"},
                            "count": {"type": "integer", "default": 1},
                        },
                    },
                },
            },
        },
        "status": {"type": "object", "properties": {"ready": {"type": "boolean"}}},
    },
}


def crd(schema: Any = SCHEMA) -> Object:
    version: Object = {"name": "v1", "served": True, "storage": True}
    if schema is not None:
        version["schema"] = {"openAPIV3Schema": schema}
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": "widgets.example.com"},
        "spec": {
            "group": "example.com",
            "scope": "Namespaced",
            "names": {"kind": "Widget", "plural": "widgets"},
            "versions": [version],
        },
    }


def widget(**spec: Any) -> Object:
    return {
        "apiVersion": "example.com/v1",
        "kind": "Widget",
        "metadata": {"name": "w"},
        "spec": {"size": 3, **spec},
    }


class StructuralSchemaTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.server = MemoryServer(self)

    def refused(self, schema: Any) -> list[tuple[str, str]]:
        error = self.server.fails(self.server.store.create(crds.RESOURCE, None, crd(schema)))
        self.assertEqual(error.code, 422)
        return [(c["field"], c["message"]) for c in error.details["causes"]]

    def test_a_field_without_a_type_is_refused_in_kubes_words(self) -> None:
        schema = {"type": "object", "properties": {"spec": {"properties": {"a": {}}}}}
        root = "spec.versions[0].schema.openAPIV3Schema"
        self.assertEqual(
            self.refused(schema),
            [
                (
                    f"{root}.properties[spec].type",
                    "Required value: must not be empty for specified object fields",
                ),
                (
                    f"{root}.properties[spec].properties[a].type",
                    "Required value: must not be empty for specified object fields",
                ),
            ],
        )

    def test_a_version_without_a_schema_and_other_non_structural_ones_are_refused(self) -> None:
        root = "spec.versions[0].schema.openAPIV3Schema"
        self.assertEqual(self.refused(None), [(root, "Required value: schemas are required")])
        self.assertEqual(
            self.refused({"type": "string"}),
            [(f"{root}.type", 'Invalid value: "string": must be object at the root')],
        )
        self.assertIn(
            (f"{root}.properties[l].items", "Required value: must be specified"),
            self.refused({"type": "object", "properties": {"l": {"type": "array"}}}),
        )
        self.assertIn(
            (
                f"{root}.properties[p].type",
                'Invalid value: "string": must be empty if x-kubernetes-int-or-string is true',
            ),
            self.refused(
                {
                    "type": "object",
                    "properties": {"p": {"type": "string", "x-kubernetes-int-or-string": True}},
                }
            ),
        )

    def test_a_structural_crd_is_stored_with_kubes_defaults(self) -> None:
        stored = self.server.run(self.server.store.create(crds.RESOURCE, None, crd()))
        names = stored["spec"]["names"]
        self.assertEqual((names["singular"], names["listKind"]), ("widget", "WidgetList"))
        self.assertEqual(stored["spec"]["conversion"], {"strategy": "None"})
        self.assertEqual(stored["status"]["acceptedNames"], names)


class CustomObjectSchemaTests(SynchronousTestCase):
    maxDiff = None

    def setUp(self) -> None:
        self.server = MemoryServer(self)
        self.server.run(self.server.store.create(crds.RESOURCE, None, crd()))
        self.widgets = self.server.resource("example.com", "widgets")

    def create(self, obj: Object) -> Object:
        return self.server.run(self.server.store.create(self.widgets, "default", obj))

    def causes(self, obj: Object) -> list[tuple[str, str]]:
        error = self.server.fails(self.server.store.create(self.widgets, "default", obj))
        self.assertEqual(error.code, 422)
        return [(c["field"], c["message"]) for c in error.details["causes"]]

    def test_unknown_fields_are_pruned_and_defaults_filled_in(self) -> None:
        given = widget(
            foo=1,
            port="http",
            labels={"a": "b"},
            extra={"anything": {"goes": True}},
            template={
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": "t"},
                "spec": {"dropped": 1},
                "bar": 2,
            },
            parts=[{"name": "x", "junk": 0}, {"name": "y", "count": 5}],
        )
        given["status"] = {"ready": True, "stale": 1}
        given["top"] = "dropped"
        self.assertEqual(
            self.widgets.strategy.unknown_fields and self.widgets.strategy.unknown_fields(given),
            [
                "spec.foo",
                "spec.template.spec.dropped",
                "spec.template.bar",
                "spec.parts[0].junk",
                "status.stale",
                "top",
            ],
        )
        stored = self.create(given)
        self.assertEqual(
            stored["spec"],
            {
                "size": 3,
                "color": "red",
                "port": "http",
                "labels": {"a": "b"},
                "extra": {"anything": {"goes": True}},
                "template": {
                    "apiVersion": "v1",
                    "kind": "Pod",
                    "metadata": {"name": "t"},
                    "spec": {},
                },
                "parts": [{"name": "x", "count": 1}, {"name": "y", "count": 5}],
            },
        )
        self.assertEqual(stored["status"], {"ready": True})
        self.assertNotIn("top", stored)

    def test_defaults_come_back_on_update_and_keep_what_the_user_set(self) -> None:
        self.create(widget(color="blue"))

        def drop(current: Object) -> Object:
            del current["spec"]["color"]
            current["spec"]["foo"] = 1
            return current

        updated = self.server.run(
            self.server.store.guaranteed_update(self.widgets, "default", "w", drop)
        )
        self.assertEqual(updated["spec"], {"size": 3, "color": "red"})

    def test_an_object_breaking_its_schema_is_refused_in_kubes_words(self) -> None:
        given = widget(
            size="three",
            color="pink",
            name="Bad-Name!",
            owner="nobody",
            port=1.5,
            tags=["a", "b", "c"],
        )
        self.assertEqual(
            self.causes(given),
            [
                (
                    "spec.size",
                    'Invalid value: "string": spec.size in body must be of type integer: "string"',
                ),
                ("spec.color", 'Unsupported value: "pink": supported values: "red", "blue"'),
                ("spec.name", "Too long: may not be more than 8 bytes"),
                (
                    "spec.name",
                    "Invalid value: \"Bad-Name!\": spec.name in body should match '^[a-z]+$'",
                ),
                (
                    "spec.owner",
                    'Invalid value: "nobody": spec.owner in body must be of type email: "nobody"',
                ),
                (
                    "spec.port",
                    'Invalid value: "number": spec.port in body must be of type '
                    'integer,string: "number"',
                ),
                ("spec.tags", "Too many: 3: must have at most 2 items"),
            ],
        )
        self.assertEqual(
            self.causes(widget(size=11)),
            [
                (
                    "spec.size",
                    "Invalid value: 11: spec.size in body should be less than or equal to 10",
                )
            ],
        )
        missing = widget()
        del missing["spec"]["size"]
        self.assertEqual(self.causes(missing), [("spec.size", "Required value")])
        self.assertFalse(self.server.exists("example.com", "widgets", "w", "default"))

    def test_openapi_serves_the_crds_schema_for_kubectl_explain(self) -> None:
        document = OpenAPI(self.server.registry).document("apis/example.com/v1")
        assert document is not None
        schemas = json.loads(gzip.decompress(document))["components"]["schemas"]
        widget_schema = schemas["com.example.v1.Widget"]
        self.assertEqual(
            widget_schema["x-kubernetes-group-version-kind"],
            [{"group": "example.com", "version": "v1", "kind": "Widget"}],
        )
        self.assertEqual(widget_schema["properties"]["spec"], SCHEMA["properties"]["spec"])
        self.assertIn("io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta", schemas)
        self.assertIn("io.k8s.apimachinery.pkg.apis.meta.v1.OwnerReference", schemas)


class BareMetadataSchemaTests(SynchronousTestCase):
    def test_a_schema_saying_metadata_is_an_object_prunes_none_of_it(self) -> None:
        """controller-gen writes ``metadata: {type: object}``; the name and labels stay."""
        server = MemoryServer(self)
        schema = json.loads(json.dumps(SCHEMA))
        schema["properties"]["metadata"] = {"type": "object"}
        definition = crd(schema)
        server.run(server.store.create(crds.RESOURCE, None, definition))
        widgets = server.resource("example.com", "widgets")
        given = widget()
        given["metadata"]["labels"] = {"team": "a"}
        stored = server.run(server.store.create(widgets, "default", given))
        self.assertEqual(stored["metadata"]["name"], given["metadata"]["name"])
        self.assertEqual(stored["metadata"]["labels"], {"team": "a"})


class KubectlCustomResourceTests(SynchronousTestCase):
    server: KubectlServer

    def setUp(self) -> None:
        self.server = KubectlServer.start(self, "127.0.0.13")
        self.server.kubectl("apply", "-f", "-", stdin=yaml.safe_dump(crd()))
        self.server.kubectl("wait", "--for=condition=Established", "crd/widgets.example.com")

    def test_apply_a_widget_then_get_and_explain_it(self) -> None:
        """Unknown fields dropped, defaults filled in; ``kubectl explain`` reads the schema."""
        given = yaml.safe_dump(widget(foo="bar"))
        self.server.kubectl("apply", "--validate=false", "-f", "-", stdin=given)
        shown = json.loads(self.server.kubectl("get", "widgets", "w", "-o", "json"))
        self.assertEqual(shown["spec"], {"size": 3, "color": "red"})
        explained = self.server.kubectl("explain", "widgets.spec")
        self.assertIn("What the widget should be.", explained)
        self.assertIn("size\t<integer> -required-", explained)
        self.assertIn(
            "A Widget is a thing made of parts.", self.server.kubectl("explain", "widget")
        )
        refused = self.server.kubectl_fails(
            "apply", "-f", "-", stdin=yaml.safe_dump(widget(size=0))
        )
        self.assertIn("spec.size in body should be greater than or equal to 1", refused)

    def test_strict_field_validation_names_the_unknown_field(self) -> None:
        refused = self.server.kubectl_fails(
            "apply", "-f", "-", stdin=yaml.safe_dump(widget(foo="bar"))
        )
        self.assertIn(
            'Widget in version "v1" cannot be handled as a Widget: strict decoding error: '
            'unknown field "spec.foo"',
            refused,
        )
