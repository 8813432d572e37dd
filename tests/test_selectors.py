"""Label and field selectors: kube-apiserver's grammar, matching and error messages."""

from __future__ import annotations

from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from k3stw.apiserver import fields
from k3stw.apiserver.fields import (
    DEFAULT_FIELD_TABLE,
    FieldSelector,
    FieldSelectorError,
    FieldTable,
    UnsupportedFieldError,
    custom_resource_field_table,
    escape_field_value,
)
from k3stw.apiserver.kinds import BUILT_IN
from k3stw.machinery.labels import (
    EVERYTHING,
    NOTHING,
    LabelSelectorError,
    SelectorError,
    format_label_selector,
    format_labels,
    label_selector_from_spec,
    parse_label_selector,
    spec_matches,
)

#: Each built-in kind's field table, as its module declares it.
BUILTIN_FIELD_TABLES: dict[tuple[str, str], FieldTable] = {
    (resource.group, resource.kind): resource.strategy.fields for resource in BUILT_IN
}


def parse_field_selector(
    text: str,
    group: str,
    kind: str,
    tables: dict[tuple[str, str], FieldTable] = BUILTIN_FIELD_TABLES,
) -> FieldSelector:
    """Parse C{text} against the field table of C{group}/C{kind} (the default one if none)."""
    return fields.parse_field_selector(text, tables.get((group, kind), DEFAULT_FIELD_TABLE))


NAME_PART = (
    "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and "
    "end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex "
    "used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')"
)
LABEL_VALUE = (
    "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' "
    "or '.', and must start and end with an alphanumeric character (e.g. 'MyValue',  or "
    "'my_value',  or '12345', regex used for validation is "
    "'(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')"
)
OPERATORS = "in, notin, =, ==, !=, gt, lt"

LABELS = {"app": "web", "tier": "front", "env": "", "replicas": "3"}


class LabelSelectorMatchTests(SynchronousTestCase):
    def test_each_operator(self) -> None:
        """Every operator of the grammar selects exactly the label sets it should."""
        cases = {
            "": True,
            "app=web": True,
            "app=db": False,
            "app==web": True,
            "app!=web": False,
            "app!=db": True,
            "missing!=x": True,
            "app in (db,web)": True,
            "app in (db)": False,
            "missing in (x)": False,
            "app notin (db,web)": False,
            "app notin (db)": True,
            "missing notin (x)": True,
            "app": True,
            "missing": False,
            "!app": False,
            "!missing": True,
            "replicas>2": True,
            "replicas>3": False,
            "replicas<4": True,
            "app>1": False,
            "missing<4": False,
            "env=": True,
            "env in ()": True,
            "env in (,x)": True,
            "app=web,tier=front": True,
            "app=web,tier=back": False,
            "app=web, !missing ,tier in (front)": True,
            "in in (in)": False,
        }
        actual = {text: parse_label_selector(text).matches(LABELS) for text in cases}
        self.assertEqual(actual, cases)

    def test_keywords_are_identifiers_where_values_go(self) -> None:
        """``in`` and ``notin`` are plain words as keys and values."""
        selector = parse_label_selector("in in (notin),notin=in")
        self.assertTrue(selector.matches({"in": "notin", "notin": "in"}))
        self.assertFalse(selector.matches({"in": "in", "notin": "in"}))

    def test_canonical_string(self) -> None:
        """The selector prints sorted by key, set values sorted, as Requirement.String does."""
        cases = {
            "b=1,a=2": "a=2,b=1",
            "x in (foo,,baz),y,z notin ()": "x in (,baz,foo),y,z notin ()",
            "!a , b==c": "!a,b==c",
            "a>1,a<5": "a>1,a<5",
            "k notin (z,y)": "k notin (y,z)",
        }
        actual = {text: str(parse_label_selector(text)) for text in cases}
        self.assertEqual(actual, cases)

    def test_requires_exact(self) -> None:
        """A selector pinning one value for a key reports it; others do not."""
        selector = parse_label_selector("a=1,b in (2),c in (3,4),d!=5")
        self.assertEqual(
            [selector.requires_exact(k) for k in "abcde"], ["1", "2", None, None, None]
        )


class LabelSelectorErrorTests(SynchronousTestCase):
    def test_parse_errors_carry_kube_apiservers_message(self) -> None:
        """Malformed selectors fail with the exact text kube-apiserver answers 400 with."""
        cases = {
            "a b": f"unable to parse requirement: found 'b', expected: {OPERATORS}",
            "a=(b)": "unable to parse requirement: found '(', expected: identifier",
            "a in b": "unable to parse requirement: found 'b' expected: '('",
            "a in (b c)": "unable to parse requirement: found 'c', expected: ',' or ')'",
            "a in (b": "unable to parse requirement: found '', expected: ',' or ')'",
            "a in =": "unable to parse requirement: found '=' expected: '('",
            "a in (=)": "unable to parse requirement: found '=', expected: ',', ')' or identifier",
            "a!": f"unable to parse requirement: found '!', expected: {OPERATORS}",
            "!": "unable to parse requirement: found '', expected: identifier",
            "a,": "found '', expected: identifier after ','",
            "a,,b": "found ',', expected: identifier after ','",
            ",a": "found ',', expected: !, identifier, or 'end of string'",
            "=a": "found '=', expected: !, identifier, or 'end of string'",
            "!a=b": "found '=', expected: ',' or 'end of string'",
            "a=b c": "found 'c', expected: ',' or 'end of string'",
            "app:monolith": (
                f'unable to parse requirement: <nil>: Invalid value: "app:monolith": {NAME_PART}'
            ),
            "a=-x": (
                f'unable to parse requirement: values[0][a]: Invalid value: "-x": {LABEL_VALUE}'
            ),
            "a>x": (
                "unable to parse requirement: values[0]: Invalid value: \"x\": for 'Gt', 'Lt' "
                "operators, the value must be an integer"
            ),
            "a in (-x,-y)": (
                'unable to parse requirement: [values[0][a]: Invalid value: "-x": '
                f'{LABEL_VALUE}, values[1][a]: Invalid value: "-y": {LABEL_VALUE}]'
            ),
        }
        actual = {}
        for text in cases:
            with self.assertRaises(LabelSelectorError) as raised:
                parse_label_selector(text)
            actual[text] = str(raised.exception)
        self.assertEqual(actual, cases)

    def test_key_validation(self) -> None:
        """Keys are qualified names: prefix a DNS subdomain, name at most 63 characters."""
        long_name = "a" * 64
        cases = {
            "example.com/app": None,
            "a.b/c/d": (
                "a qualified name must consist of alphanumeric characters, '-', '_' or '.', "
                "and must start and end with an alphanumeric character (e.g. 'MyName',  or "
                "'my.name',  or '123-abc', regex used for validation is "
                "'([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]') with an optional DNS subdomain "
                "prefix and '/' (e.g. 'example.com/MyName')"
            ),
            "/app": "prefix part must be non-empty",
            "Example.com/app": (
                "prefix part a lowercase RFC 1123 subdomain must consist of lower case "
                "alphanumeric characters, '-' or '.', and must start and end with an "
                "alphanumeric character (e.g. 'example.com', regex used for validation is "
                r"'[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')"
            ),
            "example.com/": f"name part must be non-empty; {NAME_PART}",
            long_name: "name part must be no more than 63 characters",
        }
        actual: dict[str, str | None] = {}
        for key in cases:
            try:
                parse_label_selector(key)
            except LabelSelectorError as e:
                prefix = f'unable to parse requirement: <nil>: Invalid value: "{key}": '
                self.assertTrue(str(e).startswith(prefix), str(e))
                actual[key] = str(e).removeprefix(prefix)
            else:
                actual[key] = None
        self.assertEqual(actual, cases)

    def test_errors_are_bad_requests(self) -> None:
        """Every selector error is a SelectorError the API answers with 400."""
        with self.assertRaises(SelectorError) as raised:
            parse_label_selector("a b")
        self.assertEqual((raised.exception.code, raised.exception.message[:6]), (400, "unable"))


class LabelSelectorObjectTests(SynchronousTestCase):
    def test_match_labels_and_expressions(self) -> None:
        """matchLabels and every matchExpressions operator AND together."""
        selector = label_selector_from_spec(
            {
                "matchLabels": {"app": "web"},
                "matchExpressions": [
                    {"key": "tier", "operator": "In", "values": ["front", "edge"]},
                    {"key": "env", "operator": "NotIn", "values": ["prod"]},
                    {"key": "track", "operator": "Exists"},
                    {"key": "canary", "operator": "DoesNotExist"},
                ],
            }
        )
        base = {"app": "web", "tier": "edge", "env": "dev", "track": "x"}
        cases = {
            "all hold": (base, True),
            "wrong app": ({**base, "app": "db"}, False),
            "tier outside the set": ({**base, "tier": "back"}, False),
            "env excluded": ({**base, "env": "prod"}, False),
            "env absent": ({k: v for k, v in base.items() if k != "env"}, True),
            "track absent": ({k: v for k, v in base.items() if k != "track"}, False),
            "canary present": ({**base, "canary": ""}, False),
        }
        actual = {name: selector.matches(labels) for name, (labels, _) in cases.items()}
        self.assertEqual(actual, {name: wanted for name, (_, wanted) in cases.items()})
        self.assertEqual(
            str(selector), "app=web,!canary,env notin (prod),tier in (edge,front),track"
        )

    def test_nil_and_empty(self) -> None:
        """A missing selector matches nothing; an empty one matches everything."""
        self.assertIs(label_selector_from_spec(None), NOTHING)
        self.assertFalse(NOTHING.matches({}))
        self.assertIs(label_selector_from_spec({}), EVERYTHING)
        self.assertTrue(label_selector_from_spec({"matchLabels": {}}).matches({"a": "b"}))
        self.assertTrue(parse_label_selector("").empty)

    def test_invalid_objects(self) -> None:
        """Bad operators, keys, values and value counts fail as LabelSelectorAsSelector does."""
        cases: dict[str, tuple[dict[str, Any], str]] = {
            "operator": (
                {"matchExpressions": [{"key": "a", "operator": "Gt", "values": ["1"]}]},
                '"Gt" is not a valid label selector operator',
            ),
            "key": (
                {"matchLabels": {"a b": "x"}},
                f'key: Invalid value: "a b": {NAME_PART}',
            ),
            "value": (
                {"matchLabels": {"a": "x y"}},
                f'values[0][a]: Invalid value: "x y": {LABEL_VALUE}',
            ),
            "empty set": (
                {"matchExpressions": [{"key": "a", "operator": "In", "values": []}]},
                "values: Invalid value: []string{}: for 'in', 'notin' operators, values set "
                "can't be empty",
            ),
            "values with Exists": (
                {"matchExpressions": [{"key": "a", "operator": "Exists", "values": ["x"]}]},
                'values: Invalid value: []string{"x"}: values set must be empty for exists and '
                "does not exist",
            ),
        }
        actual = {}
        for name, (spec, _) in cases.items():
            with self.assertRaises(LabelSelectorError) as raised:
                label_selector_from_spec(spec)
            actual[name] = str(raised.exception)
        self.assertEqual(actual, {name: message for name, (_, message) in cases.items()})

    def test_spec_matches_as_the_built_selector(self) -> None:
        """spec_matches answers, or fails, as the selector built from the spec does."""
        specs: list[dict[str, Any]] = [
            {},
            {"matchLabels": {}},
            {"matchLabels": {"app": "web"}},
            {"matchLabels": {"app": "web", "example.com/tier": "front"}},
            {"matchLabels": {"app": 1}},
            {"matchLabels": {"app": "web"}, "matchExpressions": []},
            {
                "matchLabels": {"app": "web"},
                "matchExpressions": [{"key": "x", "operator": "Exists"}],
            },
            {"matchLabels": {"a b": "x"}},
            {"matchLabels": {"a": "x y", "b/c/d": "1"}},
            {"matchExpressions": [{"key": "a", "operator": "Gt", "values": ["1"]}]},
        ]
        labels: list[Any] = [
            {},
            {"app": "web"},
            {"app": "1"},
            {"app": "web", "example.com/tier": "front", "x": ""},
            {"app": "db"},
        ]
        for spec in specs:
            for given in labels:
                with self.subTest(spec=spec, labels=given):
                    try:
                        wanted: object = label_selector_from_spec(spec).matches(given)
                    except LabelSelectorError as e:
                        wanted = str(e)
                    try:
                        actual: object = spec_matches(spec, given)
                    except LabelSelectorError as e:
                        actual = str(e)
                    self.assertEqual(actual, wanted)

    def test_formatting_for_printers(self) -> None:
        """FormatLabelSelector and FormatLabels: sorted, ``<none>`` when empty."""
        self.assertEqual(
            [
                format_label_selector({"matchLabels": {"b": "2", "a": "1"}}),
                format_label_selector({}),
                format_label_selector(None),
                format_label_selector({"matchExpressions": [{"key": "a", "operator": "Nope"}]}),
                format_labels({"z": "1", "a": "2"}),
                format_labels({}),
                format_labels(None),
            ],
            ["a=1,b=2", "<none>", "<none>", "<error>", "a=2,z=1", "<none>", "<none>"],
        )


def pod(**fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "metadata": {"name": "web", "namespace": "default"},
        "spec": {
            "nodeName": "n1",
            "restartPolicy": "Always",
            "schedulerName": "default-scheduler",
            "serviceAccountName": "default",
        },
        "status": {"phase": "Running", "podIPs": [{"ip": "10.42.0.9"}], "podIP": "10.42.0.9"},
    }
    for path, value in fields.items():
        section, _, name = path.partition("__")
        base[section][name] = value
    return base


class FieldSelectorTests(SynchronousTestCase):
    def test_pod_fields(self) -> None:
        """Every selectable pod field, with =, == and !=; absent fields read as empty."""
        running = pod()
        cases = {
            "metadata.name=web": True,
            "metadata.name==web": True,
            "metadata.name!=web": False,
            "metadata.namespace=default": True,
            "spec.nodeName=n1": True,
            "spec.host=n1": True,
            "spec.nodeName=": False,
            "spec.restartPolicy=Always": True,
            "spec.schedulerName=default-scheduler": True,
            "spec.serviceAccountName=default": True,
            "spec.hostNetwork=false": True,
            "spec.hostNetwork=true": False,
            "status.phase=Running": True,
            "spec.nodeName=n1,status.phase!=Succeeded,status.phase!=Failed": True,
            "status.podIP=10.42.0.9": True,
            "status.nominatedNodeName=": True,
            "status.podIPs=10.42.0.9": False,
            "": True,
            ",": True,
        }
        actual = {text: parse_field_selector(text, "", "Pod").matches(running) for text in cases}
        self.assertEqual(actual, cases)

    def test_pod_values_from_sparse_objects(self) -> None:
        """hostNetwork reads true when set, podIP falls back to status.podIP."""
        host = pod(spec__hostNetwork=True, status__podIPs=[], status__podIP="10.0.0.1")
        self.assertTrue(parse_field_selector("spec.hostNetwork=true", "", "Pod").matches(host))
        self.assertTrue(parse_field_selector("status.podIP=10.0.0.1", "", "Pod").matches(host))
        self.assertTrue(parse_field_selector("spec.nodeName=", "", "Pod").matches({}))

    def test_other_kinds(self) -> None:
        """The per-kind fields kube-apiserver 1.32 registers, read from realistic objects."""
        node = {"metadata": {"name": "n1"}, "spec": {"unschedulable": True}}
        event = {
            "metadata": {"name": "e1", "namespace": "default"},
            "involvedObject": {
                "kind": "Pod",
                "namespace": "default",
                "name": "web",
                "uid": "u-1",
                "apiVersion": "v1",
                "resourceVersion": "7",
                "fieldPath": "spec.containers{a}",
            },
            "reason": "Started",
            "type": "Normal",
            "reportingComponent": "kubelet",
            "source": {},
        }
        cases: list[tuple[str, str, dict[str, Any], str, bool]] = [
            ("", "Node", node, "spec.unschedulable=true", True),
            ("", "Node", {"metadata": {"name": "n2"}}, "spec.unschedulable=false", True),
            ("", "Node", node, "metadata.name=n1", True),
            (
                "",
                "Namespace",
                {"metadata": {"name": "a"}, "status": {"phase": "Active"}},
                "status.phase=Active",
                True,
            ),
            ("", "Secret", {"metadata": {"name": "s"}, "type": "Opaque"}, "type=Opaque", True),
            (
                "",
                "Service",
                {"metadata": {"name": "s"}, "spec": {"type": "NodePort"}},
                "spec.type=NodePort,spec.clusterIP=",
                True,
            ),
            (
                "",
                "Event",
                event,
                "involvedObject.kind=Pod,involvedObject.name=web,involvedObject.namespace=default,"
                "involvedObject.uid=u-1,involvedObject.apiVersion=v1,"
                "involvedObject.resourceVersion=7,involvedObject.fieldPath=spec.containers{a},"
                "reason=Started,type=Normal,reportingComponent=kubelet",
                True,
            ),
            ("", "Event", event, "source=kubelet", True),
            ("", "Event", {**event, "source": {"component": "sched"}}, "source=sched", True),
            (
                "",
                "ConfigMap",
                {"metadata": {"name": "c", "namespace": "x"}},
                "metadata.namespace=x",
                True,
            ),
            ("", "Namespace", {"metadata": {"name": "a"}}, "metadata.name!=a", False),
            ("apps", "Deployment", {"metadata": {"name": "d"}}, "metadata.name=d", True),
            (
                "coordination.k8s.io",
                "Lease",
                {"metadata": {"name": "l"}},
                "metadata.namespace=",
                True,
            ),
        ]
        actual = [
            parse_field_selector(text, group, kind).matches(obj)
            for group, kind, obj, text, _ in cases
        ]
        self.assertEqual(actual, [wanted for *_, wanted in cases])

    def test_unsupported_fields(self) -> None:
        """Unknown fields are 400s, worded as the kind's conversion function words them."""
        default = '"{}" is not a known field selector: only "metadata.name", "metadata.namespace"'
        cases = {
            ("", "Pod", "spec.containers=x"): "field label not supported: spec.containers",
            ("", "Node", "metadata.namespace="): "field label not supported: metadata.namespace",
            ("", "Namespace", "metadata.namespace="): (
                "field label not supported: metadata.namespace"
            ),
            ("", "Secret", "data=x"): "field label not supported: data",
            ("", "Event", "message=x"): "field label not supported: message",
            ("", "ConfigMap", "data=x"): default.format("data"),
            ("apps", "ReplicaSet", "status.replicas=1"): default.format("status.replicas"),
            ("apps", "Deployment", "spec.replicas=1"): default.format("spec.replicas"),
            ("", "Pod", "metadata.name=a,b=1,a=1"): "field label not supported: a",
            ("", "Pod", " metadata.name=a"): "field label not supported:  metadata.name",
        }
        actual = {}
        for group, kind, text in cases:
            with self.assertRaises(UnsupportedFieldError) as raised:
                parse_field_selector(text, group, kind)
            actual[(group, kind, text)] = str(raised.exception)
        self.assertEqual(actual, cases)

    def test_syntax_errors(self) -> None:
        """Terms without an operator and bad escapes fail before any field is checked."""
        cases = {
            "metadata.name": "invalid selector: 'metadata.name'; can't understand 'metadata.name'",
            "b=1,a": "invalid selector: 'b=1,a'; can't understand 'a'",
            "nope=1,metadata.name": (
                "invalid selector: 'nope=1,metadata.name'; can't understand 'metadata.name'"
            ),
            "metadata.name=a=b": "invalid field selector: unescaped character in value: =",
            "metadata.name=a\\x": "invalid field selector: invalid escape sequence: \\x",
            "metadata.name=a\\": "invalid field selector: invalid escape sequence: \\",
        }
        actual = {}
        for text in cases:
            with self.assertRaises(FieldSelectorError) as raised:
                parse_field_selector(text, "", "Pod")
            self.assertNotIsInstance(raised.exception, UnsupportedFieldError)
            actual[text] = str(raised.exception)
        self.assertEqual(actual, cases)

    def test_escaped_values(self) -> None:
        """Backslash-escaped commas, equals signs and backslashes are data."""
        obj = {"metadata": {"name": "a,b=c\\d"}}
        text = "metadata.name=" + escape_field_value("a,b=c\\d")
        self.assertEqual(text, "metadata.name=a\\,b\\=c\\\\d")
        selector = parse_field_selector(text, "", "ConfigMap")
        self.assertTrue(selector.matches(obj))
        self.assertEqual(str(selector), text)

    def test_first_operator_splits(self) -> None:
        """``a!=b`` is a negation and ``a==b`` an equality, whatever follows."""
        selector = parse_field_selector("metadata.name!=x", "", "Pod")
        self.assertEqual(
            [(r.field, r.value, r.negated) for r in selector.requirements],
            [("metadata.name", "x", True)],
        )
        self.assertEqual(
            parse_field_selector("metadata.name==x", "", "Pod").requires_exact("metadata.name"), "x"
        )
        self.assertIsNone(selector.requires_exact("metadata.name"))

    def test_custom_resources(self) -> None:
        """Custom resources get name, namespace when namespaced, and their selectable fields."""
        tables = {
            **BUILTIN_FIELD_TABLES,
            ("example.com", "Widget"): custom_resource_field_table(True, [".spec.color"]),
            ("example.com", "Gadget"): custom_resource_field_table(False),
        }
        widget = {"metadata": {"name": "w", "namespace": "d"}, "spec": {"color": "red"}}
        selector = parse_field_selector(
            "spec.color=red,metadata.namespace=d", "example.com", "Widget", tables
        )
        self.assertTrue(selector.matches(widget))
        with self.assertRaises(UnsupportedFieldError) as raised:
            parse_field_selector("metadata.namespace=d", "example.com", "Gadget", tables)
        self.assertEqual(str(raised.exception), "field label not supported: metadata.namespace")
        with self.assertRaises(UnsupportedFieldError) as raised:
            parse_field_selector("spec.size=1", "example.com", "Widget", tables)
        self.assertEqual(str(raised.exception), "field label not supported: spec.size")
