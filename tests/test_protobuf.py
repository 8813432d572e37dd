"""Protobuf request bodies: the few kinds kubectl's typed create commands send."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from k3stw.apiserver.protobuf import MAGIC, UnsupportedProtobuf, decode_body


def varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def field(number: int, value: bytes | int) -> bytes:
    """One protobuf field: varint for ints, length-delimited for bytes."""
    if isinstance(value, int):
        return varint(number << 3) + varint(value)
    return varint(number << 3 | 2) + varint(len(value)) + value


def entry(key: str, value: bytes) -> bytes:
    return field(1, key.encode()) + field(2, value)


def unknown(api_version: str, kind: str, raw: bytes) -> bytes:
    """The runtime.Unknown envelope kubectl sends."""
    type_meta = field(1, api_version.encode()) + field(2, kind.encode())
    return MAGIC + field(1, type_meta) + field(2, raw) + field(3, b"") + field(4, b"")


def object_meta(name: str, namespace: str = "", **extra: bytes) -> bytes:
    # As gogo writes it: every non-pointer field, zero or not, plus an empty timestamp.
    meta = field(1, name.encode()) + field(2, b"") + field(3, namespace.encode())
    meta += field(4, b"") + field(5, b"") + field(6, b"") + field(7, 0)
    meta += field(8, field(1, 0) + field(2, 0))
    for label, value in extra.items():
        meta += field(11, entry(label, value))
    return meta


class ProtobufBodyTests(SynchronousTestCase):
    def test_configmap(self) -> None:
        """kubectl create configmap: name, namespace, labels and data survive."""
        raw = field(1, object_meta("settings", "shop", tier=b"web"))
        raw += field(2, entry("color", b"blue")) + field(2, entry("size", b"3"))
        raw += field(3, entry("blob", b"\x00\xff"))
        self.assertEqual(
            decode_body(unknown("v1", "ConfigMap", raw)),
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": "settings", "namespace": "shop", "labels": {"tier": "web"}},
                "data": {"color": "blue", "size": "3"},
                "binaryData": {"blob": "AP8="},
            },
        )

    def test_secret_and_namespace_and_serviceaccount(self) -> None:
        """Secrets keep their bytes (as base64) and type; namespaces and SAs their names."""
        secret = field(1, object_meta("creds")) + field(2, entry("pw", b"hunter2"))
        secret += field(3, b"Opaque")
        decoded = decode_body(unknown("v1", "Secret", secret))
        self.assertEqual((decoded["data"], decoded["type"]), ({"pw": "aHVudGVyMg=="}, "Opaque"))
        namespace = field(1, object_meta("shop")) + field(2, b"") + field(3, field(1, b""))
        self.assertEqual(
            decode_body(unknown("v1", "Namespace", namespace))["metadata"], {"name": "shop"}
        )
        account = field(1, object_meta("robot")) + field(4, 0)
        decoded = decode_body(unknown("v1", "ServiceAccount", account))
        self.assertIs(decoded["automountServiceAccountToken"], False)

    def test_unknown_fields_are_refused_not_dropped(self) -> None:
        """A field the reader does not know, with a value, refuses the whole body."""
        raw = field(1, object_meta("x")) + field(9, b"surprise")
        error = self.assertRaises(UnsupportedProtobuf, decode_body, unknown("v1", "ConfigMap", raw))
        self.assertIn("field 9", str(error))

    def test_other_kinds_are_refused(self) -> None:
        """Deployments and everything else stay a 415."""
        raw = field(1, object_meta("web"))
        error = self.assertRaises(
            UnsupportedProtobuf, decode_body, unknown("apps/v1", "Deployment", raw)
        )
        self.assertIn("Deployment", str(error))
        self.assertRaises(UnsupportedProtobuf, decode_body, b"not protobuf")

    def test_an_envelope_field_of_the_wrong_wire_type_is_refused(self) -> None:
        """Found by the test below: the type meta sent as a number, not a message."""
        self.assertRaises(UnsupportedProtobuf, decode_body, MAGIC + b"\x08\x00")
        self.assertRaises(UnsupportedProtobuf, decode_body, MAGIC + b"\x10\x05")

    @given(st.binary(max_size=512))
    def test_garbage_never_crashes(self, data: bytes) -> None:
        """Random bytes after the magic give UnsupportedProtobuf or a decoded object, no crash."""
        try:
            decoded = decode_body(MAGIC + data)
        except UnsupportedProtobuf:
            return
        self.assertIn(decoded["kind"], ("Namespace", "ConfigMap", "Secret", "ServiceAccount"))

    def test_deep_nesting_is_refused_without_recursion(self) -> None:
        """An unknown field nested thousands deep is refused, not a RecursionError."""
        nested = b""
        for _ in range(5000):
            nested = field(1, nested)
        raw = field(1, object_meta("x")) + field(9, nested + field(2, 1))
        self.assertRaises(UnsupportedProtobuf, decode_body, unknown("v1", "ConfigMap", raw))
