"""
The Ingress proxy's data path on Twisted fakes (milliseconds): request and
response heads (k3stw.network.http1), the client and backend protocols of
k3stw.network.ingressproxy on StringTransports and a MemoryReactorClock
(routing answers, keep-alive pool, X-Forwarded-*, bodies both ways,
backpressure, HEAD/1xx/204/304, pipelining, upgrades, failures and
timeouts, malformed input, the access log and metrics), and the direct
write's hold on Twisted's TCP transport on loopback.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import reactor as _reactor
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone, ConnectionRefusedError, TimeoutError
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import ILogObserver, LogEvent, globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface import implementer

from k3stw.network import http1, ingressproxy
from k3stw.network.http1 import (
    MAX_HEAD,
    BadRequest,
    RequestHead,
    parse_request,
    parse_response,
    send,
)
from k3stw.network.ingressproxy import AccessLog, IngressMetrics, IngressProxy
from k3stw.network.ingressroutes import Address, Backend, RoundRobin, Route

reactor: Any = _reactor

WEB = Route("default/web", Backend("default", "web", 80))
A: Address = ("10.42.0.5", 8080)
B: Address = ("10.42.0.6", 8080)
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"


class HeadParsingTests(SynchronousTestCase):
    """What k3stw.network.http1 reads from heads, and what it refuses."""

    def test_a_request_head_keeps_its_lines_and_picks_out_routing_and_framing(self) -> None:
        request = parse_request(
            b"POST /a?b=1 HTTP/1.1\r\nHost: site.test\r\nAccept: */*\r\nContent-Length: 3\r\n"
            b"Connection: keep-alive, X-Secret\r\nX-Secret: 1\r\nKeep-Alive: 5\r\n"
            b"X-Forwarded-For: 1.2.3.4\r\nX-Forwarded-Proto: https\r\nTE: trailers"
        )
        self.assertEqual((request.method, request.target), (b"POST", b"/a?b=1"))
        self.assertEqual(request.host, b"site.test")
        self.assertEqual(request.headers, b"\r\nHost: site.test\r\nAccept: */*")
        self.assertEqual((request.length, request.chunked, request.keep_alive), (3, False, True))
        self.assertEqual(request.forwarded_for, b"1.2.3.4")
        self.assertIsNone(request.upgrade)

    def test_http10_closes_unless_kept_alive_and_absolute_targets_name_the_host(self) -> None:
        old = parse_request(b"GET http://site.test:8080/x HTTP/1.0")
        self.assertEqual(
            (old.host, old.target, old.keep_alive, old.http10),
            (b"site.test:8080", b"/x", False, True),
        )
        kept = parse_request(b"GET / HTTP/1.0\r\nConnection: Keep-Alive")
        self.assertTrue(kept.keep_alive)
        closing = parse_request(b"GET / HTTP/1.1\r\nHost: h\r\nConnection: close")
        self.assertFalse(closing.keep_alive)

    def test_an_upgrade_needs_both_headers(self) -> None:
        asked = parse_request(
            b"GET / HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: websocket"
        )
        self.assertEqual(asked.upgrade, b"websocket")
        self.assertIsNone(parse_request(b"GET / HTTP/1.1\r\nHost: h\r\nUpgrade: websocket").upgrade)

    def test_malformed_requests_get_gos_status_and_reason(self) -> None:
        cases = {
            b"GET /": (400, "malformed HTTP request 'GET /'"),
            b"GET / HTTP/1.1 extra\r\nHost: h": (
                400,
                "malformed HTTP request 'GET / HTTP/1.1 extra'",
            ),
            b"GET / HTTP/2.0\r\nHost: h": (505, "unsupported protocol version"),
            b"GET / HTTX/1.1\r\nHost: h": (400, "malformed HTTP version"),
            b"G(T / HTTP/1.1\r\nHost: h": (400, "invalid method"),
            b"GET nowhere HTTP/1.1\r\nHost: h": (400, "invalid request target"),
            b"GET / HTTP/1.1": (400, "missing required Host header"),
            b"GET / HTTP/1.1\r\nHost: a\r\nHost: b": (400, "too many Host headers"),
            b"GET / HTTP/1.1\r\nHost: h\r\nNo colon": (400, "malformed MIME header line"),
            b"GET / HTTP/1.1\r\nHost: h\r\nBad Name: x": (400, "invalid header name"),
            b"GET / HTTP/1.1\r\nHost: h\r\nX-A: 1\r\n folded": (400, "malformed MIME header line"),
            b"GET / HTTP/1.1\r\nHost: h\r\nX-A: 1\nX-B: 2": (400, "malformed HTTP request"),
            b"GET / HTTP/1.1\r\nHost: h\r\nX-A: \x00": (400, "malformed HTTP request"),
            b"GET / HTTP/1.1\r\nHost: h\r\nContent-Length: x": (400, "bad Content-Length"),
            b"GET / HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\nContent-Length: 2": (
                400,
                "bad Content-Length",
            ),
            b"GET / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip": (
                501,
                "unsupported transfer encoding",
            ),
            b"GET / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nContent-Length: 3": (
                400,
                "both Transfer-Encoding and Content-Length",
            ),
        }
        for head, (code, reason) in cases.items():
            with self.assertRaises(BadRequest, msg=head) as caught:
                parse_request(head)
            self.assertEqual((caught.exception.code, caught.exception.reason), (code, reason), head)

    def test_the_fast_path_reads_plain_heads_as_the_line_by_line_parse_does(self) -> None:
        requests = [
            b"GET /a HTTP/1.1\r\nHost: site.test",
            b"GET /a?b=c HTTP/1.1\r\nhOsT:   site.test:8080  \r\nAccept: */*\r\nX-Host: no",
            b"GET / HTTP/1.1\r\nHost:",
            b"GET / HTTP/1.1\r\nX-A: host: b\r\nHost: h\r\nHostname: x\r\nTEx: 1",
            b"DELETE /%20x HTTP/1.1\r\nHost: h\r\nCookie: a=b; c=d\r\nX-Empty:",
        ]
        for head in requests:
            fast, slow = parse_request(head), http1._parse_request_lines(head)
            for field in RequestHead.__slots__:
                self.assertEqual(getattr(fast, field), getattr(slow, field), (head, field))
        # A verbatim response goes on as it came: all its lines but Content-Length are relayed.
        responses = {
            b"HTTP/1.1 200 OK\r\nContent-Length: 5": b"",
            b"HTTP/1.1 404\r\nX-A: 1\r\ncontent-LENGTH:  12 \r\nX-B: content-length: 3": (
                b"\r\nX-A: 1\r\nX-B: content-length: 3"
            ),
            b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\nDate: today": b"\r\nDate: today",
        }
        for head, relayed in responses.items():
            fast_response = parse_response(head)
            slow_response = http1._parse_response_lines(head)
            self.assertTrue(fast_response.verbatim, head)
            self.assertEqual(slow_response.headers, relayed)
            for field in ("code", "status", "length", "chunked", "keep_alive"):
                self.assertEqual(
                    getattr(fast_response, field), getattr(slow_response, field), (head, field)
                )
        # What the fast path leaves to the line by line parse.
        for head in (
            b"HTTP/1.0 200 OK\r\nContent-Length: 5",
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nKeep-Alive: 1",
            b"HTTP/1.1 200 OK\r\nContent-Length: 5, 5",
            b"HTTP/1.1 200 OK",
        ):
            self.assertFalse(parse_response(head).verbatim, head)

    def test_a_response_head_and_what_is_refused(self) -> None:
        response = parse_response(
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\nX-A: 1\r\nKeep-Alive: 1"
        )
        self.assertEqual((response.code, response.status, response.length), (200, b"200 OK", 5))
        self.assertEqual((response.headers, response.keep_alive), (b"\r\nX-A: 1", False))
        self.assertFalse(parse_response(b"HTTP/1.0 200 OK").keep_alive)
        self.assertTrue(parse_response(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked").chunked)
        for bad in (
            b"HTTP/1.1 2000 OK",
            b"HTTP/2 200 OK",
            b"HTTP/1.1 200 OK\r\nNo colon",
            b"HTTP/1.1 200 OK\r\nContent-Length: -1",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip",
        ):
            self.assertRaises(ValueError, parse_response, bad)


class Harness:
    """A proxy on a memory reactor, with clients and backends on StringTransports."""

    def __init__(self, test: SynchronousTestCase) -> None:
        self.clock = MemoryReactorClock()
        self.routes: dict[str, tuple[Route, list[Address] | None]] = {
            "web": (WEB, [A]),
            "two": (WEB, [A, B]),
            "empty": (Route("default/empty", Backend("default", "empty", 80)), []),
            "gone": (Route("default/gone", Backend("default", "gone", 80)), None),
        }
        self.metrics = IngressMetrics()
        self.proxy = IngressProxy(
            self.clock,
            lambda host, uri: self.routes.get(host.split(":")[0]),
            RoundRobin().pick,
            self.metrics,
        )
        self.connects = 0
        test.addCleanup(self.proxy.stop)

    def client(self) -> tuple[Protocol, StringTransport]:
        protocol = self.proxy.buildProtocol(None)
        transport = StringTransport(
            hostAddress=IPv4Address("TCP", "10.0.0.1", 80),
            peerAddress=IPv4Address("TCP", "192.168.1.7", 40000),
            lenient=True,
        )
        protocol.makeConnection(transport)
        return protocol, transport

    def backend(self) -> tuple[Protocol, StringTransport, Address]:
        """The next backend connection the proxy asked for, connected."""
        host, port, factory, _, _ = self.clock.tcpClients[self.connects]
        self.connects += 1
        protocol: Any = factory.buildProtocol(None)
        transport = StringTransport(lenient=True)
        protocol.makeConnection(transport)
        return protocol, transport, (host, port)

    def tick(self, seconds: float) -> None:
        """Let C{seconds} pass, a sweep at a time."""
        while seconds > 0:
            step = min(seconds, ingressproxy.SWEEP_SECONDS)
            self.clock.advance(step)
            seconds -= step

    def refuse(self, reason: Exception) -> None:
        """The next connection the proxy asked for fails."""
        _, _, factory, _, _ = self.clock.tcpClients[self.connects]
        self.connects += 1
        factory.clientConnectionFailed(None, Failure(reason))  # type: ignore[arg-type]

    def sample(
        self, code: int, ingress: str = "default/web", backend: str = "default/web:80"
    ) -> float | None:
        return self.metrics.registry.get_sample_value(
            "k3stw_ingress_requests_total",
            {"ingress": ingress, "backend": backend, "code": str(code), "method": "GET"},
        )


def access_lines(test: SynchronousTestCase) -> list[str]:
    """What the access log writes while C{test} runs, a batch an item."""
    written: list[str] = []

    @implementer(ILogObserver)
    def observe(event: LogEvent) -> None:
        if event.get("log_namespace") == "k3stw.ingress.access":
            written.append(event["lines"])

    globalLogPublisher.addObserver(observe)
    test.addCleanup(globalLogPublisher.removeObserver, observe)
    return written


def take(transport: StringTransport) -> bytes:
    data: bytes = transport.value()
    transport.clear()
    return data


class ProxyTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.h = Harness(self)

    def test_a_request_goes_on_with_forwarded_headers_and_its_connection_is_kept(self) -> None:
        client, out = self.h.client()
        client.dataReceived(
            b"GET /a?b=1 HTTP/1.1\r\nHost: web\r\nAccept: */*\r\nConnection: keep-alive\r\n"
            b"X-Forwarded-For: 1.2.3.4\r\nX-Real-Ip: spoofed\r\n\r\n"
        )
        backend, sent, address = self.h.backend()
        self.assertEqual(address, A)
        self.assertEqual(
            take(sent),
            b"GET /a?b=1 HTTP/1.1\r\nHost: web\r\nAccept: */*\r\n"
            b"X-Forwarded-For: 1.2.3.4, 192.168.1.7\r\nX-Forwarded-Host: web\r\n"
            b"X-Forwarded-Proto: http\r\nX-Forwarded-Port: 80\r\nX-Real-Ip: 192.168.1.7\r\n\r\n",
        )
        backend.dataReceived(
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nKeep-Alive: timeout=5\r\n\r\nhel"
        )
        backend.dataReceived(b"lo")
        self.assertEqual(take(out), OK)
        client.dataReceived(b"GET /again HTTP/1.1\r\nHost: web\r\n\r\n")
        # The same backend connection, no new one.
        self.assertEqual(len(self.h.clock.tcpClients), 1)
        self.assertTrue(take(sent).startswith(b"GET /again HTTP/1.1\r\n"))
        backend.dataReceived(OK)
        self.assertEqual(take(out), OK)
        self.assertEqual(self.h.sample(200), 2.0)
        self.assertFalse(out.disconnecting)

    def test_a_plain_answer_goes_on_as_it_came_with_the_connection_the_client_asked_for(
        self,
    ) -> None:
        answer = b"HTTP/1.1 200 OK\r\nX-B: 2\r\ncontent-length: 2\r\nX-A: 1\r\n\r\nok"
        client, out = self.h.client()
        client.dataReceived(b"GET / HTTP/1.1\r\nHost: web\r\n\r\n")
        backend, _, _ = self.h.backend()
        backend.dataReceived(answer)
        self.assertEqual(take(out), answer)
        client.dataReceived(b"GET / HTTP/1.0\r\nHost: web\r\nConnection: keep-alive\r\n\r\n")
        backend.dataReceived(answer)
        self.assertEqual(
            take(out),
            b"HTTP/1.1 200 OK\r\nX-B: 2\r\ncontent-length: 2\r\nX-A: 1\r\n"
            b"Connection: keep-alive\r\n\r\nok",
        )
        self.assertFalse(out.disconnecting)
        client.dataReceived(b"GET / HTTP/1.1\r\nHost: web\r\nConnection: close\r\n\r\n")
        backend.dataReceived(answer)
        self.assertEqual(
            take(out),
            b"HTTP/1.1 200 OK\r\nX-B: 2\r\ncontent-length: 2\r\nX-A: 1\r\n"
            b"Connection: close\r\n\r\nok",
        )
        self.assertTrue(out.disconnecting)

    def test_the_tls_port_forwards_https_and_shares_the_pool(self) -> None:
        secure = IngressProxy(
            self.h.clock,
            self.h.proxy.lookup,
            self.h.proxy.pick,
            self.h.metrics,
            self.h.proxy.pool,
            "https",
            self.h.proxy.access,
        )
        self.addCleanup(secure.stop)
        plain, out = self.h.client()
        plain.dataReceived(b"GET / HTTP/1.1\r\nHost: web\r\n\r\n")
        backend, sent, _ = self.h.backend()
        backend.dataReceived(OK)
        self.assertEqual(take(out), OK)
        client = secure.buildProtocol(None)
        tls_out = StringTransport(hostAddress=IPv4Address("TCP", "10.0.0.1", 443))
        client.makeConnection(tls_out)
        client.dataReceived(b"GET / HTTP/1.1\r\nHost: web\r\n\r\n")
        # The plain port's kept connection serves the TLS port's request.
        self.assertIn(b"\r\nX-Forwarded-Proto: https\r\nX-Forwarded-Port: 443\r\n", sent.value())
        backend.dataReceived(OK)
        self.assertEqual(tls_out.value(), OK)

    def test_the_proxys_own_answers(self) -> None:
        plain = b"\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: "
        not_found = b"404 Not Found" + plain + b"19\r\n\r\n404 page not found\n"
        for host, answer in (
            ("nowhere", not_found),
            ("gone", not_found),
            ("empty", b"503 Service Unavailable" + plain + b"20\r\n\r\nno available server\n"),
        ):
            client, out = self.h.client()
            client.dataReceived(b"GET / HTTP/1.1\r\nHost: %s\r\n\r\n" % host.encode())
            self.assertEqual(take(out), b"HTTP/1.1 " + answer, host)
            self.assertFalse(out.disconnecting)
        self.assertEqual(self.h.sample(404, "-", "-"), 1.0)
        self.assertEqual(self.h.sample(404, "default/gone", "default/gone:80"), 1.0)
        self.assertEqual(self.h.clock.tcpClients, [])

    def test_a_refused_endpoint_makes_way_for_the_next_and_all_refused_is_502(self) -> None:
        client, out = self.h.client()
        client.dataReceived(b"GET / HTTP/1.1\r\nHost: two\r\n\r\n")
        self.h.refuse(ConnectionRefusedError())
        backend, sent, address = self.h.backend()
        self.assertEqual(address, B)
        backend.dataReceived(OK)
        self.assertEqual(take(out), OK)
        client.dataReceived(b"GET / HTTP/1.1\r\nHost: two\r\n\r\n")
        # B is idle in the pool, but the turn is A's: refused, then B's pooled connection serves.
        self.h.refuse(ConnectionRefusedError())
        self.assertEqual(take(sent)[:6], b"GET / ")
        backend.dataReceived(OK)
        self.assertEqual(take(out), OK)
        client.dataReceived(b"GET / HTTP/1.1\r\nHost: web\r\n\r\n")
        self.h.refuse(ConnectionRefusedError())
        self.assertTrue(take(out).endswith(b"\r\n\r\nBad Gateway"))

    def test_a_connect_timeout_is_504(self) -> None:
        client, out = self.h.client()
        client.dataReceived(b"GET / HTTP/1.1\r\nHost: web\r\n\r\n")
        self.assertEqual(self.h.clock.tcpClients[0][3], ingressproxy.CONNECT_TIMEOUT)
        self.h.refuse(TimeoutError())
        self.assertTrue(take(out).startswith(b"HTTP/1.1 504 Gateway Timeout\r\n"))

    def test_a_silent_backend_is_504_and_idle_connections_are_closed(self) -> None:
        client, out = self.h.client()
        client.dataReceived(b"GET / HTTP/1.1\r\nHost: web\r\n\r\n")
        backend, sent, _ = self.h.backend()
        self.h.tick(ingressproxy.BACKEND_TIMEOUT - 1)
        self.assertEqual(out.value(), b"")
        self.h.tick(1)
        self.assertEqual(
            take(out),
            b"HTTP/1.1 504 Gateway Timeout\r\nContent-Type: text/plain; charset=utf-8\r\n"
            b"Content-Length: 15\r\n\r\nGateway Timeout",
        )
        self.assertTrue(sent.disconnected)
        backend.connectionLost(Failure(ConnectionDone()))
        # A second backend answers; its pooled connection, then the client, idle out.
        client.dataReceived(b"GET / HTTP/1.1\r\nHost: web\r\n\r\n")
        second, kept, _ = self.h.backend()
        second.dataReceived(OK)
        self.h.tick(ingressproxy.POOL_IDLE_SECONDS)
        self.assertTrue(kept.disconnecting)
        second.connectionLost(Failure(ConnectionDone()))
        self.assertFalse(out.disconnecting)
        self.h.tick(ingressproxy.IDLE_TIMEOUT - ingressproxy.POOL_IDLE_SECONDS)
        self.assertTrue(out.disconnecting)
        client.connectionLost(Failure(ConnectionDone()))
        self.h.tick(ingressproxy.LOG_SECONDS + ingressproxy.SWEEP_SECONDS)
        self.assertEqual(self.h.clock.getDelayedCalls(), [])

    def test_a_backend_closing_mid_answer_cuts_the_client_off(self) -> None:
        client, out = self.h.client()
        client.dataReceived(b"GET / HTTP/1.1\r\nHost: web\r\n\r\n")
        backend, _, _ = self.h.backend()
        backend.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhalf")
        backend.connectionLost(Failure(ConnectionDone()))
        self.assertTrue(out.value().endswith(b"half"))
        self.assertTrue(out.disconnected)
        self.assertEqual(self.h.sample(200), 1.0)

    def test_a_backend_closing_before_answering_is_502_and_until_close_bodies_end_there(
        self,
    ) -> None:
        client, out = self.h.client()
        client.dataReceived(b"GET / HTTP/1.1\r\nHost: web\r\n\r\n")
        backend, _, _ = self.h.backend()
        backend.connectionLost(Failure(ConnectionDone()))
        self.assertTrue(take(out).startswith(b"HTTP/1.1 502 Bad Gateway\r\n"))
        client.dataReceived(b"GET / HTTP/1.1\r\nHost: web\r\n\r\n")
        backend, _, _ = self.h.backend()
        backend.dataReceived(b"HTTP/1.0 200 OK\r\n\r\nall of it")
        backend.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(take(out), b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nall of it")
        self.assertTrue(out.disconnecting)

    def test_a_kept_connection_closed_by_the_backend_is_retried_anew(self) -> None:
        client, out = self.h.client()
        client.dataReceived(b"GET / HTTP/1.1\r\nHost: web\r\n\r\n")
        backend, _, _ = self.h.backend()
        backend.dataReceived(OK)
        take(out)
        client.dataReceived(b"GET /2 HTTP/1.1\r\nHost: web\r\n\r\n")
        backend.connectionLost(Failure(ConnectionDone()))
        fresh, sent, _ = self.h.backend()
        self.assertTrue(sent.value().startswith(b"GET /2 "))
        fresh.dataReceived(OK)
        self.assertEqual(take(out), OK)

    def test_a_kept_connection_gone_with_its_pod_retries_on_the_next_endpoint(self) -> None:
        client, out = self.h.client()
        kept = []
        for _ in range(2):
            client.dataReceived(b"GET / HTTP/1.1\r\nHost: two\r\n\r\n")
            backend, sent, _ = self.h.backend()
            backend.dataReceived(OK)
            kept.append((backend, sent))
        take(out)
        # A's pooled connection, sent the request, was closed by its pod, whose address
        # now refuses.
        client.dataReceived(b"GET / HTTP/1.1\r\nHost: two\r\n\r\n")
        kept[0][0].connectionLost(Failure(ConnectionDone()))
        self.h.refuse(ConnectionRefusedError())
        # B's kept connection takes it.
        self.assertTrue(
            kept[1][1]
            .value()
            .endswith(
                b"GET / HTTP/1.1\r\nHost: two\r\n"
                b"X-Forwarded-For: 192.168.1.7\r\nX-Forwarded-Host: two\r\n"
                b"X-Forwarded-Proto: http\r\nX-Forwarded-Port: 80\r\nX-Real-Ip: 192.168.1.7\r\n\r\n"
            )
        )
        kept[1][0].dataReceived(OK)
        self.assertEqual(take(out), OK)

    def test_a_connection_idle_in_the_pool_is_not_timed_out_when_reused(self) -> None:
        client, out = self.h.client()
        client.dataReceived(b"GET / HTTP/1.1\r\nHost: web\r\n\r\n")
        backend, sent, _ = self.h.backend()
        backend.dataReceived(OK)
        self.h.tick(ingressproxy.BACKEND_TIMEOUT + 5)
        client.dataReceived(b"GET / HTTP/1.1\r\nHost: web\r\n\r\n")
        self.h.tick(1)
        self.assertFalse(sent.disconnecting)
        backend.dataReceived(OK)
        self.assertEqual(take(out), OK + OK)

    def test_a_malformed_answer_is_502(self) -> None:
        for answer in (
            b"HTTP/1.1 abc\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nBad\r\n\r\n",
            b"x" * (MAX_HEAD + 1),
        ):
            client, out = self.h.client()
            client.dataReceived(b"GET / HTTP/1.1\r\nHost: web\r\n\r\n")
            backend, sent, _ = self.h.backend()
            backend.dataReceived(answer)
            self.assertTrue(take(out).startswith(b"HTTP/1.1 502 Bad Gateway\r\n"), answer[:20])
            self.assertTrue(sent.disconnected)

    def test_a_bad_chunk_from_the_backend_cuts_the_client_off(self) -> None:
        client, out = self.h.client()
        client.dataReceived(b"GET / HTTP/1.1\r\nHost: web\r\n\r\n")
        backend, sent, _ = self.h.backend()
        backend.dataReceived(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n")
        self.assertTrue(out.disconnected)
        self.assertTrue(sent.disconnected)

    def test_request_bodies_stream_by_length_and_chunked_with_backpressure(self) -> None:
        client, out = self.h.client()
        client.dataReceived(b"POST /up HTTP/1.1\r\nHost: web\r\nContent-Length: 10\r\n\r\nabc")
        backend, sent, _ = self.h.backend()
        self.assertTrue(
            sent.value().endswith(
                b"Content-Length: 10\r\nX-Forwarded-Proto: http\r\nX-Forwarded-Port: 80\r\n"
                b"X-Real-Ip: 192.168.1.7\r\n\r\nabc"
            )
        )
        # Not whole yet: the backend connection pauses the client when full.
        self.assertIs(sent.producer, out)
        client.dataReceived(b"defghij")
        self.assertTrue(sent.value().endswith(b"abcdefghij"))
        self.assertIsNone(sent.producer)
        backend.dataReceived(OK)
        take(out)
        take(sent)
        # An empty body keeps its length: some servers want one on every POST.
        client.dataReceived(b"POST /e HTTP/1.1\r\nHost: web\r\nContent-Length: 0\r\n\r\n")
        self.assertIn(b"\r\nContent-Length: 0\r\n", take(sent))
        backend.dataReceived(OK)
        take(out)
        client.dataReceived(
            b"POST /c HTTP/1.1\r\nHost: web\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel"
        )
        client.dataReceived(b"lo\r\n0\r\n\r\n")
        head, _, body = sent.value().partition(b"\r\n\r\n")
        self.assertIn(b"\r\nTransfer-Encoding: chunked\r\n", head + b"\r\n")
        self.assertEqual(body, b"3\r\nhel\r\n2\r\nlo\r\n0\r\n\r\n")

    def test_a_bad_chunk_size_from_the_client_is_400(self) -> None:
        client, out = self.h.client()
        client.dataReceived(b"POST / HTTP/1.1\r\nHost: web\r\nTransfer-Encoding: chunked\r\n\r\n")
        _, sent, _ = self.h.backend()
        client.dataReceived(b"xyz\r\n")
        self.assertTrue(take(out).startswith(b"HTTP/1.1 400 Bad Request\r\n"))
        self.assertTrue(out.disconnecting)
        self.assertTrue(sent.disconnected)

    def test_response_bodies_chunked_and_large_with_backpressure(self) -> None:
        client, out = self.h.client()
        client.dataReceived(b"GET / HTTP/1.1\r\nHost: web\r\n\r\n")
        backend, sent, _ = self.h.backend()
        backend.dataReceived(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nabcd\r\n")
        self.assertEqual(
            take(out), b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nabcd\r\n"
        )
        # The client's connection pauses the backend's while the body streams.
        self.assertIs(out.producer, sent)
        backend.dataReceived(b"2\r\nef\r\n0\r\n\r\n")
        self.assertEqual(take(out), b"2\r\nef\r\n0\r\n\r\n")
        self.assertIsNone(out.producer)
        # An HTTP/1.0 client gets the body unchunked, and the connection's end.
        client.dataReceived(b"GET / HTTP/1.0\r\nHost: web\r\n\r\n")
        backend.dataReceived(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nab\r\n0\r\n\r\n"
        )
        self.assertEqual(take(out), b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nab")
        self.assertTrue(out.disconnecting)

    def test_answers_without_bodies(self) -> None:
        client, out = self.h.client()
        for request, answer, expected in (
            (
                b"HEAD / HTTP/1.1",
                b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n",
                b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n",
            ),
            (
                b"GET / HTTP/1.1",
                b"HTTP/1.1 204 No Content\r\n\r\n",
                b"HTTP/1.1 204 No Content\r\n\r\n",
            ),
            (
                b"GET / HTTP/1.1",
                b"HTTP/1.1 304 Not Modified\r\nETag: x\r\n\r\n",
                b"HTTP/1.1 304 Not Modified\r\nETag: x\r\n\r\n",
            ),
            (
                b"PUT / HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 2",
                b"HTTP/1.1 100 Continue\r\n\r\n",
                b"HTTP/1.1 100 Continue\r\n\r\n",
            ),
        ):
            client.dataReceived(request + b"\r\nHost: web\r\n\r\n")
            if len(self.h.clock.tcpClients) > self.h.connects:
                backend, sent, _ = self.h.backend()
            backend.dataReceived(answer)
            self.assertEqual(take(out), expected, request)
        client.dataReceived(b"ok")
        self.assertTrue(sent.value().endswith(b"\r\n\r\nok"))
        backend.dataReceived(OK)
        self.assertEqual(take(out), OK)
        self.assertFalse(out.disconnecting)

    def test_pipelined_requests_are_answered_in_order(self) -> None:
        client, out = self.h.client()
        client.dataReceived(
            b"GET /1 HTTP/1.1\r\nHost: web\r\n\r\nGET /2 HTTP/1.1\r\nHost: nowhere\r\n\r\n"
            b"GET /3 HTTP/1.1\r\nHost: web\r\n\r\n"
        )
        backend, sent, _ = self.h.backend()
        self.assertTrue(take(sent).startswith(b"GET /1 "))
        self.assertEqual(out.value(), b"")
        backend.dataReceived(OK)
        # /2 answered by the proxy (404), /3 then sent on.
        answers = take(out)
        self.assertTrue(answers.startswith(OK + b"HTTP/1.1 404 Not Found\r\n"), answers)
        self.assertTrue(take(sent).startswith(b"GET /3 "))
        backend.dataReceived(OK)
        self.assertEqual(take(out), OK)

    def test_a_client_sending_far_ahead_is_paused_until_its_turn(self) -> None:
        client, out = self.h.client()
        client.dataReceived(b"GET / HTTP/1.1\r\nHost: web\r\n\r\n")
        backend, _, _ = self.h.backend()
        client.dataReceived(
            b"GET / HTTP/1.1\r\nHost: web\r\nX: " + b"x" * ingressproxy.PIPELINE_LIMIT
        )
        self.assertEqual(out.producerState, "paused")
        backend.dataReceived(OK)
        self.assertEqual(out.producerState, "producing")

    def test_an_upgrade_is_spliced_after_the_101_and_refused_ones_are_responses(self) -> None:
        client, out = self.h.client()
        client.dataReceived(
            b"GET /ws HTTP/1.1\r\nHost: web\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
        )
        backend, sent, _ = self.h.backend()
        self.assertIn(b"\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n", take(sent))
        client.dataReceived(b"early")
        switched = (
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
        )
        backend.dataReceived(switched + b"hi")
        self.assertEqual(take(out), switched + b"hi")
        self.assertEqual(take(sent), b"early")
        client.dataReceived(b"\x81\x05hello")
        backend.dataReceived(b"\x81\x02ok")
        self.assertEqual((take(sent), take(out)), (b"\x81\x05hello", b"\x81\x02ok"))
        self.assertIs(out.producer, sent)
        self.assertIs(sent.producer, out)
        # Idle tunnels are not swept.
        self.h.tick(ingressproxy.IDLE_TIMEOUT + ingressproxy.BACKEND_TIMEOUT)
        self.assertFalse(out.disconnecting)
        backend.connectionLost(Failure(ConnectionDone()))
        self.assertTrue(out.disconnecting)
        self.assertEqual(self.h.sample(101), 1.0)
        # An upgrade the backend refuses is an ordinary answer; its connection is not kept.
        client, out = self.h.client()
        client.dataReceived(
            b"GET /ws HTTP/1.1\r\nHost: web\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
        )
        backend, sent, _ = self.h.backend()
        backend.dataReceived(OK)
        self.assertEqual(take(out), OK)
        self.assertTrue(sent.disconnected)

    def test_malformed_requests_are_refused_and_the_connection_closed(self) -> None:
        for request, status in (
            (b"GARBAGE\r\n\r\n", b"400 Bad Request"),
            (b"GET / HTTP/1.1\r\nHost: web\r\nNo colon\r\n\r\n", b"400 Bad Request"),
            (
                b"GET / HTTP/1.1\r\nHost: web\r\nX: " + b"x" * MAX_HEAD,
                b"431 Request Header Fields Too Large",
            ),
            (
                b"GET / HTTP/1.1\r\nHost: web\r\nX: " + b"x" * MAX_HEAD + b"\r\n\r\n",
                b"431 Request Header Fields Too Large",
            ),
            (b"GET / HTTP/3\r\nHost: web\r\n\r\n", b"505 HTTP Version Not Supported"),
        ):
            client, out = self.h.client()
            client.dataReceived(request)
            answer = take(out)
            self.assertTrue(answer.startswith(b"HTTP/1.1 " + status + b"\r\n"), answer[:60])
            self.assertIn(b"\r\nConnection: close\r\n", answer)
            self.assertTrue(answer.split(b"\r\n\r\n", 1)[1].startswith(status), answer)
            self.assertTrue(out.disconnecting)
        self.assertEqual(self.h.clock.tcpClients, [])

    def test_a_client_gone_mid_request_lets_its_backend_go(self) -> None:
        client, _out = self.h.client()
        client.dataReceived(b"GET / HTTP/1.1\r\nHost: web\r\n\r\n")
        _, sent, _ = self.h.backend()
        client.connectionLost(Failure(ConnectionDone()))
        self.assertTrue(sent.disconnected)
        self.assertEqual(self.h.sample(499), 1.0)

    def test_endpoints_changing_keep_the_request_in_flight(self) -> None:
        client, out = self.h.client()
        client.dataReceived(b"GET / HTTP/1.1\r\nHost: web\r\n\r\n")
        backend, _, _ = self.h.backend()
        self.h.routes["web"] = (WEB, [B])
        backend.dataReceived(OK)
        self.assertEqual(take(out), OK)
        client.dataReceived(b"GET / HTTP/1.1\r\nHost: web\r\n\r\n")
        _, _, address = self.h.backend()
        self.assertEqual(address, B)

    def test_the_access_log_is_written_in_batches(self) -> None:
        written = access_lines(self)
        client, _out = self.h.client()
        for _ in range(2):
            client.dataReceived(b"GET /x HTTP/1.1\r\nHost: nowhere\r\n\r\n")
        client.dataReceived(b"HEAD /y HTTP/1.1\r\nHost: web\r\n\r\n")
        backend, _, _ = self.h.backend()
        backend.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n")
        self.assertEqual(written, [])
        self.h.tick(ingressproxy.LOG_SECONDS)
        self.assertEqual(len(written), 1)
        lines = written[0].split("\n")
        self.assertEqual(len(lines), 3)
        self.assertRegex(
            lines[0],
            r"^192\.168\.1\.7 - - \[\d\d/\w\w\w/\d{4}:\d\d:\d\d:\d\d \+0000\]"
            r' "GET /x HTTP/1\.1" 404 19 "-" "-" \d+\.\d{3}ms$',
        )
        self.assertRegex(
            lines[2],
            r'^192\.168\.1\.7 - - \[[^]]+\] "HEAD /y HTTP/1\.1" 200 -'
            r' "default/web" "10\.42\.0\.5:8080" \d+\.\d{3}ms$',
        )


class MetricsTests(SynchronousTestCase):
    def test_counts_and_durations_by_ingress_and_backend(self) -> None:
        metrics = IngressMetrics()
        metrics.observe("ns/a", "ns/s:80", 200, "GET", 0.003)
        metrics.observe("ns/a", "ns/s:80", 200, "GET", 0.2)
        get = metrics.registry.get_sample_value
        labels = {"ingress": "ns/a", "backend": "ns/s:80"}
        self.assertEqual(
            get("k3stw_ingress_requests_total", {**labels, "code": "200", "method": "GET"}), 2.0
        )
        self.assertEqual(
            get("k3stw_ingress_request_duration_seconds_bucket", {**labels, "le": "0.005"}), 1.0
        )
        self.assertEqual(
            get("k3stw_ingress_request_duration_seconds_bucket", {**labels, "le": "+Inf"}), 2.0
        )
        self.assertEqual(get("k3stw_ingress_request_duration_seconds_count", labels), 2.0)
        self.assertAlmostEqual(
            get("k3stw_ingress_request_duration_seconds_sum", labels) or 0, 0.203
        )

    def test_the_access_log_flushes_when_full(self) -> None:
        clock = MemoryReactorClock()
        log = AccessLog(clock)
        written = access_lines(self)
        for n in range(ingressproxy.LOG_LINES):
            log.add(("10.0.0.9", log.now(), f"GET /{n} HTTP/1.1", 200, n or "-", "-", "a:1", 1.0))
        self.assertEqual(len(written), 1)
        self.assertEqual(clock.getDelayedCalls(), [])
        lines = written[0].split("\n")
        self.assertEqual(len(lines), ingressproxy.LOG_LINES)
        self.assertRegex(
            lines[2],
            r'^10\.0\.0\.9 - - \[[^]]+\] "GET /2 HTTP/1\.1" 200 2 "-" "a:1" 1\.000ms$',
        )


class _Sink(Protocol):
    def __init__(self, done: Deferred[bytes], size: int) -> None:
        self.done, self.size, self.data = done, size, b""

    def dataReceived(self, data: bytes) -> None:
        self.data += data
        if len(self.data) >= self.size and not self.done.called:
            self.done.callback(self.data)


class DirectWriteTests(TestCase):
    """C{send}'s hold on Twisted's TCP transport (private attributes), on loopback."""

    async def test_send_goes_straight_to_the_socket_when_nothing_waits(self) -> None:
        done: Deferred[bytes] = Deferred()
        payload = b"x" * 1000
        listening = reactor.listenTCP(
            0, Factory.forProtocol(lambda: _Sink(done, 2 * len(payload))), interface="127.0.0.1"
        )
        self.addCleanup(listening.stopListening)
        connected: Deferred[Any] = Deferred()

        class Sender(Protocol):
            def connectionMade(self) -> None:
                transport: Any = self.transport
                send(transport, payload)
                # Nothing buffered: it went to the socket.
                connected.callback((transport._tempDataLen, transport.dataBuffer))
                transport.write(b"y" * 0)
                send(transport, payload)

        from twisted.internet.protocol import ClientCreator

        client = await ClientCreator(reactor, Sender).connectTCP(
            "127.0.0.1", listening.getHost().port
        )
        self.addCleanup(client.transport.loseConnection)
        self.assertEqual(await connected, (0, b""))
        self.assertEqual(await done, payload * 2)
