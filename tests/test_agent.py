"""The agent's first join step: the cluster CA checked against the token, with retries."""

from __future__ import annotations

import datetime
from pathlib import Path

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import capturedLogs
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.http_headers import Headers
from twisted.web.iweb import IPolicyForHTTPS

from k3stw.agent.cacerts import CAHashMismatch, fetch_cluster_ca
from k3stw.agent.service import RETRY_DELAY, AgentConfig, AgentService
from k3stw.httpclient import HTTPStatusError, Response
from k3stw.lifecycle import _exit_now
from k3stw.pki.certs import new_ca
from k3stw.pki.tls import PinnedCAPolicy, UnverifiedPolicy
from k3stw.pki.token import Token, ca_hash

URL = "https://127.0.0.2:6443"
BUNDLE = new_ca("k3s-server-ca@1", datetime.datetime.now(datetime.UTC)).certificate_pem
HASH = ca_hash(BUNDLE)


class FakeServer:
    """Answers /cacerts from a script of results, recording which policy each GET used."""

    def __init__(self, *answers: bytes | Exception) -> None:
        self.answers = list(answers)
        self.calls: list[tuple[str, IPolicyForHTTPS]] = []

    def __call__(self, url: str, policy: IPolicyForHTTPS) -> Deferred[bytes]:
        self.calls.append((url, policy))
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if isinstance(answer, Exception):
            return fail(answer)
        return succeed(answer)


class FetchClusterCATests(SynchronousTestCase):
    def fetch(self, server: FakeServer, token: Token) -> Deferred[bytes]:
        return Deferred.fromCoroutine(fetch_cluster_ca(server, URL, token))

    def test_matching_hash(self) -> None:
        """The bundle is fetched unverified, checked, then fetched again pinned to itself."""
        server = FakeServer(BUNDLE)
        bundle = self.successResultOf(self.fetch(server, Token(HASH, "node", "pw")))
        self.assertEqual(bundle, BUNDLE)
        (url1, policy1), (url2, policy2) = server.calls
        self.assertEqual((url1, url2), (URL + "/cacerts", URL + "/cacerts"))
        self.assertIsInstance(policy1, UnverifiedPolicy)
        self.assertIsInstance(policy2, PinnedCAPolicy)

    def test_mismatch_uses_k3s_words(self) -> None:
        """A token for another CA fails with k3s's message and never trusts the bundle."""
        server = FakeServer(BUNDLE)
        failure = self.failureResultOf(self.fetch(server, Token("b" * 64, "node", "pw")))
        failure.trap(CAHashMismatch)
        self.assertEqual(
            str(failure.value),
            f"token CA hash does not match the Cluster CA certificate hash: {'b' * 64} != {HASH}",
        )
        self.assertEqual(len(server.calls), 1)

    def test_short_token_warns(self) -> None:
        """Without a hash in the token, k3s's warning is logged and the CA is used."""
        with capturedLogs() as events:
            bundle = self.successResultOf(self.fetch(FakeServer(BUNDLE), Token("", "", "pw")))
        self.assertEqual(bundle, BUNDLE)
        self.assertTrue(
            any("token does not include a CA hash" in e.get("log_format", "") for e in events)
        )

    def test_pinned_fetch_failure(self) -> None:
        """A server that cannot prove it holds the CA's key fails validation."""
        server = FakeServer(BUNDLE, Exception("certificate verify failed"))
        failure = self.failureResultOf(self.fetch(server, Token(HASH, "node", "pw")))
        self.assertIn("CA cert validation failed: certificate verify failed", str(failure.value))

    def test_not_a_bundle(self) -> None:
        """A /cacerts answer that is no certificate is an error, not a crash."""
        failure = self.failureResultOf(self.fetch(FakeServer(b"<html>"), Token(HASH, "n", "p")))
        self.assertIn("did not return a CA bundle", str(failure.value))

    def test_http_error_wording(self) -> None:
        """A non-2xx answer reads '<url>: <code> <phrase>' as in k3s."""
        error = HTTPStatusError(URL + "/cacerts", Response(404, "Not Found", Headers(), b""))
        self.assertEqual(str(error), URL + "/cacerts: 404 Not Found")


class AgentServiceTests(SynchronousTestCase):
    def service(self, server: FakeServer, token: Token) -> tuple[AgentService, MemoryReactorClock]:
        reactor = MemoryReactorClock()
        config = AgentConfig(Path("/unused"), URL, token)
        return AgentService(reactor, config, server), reactor

    def test_retries_until_the_server_answers(self) -> None:
        """Connection failures are logged with k3s's words and retried every 2 s."""
        server = FakeServer(ConnectionRefusedError(), ConnectionRefusedError(), BUNDLE)
        service, reactor = self.service(server, Token(HASH, "node", "pw"))
        with capturedLogs() as events:
            service.startService()
            self.assertIsNone(service.cluster_ca)
            reactor.advance(RETRY_DELAY)
            self.assertIsNone(service.cluster_ca)
            reactor.advance(RETRY_DELAY)
        self.assertEqual(service.cluster_ca, BUNDLE)
        failures = [e for e in events if "Failed to validate connection" in e["log_format"]]
        self.assertEqual(len(failures), 2)
        self.assertEqual(failures[0]["url"], URL)
        self.assertEqual(reactor.getDelayedCalls(), [])
        self.assertFalse(reactor.hasStopped)

    def test_stop_cancels_the_retry(self) -> None:
        """Stopping while waiting to retry leaves nothing scheduled."""
        service, reactor = self.service(FakeServer(ConnectionRefusedError()), Token("", "", "p"))
        service.startService()
        self.assertEqual(len(reactor.getDelayedCalls()), 1)
        self.successResultOf(service.stopService())
        self.assertEqual(reactor.getDelayedCalls(), [])

    def test_hash_mismatch_stops_the_process_with_an_error(self) -> None:
        """A token for another cluster is fatal: the reactor stops and the exit code is 1."""
        service, reactor = self.service(FakeServer(BUNDLE), Token("c" * 64, "node", "pw"))
        with capturedLogs() as events:
            service.startService()
        self.assertTrue(reactor.hasStopped)
        self.assertIn((_exit_now, (1,), {}), reactor.triggers["after"]["shutdown"])
        critical = [e for e in events if e["log_level"].name == "critical"]
        self.assertIn("token CA hash does not match", critical[0]["error"])
        self.assertEqual(reactor.getDelayedCalls(), [])
