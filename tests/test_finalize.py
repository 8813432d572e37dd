"""``namespaces/<name>/finalize``: how a namespace's finalizers are cleared."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from k3stw.machinery.identity import User
from tests.support.apiserver import MemoryAPI, MemoryServer

ADMIN = User("admin", ("system:masters",))
FINALIZE = "/api/v1/namespaces/{}/finalize"


class FinalizeTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.server = MemoryServer(self)
        self.api = MemoryAPI(self.server, {"admin": ADMIN})
        self.server.create("", "namespaces", {"metadata": {"name": "stuck"}})

    def finalize(self, finalizers: list[str]) -> tuple[int, dict[str, object]]:
        body = {"metadata": {"name": "stuck"}, "spec": {"finalizers": finalizers}}
        code, answered = self.api.request(b"PUT", FINALIZE.format("stuck"), body)
        return code, answered

    def test_sets_only_the_finalizers(self) -> None:
        code, answered = self.api.request(
            b"PUT",
            FINALIZE.format("stuck"),
            {
                "metadata": {"name": "stuck", "labels": {"ignored": "yes"}},
                "spec": {"finalizers": ["example.com/hold", "kubernetes"]},
            },
        )
        self.assertEqual(code, 200)
        stored = self.server.get("", "namespaces", "stuck")
        self.assertEqual(stored["spec"]["finalizers"], ["example.com/hold", "kubernetes"])
        self.assertNotIn("ignored", stored["metadata"].get("labels", {}))
        self.assertEqual(answered["spec"], stored["spec"])

    def test_clearing_a_terminating_namespace_lets_it_go(self) -> None:
        self.api.request(b"DELETE", "/api/v1/namespaces/stuck")
        self.assertEqual(
            self.server.get("", "namespaces", "stuck")["status"]["phase"], "Terminating"
        )
        code, _ = self.finalize([])
        self.assertEqual(code, 200)
        self.assertFalse(self.server.exists("", "namespaces", "stuck"))

    def test_an_invalid_finalizer_is_refused(self) -> None:
        code, status = self.finalize(["not a name!"])
        self.assertEqual(code, 422)
        self.assertIn('spec.finalizers[0]: Invalid value: "not a name!"', status["message"])
        self.assertEqual(
            self.server.get("", "namespaces", "stuck")["spec"]["finalizers"], ["kubernetes"]
        )

    def test_only_put(self) -> None:
        code, _ = self.api.request(b"GET", FINALIZE.format("stuck"))
        self.assertEqual(code, 405)
