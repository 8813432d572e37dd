"""
Protobuf request bodies: the generic reader and its table, on bytes kubectl 1.32 sent and
on bodies a small encoder builds from the same table (as gogo writes them: every non-pointer
field, zero or not).
"""

from __future__ import annotations

import base64
import contextlib
import json
import struct
from datetime import datetime
from pathlib import Path
from typing import Any

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from k3stw.apiserver import protobuf
from k3stw.apiserver.protobuf import MAGIC, UnsupportedProtobuf, decode_body
from k3stw.machinery.times import go_duration

CATALOGUE = Path(protobuf.__file__).parent / "catalogue" / "resources.json"

# Request bodies kubectl 1.32.4 sent, from its -v=9 log:
#   kubectl create token sa1 --audience=api --audience=vault --duration=1h
#       --bound-object-kind=Pod --bound-object-name=web-0 --bound-object-uid=0a1b
KUBECTL_TOKEN = (
    "6b3873000a280a1861757468656e7469636174696f6e2e6b38732e696f2f7631120c546f6b656e5265717565"
    "737412410a100a0012001a0022002a0032003800420012270a036170690a057661756c741a160a03506f6412"
    "0276311a057765622d3022043061316220901c1a040a0012001a002200"
)
#   kubectl create deployment tiny --image=nginx:1.27 --replicas=0
KUBECTL_DEPLOYMENT = (
    "6b3873000a150a07617070732f7631120a4465706c6f796d656e7412b5010a210a0474696e7912001a002200"
    "2a003200380042005a0b0a03617070120474696e791281010800120d0a0b0a03617070120474696e791a660a"
    "1d0a0012001a0022002a003200380042005a0b0a03617070120474696e79124512270a056e67696e78120a6e"
    "67696e783a312e32372a0042006a007200800100880100900100a201001a00320042004a0052005800600068"
    "008201008a01009a0100c2010022020a00280038001a0c0800100018002000280038001a002200"
)


def varint(value: int) -> bytes:
    value &= (1 << 64) - 1  # negative numbers as Go writes them: ten bytes
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def field(number: int, value: bytes | int, wire: int | None = None) -> bytes:
    """One protobuf field: varint for ints, length-delimited for bytes (or C{wire})."""
    if isinstance(value, int):
        return varint(number << 3) + varint(value)
    if wire is not None:
        return varint(number << 3 | wire) + value
    return varint(number << 3 | 2) + varint(len(value)) + value


def envelope(api_version: str, kind: str, raw: bytes) -> bytes:
    """The runtime.Unknown envelope kubectl sends."""
    type_meta = field(1, api_version.encode()) + field(2, kind.encode())
    return MAGIC + field(1, type_meta) + field(2, raw) + field(3, b"") + field(4, b"")


def encode(name: str, value: Any) -> bytes:
    """
    C{value} (JSON) as the protobuf message C{name}, from the reader's table, writing every
    non-pointer field, zero or not, as gogo does. Fails on a key the table does not know.
    """
    shape, known = protobuf._message(name)
    if shape != "object":
        return _encode_shaped(shape, known, value)
    left = dict(value)
    out = b""
    for number, (json_name, type_, flags) in sorted(known.items()):
        if "i" in flags:
            inner = protobuf._message(type_)[1]
            part = {f[0]: left.pop(f[0]) for f in inner.values() if f[0] in left}
            out += field(number, encode(type_, part))
        elif "m" in flags:
            for key, item in left.pop(json_name, {}).items():
                out += field(number, field(1, key.encode()) + _encode_value(type_, 2, item))
        elif "r" in flags:
            for item in left.pop(json_name, []):
                out += _encode_value(type_, number, item)
        elif json_name in left:
            out += _encode_value(type_, number, left.pop(json_name))
        elif "p" not in flags:
            out += _encode_value(type_, number, _zero(type_))
    assert not left, f"{name} has no fields {sorted(left)}"
    return out


def _zero(type_: str) -> Any:
    if type_ in ("string", "bytes"):
        return ""
    if type_ == "bool":
        return False
    if type_ in ("int32", "int64", "uint32", "uint64", "double", "float"):
        return 0
    shape = protobuf._message(type_)[0]
    return {"object": {}, "time": None, "intorstring": 0, "quantity": "0"}.get(shape)


def _encode_value(type_: str, number: int, value: Any) -> bytes:
    if type_ == "string":
        return field(number, value.encode())
    if type_ == "bytes":
        return field(number, base64.b64decode(value))
    if type_ == "double":
        return field(number, struct.pack("<d", value), wire=1)
    if type_ in ("bool", "int32", "int64", "uint32", "uint64"):
        return field(number, int(value))
    return field(number, encode(type_, value))


def _encode_shaped(shape: str, known: dict[int, protobuf.Field], value: Any) -> bytes:
    if shape in ("time", "microtime"):
        if value is None:
            return b""
        moment = datetime.fromisoformat(value)
        return field(1, int(moment.timestamp())) + field(2, moment.microsecond * 1000)
    if shape == "intorstring":
        return field(1, 1) + field(3, value.encode()) if isinstance(value, str) else field(2, value)
    if shape == "quantity":
        return field(1, value.encode())
    if shape == "raw":
        return field(1, json.dumps(value).encode())
    if shape == "items":
        return b"".join(field(1, item.encode()) for item in value)
    assert shape == "either"
    (_, first_type, _), (_, second_type, _) = known[1], known[2]
    if isinstance(value, list):
        return b"".join(_encode_value(second_type, 2, item) for item in value)
    if isinstance(value, bool):
        return field(1, int(value))
    if first_type == "bool":
        return field(1, 0) + field(2, encode(second_type, value))
    return field(1, encode(first_type, value))


def decode(api_version: str, kind: str, obj: dict[str, Any]) -> dict[str, Any]:
    """C{obj} encoded by the table, read back."""
    kinds = protobuf._table()["kinds"]
    name = kinds.get(api_version, {}).get(kind) or kinds["*"][kind]
    return decode_body(envelope(api_version, kind, encode(name, obj)))


def typed(api_version: str, kind: str, obj: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": api_version, "kind": kind, **obj}


POD = {
    "metadata": {
        "name": "web",
        "namespace": "shop",
        "labels": {"app": "web", "tier": ""},
        "annotations": {"note": "a\nb"},
        "deletionTimestamp": "2024-05-06T07:08:09Z",
        "deletionGracePeriodSeconds": 0,
        "ownerReferences": [
            {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-1", "uid": "u1"},
        ],
        "managedFields": [
            {
                "manager": "kubectl",
                "operation": "Update",
                "apiVersion": "v1",
                "time": "2024-05-06T07:08:09Z",
                "fieldsType": "FieldsV1",
                "fieldsV1": {"f:metadata": {"f:labels": {".": {}, "f:app": {}}}},
            }
        ],
    },
    "spec": {
        "priority": -5,
        "terminationGracePeriodSeconds": 0,
        "activeDeadlineSeconds": -9_000_000_000,
        "nodeSelector": {"disk": "ssd"},
        "volumes": [
            {"name": "scratch", "emptyDir": {}},
            {"name": "conf", "configMap": {"name": "settings", "defaultMode": 0o644}},
        ],
        "containers": [
            {
                "name": "app",
                "image": "nginx:1.27",
                "args": ["-g", "", "daemon off;"],
                "ports": [
                    {"name": "http", "containerPort": 80, "protocol": "TCP"},
                    {"containerPort": 443, "hostIP": "127.0.0.1"},
                ],
                "env": [{"name": "EMPTY"}, {"name": "MODE", "value": "prod"}],
                "resources": {
                    "limits": {"cpu": "500m", "memory": "128Mi"},
                    "requests": {"cpu": "0"},
                },
                "readinessProbe": {"httpGet": {"path": "/", "port": "http"}},
                "livenessProbe": {"tcpSocket": {"port": 8080}, "periodSeconds": 3},
                "securityContext": {"runAsUser": 0, "privileged": False},
            }
        ],
    },
}


class KubectlBytesTests(SynchronousTestCase):
    """The bytes kubectl 1.32 really sends read as the objects it meant."""

    def test_create_token_request(self) -> None:
        """kubectl create token: audiences, expiry and the bound object."""
        self.assertEqual(
            decode_body(bytes.fromhex(KUBECTL_TOKEN)),
            typed(
                "authentication.k8s.io/v1",
                "TokenRequest",
                {
                    "spec": {
                        "audiences": ["api", "vault"],
                        "expirationSeconds": 3600,
                        "boundObjectRef": {
                            "kind": "Pod",
                            "apiVersion": "v1",
                            "name": "web-0",
                            "uid": "0a1b",
                        },
                    },
                },
            ),
        )

    def test_create_deployment_keeps_replicas_zero(self) -> None:
        """--replicas=0 is a pointer's zero, kept; gogo's zero non-pointer fields are not."""
        self.assertEqual(
            decode_body(bytes.fromhex(KUBECTL_DEPLOYMENT)),
            typed(
                "apps/v1",
                "Deployment",
                {
                    "metadata": {"name": "tiny", "labels": {"app": "tiny"}},
                    "spec": {
                        "replicas": 0,
                        "selector": {"matchLabels": {"app": "tiny"}},
                        "template": {
                            "metadata": {"labels": {"app": "tiny"}},
                            "spec": {"containers": [{"name": "nginx", "image": "nginx:1.27"}]},
                        },
                    },
                },
            ),
        )

    def test_every_truncation_is_refused_or_read(self) -> None:
        """Every prefix of a real body is refused cleanly or read; a cut inside one refuses."""
        body = bytes.fromhex(KUBECTL_DEPLOYMENT)
        refused = 0
        for end in range(len(body)):
            try:
                decode_body(body[:end])
            except UnsupportedProtobuf:
                refused += 1
        self.assertGreater(refused, len(body) - 10)
        self.assertRaises(UnsupportedProtobuf, decode_body, body[:-20])


class RoundTripTests(SynchronousTestCase):
    """Objects written by the table's encoder (as gogo writes them) read back as their JSON."""

    def assertRoundTrip(self, api_version: str, kind: str, obj: dict[str, Any]) -> None:
        self.assertEqual(decode(api_version, kind, obj), typed(api_version, kind, obj))

    def test_pod_with_every_common_type(self) -> None:
        """
        Times, FieldsV1 JSON, int-or-strings (number and name), quantities, negative int32 and
        int64, pointer zeros (0, false, emptyDir {}), maps with empty values, nested lists.
        """
        self.assertRoundTrip("v1", "Pod", POD)

    def test_non_pointer_zeros_are_left_out(self) -> None:
        """gogo writes hostNetwork: false, minReadySeconds: 0, ...; Go reads them as unset."""
        decoded = decode("v1", "Pod", {"metadata": {"name": "p"}, "spec": {"containers": []}})
        self.assertEqual(decoded["metadata"], {"name": "p"})
        self.assertNotIn("spec", decoded)
        raw = encode("api.apps.v1.DeploymentSpec", {})
        self.assertIn(field(5, 0) + field(7, 0), raw)  # minReadySeconds, paused: written...
        self.assertEqual(
            decode("apps/v1", "Deployment", {"spec": {}}), typed("apps/v1", "Deployment", {})
        )

    def test_deployment_strategy_pointer_int_or_string_zero(self) -> None:
        """maxUnavailable: 0 (a pointer IntOrString) is kept beside maxSurge: "25%"."""
        self.assertRoundTrip(
            "apps/v1",
            "Deployment",
            {
                "metadata": {"name": "web"},
                "spec": {
                    "replicas": 3,
                    "strategy": {
                        "type": "RollingUpdate",
                        "rollingUpdate": {"maxUnavailable": 0, "maxSurge": "25%"},
                    },
                    "selector": {
                        "matchExpressions": [
                            {"key": "app", "operator": "In", "values": ["a", "b"]},
                        ]
                    },
                },
            },
        )

    def test_secret_bytes_are_base64(self) -> None:
        """Secret data and ConfigMap binaryData are bytes on the wire, base64 in JSON."""
        self.assertRoundTrip(
            "v1",
            "Secret",
            {"metadata": {"name": "s"}, "data": {"pw": "aHVudGVyMg==", "blob": "AP8="}},
        )
        self.assertRoundTrip(
            "v1", "ConfigMap", {"metadata": {"name": "c"}, "binaryData": {"b": "AP8="}}
        )

    def test_micro_time_and_raw_extension(self) -> None:
        """events.k8s.io Event's eventTime keeps microseconds; ControllerRevision data is JSON."""
        self.assertRoundTrip(
            "events.k8s.io/v1",
            "Event",
            {
                "metadata": {"name": "e"},
                "eventTime": "2024-05-06T07:08:09.123456Z",
                "reason": "Started",
                "series": {"count": 2, "lastObservedTime": "2024-05-06T07:08:10.000001Z"},
            },
        )
        self.assertRoundTrip(
            "apps/v1",
            "ControllerRevision",
            {"metadata": {"name": "r"}, "revision": 2, "data": {"spec": {"x": [1, None]}}},
        )

    def test_string_lists_of_named_slice_types(self) -> None:
        """SubjectAccessReview's extra: a map of ExtraValue messages, lists in JSON."""
        self.assertRoundTrip(
            "authorization.k8s.io/v1",
            "SubjectAccessReview",
            {
                "spec": {
                    "user": "alice",
                    "groups": ["dev"],
                    "extra": {"scopes": ["a", "b"], "none": []},
                    "resourceAttributes": {"verb": "get", "resource": "pods"},
                }
            },
        )

    def test_custom_resource_definition_schema(self) -> None:
        """
        apiextensions' JSON types: $ref, x-kubernetes-*, defaults as JSON, doubles, and the
        JSONSchemaPropsOr* unions (a schema, a bool, a list).
        """
        schema = {
            "type": "object",
            "x-kubernetes-preserve-unknown-fields": True,
            "properties": {
                "size": {"type": "integer", "default": 3, "maximum": 2.5, "minimum": -1.0},
                "tags": {"type": "array", "items": {"type": "string"}},
                "free": {"type": "object", "additionalProperties": False},
                "named": {"type": "object", "additionalProperties": {"type": "string"}},
                "either": {"anyOf": [{"type": "string"}, {"type": "integer"}]},
                "deps": {"type": "object", "dependencies": {"a": ["b"]}},
            },
        }
        crd = {
            "metadata": {"name": "widgets.example.com"},
            "spec": {
                "group": "example.com",
                "names": {"plural": "widgets", "kind": "Widget"},
                "scope": "Namespaced",
                "versions": [
                    {
                        "name": "v1",
                        "served": True,
                        "storage": True,
                        "schema": {"openAPIV3Schema": schema},
                    }
                ],
            },
        }
        self.assertRoundTrip("apiextensions.k8s.io/v1", "CustomResourceDefinition", crd)

    def test_drain_eviction_and_delete_options(self) -> None:
        """kubectl drain's Eviction (with DeleteOptions inside) and its DeleteOptions."""
        self.assertRoundTrip(
            "policy/v1",
            "Eviction",
            {
                "metadata": {"name": "web", "namespace": "shop"},
                "deleteOptions": {"gracePeriodSeconds": 0, "preconditions": {"uid": "u1"}},
            },
        )
        options = {"gracePeriodSeconds": 30, "propagationPolicy": "Foreground", "dryRun": ["All"]}
        for api_version in ("v1", "meta.k8s.io/v1", "policy/v1"):
            self.assertRoundTrip(api_version, "DeleteOptions", options)

    def test_packed_repeated_numbers(self) -> None:
        """Repeated numbers are read packed too, as proto2 readers must (gogo's do)."""
        groups = varint(1000) + varint(-1)
        context = field(4, varint(5)) + field(4, groups)  # one unpacked, then a packed run
        raw = field(2, field(14, context))  # Pod.spec (2), PodSpec.securityContext (14)
        decoded = decode_body(envelope("v1", "Pod", raw))
        self.assertEqual(
            decoded["spec"], {"securityContext": {"supplementalGroups": [5, 1000, -1]}}
        )
        truncated = field(2, field(14, field(4, b"\x80")))
        self.assertRaises(UnsupportedProtobuf, decode_body, envelope("v1", "Pod", truncated))

    def test_every_served_kind_is_readable(self) -> None:
        """Every kind of the catalogue, and every kind a subresource takes, has a message."""
        kinds = protobuf._table()["kinds"]
        for resource in json.loads(CATALOGUE.read_text()):
            group, version = resource["group"], resource["version"]
            api_version = f"{group}/{version}" if group else version
            self.assertIn(resource["kind"], kinds[api_version], api_version)
            body = {"metadata": {"name": "x", "labels": {"a": "b"}}}
            self.assertEqual(
                decode(api_version, resource["kind"], body),
                typed(api_version, resource["kind"], body),
            )
        self.assertEqual(kinds["policy/v1"]["Eviction"], "api.policy.v1.Eviction")
        self.assertEqual(kinds["autoscaling/v1"]["Scale"], "api.autoscaling.v1.Scale")


class RefusalTests(SynchronousTestCase):
    """What the reader cannot read faithfully is refused, never dropped nor a crash."""

    def test_unknown_fields_are_refused_not_dropped(self) -> None:
        """A field the table does not know, with a value, refuses the whole body."""
        raw = encode("api.core.v1.ConfigMap", {"metadata": {"name": "x"}}) + field(9, b"surprise")
        error = self.assertRaises(
            UnsupportedProtobuf, decode_body, envelope("v1", "ConfigMap", raw)
        )
        self.assertEqual(
            str(error), "field 9 of protobuf message api.core.v1.ConfigMap is not understood"
        )
        nested = encode("api.core.v1.ConfigMap", {"metadata": {"name": "x"}})
        nested += field(1, field(99, 1))  # a second metadata holding an unknown field
        self.assertRaises(UnsupportedProtobuf, decode_body, envelope("v1", "ConfigMap", nested))

    def test_unknown_fields_holding_zeros_are_ignored(self) -> None:
        """A newer client's empty fields (as gogo writes them) lose nothing."""
        raw = encode("api.core.v1.ConfigMap", {"metadata": {"name": "x"}})
        raw += field(9, b"") + field(10, 0) + field(11, field(1, 0) + field(2, b""))
        decoded = decode_body(envelope("v1", "ConfigMap", raw))
        self.assertEqual(decoded["metadata"], {"name": "x"})

    def test_unserved_kinds_are_refused(self) -> None:
        """A kind Kubernetes 1.32 does not serve (here a beta version) stays a 415."""
        raw = field(1, encode("apimachinery.pkg.apis.meta.v1.ObjectMeta", {"name": "x"}))
        error = self.assertRaises(
            UnsupportedProtobuf, decode_body, envelope("apps/v1beta1", "Deployment", raw)
        )
        self.assertEqual(str(error), "protobuf bodies of Deployment are not supported")
        self.assertRaises(UnsupportedProtobuf, decode_body, b"not protobuf")

    def test_wrong_wire_types_are_refused(self) -> None:
        """A string sent as a number, a message as a number, the envelope's parts as numbers."""
        for raw in (field(1, 5), field(1, field(1, 7))):
            self.assertRaises(UnsupportedProtobuf, decode_body, envelope("v1", "ConfigMap", raw))
        self.assertRaises(UnsupportedProtobuf, decode_body, MAGIC + b"\x08\x00")
        self.assertRaises(UnsupportedProtobuf, decode_body, MAGIC + b"\x10\x05")

    def test_malformed_values_are_refused(self) -> None:
        """Text that is not UTF-8, a varint past ten bytes, embedded JSON that is not JSON."""
        meta = field(1, b"\xff\xfe")
        self.assertRaises(
            UnsupportedProtobuf, decode_body, envelope("v1", "ConfigMap", field(1, meta))
        )
        long_varint = varint(3 << 3) + b"\xff" * 11 + b"\x01"
        self.assertRaises(
            UnsupportedProtobuf, decode_body, envelope("v1", "ConfigMap", long_varint)
        )
        revision = field(3, field(1, b"{not json"))
        self.assertRaises(
            UnsupportedProtobuf,
            decode_body,
            envelope("apps/v1", "ControllerRevision", revision),
        )

    def test_deep_nesting_is_refused(self) -> None:
        """A schema nested past the JSON bodies' depth limit is refused, not a RecursionError."""
        schema: dict[str, Any] = {"type": "string"}
        for _ in range(60):
            schema = {"type": "object", "properties": {"p": schema}}
        crd = {"spec": {"versions": [{"name": "v1", "schema": {"openAPIV3Schema": schema}}]}}
        error = self.assertRaises(
            UnsupportedProtobuf, decode, "apiextensions.k8s.io/v1", "CustomResourceDefinition", crd
        )
        self.assertEqual(str(error), "exceeded max depth of 100")

    def test_deep_unknown_nesting_is_refused_without_recursion(self) -> None:
        """An unknown field nested thousands deep is refused, not a RecursionError."""
        nested = b""
        for _ in range(5000):
            nested = field(1, nested)
        raw = field(1, field(1, b"x")) + field(9, nested + field(2, 1))
        self.assertRaises(UnsupportedProtobuf, decode_body, envelope("v1", "ConfigMap", raw))

    @given(st.binary(max_size=512))
    def test_garbage_never_crashes(self, data: bytes) -> None:
        """Random bytes after the magic give UnsupportedProtobuf or a decoded object, no crash."""
        try:
            decoded = decode_body(MAGIC + data)
        except UnsupportedProtobuf:
            return
        self.assertIn("kind", decoded)

    @given(st.binary(max_size=256))
    def test_garbage_inside_a_pod_never_crashes(self, data: bytes) -> None:
        """Random bytes as a Pod's raw object: refused or read, never another exception."""
        with contextlib.suppress(UnsupportedProtobuf):
            decode_body(envelope("v1", "Pod", data))


class DurationTests(SynchronousTestCase):
    def test_go_duration_strings(self) -> None:
        """metav1.Duration is written as Go's time.Duration.String writes it."""
        cases = {
            0: "0s",
            1: "1ns",
            1500: "1.5µs",
            2_000_000: "2ms",
            1_500_000_000: "1.5s",
            90 * 10**9: "1m30s",
            3600 * 10**9: "1h0m0s",
            -(3723 * 10**9 + 5 * 10**8): "-1h2m3.5s",
        }
        for nanos, text in cases.items():
            self.assertEqual(go_duration(nanos), text)
