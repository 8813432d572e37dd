"""The supervisor's HTTP routes, rendered in memory."""

from __future__ import annotations

import json

from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import getChildForRequest
from twisted.web.test.requesthelper import DummyRequest

from k3stw.supervisor.resource import Readiness, supervisor_resource

CA = b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"


class SupervisorRouteTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.readiness = Readiness()
        self.root = supervisor_resource(CA, self.readiness)

    def request(self, path: bytes, method: bytes = b"GET") -> tuple[DummyRequest, bytes]:
        request = DummyRequest(path.lstrip(b"/").split(b"/"))
        request.method = method
        request.uri = path
        resource = getChildForRequest(self.root, request)
        body = resource.render(request)
        return request, body

    def header(self, request: DummyRequest, name: bytes) -> bytes | None:
        values = request.responseHeaders.getRawHeaders(name)
        return values[0] if values else None

    def test_cacerts_serves_the_bundle_verbatim(self) -> None:
        """GET /cacerts answers the CA file's exact bytes as text/plain."""
        request, body = self.request(b"/cacerts")
        self.assertEqual(body, CA)
        self.assertEqual(request.responseCode or 200, 200)
        self.assertEqual(self.header(request, b"content-type"), b"text/plain")

    def test_ping(self) -> None:
        """GET /ping answers pong."""
        _, body = self.request(b"/ping")
        self.assertEqual(body, b"pong")

    def test_readyz_until_ready(self) -> None:
        """/v1-k3s/readyz is a 503 Status until the server is ready, then ok."""
        request, body = self.request(b"/v1-k3s/readyz")
        self.assertEqual(request.responseCode, 503)
        status = json.loads(body)
        self.assertEqual(
            (status["kind"], status["reason"], status["message"]),
            ("Status", "ServiceUnavailable", "runtime core not ready"),
        )
        self.readiness.mark_ready()
        request, body = self.request(b"/v1-k3s/readyz")
        self.assertEqual((request.responseCode or 200, body), (200, b"ok"))

    def test_unknown_paths_are_kubernetes_404s(self) -> None:
        """Anything unknown, at any depth, is a Status 404 in JSON."""
        for path in (b"/", b"/nope", b"/v1-k3s", b"/v1-k3s/nope", b"/ping/extra", b"/api/v1"):
            request, body = self.request(path)
            self.assertEqual(request.responseCode, 404, path)
            self.assertEqual(self.header(request, b"content-type"), b"application/json")
            self.assertEqual(self.header(request, b"cache-control"), b"no-cache, private")
            status = json.loads(body)
            self.assertEqual(
                (status["apiVersion"], status["status"], status["reason"], status["code"]),
                ("v1", "Failure", "NotFound", 404),
            )

    def test_wrong_method(self) -> None:
        """A POST to a GET route is a 405 Status with Allow."""
        request, body = self.request(b"/ping", b"POST")
        self.assertEqual(request.responseCode, 405)
        self.assertEqual(json.loads(body)["reason"], "MethodNotAllowed")
        self.assertEqual(self.header(request, b"allow"), b"GET")

    def test_head(self) -> None:
        """HEAD is served like GET."""
        request, _ = self.request(b"/ping", b"HEAD")
        self.assertEqual(request.responseCode or 200, 200)
