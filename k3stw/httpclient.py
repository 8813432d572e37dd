"""
HTTPS requests from agents and controllers to a server: one place for
timeouts, TLS policy, connection reuse and k3s's wording of HTTP failures.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from io import BytesIO

from OpenSSL.SSL import Error as SSLError
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import wrapClientTLS
from twisted.internet.error import (
    ConnectError,
    ConnectionDone,
    ConnectionLost,
    ConnectionRefusedError,
)
from twisted.internet.interfaces import IReactorTime, IStreamClientEndpoint
from twisted.internet.protocol import Protocol, connectionDone
from twisted.python.failure import Failure
from twisted.web._newclient import _WrapperException
from twisted.web.client import (
    URI,
    Agent,
    FileBodyProducer,
    HTTPConnectionPool,
    ResponseDone,
    _HTTP11ClientFactory,
    readBody,
)
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgentEndpointFactory, IPolicyForHTTPS, IResponse
from zope.interface import implementer

from k3stw.hostport import hostname_dialer

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


class RequestFailed(Exception):
    """
    No answer: the connection failed or broke, worded as Go's HTTP client
    words it (``Get "https://host:port/path": EOF``), as k3s's messages show.
    """

    def __init__(self, method: bytes, url: str, reason: str) -> None:
        super().__init__(f'{method.decode("ascii").capitalize()} "{url}": {reason}')
        self.reason = reason


def _reason(error: BaseException) -> str:
    """A short reason for a failed request, with Go's words where they exist."""
    if isinstance(error, _WrapperException) and error.reasons:
        return _reason(error.reasons[0].value)
    if isinstance(error, ConnectionLost | ConnectionDone):
        return "EOF"
    if isinstance(error, ConnectionRefusedError):
        return "connect: connection refused"
    if isinstance(error, SSLError):
        return f"tls: {error}"
    return str(error) or type(error).__name__


class _QuietHTTPClientFactory(_HTTP11ClientFactory):
    # One "Starting factory" line per connection would drown the agent's log.
    noisy = False


@implementer(IAgentEndpointFactory)
class Endpoints:
    """
    An Agent's endpoints, as Twisted's own but for an IP address, which is
    dialled straight: Twisted would resolve it with C{getaddrinfo} in a pool
    thread for every new connection (hundreds in a burst of pods, and a
    thread, its stack and its malloc arena kept for each one the pool grew).

    The Agent asks for an endpoint on every request, even one that reuses a
    pooled connection: the last few are kept, with their TLS settings.

    :param policy: TLS for C{https} URIs (None: only C{http} ones).
    """

    #: Endpoints kept at most (a client talks to a few servers; probes to many pods).
    kept = 16

    def __init__(
        self, reactor: IReactorTime, policy: IPolicyForHTTPS | None, timeout: float
    ) -> None:
        self._dial = hostname_dialer(reactor, timeout)
        self._policy = policy
        self._kept: dict[tuple[bytes, bytes, int], IStreamClientEndpoint] = {}

    def endpointForURI(self, uri: URI) -> IStreamClientEndpoint:
        key = (uri.scheme, uri.host, uri.port)
        endpoint = self._kept.get(key)
        if endpoint is None:
            endpoint = self._endpoint(uri)
            if len(self._kept) >= self.kept:
                self._kept.clear()
            self._kept[key] = endpoint
        return endpoint

    def _endpoint(self, uri: URI) -> IStreamClientEndpoint:
        host = uri.host.decode("ascii")
        endpoint = self._dial(f"[{host}]:{uri.port}" if ":" in host else f"{host}:{uri.port}")
        if uri.scheme == b"https":
            assert self._policy is not None, "an https URI needs a TLS policy"
            return wrapClientTLS(self._policy.creatorForNetloc(uri.host, uri.port), endpoint)
        return endpoint


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
        self.agent = Agent.usingEndpointFactory(
            reactor, Endpoints(reactor, policy, timeout), pool=self.pool
        )

    async def request(
        self,
        method: bytes,
        url: str,
        headers: Mapping[bytes, bytes] | None = None,
        body: bytes | None = None,
    ) -> Response:
        """Send one request; any answer is returned, failures to get one raise."""
        return await self._read(await self._send(method, url, headers, body))

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

    async def stream_lines(
        self,
        url: str,
        on_line: Callable[[bytes], None],
        headers: Mapping[bytes, bytes] | None = None,
    ) -> Response:
        """
        GET C{url} and hand each line of a 2xx body to C{on_line} as it
        arrives (a Kubernetes watch), until the server ends it; a non-2xx
        answer is read whole and returned.  Only the headers have a timeout:
        a watch is quiet for as long as nothing changes.
        """
        response = await self._send(b"GET", url, headers, None)
        if not 200 <= response.code < 300:
            reading: Deferred[bytes] = readBody(response)
            reading.addTimeout(self.timeout, self.reactor)
            body = await reading
            return Response(
                response.code, response.phrase.decode("latin-1"), response.headers, body
            )
        lines = _LineReader(on_line)
        response.deliverBody(lines)
        await lines.finished
        return Response(response.code, response.phrase.decode("latin-1"), response.headers, b"")

    async def _read(self, response: IResponse) -> Response:
        reading: Deferred[bytes] = readBody(response)
        reading.addTimeout(self.timeout, self.reactor)
        body = await reading
        return Response(response.code, response.phrase.decode("latin-1"), response.headers, body)

    async def _send(
        self, method: bytes, url: str, headers: Mapping[bytes, bytes] | None, body: bytes | None
    ) -> IResponse:
        sent = Headers({name: [value] for name, value in (headers or {}).items()})
        producer = FileBodyProducer(BytesIO(body)) if body is not None else None
        requested: Deferred[IResponse] = self.agent.request(
            method, url.encode("ascii"), sent, producer
        )
        requested.addTimeout(self.timeout, self.reactor)
        try:
            return await requested
        except (_WrapperException, ConnectError, SSLError) as e:
            raise RequestFailed(method, url, _reason(e)) from e

    def close(self) -> Deferred[None]:
        closed: Deferred[None] = self.pool.closeCachedConnections()
        return closed


class _LineReader(Protocol):
    """A response body split into lines; C{finished} fires when the body ends."""

    #: A longer line is not a watch event; refuse it rather than buffer without end.
    MAX_LINE = 16 * 1024 * 1024

    def __init__(self, on_line: Callable[[bytes], None]) -> None:
        self.on_line = on_line
        self.finished: Deferred[None] = Deferred(lambda _: self._cancel())
        self._buffer = b""

    def dataReceived(self, data: bytes) -> None:
        *complete, self._buffer = (self._buffer + data).split(b"\n")
        for line in complete:
            if line.strip():
                self.on_line(line)
        if len(self._buffer) > self.MAX_LINE:
            self._cancel()

    def _cancel(self) -> None:
        if self.transport is not None:
            self.transport.stopProducing()  # type: ignore[attr-defined]

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        # ResponseDone is the normal end; anything else is a broken watch.
        if self.finished.called:
            return
        if reason.check(ResponseDone):
            self.finished.callback(None)
        else:
            self.finished.errback(reason)
