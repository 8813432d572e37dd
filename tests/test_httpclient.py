"""
How L{HTTPSClient} dials: an IP address at once, with no name resolution in
a pool thread per connection.
"""

from __future__ import annotations

from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from k3stw.httpclient import HTTPSClient
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
