"""kube-apiserver's health endpoints, in its words: /healthz, /livez and /readyz."""

from __future__ import annotations

from typing import cast

from twisted.internet.defer import Deferred
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.iweb import IRequest
from twisted.web.test.requesthelper import DummyRequest

from k3stw.apiserver.health import Health, HealthCheck


class HealthTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.failing: str | None = None

        async def etcd() -> str | None:
            return self.failing

        async def not_stopping() -> str | None:
            return None

        self.health = Health(
            (HealthCheck("etcd", etcd), HealthCheck("shutdown", not_stopping, ("readyz",)))
        )

    def ask(self, path: str, **args: list[bytes]) -> tuple[int, str]:
        endpoint, *rest = path.strip("/").split("/")
        request = DummyRequest([])
        request.args = {name.encode(): values for name, values in args.items()}
        answering = self.health.answer(cast(IRequest, request), endpoint, rest)
        self.successResultOf(Deferred.fromCoroutine(answering))
        return request.responseCode or 200, b"".join(request.written).decode()

    def test_healthy_is_ok(self) -> None:
        for endpoint in ("healthz", "livez", "readyz"):
            self.assertEqual(self.ask(endpoint), (200, "ok"))

    def test_verbose_lists_each_check(self) -> None:
        code, text = self.ask("readyz", verbose=[b""])
        self.assertEqual(code, 200)
        self.assertEqual(
            text.splitlines(),
            ["[+]ping ok", "[+]log ok", "[+]etcd ok", "[+]shutdown ok", "readyz check passed"],
        )
        # Readiness checks are not liveness checks.
        self.assertNotIn("shutdown", self.ask("livez", verbose=[b""])[1])

    def test_a_failing_check_fails_the_endpoint_without_its_reason(self) -> None:
        self.failing = "connection refused"
        code, text = self.ask("healthz")
        self.assertEqual(code, 500)
        self.assertIn("[-]etcd failed: reason withheld", text)
        self.assertTrue(text.endswith("healthz check failed\n"))
        self.assertNotIn("connection refused", text)
        # Excluded, it passes (and says so).
        code, text = self.ask("healthz", exclude=[b"etcd"], verbose=[b""])
        self.assertEqual(code, 200)
        self.assertIn("[+]etcd excluded: ok", text)

    def test_one_check_alone(self) -> None:
        self.assertEqual(self.ask("livez/etcd"), (200, "ok"))
        self.failing = "connection refused"
        self.assertEqual(
            self.ask("readyz/etcd"), (500, "internal server error: connection refused\n")
        )

    def test_an_unknown_exclusion_is_a_warning(self) -> None:
        code, text = self.ask("readyz", exclude=[b"nope"], verbose=[b""])
        self.assertEqual(code, 200)
        self.assertIn('warn: some health checks cannot be excluded: no matches for "nope"', text)
