"""
etcd's v3 JSON gateway, as a client: POSTs over Twisted's HTTP client that
fail over between the members, streams on one member, TLS, and the gateway's
spelling of keys (base64) and ranges.

Keys and values are base64 in the JSON bodies; int64 fields come back as
strings and zero fields are left out.  Every failure of a call is sorted
into an answer from etcd (L{EtcdError}) or an outage
(L{DatastoreUnavailable}), and only calls that cannot have been applied, or
are idempotent, go to the next member.

L{EtcdKeys} is the same gateway, blocking, for the moment before the reactor runs.
"""

from __future__ import annotations

import base64
import json
import ssl as stdlib_ssl
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import urlsplit

from twisted.internet import ssl
from twisted.internet.defer import (
    CancelledError,
    Deferred,
    DeferredList,
    DeferredSemaphore,
    succeed,
)
from twisted.internet.error import ConnectError, ConnectingCancelledError, DNSLookupError
from twisted.internet.interfaces import IConsumer, IOpenSSLClientConnectionCreator, IPushProducer
from twisted.internet.protocol import Protocol, connectionDone
from twisted.internet.task import deferLater
from twisted.python.failure import Failure
from twisted.web._newclient import RequestNotSent
from twisted.web.client import Agent, HTTPConnectionPool, ResponseDone, ResponseFailed
from twisted.web.http_headers import Headers
from twisted.web.iweb import IBodyProducer, IPolicyForHTTPS, IResponse
from zope.interface import implementer

from k3stw.datastore.interface import DatastoreUnavailable
from k3stw.httpclient import Endpoints, _QuietHTTPClientFactory
from k3stw.machinery.timing import Backoff

if TYPE_CHECKING:
    from k3stw.datastore.location import EtcdEndpoint

DEFAULT_PORT = 2379

# Error texts etcd puts in the gateway's {"error", "message", "code"} body.
_COMPACTED = "required revision has been compacted"
_FUTURE = "required revision is a future revision"
_LEASE_EXISTS = "lease already exists"
_LEARNER = "not supported for learner"
# gRPC status codes that mean "this member cannot serve now".
_UNAVAILABLE_CODES = frozenset({4, 14})
# Refusals that etcd makes before proposing anything: a write may be retried
# on another member without any risk of applying it twice.
_REFUSED_BEFORE_PROPOSAL = ("no leader", "too many requests", "not capable", "learner")

#: The wait between rounds over every member, while a call's time lasts.
_NEXT_ROUND = Backoff(0.05, maximum=0.5)


def parse_etcd_endpoints(endpoint: str) -> list[str]:
    """
    Split a k3s-style etcd endpoint (C{http://h1:2379,http://h2:2379}) into URLs.

    :raises ValueError: naming the accepted form, when an entry is not an
        C{http://} or C{https://} URL with a host, or the schemes are mixed.
    """
    urls = [part.strip() for part in endpoint.split(",") if part.strip()]
    if not urls:
        raise ValueError(
            "empty etcd endpoint; expected http(s)://host:port[,http(s)://host:port...]"
        )
    return normalise_endpoints(urls)


def normalise_endpoints(urls: Sequence[str]) -> list[str]:
    """
    C{urls} as C{scheme://host:port} (etcd's port by default).

    :raises ValueError: as L{parse_etcd_endpoints}.
    """
    schemes = {urlsplit(url).scheme for url in urls}
    if len(schemes) > 1:
        raise ValueError(f"etcd endpoints mix schemes {sorted(schemes)}; use one of http or https")
    return [_normalise_url(url) for url in urls]


def _normalise_url(url: str) -> str:
    parts = urlsplit(url)
    try:
        port = parts.port or DEFAULT_PORT
    except ValueError:
        port = -1
    if parts.scheme not in ("http", "https") or not parts.hostname or port <= 0:
        raise ValueError(
            f"malformed etcd endpoint {url!r}; expected http(s)://host:port"
            "[,http(s)://host:port...]"
        )
    host = parts.hostname
    if ":" in host:
        host = f"[{host}]"
    return f"{parts.scheme}://{host}:{port}"


@dataclass(frozen=True)
class EtcdTLS:
    """
    Client TLS for C{https://} etcd endpoints, as given by
    C{--datastore-cafile}, C{--datastore-certfile} and C{--datastore-keyfile}.

    :ivar cafile: PEM bundle of the CA that signed etcd's serving certificate
        (None: the platform's trust store).
    :ivar certfile: PEM client certificate, for etcd's C{--client-cert-auth}.
    :ivar keyfile: PEM key of C{certfile}.
    """

    cafile: str | None = None
    certfile: str | None = None
    keyfile: str | None = None


@implementer(IPolicyForHTTPS)
class ClientTLSPolicy:
    """Verify etcd's certificate by host name or IP, and present our client certificate."""

    def __init__(self, tls: EtcdTLS) -> None:
        self._trust_root: ssl.Certificate | None = None
        self._client: ssl.PrivateCertificate | None = None
        if tls.cafile:
            with open(tls.cafile, "rb") as f:
                self._trust_root = ssl.Certificate.loadPEM(f.read())
        if tls.certfile or tls.keyfile:
            if not (tls.certfile and tls.keyfile):
                raise ValueError("--datastore-certfile and --datastore-keyfile go together")
            with open(tls.certfile, "rb") as f:
                cert_pem = f.read()
            with open(tls.keyfile, "rb") as f:
                key_pem = f.read()
            self._client = ssl.PrivateCertificate.loadPEM(cert_pem + b"\n" + key_pem)

    def creatorForNetloc(self, hostname: bytes, port: int) -> IOpenSSLClientConnectionCreator:
        name = hostname.decode("ascii").strip("[]")
        if self._trust_root is None:
            return ssl.optionsForClientTLS(name, clientCertificate=self._client)
        return ssl.optionsForClientTLS(
            name, trustRoot=self._trust_root, clientCertificate=self._client
        )


@implementer(IBodyProducer)
class JSONBody:
    """A request body already in memory; written in one go."""

    def __init__(self, body: bytes) -> None:
        self._body = body
        self.length = len(body)

    def startProducing(self, consumer: IConsumer) -> Deferred[None]:
        consumer.write(self._body)
        return succeed(None)

    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        pass


class _BodyCollector(Protocol):
    """Collect a whole response body (readBody without its deprecation noise)."""

    def __init__(self) -> None:
        self.done: Deferred[bytes] = Deferred(self._abort)
        self._chunks: list[bytes] = []

    def _abort(self, d: Deferred[bytes]) -> None:
        if self.transport is not None:
            cast(IPushProducer, self.transport).stopProducing()

    def dataReceived(self, data: bytes) -> None:
        self._chunks.append(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self.done.called:
            return
        if reason.check(ResponseDone):
            self.done.callback(b"".join(self._chunks))
        else:
            self.done.errback(reason)


def read_body(response: IResponse) -> Deferred[bytes]:
    """The whole body of C{response}."""
    collector = _BodyCollector()
    response.deliverBody(collector)
    return collector.done


class _NotSent(Exception):
    """The request certainly did not reach etcd; any request may go elsewhere."""


class _OutcomeUnknown(Exception):
    """The request may or may not have been applied; only reads may be retried."""


class EtcdError(Exception):
    """etcd answered with an error that is an answer, not an outage."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    @property
    def compacted(self) -> bool:
        """The revision asked for was compacted."""
        return _COMPACTED in self.message

    @property
    def future_revision(self) -> bool:
        """The revision asked for does not exist yet."""
        return _FUTURE in self.message

    @property
    def lease_exists(self) -> bool:
        """A lease with the ID asked for was granted already."""
        return _LEASE_EXISTS in self.message


def b64(text: str | bytes) -> str:
    """etcd's JSON gateway spelling of a key or value."""
    raw = text.encode("utf-8") if isinstance(text, str) else text
    return base64.b64encode(raw).decode("ascii")


def unb64(text: str | None) -> bytes:
    """A key or value as the gateway spells it, decoded (absent means empty)."""
    return base64.b64decode(text) if text else b""


def as_int(value: Any) -> int:
    """An int64 field of an answer: a string, or absent when zero."""
    return int(value) if value else 0


def prefix_range(prefix: bytes) -> dict[str, str]:
    """The etcd range covering every key that starts with C{prefix} ("" means all keys)."""
    return {"key": b64(prefix or b"\x00"), "range_end": b64(prefix_end(prefix))}


def prefix_end(prefix: bytes) -> bytes:
    """The smallest key greater than every key starting with C{prefix} (etcd's rule)."""
    stripped = prefix.rstrip(b"\xff")
    if not stripped:
        return b"\x00"  # every key
    return stripped[:-1] + bytes([stripped[-1] + 1])


def _is_cancellation(error: BaseException) -> bool:
    if isinstance(error, CancelledError | ConnectingCancelledError):
        return True
    reasons = getattr(error, "reasons", None) or ()
    return any(reason.check(CancelledError, ConnectingCancelledError) for reason in reasons)


def describe(error: BaseException) -> str:
    """One line about a failed exchange with a member, for messages and logs."""
    if isinstance(error, ResponseFailed | _NotSent | _OutcomeUnknown):
        reasons = getattr(error, "reasons", None)
        if reasons:
            return "; ".join(r.getErrorMessage() for r in reasons)
    return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__


class EtcdGateway:
    """
    The JSON gateway of an etcd v3 cluster (3.4 or newer).

    :param reactor: provides L{IReactorTime} and TCP (and TLS) connections.
    :param endpoints: client URLs of the members, C{http://} or C{https://}
        (see L{parse_etcd_endpoints}); calls fail over in this order.
    :param tls: client TLS material for C{https://} endpoints.
    :param request_timeout: how long one call may keep trying the members
        before it fails with L{DatastoreUnavailable}.
    """

    #: At most this many requests in flight at once (streams not counted).
    max_connections = 64

    def __init__(
        self,
        reactor: Any,
        endpoints: Sequence[str],
        tls: EtcdTLS | None = None,
        *,
        request_timeout: float = 5.0,
    ) -> None:
        if not endpoints:
            raise ValueError("no etcd endpoint given")
        self.reactor = reactor
        self.endpoints = normalise_endpoints(list(endpoints))
        self.request_timeout = request_timeout
        #: The member calls go to first: the last one that answered.
        self.preferred = 0
        policy: IPolicyForHTTPS | None = None
        if self.endpoints[0].startswith("https://"):
            policy = ClientTLSPolicy(tls or EtcdTLS())
        self._pool = HTTPConnectionPool(reactor, persistent=True)
        self._pool.maxPersistentPerHost = self.max_connections
        self._slots = DeferredSemaphore(self.max_connections)
        self._pool.retryAutomatically = False
        self._stream_pool = HTTPConnectionPool(reactor, persistent=False)
        # A "Starting factory" line per connection (TLS ones name objects by address).
        self._pool._factory = self._stream_pool._factory = _QuietHTTPClientFactory
        # The members' endpoints (and TLS settings) are made once, not per request.
        members = Endpoints(reactor, policy, max(1, int(request_timeout)))
        self._agent: Agent = Agent.usingEndpointFactory(reactor, members, pool=self._pool)
        self._stream_agent: Agent = Agent.usingEndpointFactory(
            reactor, members, pool=self._stream_pool
        )
        self._in_flight: set[Deferred[tuple[int, bytes]]] = set()

    @property
    def description(self) -> str:
        """The members, as messages name them."""
        return ",".join(self.endpoints)

    async def call(self, path: str, body: dict[str, Any], *, idempotent: bool) -> dict[str, Any]:
        """
        POST C{body} to C{path} on the preferred member, failing over to the
        others until one answers or C{request_timeout} has passed.

        :raises EtcdError: etcd's own answer to a bad request.
        :raises DatastoreUnavailable: no member could serve it.
        """
        payload = json.dumps(body).encode("ascii")
        deadline = self.reactor.seconds() + self.request_timeout
        rounds = 0
        failures: dict[str, str] = {}
        while True:
            for _ in range(len(self.endpoints)):
                endpoint = self.endpoints[self.preferred]
                remaining = deadline - self.reactor.seconds()
                if remaining <= 0:
                    break
                try:
                    return await self._attempt(endpoint, path, payload, remaining)
                except _NotSent as e:
                    failures[endpoint] = describe(e)
                except _OutcomeUnknown as e:
                    failures[endpoint] = describe(e)
                    if not idempotent:
                        raise DatastoreUnavailable(
                            f"etcd {endpoint} failed during {path}, outcome unknown: "
                            f"{failures[endpoint]}"
                        ) from None
                self.preferred = (self.preferred + 1) % len(self.endpoints)
            rounds += 1
            delay = _NEXT_ROUND.delay(rounds)
            if self.reactor.seconds() + delay >= deadline:
                reasons = "; ".join(f"{ep}: {why}" for ep, why in failures.items())
                raise DatastoreUnavailable(f"etcd unavailable ({reasons or 'timed out'})")
            await deferLater(self.reactor, delay)

    def open_stream(self, endpoint: str, path: str, body: dict[str, Any]) -> Deferred[IResponse]:
        """
        POST C{body} to C{path} on C{endpoint} alone, on a connection of its
        own, for an answer that streams (a watch): no failover, no deadline.
        """
        return self._stream_agent.request(
            b"POST",
            (endpoint + path).encode("ascii"),
            Headers(
                {
                    b"Content-Type": [b"application/json"],
                    # etcd ends the stream if its member loses the leader.
                    b"Grpc-Metadata-hasleader": [b"true"],
                }
            ),
            JSONBody(json.dumps(body).encode("ascii")),
        )

    async def close(self) -> None:
        """Let the calls still running finish, then close every connection."""
        # Each call is bounded by request_timeout, so this ends.
        while self._in_flight:
            await DeferredList(list(self._in_flight), consumeErrors=True)
        await DeferredList(
            [self._pool.closeCachedConnections(), self._stream_pool.closeCachedConnections()]
        )

    async def _exchange(self, endpoint: str, path: str, payload: bytes) -> tuple[int, bytes]:
        # Agent opens a connection per concurrent request: bound them.
        await self._slots.acquire()
        try:
            response = await self._agent.request(
                b"POST",
                (endpoint + path).encode("ascii"),
                Headers({b"Content-Type": [b"application/json"]}),
                JSONBody(payload),
            )
            return response.code, await read_body(response)
        finally:
            self._slots.release()

    async def _attempt(
        self, endpoint: str, path: str, payload: bytes, timeout: float
    ) -> dict[str, Any]:
        exchange = Deferred.fromCoroutine(self._exchange(endpoint, path, payload))
        timer = self.reactor.callLater(timeout, exchange.cancel)
        self._in_flight.add(exchange)
        try:
            status, raw = await exchange
        except (ConnectError, DNSLookupError, RequestNotSent) as e:
            raise _NotSent(describe(e)) from e
        except Exception as e:
            if timer.active():
                if _is_cancellation(e):
                    raise CancelledError() from e  # our caller gave up: not an outage
                raise _OutcomeUnknown(describe(e)) from e
            if isinstance(e, ConnectingCancelledError):
                raise _NotSent("no connection in time") from e
            raise _OutcomeUnknown("no answer in time") from e
        finally:
            self._in_flight.discard(exchange)
            if timer.active():
                timer.cancel()
        try:
            answer = json.loads(raw) if raw else {}
        except ValueError:
            raise _OutcomeUnknown(f"HTTP {status}, not JSON: {raw[:200]!r}") from None
        if status == 200 and "error" not in answer:
            return dict(answer)
        code = as_int(answer.get("code"))
        message = str(answer.get("message") or answer.get("error") or f"HTTP {status}")
        # A learner refuses all but a few reads (FailedPrecondition): it has
        # applied nothing, so the call may go on to a voting member.
        if _LEARNER in message:
            raise _NotSent(message)
        if code in _UNAVAILABLE_CODES or status >= 500:
            if any(text in message for text in _REFUSED_BEFORE_PROPOSAL):
                raise _NotSent(message)
            raise _OutcomeUnknown(message)
        raise EtcdError(code, message)


def _refusal(error: urllib.error.HTTPError) -> EtcdError | None:
    """etcd's own answer in an HTTP error (a 4xx with its JSON error), if it is one."""
    if error.code >= 500:
        return None
    try:
        answer = json.loads(error.read())
    except ValueError:
        return None
    message = str(answer.get("message") or answer.get("error") or "")
    return EtcdError(as_int(answer.get("code")), message) if message else None


class EtcdKeys:
    """
    Blocking access to a few keys through the same JSON gateway, for the
    moment before the reactor runs (L{k3stw.datastore.blocking}).
    """

    def __init__(self, endpoint: EtcdEndpoint, timeout: float = 10.0) -> None:
        self.urls = list(endpoint.urls)
        self.description = ",".join(self.urls)
        self.timeout = timeout
        tls = endpoint.tls
        self.context: stdlib_ssl.SSLContext | None = None
        if any(url.startswith("https://") for url in self.urls):
            self.context = stdlib_ssl.create_default_context(cafile=tls.cafile)
            if tls.certfile and tls.keyfile:
                self.context.load_cert_chain(tls.certfile, tls.keyfile)
        # Reachable now, or DatastoreUnavailable, as the SQL backends connect at once.
        self.call("/v3/kv/range", {"key": b64(b"\0"), "count_only": True})

    def call(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """POST C{body} to C{path} on the first member that answers."""
        errors: list[str] = []
        for url in self.urls:
            request = urllib.request.Request(
                url.rstrip("/") + path,
                json.dumps(body).encode(),
                {"content-type": "application/json"},
            )
            try:
                with urllib.request.urlopen(
                    request, timeout=self.timeout, context=self.context
                ) as answer:
                    document: dict[str, Any] = json.load(answer)
                    return document
            except urllib.error.HTTPError as e:
                refusal = _refusal(e)
                if refusal is not None:
                    raise refusal from None
                errors.append(f"{url}: {e}")
            except (OSError, ValueError) as e:
                errors.append(f"{url}: {e}")
        raise DatastoreUnavailable("; ".join(errors))

    def list_prefix(self, prefix: str) -> dict[str, bytes]:
        answer = self.call("/v3/kv/range", prefix_range(prefix.encode()))
        return {
            unb64(kv["key"]).decode(): unb64(kv.get("value", "")) for kv in answer.get("kvs", [])
        }

    def create(self, key: str, value: bytes) -> bool:
        encoded = b64(key)
        answer = self.call(
            "/v3/kv/txn",
            {
                "compare": [
                    {"key": encoded, "target": "CREATE", "result": "EQUAL", "create_revision": "0"}
                ],
                "success": [{"request_put": {"key": encoded, "value": b64(value)}}],
            },
        )
        return bool(answer.get("succeeded"))

    def close(self) -> None:
        pass
