"""``--unchecked-api``: the API without its checks, which only the benchmark's comparison uses."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from k3stw.machinery.identity import User
from tests.support.apiserver import MemoryAPI, MemoryServer

ALICE = User("alice", ("developers",))
DEPLOYMENTS = "/apis/apps/v1/namespaces/default/deployments"
INVALID = {
    "metadata": {"name": "web"},
    "spec": {"replicas": "three", "selector": {"matchLabels": {"app": "web"}}},
}


class UncheckedAPITests(SynchronousTestCase):
    def api(self, checks: bool) -> MemoryAPI:
        return MemoryAPI(MemoryServer(self, checks=checks), {"alice": ALICE}, rbac=True)

    def test_checked_refuses_an_unauthorized_user(self) -> None:
        code, status = self.api(checks=True).request(b"POST", DEPLOYMENTS, INVALID)
        self.assertEqual(code, 403)
        self.assertIn('User "alice" cannot create resource "deployments"', status["message"])

    def test_unchecked_stores_what_anyone_sends_undefaulted(self) -> None:
        api = self.api(checks=False)
        code, created = api.request(b"POST", DEPLOYMENTS, INVALID)
        self.assertEqual(code, 201)
        self.assertEqual(created["spec"], INVALID["spec"])

    def test_unchecked_still_needs_a_name(self) -> None:
        code, status = self.api(checks=False).request(b"POST", DEPLOYMENTS, {"spec": {}})
        self.assertEqual(code, 422)
        self.assertIn("metadata.name: Required value", status["message"])
