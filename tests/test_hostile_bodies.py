"""
Bodies built to hurt the server: YAML alias bombs ("billion laughs", as
CVE-2019-11253 against kube-apiserver) and JSON nested past any object.  Each
decoder bounds what it builds and answers 400 with the reason; a real server
under an address-space limit survives every one and keeps serving.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import ClassVar

from twisted.trial.unittest import SynchronousTestCase

from k3stw.apiserver.request import MAX_DEPTH, decode_json, yaml_document
from tests.support.net import free_port
from tests.support.twistd import Twistd, admin_request, k3s_server

HOST = "127.0.0.31"


def laughs(levels: int = 9) -> bytes:
    """A 'billion laughs' YAML body: each level nine aliases of the one before (9**9 values)."""
    lines = ['a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for n in range(1, levels):
        lines.append(f"a{n}: &a{n} [" + ",".join([f"*a{n - 1}"] * 9) + "]")
    return "\n".join(lines).encode() + b"\n"


def nested(depth: int, inner: str = "{}") -> bytes:
    """A JSON object C{depth} mappings deep: {"a": {"a": ... }}."""
    return ('{"a":' * depth + inner + "}" * depth).encode()


def configmap_yaml(extra: bytes) -> bytes:
    return b"apiVersion: v1\nkind: ConfigMap\nmetadata: {name: bomb}\n" + extra.replace(
        b"a0:", b"data:\n  a0:", 1
    )


class DecoderTests(SynchronousTestCase):
    def test_billion_laughs_is_refused(self) -> None:
        with self.assertRaises(ValueError) as caught:
            yaml_document(laughs())
        self.assertIn("excessive aliasing", str(caught.exception))

    def test_a_self_referencing_alias_is_refused(self) -> None:
        with self.assertRaises(ValueError):
            yaml_document(b"a: &a [*a]\n")

    def test_moderate_aliases_are_kept_and_unshared(self) -> None:
        """Anchors in real manifests still work; the result is a tree, not a graph."""
        document = yaml_document(b"x: &x {a: [1, 2]}\ny: *x\n")
        self.assertEqual(document, {"x": {"a": [1, 2]}, "y": {"a": [1, 2]}})
        document["y"]["a"].append(3)
        self.assertEqual(document["x"]["a"], [1, 2])

    def test_depth_is_bounded_in_json_and_yaml(self) -> None:
        """MAX_DEPTH nested mappings are a body; one more is refused, as is any deeper."""
        self.assertIsInstance(decode_json(nested(MAX_DEPTH - 1)), dict)
        self.assertIsInstance(yaml_document(nested(MAX_DEPTH - 1)), dict)
        for depth in (MAX_DEPTH, 100_000):
            with self.subTest(depth=depth):
                with self.assertRaises(ValueError) as caught:
                    decode_json(nested(depth))
                self.assertIn(f"exceeded max depth of {MAX_DEPTH}", str(caught.exception))
                with self.assertRaises(ValueError):
                    yaml_document(nested(depth))


class ServerTests(SynchronousTestCase):
    """One real server, limited to 1 GiB of address space (it uses about 600 MiB)."""

    server: ClassVar[Twistd]
    root: ClassVar[Path]
    configmaps = "/api/v1/namespaces/default/configmaps"

    @classmethod
    def setUpClass(cls) -> None:
        import tempfile

        cls.root = Path(tempfile.mkdtemp(prefix="k3stw-hostile-"))
        port = free_port(HOST)
        cls.server = k3s_server(
            SynchronousTestCase(), cls.root, HOST, port, "--disable-agent", memory_limit=1 << 30
        )
        cls.server.start()
        cls.server.wait_for_answer(HOST, port)
        cls.server.wait_for_output("k3s is up and running")
        code, _ = admin_request(
            cls.root, "POST", cls.configmaps, json.dumps({"metadata": {"name": "target"}}).encode()
        )
        assert code == 201, code

    @classmethod
    def tearDownClass(cls) -> None:
        cls.server.stop()

    def refused(self, method: str, path: str, body: bytes, media: str, reason: str) -> None:
        code, status = admin_request(self.root, method, path, body, media)
        self.assertEqual((code, status.get("reason")), (400, "BadRequest"), status)
        self.assertIn(reason, status["message"])
        # Still serving, and whole.
        code, listed = admin_request(self.root, "GET", self.configmaps)
        self.assertEqual(code, 200)
        self.assertIn("target", [item["metadata"]["name"] for item in listed["items"]])

    def test_billion_laughs_on_create(self) -> None:
        self.refused(
            "POST", self.configmaps, configmap_yaml(laughs()), "application/yaml", "aliasing"
        )

    def test_billion_laughs_on_server_side_apply(self) -> None:
        self.refused(
            "PATCH",
            f"{self.configmaps}/target?fieldManager=bomb",
            configmap_yaml(laughs()).replace(b"name: bomb", b"name: target"),
            "application/apply-patch+yaml",
            "aliasing",
        )

    def test_deep_json_on_create_and_every_patch(self) -> None:
        deep = nested(100_000, "1")
        depth = f"exceeded max depth of {MAX_DEPTH}"
        self.refused("POST", self.configmaps, deep, "application/json", depth)
        for media in (
            "application/merge-patch+json",
            "application/strategic-merge-patch+json",
            "application/json-patch+json",
        ):
            with self.subTest(media=media):
                body = b"[" + deep + b"]" if media.startswith("application/json-") else deep
                self.refused("PATCH", f"{self.configmaps}/target", body, media, depth)

    def test_the_server_stayed_within_its_limit(self) -> None:
        """Every bomb above would have needed more than the limit: the process is alive."""
        for test in (
            self.test_billion_laughs_on_create,
            self.test_deep_json_on_create_and_every_patch,
        ):
            test()
        assert self.server.process is not None
        self.assertIsNone(self.server.process.poll())
        self.assertNotIn("MemoryError", self.server.output)
        self.assertNotIn("Traceback", self.server.output)
