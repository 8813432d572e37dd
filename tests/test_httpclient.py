"""
How L{HTTPSClient} dials: an IP address at once, with no name resolution in
a pool thread per connection, through endpoints made once per server.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.client import URI

from k3stw.httpclient import Endpoints, HTTPSClient
from k3stw.pki.tls import UnverifiedPolicy


class DialTests(SynchronousTestCase):
    def test_ip_address_is_dialled_at_once(self) -> None:
        reactor = MemoryReactorClock()
        client = HTTPSClient(reactor, UnverifiedPolicy())
        for url in ("https://127.0.0.1:6443/version", "https://[::1]:6444/version"):
            client.agent.request(b"GET", url.encode())
        # A name would first go to getaddrinfo in the reactor's thread pool (which
        # a memory reactor has not): these connect without it.
        dialled = [(host, port) for host, port, *_ in reactor.tcpClients]
        self.assertEqual(dialled, [("127.0.0.1", 6443), ("::1", 6444)])

    def test_endpoints_and_tls_settings_are_made_once_per_server(self) -> None:
        """The Agent asks for an endpoint per request; one per server is made."""
        made: list[tuple[bytes, int]] = []

        class Counting(UnverifiedPolicy):
            def creatorForNetloc(self, hostname: bytes, port: int) -> Any:
                made.append((hostname, port))
                return super().creatorForNetloc(hostname, port)

        endpoints = Endpoints(MemoryReactorClock(), Counting(), 5)
        first = endpoints.endpointForURI(URI.fromBytes(b"https://127.0.0.1:2379/v3/kv/put"))
        again = endpoints.endpointForURI(URI.fromBytes(b"https://127.0.0.1:2379/v3/kv/range"))
        endpoints.endpointForURI(URI.fromBytes(b"https://127.0.0.2:2379/v3/kv/put"))
        self.assertIs(first, again)
        self.assertEqual(made, [(b"127.0.0.1", 2379), (b"127.0.0.2", 2379)])
