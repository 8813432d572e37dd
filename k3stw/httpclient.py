"""
HTTPS requests from agents and controllers to a server: one place for
timeouts, TLS policy, connection reuse and k3s's wording of HTTP failures.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.web.client import (
    Agent,
    FileBodyProducer,
    HTTPConnectionPool,
    _HTTP11ClientFactory,
    readBody,
)
from twisted.web.http_headers import Headers
from twisted.web.iweb import IPolicyForHTTPS, IResponse

#: k3s's client timeout for supervisor requests.
REQUEST_TIMEOUT = 10.0


@dataclass(frozen=True)
class Response:
    code: int
    phrase: str
    headers: Headers
    body: bytes


class HTTPStatusError(Exception):
    """A non-2xx answer, worded as k3s words it: ``<url>: <code> <phrase>``."""

    def __init__(self, url: str, response: Response) -> None:
        super().__init__(f"{url}: {response.code} {response.phrase}")
        self.url = url
        self.code = response.code
        self.response = response


class _QuietHTTPClientFactory(_HTTP11ClientFactory):
    # One "Starting factory" line per connection would drown the agent's log.
    noisy = False


class HTTPSClient:
    """
    HTTPS with one TLS policy.

    :param persistent: keep connections open between requests (k3s's
        supervisor client does not, the Kubernetes client does).
    """

    def __init__(
        self,
        reactor: IReactorTime,
        policy: IPolicyForHTTPS,
        persistent: bool = True,
        timeout: float = REQUEST_TIMEOUT,
    ) -> None:
        self.reactor = reactor
        self.timeout = timeout
        self.pool = HTTPConnectionPool(reactor, persistent=persistent)
        self.pool._factory = _QuietHTTPClientFactory
        self.agent = Agent(reactor, contextFactory=policy, connectTimeout=timeout, pool=self.pool)

    async def request(
        self,
        method: bytes,
        url: str,
        headers: Mapping[bytes, bytes] | None = None,
        body: bytes | None = None,
    ) -> Response:
        """Send one request; any answer is returned, failures to get one raise."""
        from io import BytesIO

        sent = Headers({name: [value] for name, value in (headers or {}).items()})
        producer = FileBodyProducer(BytesIO(body)) if body is not None else None
        requested: Deferred[IResponse] = self.agent.request(
            method, url.encode("ascii"), sent, producer
        )
        requested.addTimeout(self.timeout, self.reactor)
        response = await requested
        reading: Deferred[bytes] = readBody(response)
        reading.addTimeout(self.timeout, self.reactor)
        data = await reading
        return Response(response.code, response.phrase.decode("latin-1"), response.headers, data)

    async def fetch(
        self,
        url: str,
        headers: Mapping[bytes, bytes] | None = None,
        method: bytes = b"GET",
        body: bytes | None = None,
    ) -> bytes:
        """The body of a 2xx answer to C{method} C{url}, else L{HTTPStatusError}."""
        response = await self.request(method, url, headers, body)
        if not 200 <= response.code < 300:
            raise HTTPStatusError(url, response)
        return response.body

    def close(self) -> Deferred[None]:
        closed: Deferred[None] = self.pool.closeCachedConnections()
        return closed
