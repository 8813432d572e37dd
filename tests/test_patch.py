"""The four patch forms: RFC 6902, RFC 7386, strategic merge patch, server-side apply."""

from __future__ import annotations

import copy
import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from k3stw.apiserver.kinds import BUILT_IN, built_in_registry
from k3stw.apiserver.kinds.custom import resources_of_crd
from k3stw.apiserver.patch import (
    MAX_JSON_PATCH_OPERATIONS,
    ApplyConflict,
    FieldConflict,
    FieldRule,
    InvalidPatch,
    JSONValue,
    PatchError,
    PatchNotApplicable,
    PatchTestFailed,
    PatchTooLarge,
    StrategicMergeError,
    UnsupportedPatchType,
    apply_json_patch,
    apply_merge_patch,
    apply_server_side,
    apply_strategic_merge_patch,
    json_equal,
    record_update,
)
from k3stw.apiserver.patch.managedfields import (
    encode_fields,
    field_values,
    owned_fields,
    strip_unowned,
)
from k3stw.apiserver.patch.rules import METADATA_ONLY_RULES, RuleTable
from k3stw.machinery.objects import copy_json

#: The merge rules each built-in kind's module declares, by kind.
FIELD_RULES: dict[str, RuleTable] = {
    resource.kind: resource.strategy.merge_rules for resource in BUILT_IN
}

# -- RFC 6902 -----------------------------------------------------------------------------------

#: RFC 6902 appendix A examples that succeed: (name, document, patch, expected).
RFC6902_EXAMPLES: list[tuple[str, Any, Any, Any]] = [
    (
        "A.1 add an object member",
        {"foo": "bar"},
        [{"op": "add", "path": "/baz", "value": "qux"}],
        {"baz": "qux", "foo": "bar"},
    ),
    (
        "A.2 add an array element",
        {"foo": ["bar", "baz"]},
        [{"op": "add", "path": "/foo/1", "value": "qux"}],
        {"foo": ["bar", "qux", "baz"]},
    ),
    (
        "A.3 remove an object member",
        {"baz": "qux", "foo": "bar"},
        [{"op": "remove", "path": "/baz"}],
        {"foo": "bar"},
    ),
    (
        "A.4 remove an array element",
        {"foo": ["bar", "qux", "baz"]},
        [{"op": "remove", "path": "/foo/1"}],
        {"foo": ["bar", "baz"]},
    ),
    (
        "A.5 replace a value",
        {"baz": "qux", "foo": "bar"},
        [{"op": "replace", "path": "/baz", "value": "boo"}],
        {"baz": "boo", "foo": "bar"},
    ),
    (
        "A.6 move a value",
        {"foo": {"bar": "baz", "waldo": "fred"}, "qux": {"corge": "grault"}},
        [{"op": "move", "from": "/foo/waldo", "path": "/qux/thud"}],
        {"foo": {"bar": "baz"}, "qux": {"corge": "grault", "thud": "fred"}},
    ),
    (
        "A.7 move an array element",
        {"foo": ["all", "grass", "cows", "eat"]},
        [{"op": "move", "from": "/foo/1", "path": "/foo/3"}],
        {"foo": ["all", "cows", "eat", "grass"]},
    ),
    (
        "A.8 test a value: success",
        {"baz": "qux", "foo": ["a", 2, "c"]},
        [
            {"op": "test", "path": "/baz", "value": "qux"},
            {"op": "test", "path": "/foo/1", "value": 2},
        ],
        {"baz": "qux", "foo": ["a", 2, "c"]},
    ),
    (
        "A.10 add a nested member object",
        {"foo": "bar"},
        [{"op": "add", "path": "/child", "value": {"grandchild": {}}}],
        {"foo": "bar", "child": {"grandchild": {}}},
    ),
    (
        "A.11 ignore unrecognized elements",
        {"foo": "bar"},
        [{"op": "add", "path": "/baz", "value": "qux", "xyz": 123}],
        {"foo": "bar", "baz": "qux"},
    ),
    (
        "A.14 ~ escape ordering",
        {"/": 9, "~1": 10},
        [{"op": "test", "path": "/~01", "value": 10}],
        {"/": 9, "~1": 10},
    ),
    (
        "A.16 add an array value",
        {"foo": ["bar"]},
        [{"op": "add", "path": "/foo/-", "value": ["abc", "def"]}],
        {"foo": ["bar", ["abc", "def"]]},
    ),
    (
        "copy",
        {"a": {"b": [1]}},
        [{"op": "copy", "from": "/a", "path": "/c"}],
        {"a": {"b": [1]}, "c": {"b": [1]}},
    ),
    (
        "~1 names a key with a slash (a label)",
        {"metadata": {"labels": {"app.kubernetes.io/name": "x"}}},
        [{"op": "remove", "path": "/metadata/labels/app.kubernetes.io~1name"}],
        {"metadata": {"labels": {}}},
    ),
    (
        "replace the whole document",
        {"a": 1},
        [{"op": "replace", "path": "", "value": {"b": 2}}],
        {"b": 2},
    ),
    (
        "test 1 equals 1.0",
        {"a": 1},
        [{"op": "test", "path": "/a", "value": 1.0}],
        {"a": 1},
    ),
]

#: Failing JSON patches: (name, document, patch, error class, HTTP code, message).
RFC6902_FAILURES: list[tuple[str, Any, Any, type[PatchError], int, str]] = [
    (
        "A.9 test a value: error",
        {"baz": "qux"},
        [{"op": "test", "path": "/baz", "value": "bar"}],
        PatchTestFailed,
        422,
        "testing value /baz failed: test failed",
    ),
    (
        "A.12 add to a nonexistent target",
        {"foo": "bar"},
        [{"op": "add", "path": "/baz/bat", "value": "qux"}],
        PatchNotApplicable,
        422,
        'add operation does not apply: doc is missing path: "/baz/bat": missing value',
    ),
    (
        "A.15 strings and numbers differ",
        {"/": 9, "~1": 10},
        [{"op": "test", "path": "/~01", "value": "10"}],
        PatchTestFailed,
        422,
        "testing value /~01 failed: test failed",
    ),
    (
        "booleans are not numbers",
        {"a": 1},
        [{"op": "test", "path": "/a", "value": True}],
        PatchTestFailed,
        422,
        "testing value /a failed: test failed",
    ),
    (
        "remove a missing key",
        {"a": {}},
        [{"op": "remove", "path": "/a/x"}],
        PatchNotApplicable,
        422,
        "error in remove for path: '/a/x': Unable to remove nonexistent key: x: missing value",
    ),
    (
        "replace a missing key",
        {"a": {}},
        [{"op": "replace", "path": "/a/x", "value": 1}],
        PatchNotApplicable,
        422,
        "replace operation does not apply: doc is missing key: /a/x: missing value",
    ),
    (
        "add past the end of a list",
        {"a": [1]},
        [{"op": "add", "path": "/a/5", "value": 2}],
        PatchNotApplicable,
        422,
        "error in add for path: '/a/5': Unable to access invalid index: 5: invalid index "
        "referenced",
    ),
    (
        "move from a missing path",
        {"a": {}},
        [{"op": "move", "from": "/a/x", "path": "/b"}],
        PatchNotApplicable,
        422,
        "move operation does not apply: doc is missing from path: /a/x: missing value",
    ),
    (
        "move into its own child",
        {"a": {"b": {}}},
        [{"op": "move", "from": "/a", "path": "/a/b/c"}],
        PatchNotApplicable,
        422,
        "move operation does not apply: from /a is a prefix of path /a/b/c",
    ),
    (
        "unknown operation",
        {},
        [{"op": "frobnicate", "path": "/a"}],
        PatchNotApplicable,
        422,
        "Unexpected kind: frobnicate",
    ),
    (
        "an object instead of a list",
        {},
        {"op": "add"},
        InvalidPatch,
        400,
        "json: cannot unmarshal object into Go value of type jsonpatch.Patch",
    ),
    (
        "a non-pointer path",
        {"a": 1},
        [{"op": "remove", "path": "a"}],
        PatchNotApplicable,
        422,
        'remove operation does not apply: doc is missing path: "a": missing value',
    ),
]


class JSONPatchTests(SynchronousTestCase):
    def test_rfc6902_examples(self) -> None:
        """Every RFC 6902 appendix example that succeeds gives the RFC's result."""
        for name, document, patch, expected in RFC6902_EXAMPLES:
            before = copy.deepcopy((document, patch))
            self.assertEqual(apply_json_patch(document, patch), expected, name)
            self.assertEqual((document, patch), before, f"{name}: input mutated")

    def test_failures(self) -> None:
        """Failing patches raise the typed error with kube-apiserver's code and message."""
        for name, document, patch, error, code, message in RFC6902_FAILURES:
            before = copy.deepcopy(document)
            failure = self.assertRaises(error, apply_json_patch, document, patch)
            self.assertEqual((failure.code, failure.message), (code, message), name)
            self.assertEqual(document, before, f"{name}: input mutated")

    def test_too_many_operations(self) -> None:
        """More operations than kube-apiserver allows is 413 RequestEntityTooLarge."""
        patch = [{"op": "test", "path": "", "value": {}}] * (MAX_JSON_PATCH_OPERATIONS + 1)
        failure = self.assertRaises(PatchTooLarge, apply_json_patch, {}, patch)
        self.assertEqual((failure.code, failure.reason), (413, "RequestEntityTooLarge"))
        self.assertEqual(apply_json_patch({}, patch[1:]), {})

    def test_result_shares_nothing_with_the_operations(self) -> None:
        """A value added by the patch is a copy: changing the result leaves the patch alone."""
        value: dict[str, Any] = {"k": [1]}
        result = apply_json_patch({}, [{"op": "add", "path": "/v", "value": value}])
        assert isinstance(result, dict)
        result["v"]["k"].append(2)
        self.assertEqual(value, {"k": [1]})


# -- RFC 7386 -----------------------------------------------------------------------------------

#: RFC 7386 appendix A: (document, patch, expected).
RFC7386_EXAMPLES: list[tuple[Any, Any, Any]] = [
    ({"a": "b"}, {"a": "c"}, {"a": "c"}),
    ({"a": "b"}, {"b": "c"}, {"a": "b", "b": "c"}),
    ({"a": "b"}, {"a": None}, {}),
    ({"a": "b", "b": "c"}, {"a": None}, {"b": "c"}),
    ({"a": ["b"]}, {"a": "c"}, {"a": "c"}),
    ({"a": "c"}, {"a": ["b"]}, {"a": ["b"]}),
    ({"a": {"b": "c"}}, {"a": {"b": "d", "c": None}}, {"a": {"b": "d"}}),
    ({"a": [{"b": "c"}]}, {"a": [1]}, {"a": [1]}),
    (["a", "b"], ["c", "d"], ["c", "d"]),
    ({"a": "b"}, ["c"], ["c"]),
    ({"a": "foo"}, None, None),
    ({"a": "foo"}, "bar", "bar"),
    ({"e": None}, {"a": 1}, {"e": None, "a": 1}),
    ([1, 2], {"a": "b", "c": None}, {"a": "b"}),
    ({}, {"a": {"bb": {"ccc": None}}}, {"a": {"bb": {}}}),
]


class MergePatchTests(SynchronousTestCase):
    def test_rfc7386_examples(self) -> None:
        """Every RFC 7386 appendix example gives the RFC's result, inputs untouched."""
        for document, patch, expected in RFC7386_EXAMPLES:
            before = copy.deepcopy((document, patch))
            self.assertEqual(apply_merge_patch(document, patch), expected, (document, patch))
            self.assertEqual((document, patch), before)

    def test_result_shares_nothing_with_the_document(self) -> None:
        """Untouched members are copies too."""
        document = {"keep": {"list": [1]}, "change": 1}
        result = apply_merge_patch(document, {"change": 2})
        assert isinstance(result, dict)
        result["keep"]["list"].append(2)
        self.assertEqual(document, {"keep": {"list": [1]}, "change": 1})


# -- strategic merge patch ----------------------------------------------------------------------

NGINX_POD: dict[str, Any] = {
    "apiVersion": "v1",
    "kind": "Pod",
    "metadata": {
        "name": "web",
        "namespace": "default",
        "annotations": {
            "kubectl.kubernetes.io/last-applied-configuration": '{"old":true}\n',
            "team": "a",
        },
        "finalizers": ["example.com/a", "example.com/b"],
    },
    "spec": {
        "containers": [
            {
                "name": "nginx",
                "image": "nginx:1.27",
                "ports": [{"containerPort": 80, "protocol": "TCP"}],
                "env": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}],
                "args": ["-a", "-b"],
            }
        ],
        "tolerations": [{"key": "k", "operator": "Exists"}],
        "volumes": [{"name": "data", "configMap": {"name": "cm"}}],
    },
    "status": {"phase": "Running"},
}

LAST_APPLIED = '{"apiVersion":"v1","kind":"Pod","spec":{"containers":[{"image":"nginx:1.28"}]}}\n'


def with_changes(base: dict[str, Any], *edits: tuple[tuple[Any, ...], Any]) -> dict[str, Any]:
    """A deep copy of ``base`` with each (path, value) set; value ``...`` deletes."""
    result = copy.deepcopy(base)
    for path, value in edits:
        node = result
        for step in path[:-1]:
            node = node[step]
        if value is ...:
            del node[path[-1]]
        else:
            node[path[-1]] = value
    return result


DEPLOYMENT: dict[str, Any] = {
    "apiVersion": "apps/v1",
    "kind": "Deployment",
    "metadata": {"name": "web", "namespace": "default", "labels": {"app": "web"}},
    "spec": {
        "replicas": 2,
        "selector": {"matchLabels": {"app": "web"}},
        "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1}},
        "template": {
            "metadata": {"labels": {"app": "web"}},
            "spec": {
                "containers": [
                    {"name": "nginx", "image": "nginx:1.27", "ports": [{"containerPort": 80}]},
                    {"name": "sidecar", "image": "busybox", "args": ["sleep", "1d"]},
                ]
            },
        },
    },
}

SERVICE: dict[str, Any] = {
    "apiVersion": "v1",
    "kind": "Service",
    "metadata": {"name": "web"},
    "spec": {
        "selector": {"app": "web"},
        "ports": [
            {"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"},
            {"name": "metrics", "port": 9090, "protocol": "TCP"},
        ],
    },
}

NODE: dict[str, Any] = {
    "apiVersion": "v1",
    "kind": "Node",
    "metadata": {"name": "n1"},
    "spec": {"taints": [{"key": "a", "effect": "NoSchedule"}]},
    "status": {
        "conditions": [
            {"type": "Ready", "status": "False", "reason": "Starting"},
            {"type": "MemoryPressure", "status": "False"},
        ],
        "addresses": [
            {"type": "InternalIP", "address": "192.0.2.1"},
            {"type": "Hostname", "address": "n1"},
        ],
    },
}

#: (name, kind, document, patch, expected).
STRATEGIC_CASES: list[tuple[str, str, Any, Any, Any]] = [
    (
        "kubectl client-side apply of an image change keeps ports and every other field",
        "Pod",
        NGINX_POD,
        {
            "metadata": {
                "annotations": {"kubectl.kubernetes.io/last-applied-configuration": LAST_APPLIED}
            },
            "spec": {
                "$setElementOrder/containers": [{"name": "nginx"}],
                "containers": [{"image": "nginx:1.28", "name": "nginx"}],
            },
        },
        with_changes(
            NGINX_POD,
            (
                ("metadata", "annotations", "kubectl.kubernetes.io/last-applied-configuration"),
                LAST_APPLIED,
            ),
            (("spec", "containers", 0, "image"), "nginx:1.28"),
        ),
    ),
    (
        "env merges by name; $patch: delete removes one variable",
        "Pod",
        NGINX_POD,
        {
            "spec": {
                "containers": [
                    {
                        "name": "nginx",
                        "env": [{"name": "A", "$patch": "delete"}, {"name": "C", "value": "3"}],
                    }
                ]
            }
        },
        with_changes(
            NGINX_POD,
            (
                ("spec", "containers", 0, "env"),
                [{"name": "C", "value": "3"}, {"name": "B", "value": "2"}],
            ),
        ),
    ),
    (
        "container ports merge by containerPort; a new item goes first, as kube orders it",
        "Pod",
        NGINX_POD,
        {"spec": {"containers": [{"name": "nginx", "ports": [{"containerPort": 443}]}]}},
        with_changes(
            NGINX_POD,
            (
                ("spec", "containers", 0, "ports"),
                [{"containerPort": 443}, {"containerPort": 80, "protocol": "TCP"}],
            ),
        ),
    ),
    (
        "lists without a merge key (args, tolerations) are replaced whole",
        "Pod",
        NGINX_POD,
        {
            "spec": {
                "containers": [{"name": "nginx", "args": ["-c"]}],
                "tolerations": [{"key": "other", "operator": "Exists"}],
            }
        },
        with_changes(
            NGINX_POD,
            (("spec", "containers", 0, "args"), ["-c"]),
            (("spec", "tolerations"), [{"key": "other", "operator": "Exists"}]),
        ),
    ),
    (
        "null deletes a key; a null for an absent key changes nothing",
        "Pod",
        NGINX_POD,
        {"metadata": {"annotations": {"team": None, "absent": None}}, "status": None},
        with_changes(NGINX_POD, (("metadata", "annotations", "team"), ...), (("status",), ...)),
    ),
    (
        "finalizers merge as a set, patch order after the live order",
        "Pod",
        NGINX_POD,
        {"metadata": {"finalizers": ["example.com/b", "example.com/c"]}},
        with_changes(
            NGINX_POD,
            (("metadata", "finalizers"), ["example.com/a", "example.com/b", "example.com/c"]),
        ),
    ),
    (
        "$deleteFromPrimitiveList removes finalizers",
        "Pod",
        NGINX_POD,
        {"metadata": {"$deleteFromPrimitiveList/finalizers": ["example.com/a", "example.com/x"]}},
        with_changes(NGINX_POD, (("metadata", "finalizers"), ["example.com/b"])),
    ),
    (
        "$retainKeys clears the volume source that is no longer named",
        "Pod",
        NGINX_POD,
        {
            "spec": {
                "volumes": [
                    {
                        "$retainKeys": ["name", "secret"],
                        "name": "data",
                        "secret": {"secretName": "s"},
                    }
                ]
            }
        },
        with_changes(
            NGINX_POD, (("spec", "volumes"), [{"name": "data", "secret": {"secretName": "s"}}])
        ),
    ),
    (
        "a new list item loses its nulls and directives",
        "Pod",
        NGINX_POD,
        {
            "spec": {
                "containers": [
                    {
                        "name": "extra",
                        "image": "busybox",
                        "command": None,
                        "$setElementOrder/env": [],
                    }
                ]
            }
        },
        with_changes(
            NGINX_POD,
            (
                ("spec", "containers"),
                [{"name": "extra", "image": "busybox"}, *NGINX_POD["spec"]["containers"]],
            ),
        ),
    ),
    (
        "$patch: replace in a list keeps only the patch's items",
        "Pod",
        NGINX_POD,
        {"spec": {"containers": [{"$patch": "replace"}, {"name": "only", "image": "x"}]}},
        with_changes(NGINX_POD, (("spec", "containers"), [{"name": "only", "image": "x"}])),
    ),
    (
        "$patch: replace in a map replaces it",
        "Pod",
        NGINX_POD,
        {"metadata": {"annotations": {"$patch": "replace", "only": "this"}}},
        with_changes(NGINX_POD, (("metadata", "annotations"), {"only": "this"})),
    ),
    (
        "$patch: delete in a map empties it",
        "Deployment",
        DEPLOYMENT,
        {"spec": {"strategy": {"$patch": "delete"}}},
        with_changes(DEPLOYMENT, (("spec", "strategy"), {})),
    ),
    (
        "$patch: delete of a map the object lacks adds nothing",
        "Deployment",
        DEPLOYMENT,
        {"spec": {"minReadySeconds": {"$patch": "delete"}}},
        DEPLOYMENT,
    ),
    (
        "$setElementOrder alone reorders a keyed list",
        "Deployment",
        DEPLOYMENT,
        {
            "spec": {
                "template": {
                    "spec": {
                        "$setElementOrder/containers": [{"name": "sidecar"}, {"name": "nginx"}]
                    }
                }
            }
        },
        with_changes(
            DEPLOYMENT,
            (
                ("spec", "template", "spec", "containers"),
                DEPLOYMENT["spec"]["template"]["spec"]["containers"][::-1],
            ),
        ),
    ),
    (
        "Deployment template containers merge by name",
        "Deployment",
        DEPLOYMENT,
        {
            "spec": {
                "template": {
                    "spec": {
                        "$setElementOrder/containers": [{"name": "nginx"}, {"name": "sidecar"}],
                        "containers": [{"name": "nginx", "image": "nginx:1.28"}],
                    }
                }
            }
        },
        with_changes(
            DEPLOYMENT, (("spec", "template", "spec", "containers", 0, "image"), "nginx:1.28")
        ),
    ),
    (
        "Deployment strategy: $retainKeys drops rollingUpdate when switching to Recreate",
        "Deployment",
        DEPLOYMENT,
        {
            "spec": {
                "strategy": {"$retainKeys": ["type"], "type": "Recreate", "rollingUpdate": None}
            }
        },
        with_changes(DEPLOYMENT, (("spec", "strategy"), {"type": "Recreate"})),
    ),
    (
        "Service ports merge by port",
        "Service",
        SERVICE,
        {"spec": {"ports": [{"port": 80, "targetPort": 8081}, {"name": "https", "port": 443}]}},
        with_changes(
            SERVICE,
            (
                ("spec", "ports"),
                [
                    {"name": "http", "port": 80, "targetPort": 8081, "protocol": "TCP"},
                    {"name": "https", "port": 443},
                    {"name": "metrics", "port": 9090, "protocol": "TCP"},
                ],
            ),
        ),
    ),
    (
        "strategic merge patch merges the Service selector map (atomic only for apply)",
        "Service",
        SERVICE,
        {"spec": {"selector": {"tier": "front"}}},
        with_changes(SERVICE, (("spec", "selector"), {"app": "web", "tier": "front"})),
    ),
    (
        "node conditions and addresses merge by type; taints are replaced",
        "Node",
        NODE,
        {
            "spec": {"taints": []},
            "status": {
                "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady"}],
                "addresses": [{"type": "ExternalIP", "address": "1.2.3.4"}],
            },
        },
        with_changes(
            NODE,
            (("spec", "taints"), []),
            (
                ("status", "conditions", 0),
                {"type": "Ready", "status": "True", "reason": "KubeletReady"},
            ),
            (
                ("status", "addresses"),
                [{"type": "ExternalIP", "address": "1.2.3.4"}, *NODE["status"]["addresses"]],
            ),
        ),
    ),
    (
        "kubectl removing a container: $patch: delete under $setElementOrder",
        "Deployment",
        DEPLOYMENT,
        {
            "spec": {
                "template": {
                    "spec": {
                        "$setElementOrder/containers": [{"name": "nginx"}],
                        "containers": [{"$patch": "delete", "name": "sidecar"}],
                    }
                }
            }
        },
        with_changes(
            DEPLOYMENT,
            (
                ("spec", "template", "spec", "containers"),
                DEPLOYMENT["spec"]["template"]["spec"]["containers"][:1],
            ),
        ),
    ),
    (
        "kubectl inserting a container: $setElementOrder places it between the others",
        "Deployment",
        DEPLOYMENT,
        {
            "spec": {
                "template": {
                    "spec": {
                        "$setElementOrder/containers": [
                            {"name": "nginx"},
                            {"name": "new"},
                            {"name": "sidecar"},
                        ],
                        "containers": [{"name": "new", "image": "x"}],
                    }
                }
            }
        },
        with_changes(
            DEPLOYMENT,
            (
                ("spec", "template", "spec", "containers"),
                [
                    DEPLOYMENT["spec"]["template"]["spec"]["containers"][0],
                    {"name": "new", "image": "x"},
                    DEPLOYMENT["spec"]["template"]["spec"]["containers"][1],
                ],
            ),
        ),
    ),
    (
        "kubectl dropping a finalizer: $deleteFromPrimitiveList with $setElementOrder",
        "Pod",
        NGINX_POD,
        {
            "metadata": {
                "$setElementOrder/finalizers": ["example.com/b"],
                "$deleteFromPrimitiveList/finalizers": ["example.com/a"],
            }
        },
        with_changes(NGINX_POD, (("metadata", "finalizers"), ["example.com/b"])),
    ),
    (
        "ownerReferences merge by uid",
        "ConfigMap",
        {"metadata": {"ownerReferences": [{"uid": "1", "name": "a"}]}},
        {
            "metadata": {
                "ownerReferences": [{"uid": "2", "name": "b"}, {"uid": "1", "controller": True}]
            }
        },
        {
            "metadata": {
                "ownerReferences": [
                    {"uid": "2", "name": "b"},
                    {"uid": "1", "name": "a", "controller": True},
                ]
            }
        },
    ),
    (
        "a value of another type replaces the old one",
        "ConfigMap",
        {"data": {"a": "1"}},
        {"data": ["x"]},
        {"data": ["x"]},
    ),
]


class StrategicMergePatchTests(SynchronousTestCase):
    def test_cases(self) -> None:
        """Each case gives kube-apiserver's result and leaves its inputs untouched."""
        for name, kind, document, patch, expected in STRATEGIC_CASES:
            before = copy.deepcopy((document, patch))
            result = apply_strategic_merge_patch(document, patch, FIELD_RULES[kind])
            self.assertEqual(result, expected, name)
            self.assertEqual((document, patch), before, f"{name}: input mutated")

    def test_kubectl_apply_keeps_container_field_order(self) -> None:
        """The merged container keeps its live position and its other members."""
        result = apply_strategic_merge_patch(
            NGINX_POD,
            {"spec": {"containers": [{"image": "nginx:1.28", "name": "nginx"}]}},
            FIELD_RULES["Pod"],
        )
        self.assertEqual(
            result["spec"]["containers"][0],
            {**NGINX_POD["spec"]["containers"][0], "image": "nginx:1.28"},
        )

    def test_result_shares_nothing_with_inputs(self) -> None:
        """Changing the result changes neither the document nor the patch."""
        patch = {"spec": {"containers": [{"name": "new", "env": [{"name": "X"}]}]}}
        snapshot = copy.deepcopy((NGINX_POD, patch))
        result = apply_strategic_merge_patch(NGINX_POD, patch, FIELD_RULES["Pod"])
        for container in result["spec"]["containers"]:
            container.setdefault("env", []).append({"name": "Y"})
        self.assertEqual((NGINX_POD, patch), snapshot)

    def test_custom_resources_are_refused_with_415(self) -> None:
        """Strategic merge on a custom resource is answered as kube-apiserver answers it."""
        failure = UnsupportedPatchType()
        self.assertEqual((failure.code, failure.reason), (415, "UnsupportedMediaType"))
        self.assertEqual(
            failure.message,
            "the body of the request was in an unknown format - accepted media types include: "
            "application/json-patch+json, application/merge-patch+json, "
            "application/apply-patch+yaml",
        )

    def test_custom_resources_never_get_a_builtin_table(self) -> None:
        """A custom resource named like a built-in kind gets no strategic merge and atomic lists."""
        [custom_pod] = resources_of_crd(
            {
                "metadata": {"name": "pods.example.com"},
                "spec": {
                    "group": "example.com",
                    "names": {"kind": "Pod", "plural": "pods"},
                    "versions": [{"name": "v1"}],
                },
            }
        )
        self.assertFalse(custom_pod.strategy.strategic_merge)
        self.assertIs(custom_pod.strategy.merge_rules, METADATA_ONLY_RULES)
        self.assertIn("spec.containers", FIELD_RULES["Pod"])

    def test_rule_table_can_be_extended(self) -> None:
        """A caller's own table gives merge keys the built-in tables do not."""
        rules = {"spec.items": FieldRule(strategy="merge", merge_key="id")}
        result = apply_strategic_merge_patch(
            {"spec": {"items": [{"id": 1, "a": 1}]}},
            {"spec": {"items": [{"id": 2}]}},
            rules,
        )
        self.assertEqual(result, {"spec": {"items": [{"id": 2}, {"id": 1, "a": 1}]}})
        self.assertNotIn("CronTab", FIELD_RULES)

    def test_errors(self) -> None:
        """Malformed patches raise the error kube-apiserver answers with."""
        cases: list[tuple[str, Any, type[PatchError], int, str]] = [
            (
                "not an object",
                [],
                InvalidPatch,
                400,
                "json: cannot unmarshal array into Go value of type map[string]interface {}",
            ),
            (
                "a list item without its merge key",
                {"spec": {"containers": [{"image": "x"}]}},
                StrategicMergeError,
                500,
                "Internal error occurred: map: map[image:x] does not contain declared merge "
                "key: name",
            ),
            (
                "$patch: merge in a list",
                {"spec": {"containers": [{"$patch": "merge", "name": "nginx"}]}},
                StrategicMergeError,
                500,
                "Internal error occurred: merging lists cannot yet be specified in the patch",
            ),
            (
                "an unknown $patch in a map",
                {"spec": {"$patch": "explode"}},
                StrategicMergeError,
                500,
                "Internal error occurred: unknown patch type: explode in map: map[$patch:explode]",
            ),
            (
                "$retainKeys that leaves out a patched key",
                {"spec": {"$retainKeys": ["volumes"], "hostname": "h"}},
                InvalidPatch,
                400,
                "invalid patch format of retainKeys",
            ),
            (
                "$retainKeys that is not a list",
                {"spec": {"$retainKeys": "volumes"}},
                InvalidPatch,
                400,
                "invalid patch format of retainKeys",
            ),
            (
                "$deleteFromPrimitiveList without a list name",
                {"metadata": {"$deleteFromPrimitiveList": ["a"]}},
                InvalidPatch,
                400,
                "invalid patch format of primitive list",
            ),
            (
                "a list of lists",
                {"metadata": {"finalizers": [["a"]]}},
                PatchNotApplicable,
                422,
                "lists of lists are not supported",
            ),
            (
                "$setElementOrder that disagrees with the patch list",
                {
                    "spec": {
                        "$setElementOrder/containers": [{"name": "a"}],
                        "containers": [{"name": "b", "image": "x"}],
                    }
                },
                StrategicMergeError,
                500,
                "Internal error occurred: The order in patch list:\n[map[image:x name:b]]\n"
                " doesn't match $setElementOrder list:\n[map[name:a]]\n",
            ),
        ]
        for name, patch, error, code, message in cases:
            failure = self.assertRaises(
                error, apply_strategic_merge_patch, NGINX_POD, patch, FIELD_RULES["Pod"]
            )
            self.assertEqual((failure.code, failure.message), (code, message), name)

    def test_rule_table_facts(self) -> None:
        """Spot checks of the Go tags the table transcribes."""
        pod = FIELD_RULES["Pod"]
        self.assertEqual(pod["spec.containers.ports"].merge_key, "containerPort")
        self.assertEqual(pod["spec.containers.ports"].map_keys, ("containerPort", "protocol"))
        self.assertEqual(pod["spec.volumes"].strategies, {"merge", "retainKeys"})
        self.assertEqual(pod["spec.topologySpreadConstraints"].merge_key, "topologyKey")
        self.assertNotIn("spec.tolerations", pod)
        self.assertNotIn("spec.containers.envFrom", pod)
        self.assertNotIn("status.containerStatuses", pod)
        deployment = FIELD_RULES["Deployment"]
        self.assertEqual(deployment["spec.template.spec.containers.env"].merge_key, "name")
        self.assertEqual(deployment["spec.strategy"].strategies, {"retainKeys"})
        self.assertEqual(FIELD_RULES["Service"]["spec.ports"].merge_key, "port")
        self.assertNotIn("subsets", FIELD_RULES["Endpoints"])


# -- server-side apply --------------------------------------------------------------------------

T1, T2, T3, T4 = (f"2025-01-0{day}T00:00:00Z" for day in range(1, 5))

DEPLOYMENT_RULES = FIELD_RULES["Deployment"]


def apply_deployment(
    live: dict[str, Any] | None, applied: Any, manager: str, force: bool, *, now: str
) -> dict[str, Any]:
    """Server-side apply under the Deployment's merge rules."""
    return apply_server_side(live, applied, manager, force, now=now, rules=DEPLOYMENT_RULES)


APPLIED_DEPLOYMENT: dict[str, Any] = {
    "apiVersion": "apps/v1",
    "kind": "Deployment",
    "metadata": {"name": "web", "namespace": "default", "labels": {"app": "web"}},
    "spec": {
        "replicas": 1,
        "selector": {"matchLabels": {"app": "web"}},
        "template": {
            "metadata": {"labels": {"app": "web"}},
            "spec": {
                "containers": [
                    {"name": "nginx", "image": "nginx:1.27", "ports": [{"containerPort": 80}]}
                ]
            },
        },
    },
}

KUBECTL_FIELDS = {
    "f:metadata": {"f:labels": {"f:app": {}}},
    "f:spec": {
        "f:replicas": {},
        "f:selector": {},
        "f:template": {
            "f:metadata": {"f:labels": {"f:app": {}}},
            "f:spec": {
                "f:containers": {
                    'k:{"name":"nginx"}': {
                        ".": {},
                        "f:image": {},
                        "f:name": {},
                        "f:ports": {
                            'k:{"containerPort":80,"protocol":"TCP"}': {
                                ".": {},
                                "f:containerPort": {},
                            }
                        },
                    }
                }
            },
        },
    },
}


def managers(obj: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    """managedFields by (manager, operation)."""
    return {(m["manager"], m["operation"]): m for m in obj["metadata"].get("managedFields", [])}


def without_managed_fields(obj: dict[str, Any]) -> dict[str, Any]:
    result = copy.deepcopy(obj)
    result["metadata"].pop("managedFields", None)
    return result


class ServerSideApplyTests(SynchronousTestCase):
    def created(self) -> dict[str, Any]:
        return apply_deployment(None, APPLIED_DEPLOYMENT, "kubectl", False, now=T1)

    def edited(self) -> dict[str, Any]:
        """The created Deployment after ``kubectl edit`` set replicas 3 and a label."""
        live = self.created()
        new = copy.deepcopy(live)
        new["spec"]["replicas"] = 3
        new["metadata"]["labels"]["edited"] = "yes"
        return record_update(live, new, "kubectl-edit", now=T2, rules=DEPLOYMENT_RULES)

    def test_create(self) -> None:
        """Applying to nothing creates the object, owned by the applier as kube records it."""
        created = self.created()
        self.assertEqual(without_managed_fields(created), APPLIED_DEPLOYMENT)
        self.assertEqual(
            created["metadata"]["managedFields"],
            [
                {
                    "manager": "kubectl",
                    "operation": "Apply",
                    "apiVersion": "apps/v1",
                    "time": T1,
                    "fieldsType": "FieldsV1",
                    "fieldsV1": KUBECTL_FIELDS,
                }
            ],
        )

    def test_update_keeps_fields_the_manifest_does_not_name(self) -> None:
        """A changed image is applied; fields others set (status, a label) stay."""
        live = self.created()
        other = copy.deepcopy(live)
        other["status"] = {"replicas": 1}
        other["metadata"]["labels"]["team"] = "a"
        live = record_update(live, other, "controller", now=T2, rules=DEPLOYMENT_RULES)
        applied = with_changes(
            APPLIED_DEPLOYMENT,
            (("spec", "template", "spec", "containers", 0, "image"), "nginx:1.28"),
        )
        result = apply_deployment(live, applied, "kubectl", False, now=T3)
        self.assertEqual(
            result["spec"]["template"]["spec"]["containers"],
            [{"name": "nginx", "image": "nginx:1.28", "ports": [{"containerPort": 80}]}],
        )
        self.assertEqual(result["status"], {"replicas": 1})
        self.assertEqual(result["metadata"]["labels"], {"app": "web", "team": "a"})
        self.assertEqual(set(managers(result)), {("kubectl", "Apply"), ("controller", "Update")})

    def test_fields_dropped_from_the_manifest_are_removed(self) -> None:
        """A field this manager applied before and no longer applies goes, unless shared."""
        live = self.created()
        applied = with_changes(APPLIED_DEPLOYMENT, (("spec", "replicas"), ...))
        applied["metadata"]["labels"] = {"app": "web"}
        result = apply_deployment(live, applied, "kubectl", False, now=T2)
        self.assertNotIn("replicas", result["spec"])
        self.assertNotIn("f:replicas", managers(result)["kubectl", "Apply"]["fieldsV1"]["f:spec"])

    def test_a_shared_field_survives_its_removal_from_one_manifest(self) -> None:
        """Two appliers set the same value; one drops it; the other still owns it."""
        live = self.created()
        live = apply_deployment(
            live,
            {"apiVersion": "apps/v1", "kind": "Deployment", "spec": {"replicas": 1}},
            "other",
            False,
            now=T2,
        )
        applied = with_changes(APPLIED_DEPLOYMENT, (("spec", "replicas"), ...))
        result = apply_deployment(live, applied, "kubectl", False, now=T3)
        self.assertEqual(result["spec"]["replicas"], 1)

    def test_reapply_after_an_edit_loses_nothing(self) -> None:
        """Re-applying the manifest keeps what ``kubectl edit`` added that it does not name."""
        live = self.edited()
        applied = with_changes(APPLIED_DEPLOYMENT, (("spec", "replicas"), 3))
        result = apply_deployment(live, applied, "kubectl", False, now=T3)
        self.assertEqual(result["metadata"]["labels"], {"app": "web", "edited": "yes"})
        self.assertEqual(result["spec"]["replicas"], 3)
        self.assertEqual(set(managers(result)), {("kubectl", "Apply"), ("kubectl-edit", "Update")})
        edit = managers(result)["kubectl-edit", "Update"]["fieldsV1"]
        self.assertEqual(
            edit, {"f:metadata": {"f:labels": {"f:edited": {}}}, "f:spec": {"f:replicas": {}}}
        )

    def test_conflict(self) -> None:
        """Changing a field another manager owns is 409 with FieldManagerConflict causes."""
        live = self.edited()
        failure = self.assertRaises(
            ApplyConflict, apply_deployment, live, APPLIED_DEPLOYMENT, "kubectl", False, now=T3
        )
        manager = f'"kubectl-edit" using apps/v1 at {T2}'
        self.assertEqual((failure.code, failure.reason), (409, "Conflict"))
        self.assertEqual(failure.conflicts, [FieldConflict(manager, ".spec.replicas")])
        self.assertEqual(
            failure.message,
            f"Apply failed with 1 conflict: conflict with {manager}: .spec.replicas",
        )
        self.assertEqual(
            failure.details,
            {
                "causes": [
                    {
                        "type": "FieldManagerConflict",
                        "message": f"conflict with {manager}",
                        "field": ".spec.replicas",
                    }
                ]
            },
        )

    def test_several_conflicts_are_listed_by_manager(self) -> None:
        """Two conflicting fields give kube-apiserver's multi-line message."""
        live = self.edited()
        applied = with_changes(APPLIED_DEPLOYMENT, (("metadata", "labels", "edited"), "no"))
        failure = self.assertRaises(
            ApplyConflict, apply_deployment, live, applied, "kubectl", False, now=T3
        )
        manager = f'"kubectl-edit" using apps/v1 at {T2}'
        self.assertEqual(
            failure.message,
            f"Apply failed with 2 conflicts: conflicts with {manager}:\n"
            "- .metadata.labels.edited\n- .spec.replicas",
        )

    def test_force_takes_the_field(self) -> None:
        """With force the applier wins and the other manager loses the field."""
        live = self.edited()
        result = apply_deployment(live, APPLIED_DEPLOYMENT, "kubectl", True, now=T3)
        self.assertEqual(result["spec"]["replicas"], 1)
        self.assertEqual(
            managers(result)["kubectl-edit", "Update"]["fieldsV1"],
            {"f:metadata": {"f:labels": {"f:edited": {}}}},
        )

    def test_keyed_list_items_of_other_managers_stay(self) -> None:
        """A container another manager added survives an apply that does not name it."""
        live = self.created()
        new = copy.deepcopy(live)
        new["spec"]["template"]["spec"]["containers"].append({"name": "debug", "image": "busybox"})
        live = record_update(live, new, "kubectl-patch", now=T2, rules=DEPLOYMENT_RULES)
        applied = with_changes(
            APPLIED_DEPLOYMENT,
            (("spec", "template", "spec", "containers", 0, "image"), "nginx:1.28"),
        )
        result = apply_deployment(live, applied, "kubectl", False, now=T3)
        self.assertEqual(
            [c["name"] for c in result["spec"]["template"]["spec"]["containers"]],
            ["nginx", "debug"],
        )

    def test_container_dropped_from_the_manifest_is_removed(self) -> None:
        """An item the applier alone owned goes when the manifest drops it."""
        applied = copy.deepcopy(APPLIED_DEPLOYMENT)
        containers = applied["spec"]["template"]["spec"]["containers"]
        containers.append({"name": "sidecar", "image": "busybox"})
        live = apply_deployment(None, applied, "kubectl", False, now=T1)
        result = apply_deployment(live, APPLIED_DEPLOYMENT, "kubectl", False, now=T2)
        self.assertEqual(
            [c["name"] for c in result["spec"]["template"]["spec"]["containers"]], ["nginx"]
        )

    def test_noop_reapply_changes_nothing(self) -> None:
        """Re-applying the same manifest returns the live object unchanged, time included."""
        live = self.created()
        self.assertEqual(apply_deployment(live, APPLIED_DEPLOYMENT, "kubectl", False, now=T2), live)

    def test_objects_without_managed_fields_belong_to_before_first_apply(self) -> None:
        """An untracked object's fields conflict under kube's ``before-first-apply`` name."""
        live = without_managed_fields(self.created())
        live["spec"]["replicas"] = 5
        failure = self.assertRaises(
            ApplyConflict, apply_deployment, live, APPLIED_DEPLOYMENT, "kubectl", False, now=T2
        )
        self.assertEqual(
            failure.conflicts,
            [FieldConflict(f'"before-first-apply" using apps/v1 at {T2}', ".spec.replicas")],
        )

    def test_inputs_are_not_mutated(self) -> None:
        """Neither the live object nor the configuration changes."""
        live = self.edited()
        snapshot = copy.deepcopy((live, APPLIED_DEPLOYMENT))
        apply_deployment(live, APPLIED_DEPLOYMENT, "kubectl", True, now=T3)
        self.assertEqual((live, APPLIED_DEPLOYMENT), snapshot)

    def test_invalid_configurations(self) -> None:
        """managedFields in the configuration is 400; a keyed item without its key is 422."""
        bad = with_changes(APPLIED_DEPLOYMENT, (("metadata", "managedFields"), [{"manager": "x"}]))
        failure = self.assertRaises(
            InvalidPatch, apply_deployment, None, bad, "kubectl", False, now=T1
        )
        self.assertEqual(failure.message, "metadata.managedFields must be nil")
        keyless = with_changes(
            APPLIED_DEPLOYMENT, (("spec", "template", "spec", "containers"), [{"image": "x"}])
        )
        failure = self.assertRaises(
            PatchNotApplicable, apply_deployment, None, keyless, "kubectl", False, now=T1
        )
        self.assertEqual(failure.code, 422)
        self.assertIn('omits key field "name"', failure.message)

    def test_record_update(self) -> None:
        """A create is tracked whole; an object without managedFields stays untracked."""
        created = record_update(
            None, copy.deepcopy(SERVICE), "kubectl-create", now=T1, rules=FIELD_RULES["Service"]
        )
        entry = created["metadata"]["managedFields"][0]
        self.assertEqual(
            (entry["manager"], entry["operation"], entry["time"]), ("kubectl-create", "Update", T1)
        )
        self.assertEqual(
            entry["fieldsV1"]["f:spec"]["f:ports"],
            {
                'k:{"port":80,"protocol":"TCP"}': {
                    ".": {},
                    "f:name": {},
                    "f:port": {},
                    "f:protocol": {},
                    "f:targetPort": {},
                },
                'k:{"port":9090,"protocol":"TCP"}': {
                    ".": {},
                    "f:name": {},
                    "f:port": {},
                    "f:protocol": {},
                },
            },
        )
        self.assertEqual(entry["fieldsV1"]["f:spec"]["f:selector"], {})
        untracked = record_update(
            SERVICE,
            with_changes(SERVICE, (("spec", "type"), "NodePort")),
            "x",
            now=T2,
            rules=FIELD_RULES["Service"],
        )
        self.assertNotIn("managedFields", untracked["metadata"])

    def test_custom_resource_lists_are_atomic(self) -> None:
        """Under metadata rules ``spec.containers`` is owned and replaced whole, not by name.

        An ``example.com/v1`` ``Pod`` is not a core Pod: without its schema's list types every
        list of a custom resource is atomic, while the Pod table merges containers by name.
        """
        first: dict[str, Any] = {
            "apiVersion": "example.com/v1",
            "kind": "Pod",
            "metadata": {"name": "p"},
            "spec": {"containers": [{"name": "a", "image": "x"}]},
        }
        second = with_changes(first, (("spec", "containers"), [{"name": "b", "image": "y"}]))

        custom = apply_server_side(None, first, "one", False, now=T1, rules=METADATA_ONLY_RULES)
        self.assertEqual(
            managers(custom)["one", "Apply"]["fieldsV1"]["f:spec"], {"f:containers": {}}
        )
        failure = self.assertRaises(
            ApplyConflict,
            apply_server_side,
            custom,
            second,
            "two",
            False,
            now=T2,
            rules=METADATA_ONLY_RULES,
        )
        self.assertEqual(failure.conflicts, [FieldConflict('"one"', ".spec.containers")])
        custom = apply_server_side(custom, second, "two", True, now=T2, rules=METADATA_ONLY_RULES)
        self.assertEqual(custom["spec"]["containers"], [{"name": "b", "image": "y"}])
        self.assertEqual(set(managers(custom)), {("two", "Apply")})

        pod_rules = FIELD_RULES["Pod"]
        core = [with_changes(config, (("apiVersion",), "v1")) for config in (first, second)]
        pod = apply_server_side(None, core[0], "one", False, now=T1, rules=pod_rules)
        pod = apply_server_side(pod, core[1], "two", False, now=T2, rules=pod_rules)
        self.assertEqual(
            pod["spec"]["containers"], [{"name": "a", "image": "x"}, {"name": "b", "image": "y"}]
        )
        self.assertEqual(
            managers(pod)["two", "Apply"]["fieldsV1"]["f:spec"],
            {"f:containers": {'k:{"name":"b"}': {".": {}, "f:image": {}, "f:name": {}}}},
        )


# -- properties ---------------------------------------------------------------------------------

_scalars = st.none() | st.booleans() | st.integers() | st.text(max_size=5)
_keys = st.text(alphabet="ab/~c", min_size=1, max_size=4)


def _documents(leaves: st.SearchStrategy[Any]) -> st.SearchStrategy[dict[str, Any]]:
    values = st.recursive(
        leaves,
        lambda children: (
            st.lists(children, max_size=3) | st.dictionaries(_keys, children, max_size=3)
        ),
        max_leaves=10,
    )
    return st.dictionaries(_keys, values, max_size=4)


def _pointer(key: str) -> str:
    return "/" + key.replace("~", "~0").replace("/", "~1")


class PropertyTests(SynchronousTestCase):
    @given(_documents(st.booleans() | st.integers() | st.text(max_size=5)))
    @settings(max_examples=200)
    def test_merge_patch_with_itself_is_identity(self, document: dict[str, Any]) -> None:
        """A null-free document merge-patched with itself is unchanged."""
        self.assertEqual(apply_merge_patch(document, document), document)

    @given(_documents(st.booleans() | st.integers() | st.text(max_size=5)))
    @settings(max_examples=200)
    def test_strategic_patch_with_itself_is_identity(self, document: dict[str, Any]) -> None:
        """A null-free, directive-free document strategic-patched with itself is unchanged."""
        self.assertEqual(
            apply_strategic_merge_patch(document, document, FIELD_RULES["ConfigMap"]), document
        )

    @given(_documents(_scalars), _keys, _documents(_scalars))
    @settings(max_examples=200)
    def test_add_then_remove_round_trips(
        self, document: dict[str, Any], key: str, value: dict[str, Any]
    ) -> None:
        """Adding a new member and removing it again gives back the document."""
        if key in document:
            return
        pointer = _pointer(key)
        added = apply_json_patch(document, [{"op": "add", "path": pointer, "value": value}])
        assert isinstance(added, dict)
        self.assertEqual(added[key], value)
        self.assertEqual(apply_json_patch(added, [{"op": "remove", "path": pointer}]), document)

    @given(_documents(_scalars))
    @settings(max_examples=200)
    def test_every_member_tests_equal_to_itself(self, document: dict[str, Any]) -> None:
        """``test`` succeeds for every top-level member with its own value and fails otherwise."""
        for key, value in document.items():
            operation = {"op": "test", "path": _pointer(key), "value": value}
            self.assertEqual(apply_json_patch(document, [operation]), document)
            wrong = {"op": "test", "path": _pointer(key), "value": [value]}
            self.assertRaises(PatchTestFailed, apply_json_patch, document, [wrong])

    @given(_documents(_scalars))
    @settings(max_examples=100)
    def test_apply_creates_what_it_applies(self, spec: dict[str, Any]) -> None:
        """Creating by apply stores the configuration (nulls dropped) and owns every leaf."""
        applied: dict[str, JSONValue] = {"apiVersion": "v1", "kind": "ConfigMap", "data": spec}
        created = apply_server_side(
            None, applied, "m", False, now=T1, rules=FIELD_RULES["ConfigMap"]
        )
        self.assertTrue(json_equal(without_managed_fields(created)["data"], _drop_nulls(spec)))
        again = apply_server_side(
            created, applied, "m", False, now=T2, rules=FIELD_RULES["ConfigMap"]
        )
        self.assertEqual(again, created)
        self.assertEqual(json.loads(json.dumps(created)), created)


def _drop_nulls(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _drop_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_drop_nulls(v) for v in value]
    return value


class OwnedFieldsTests(SynchronousTestCase):
    """A create's one-walk fieldsV1 is the document the general comparison makes."""

    def assert_same_document(self, obj: dict[str, Any], rules: Any) -> None:
        owned = strip_unowned(obj)
        self.assertEqual(
            owned_fields(owned, rules), encode_fields(field_values(owned, rules).keys())
        )

    def test_every_kind_as_given_and_defaulted(self) -> None:
        from tests.test_every_kind import sample, stored_kinds

        for resource in stored_kinds():
            given = sample(resource, "x")
            defaulted = copy_json(given)
            resource.strategy.default(defaulted)
            for obj in (given, defaulted):
                self.assert_same_document(obj, resource.strategy.merge_rules)

    def test_keyed_items_without_keys_and_empty_lists(self) -> None:
        rules = built_in_registry().require("", "v1", "pods").strategy.merge_rules
        specs: list[dict[str, Any]] = [
            {"containers": [{"name": "a", "image": "x"}, {"image": "no-name"}]},
            {"containers": [], "volumes": []},
            {"containers": [{"name": "a", "ports": [{"containerPort": 80}]}], "nodeSelector": {}},
        ]
        for spec in specs:
            self.assert_same_document({"metadata": {"name": "p"}, "spec": spec}, rules)
