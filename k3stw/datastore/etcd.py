"""
L{IDatastore} over a real etcd v3 cluster, through etcd's JSON gateway.

etcd already is a revisioned key-value log, so this backend translates rather
than emulates: revisions are etcd's C{mod_revision}/C{create_revision}, TTL
keys are attached to etcd leases, compare-and-swap is an etcd transaction that
compares C{mod_revision}, and a watch is one streaming C{POST /v3/watch}.

Everything goes over HTTP/1.1 with Twisted's L{Agent} (keys and values are
base64 in the JSON bodies; int64 fields come back as strings and zero fields
are left out).  Requests fail over between the listed endpoints; a watch whose
member dies resumes from its next revision on another member.
"""

from __future__ import annotations

import base64
import json
import random
import ssl as stdlib_ssl
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, cast
from urllib.parse import urlsplit

from automat import TypeMachineBuilder
from twisted.application.service import Service
from twisted.internet import defer, ssl
from twisted.internet.defer import (
    CancelledError,
    Deferred,
    DeferredList,
    DeferredSemaphore,
    succeed,
)
from twisted.internet.error import ConnectError, ConnectingCancelledError, DNSLookupError
from twisted.internet.interfaces import IConsumer, IOpenSSLClientConnectionCreator, IPushProducer
from twisted.internet.protocol import Protocol as TwistedProtocol
from twisted.internet.protocol import connectionDone
from twisted.internet.task import LoopingCall, deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web._newclient import RequestNotSent
from twisted.web.client import Agent, HTTPConnectionPool, ResponseDone, ResponseFailed
from twisted.web.http_headers import Headers
from twisted.web.iweb import IBodyProducer, IPolicyForHTTPS, IResponse
from zope.interface import implementer

from k3stw.datastore.interface import (
    Compacted,
    Conflict,
    DatastoreError,
    DatastoreUnavailable,
    Event,
    EventType,
    FutureRevision,
    IDatastore,
    IWatch,
    KeyExists,
    KeyNotFound,
    KeyValue,
    ListResult,
    WatchOverflow,
)
from k3stw.datastore.sql import CompactionPolicy

if TYPE_CHECKING:
    from k3stw.datastore.endpoint import EtcdEndpoint

__all__ = ["EtcdDatastore", "EtcdTLS", "parse_etcd_endpoints"]

DEFAULT_PORT = 2379

# Error texts etcd puts in the gateway's {"error", "message", "code"} body.
_COMPACTED = "required revision has been compacted"
_FUTURE = "required revision is a future revision"
_LEASE_EXISTS = "lease already exists"
# gRPC status codes that mean "this member cannot serve now".
_UNAVAILABLE_CODES = frozenset({4, 14})
# Refusals that etcd makes before proposing anything: a write may be retried
# on another member without any risk of applying it twice.
_REFUSED_BEFORE_PROPOSAL = ("no leader", "too many requests", "not capable", "learner")

# Lease IDs are chosen by us and carry the TTL they were granted with, so a
# KeyValue can report its TTL without a round trip per key and two k3stw
# servers sharing one etcd agree on it.  Layout of the positive int64:
# 8 bits tag | 31 random bits | 24 bits TTL in seconds.
_LEASE_TAG = 0x6B
_LEASE_TTL_BITS = 24
_LEASE_RANDOM_BITS = 31
_LEASE_MAX_TTL = (1 << _LEASE_TTL_BITS) - 1


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
    return [_normalise_url(url) for url in _check_schemes(urls)]


def _check_schemes(urls: Sequence[str]) -> Sequence[str]:
    schemes = {urlsplit(url).scheme for url in urls}
    if len(schemes) > 1:
        raise ValueError(f"etcd endpoints mix schemes {sorted(schemes)}; use one of http or https")
    return urls


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
class _ClientTLSPolicy:
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
class _JSONBody:
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


class _BodyCollector(TwistedProtocol):
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


def _read_body(response: IResponse) -> Deferred[bytes]:
    collector = _BodyCollector()
    response.deliverBody(collector)
    return collector.done


class _NotSent(Exception):
    """The request certainly did not reach etcd; any request may go elsewhere."""


class _OutcomeUnknown(Exception):
    """The request may or may not have been applied; only reads may be retried."""


class _EtcdError(Exception):
    """etcd answered with an error that is an answer, not an outage."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def b64(text: str | bytes) -> str:
    """etcd's JSON gateway spelling of a key or value."""
    raw = text.encode("utf-8") if isinstance(text, str) else text
    return base64.b64encode(raw).decode("ascii")


def _unb64(text: str | None) -> bytes:
    return base64.b64decode(text) if text else b""


def prefix_range(prefix: bytes) -> dict[str, str]:
    """The etcd range covering every key that starts with C{prefix} ("" means all keys)."""
    return {"key": b64(prefix or b"\x00"), "range_end": b64(_prefix_end(prefix))}


def _prefix_end(prefix: bytes) -> bytes:
    """The smallest key greater than every key starting with C{prefix} (etcd's rule)."""
    stripped = prefix.rstrip(b"\xff")
    if not stripped:
        return b"\x00"  # every key
    return stripped[:-1] + bytes([stripped[-1] + 1])


def _int(value: Any) -> int:
    return int(value) if value else 0


def _lease_ttl(lease_id: int) -> int:
    """The TTL encoded in one of our lease IDs, or 0 for a lease someone else made."""
    if lease_id >> (_LEASE_TTL_BITS + _LEASE_RANDOM_BITS) != _LEASE_TAG:
        return 0
    return lease_id & _LEASE_MAX_TTL


def _new_lease_id(ttl: int) -> int:
    salt = random.getrandbits(_LEASE_RANDOM_BITS)
    return (_LEASE_TAG << (_LEASE_TTL_BITS + _LEASE_RANDOM_BITS)) | (salt << _LEASE_TTL_BITS) | ttl


def _kv(obj: dict[str, Any]) -> KeyValue:
    return KeyValue(
        key=_unb64(obj.get("key")).decode("utf-8", "surrogateescape"),
        value=_unb64(obj.get("value")),
        create_revision=_int(obj.get("create_revision")),
        mod_revision=_int(obj.get("mod_revision")),
        lease=_lease_ttl(_int(obj.get("lease"))),
    )


def _event(obj: dict[str, Any]) -> Event:
    raw_kv = obj.get("kv", {})
    prev = _kv(obj["prev_kv"]) if obj.get("prev_kv") else None
    revision = _int(raw_kv.get("mod_revision"))
    if obj.get("type") == "DELETE":
        key = _unb64(raw_kv.get("key")).decode("utf-8", "surrogateescape")
        if prev is None:  # the previous version was compacted away
            kv = KeyValue(key, b"", 0, revision)
        else:
            kv = KeyValue(key, prev.value, prev.create_revision, revision, prev.lease)
        return Event(EventType.DELETE, revision, kv, prev)
    kv = _kv(raw_kv)
    if _int(raw_kv.get("version")) == 1:
        return Event(EventType.CREATE, revision, kv, None)
    return Event(EventType.UPDATE, revision, kv, prev)


class _WatchLines(TwistedProtocol):
    """
    The body of one C{/v3/watch} response: one JSON object per line.  Feeds
    each message to the watch, and tells it when the stream ends.
    """

    def __init__(self, watch: _EtcdWatch) -> None:
        self._watch = watch
        self._partial: list[bytes] = []
        self.closing = False

    def dataReceived(self, data: bytes) -> None:
        # A message with 1 MiB values spans many reads: keep the pieces and
        # join them once, when the line ends.
        *complete, rest = data.split(b"\n")
        for piece in complete:
            line = b"".join([*self._partial, piece])
            self._partial = []
            if self.closing:
                return
            if not line.strip():
                continue
            try:
                message = json.loads(line)
            except ValueError:
                message = {"error": {"message": "watch stream sent a line that is not JSON"}}
            self._watch.stream_message(self, message)
        if rest:
            self._partial.append(rest)

    def close(self) -> None:
        self.closing = True
        if self.transport is not None:
            cast(IPushProducer, self.transport).stopProducing()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._watch.stream_lost(self, reason)


class _WatchInput(Protocol):
    """Inputs of the watch lifecycle."""

    def opened(self, stream: _WatchLines, header_revision: int) -> None:
        "etcd confirmed the stream (its first message says created)."

    def lost(self, reason: str) -> None:
        "The stream (or the attempt to open it) failed; try again elsewhere."

    def retry(self) -> None:
        "The backoff is over: open a new stream."

    def end(self, error: DatastoreError | None) -> None:
        "Stop for good: cancelled (None) or failed with C{error}."


@dataclass
class _WatchCore:
    """What the watch machine acts on; outputs call these, never inputs."""

    watch: _EtcdWatch


_builder = TypeMachineBuilder(_WatchInput, _WatchCore)
_opening = _builder.state("opening")
_open = _builder.state("open")
_waiting = _builder.state("waiting")
_ended = _builder.state("ended")


@_opening.upon(_WatchInput.opened).to(_open)
def _on_opened(
    inputs: _WatchInput, core: _WatchCore, stream: _WatchLines, header_revision: int
) -> None:
    core.watch.became_open(stream, header_revision)


@_opening.upon(_WatchInput.lost).to(_waiting)
def _on_open_failed(inputs: _WatchInput, core: _WatchCore, reason: str) -> None:
    core.watch.schedule_retry(reason)


@_open.upon(_WatchInput.lost).to(_waiting)
def _on_lost(inputs: _WatchInput, core: _WatchCore, reason: str) -> None:
    core.watch.schedule_retry(reason)


@_waiting.upon(_WatchInput.retry).to(_opening)
def _on_retry(inputs: _WatchInput, core: _WatchCore) -> None:
    core.watch.open_stream()


@_opening.upon(_WatchInput.end).to(_ended)
@_open.upon(_WatchInput.end).to(_ended)
@_waiting.upon(_WatchInput.end).to(_ended)
def _on_end(inputs: _WatchInput, core: _WatchCore, error: DatastoreError | None) -> None:
    core.watch.finish(error)


_ended.upon(_WatchInput.end).loop().returns(None)
_ended.upon(_WatchInput.lost).loop().returns(None)
_ended.upon(_WatchInput.opened).loop().returns(None)
_ended.upon(_WatchInput.retry).loop().returns(None)

_WatchMachine = _builder.build()


@implementer(IWatch)
class _EtcdWatch:
    """
    One logical watch, carried by successive C{/v3/watch} streams: when a
    stream dies it is reopened (on the next endpoint) from the revision after
    the last one delivered, so the caller sees no gap and no duplicate.
    """

    _log = Logger()

    def __init__(
        self,
        store: EtcdDatastore,
        prefix: str,
        start_revision: int,
        deliver: Callable[[Sequence[Event]], None],
        buffer_limit: int,
    ) -> None:
        self._store = store
        self._prefix = prefix
        self._deliver = deliver
        self._buffer_limit = buffer_limit
        #: The first revision not yet delivered (0 until etcd tells us "now").
        self._next_revision = start_revision
        self._stream: _WatchLines | None = None
        self._paused = False
        self._held: list[Event] = []
        self._retry_call: Any = None
        self._unavailable_since: float | None = None
        self._delay = 0.05
        self._endpoint_index = store._preferred
        self.established: Deferred[IWatch] = Deferred()
        self.ended: Deferred[None] = Deferred()
        self._inputs = _WatchMachine(_WatchCore(self))

    # IWatch / IPushProducer

    def cancel(self) -> None:
        self._inputs.end(None)

    def stopProducing(self) -> None:
        self.cancel()

    def fail(self, error: DatastoreError) -> None:
        """End the watch with C{error} (for example: the datastore stopped)."""
        self._inputs.end(error)

    def pauseProducing(self) -> None:
        self._paused = True

    def resumeProducing(self) -> None:
        self._paused = False
        if self._held and not self.ended.called:
            held, self._held = self._held, []
            self._hand_over(held)

    # Driven by the stream protocol

    def stream_message(self, stream: _WatchLines, message: dict[str, Any]) -> None:
        if stream is not self._stream or stream.closing:
            return
        result = message.get("result")
        if not isinstance(result, dict):
            error = message.get("error") or {}
            self._drop_stream(f"watch stream error: {error.get('message', error)}")
            return
        if result.get("created"):
            self._inputs.opened(stream, _int(result.get("header", {}).get("revision")))
        if result.get("canceled"):
            compact_revision = _int(result.get("compact_revision"))
            if compact_revision:
                self._inputs.end(Compacted(self._next_revision, compact_revision))
            else:
                reason = result.get("cancel_reason") or "etcd cancelled the watch"
                self._drop_stream(str(reason))
            return
        events = [_event(raw) for raw in result.get("events", ())]
        fresh = [event for event in events if event.revision >= self._next_revision]
        if fresh:
            self._next_revision = fresh[-1].revision + 1
            if self._paused:
                self._held.extend(fresh)
                if len(self._held) > self._buffer_limit:
                    self._inputs.end(
                        WatchOverflow(
                            f"watch on {self._prefix!r} fell more than "
                            f"{self._buffer_limit} events behind"
                        )
                    )
            else:
                self._hand_over(fresh)

    def stream_lost(self, stream: _WatchLines, reason: Failure) -> None:
        if stream is not self._stream or stream.closing:
            return
        self._stream = None
        self._inputs.lost(f"watch stream lost: {reason.getErrorMessage()}")

    # Outputs of the machine

    def open_stream(self) -> None:
        Deferred.fromCoroutine(self._open_stream()).addErrback(
            lambda f: self._log.failure("etcd watch on {prefix!r} failed", f, prefix=self._prefix)
        )

    def became_open(self, stream: _WatchLines, header_revision: int) -> None:
        if self._next_revision == 0:
            # "From now": the first change after the revision etcd watched from.
            self._next_revision = header_revision + 1
        self._unavailable_since = None
        self._delay = 0.05
        if not self.established.called:
            self.established.callback(self)

    def schedule_retry(self, reason: str) -> None:
        now = self._store._reactor.seconds()
        if self._unavailable_since is None:
            self._unavailable_since = now
            self._log.info(
                "etcd watch on {prefix!r} interrupted ({reason}); resuming from revision {rev}",
                prefix=self._prefix,
                reason=reason,
                rev=self._next_revision,
            )
        self._endpoint_index = (self._endpoint_index + 1) % len(self._store._endpoints)
        if now - self._unavailable_since >= self._store._request_timeout:
            # Give up from a fresh call stack: ending is an input.
            self._retry_call = self._store._reactor.callLater(
                0,
                self._inputs.end,
                DatastoreUnavailable(f"etcd watch on {self._prefix!r} lost: {reason}"),
            )
            return
        delay = self._delay if self._endpoint_index == 0 else 0
        self._delay = min(self._delay * 2, 1.0)
        self._retry_call = self._store._reactor.callLater(delay, self._inputs.retry)

    def finish(self, error: DatastoreError | None) -> None:
        self._held = []
        if self._retry_call is not None and self._retry_call.active():
            self._retry_call.cancel()
        self._drop_stream(None)
        self._store._watches.discard(self)
        if not self.established.called:
            # The caller of watch() gets the error there; ended only mirrors it.
            self.established.errback(error or CancelledError())
            self.ended.addErrback(lambda f: None)
        if error is None:
            self.ended.callback(None)
        else:
            self.ended.errback(error)

    # Helpers

    def _drop_stream(self, reason: str | None) -> None:
        stream, self._stream = self._stream, None
        if stream is not None:
            stream.close()
        if reason is not None:
            self._inputs.lost(reason)

    def _hand_over(self, events: list[Event]) -> None:
        try:
            self._deliver(events)
        except Exception:
            self._log.failure("watch consumer on {prefix!r} raised", prefix=self._prefix)

    async def _open_stream(self) -> None:
        prefix = self._prefix.encode("utf-8")
        create: dict[str, Any] = {**prefix_range(prefix), "prev_kv": True}
        if self._next_revision:
            create["start_revision"] = str(self._next_revision)
        endpoint = self._store._endpoints[self._endpoint_index]
        stream = _WatchLines(self)
        try:
            response = await self._store._watch_agent.request(
                b"POST",
                (endpoint + "/v3/watch").encode("ascii"),
                Headers(
                    {
                        b"Content-Type": [b"application/json"],
                        # etcd ends the stream if its member loses the leader.
                        b"Grpc-Metadata-hasleader": [b"true"],
                    }
                ),
                _JSONBody(json.dumps({"create_request": create}).encode("ascii")),
            )
        except Exception as e:
            self._inputs.lost(f"{endpoint}: {_describe(e)}")
            return
        if self.ended.called:
            response.deliverBody(stream)
            stream.close()
            return
        if response.code != 200:
            try:
                body = await _read_body(response)
            except Exception as e:
                body = _describe(e).encode()
            self._inputs.lost(f"{endpoint}: HTTP {response.code} {body[:200]!r}")
            return
        self._stream = stream
        response.deliverBody(stream)


def _is_cancellation(error: BaseException) -> bool:
    if isinstance(error, CancelledError | ConnectingCancelledError):
        return True
    reasons = getattr(error, "reasons", None) or ()
    return any(reason.check(CancelledError, ConnectingCancelledError) for reason in reasons)


def _describe(error: BaseException) -> str:
    if isinstance(error, ResponseFailed | _NotSent | _OutcomeUnknown):
        reasons = getattr(error, "reasons", None)
        if reasons:
            return "; ".join(r.getErrorMessage() for r in reasons)
    return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__


@implementer(IDatastore)
class EtcdDatastore(Service):
    """
    L{IDatastore} on an etcd v3 cluster (3.4 or newer) through its JSON gateway.

    :param reactor: provides L{IReactorTime} and TCP (and TLS) connections.
    :param endpoints: client URLs of the members, C{http://} or C{https://}
        (see L{parse_etcd_endpoints}); requests fail over in this order.
    :param tls: client TLS material for C{https://} endpoints.
    :param request_timeout: how long one call may keep trying the members
        before it fails with L{DatastoreUnavailable}.
    :param watch_buffer_events: how many events a paused watch may hold before it
        ends with L{WatchOverflow}.
    :param compact_interval: how often the background compactor runs, in
        seconds (0: never).
    :param compaction_policy: how much history the compactor keeps (by
        default the last 1000 revisions or 5 minutes, whichever is more).
    """

    _log = Logger()

    #: At most this many requests in flight at once (watches not counted).
    max_connections = 64

    def __init__(
        self,
        reactor: Any,
        endpoints: Sequence[str],
        tls: EtcdTLS | None = None,
        *,
        request_timeout: float = 5.0,
        watch_buffer_events: int = 10_000,
        compact_interval: float = 300.0,
        compaction_policy: CompactionPolicy | None = None,
    ) -> None:
        if not endpoints:
            raise ValueError("no etcd endpoint given")
        self._reactor = reactor
        self._endpoints = [_normalise_url(url) for url in _check_schemes(list(endpoints))]
        self._request_timeout = request_timeout
        self._watch_buffer = watch_buffer_events
        self._compact_interval = compact_interval
        self.policy = compaction_policy or CompactionPolicy()
        self._preferred = 0
        policy: IPolicyForHTTPS | None = None
        if self._endpoints[0].startswith("https://"):
            policy = _ClientTLSPolicy(tls or EtcdTLS())
        self._pool = HTTPConnectionPool(reactor, persistent=True)
        self._pool.maxPersistentPerHost = self.max_connections
        self._slots = DeferredSemaphore(self.max_connections)
        self._pool.retryAutomatically = False
        self._watch_pool = HTTPConnectionPool(reactor, persistent=False)
        timeout = max(1, int(request_timeout))
        if policy is None:
            self._agent = Agent(reactor, connectTimeout=timeout, pool=self._pool)
            self._watch_agent = Agent(reactor, connectTimeout=timeout, pool=self._watch_pool)
        else:
            self._agent = Agent(reactor, policy, connectTimeout=timeout, pool=self._pool)
            self._watch_agent = Agent(
                reactor, policy, connectTimeout=timeout, pool=self._watch_pool
            )
        self._watches: set[_EtcdWatch] = set()
        self._compactor: LoopingCall | None = None
        self._in_flight: set[Deferred[tuple[int, bytes]]] = set()
        self._announcing: Deferred[None] | None = None
        self._is_ready = False
        self._ready_waiters: list[Deferred[None]] = []
        self._compacting: Deferred[None] | None = None

    def __repr__(self) -> str:
        return f"<EtcdDatastore {','.join(self._endpoints)}>"

    # Service

    def startService(self) -> None:
        super().startService()
        self._announcing = Deferred.fromCoroutine(self._announce())
        self._announcing.addErrback(lambda f: f.trap(CancelledError))
        if self._compact_interval > 0:
            self._compactor = LoopingCall(self._compact_tick)
            self._compactor.clock = self._reactor
            self._compactor.start(self._compact_interval, now=False).addErrback(
                lambda f: self._log.failure("etcd compactor stopped", f)
            )

    def stopService(self) -> Deferred[None]:
        super().stopService()
        if self._compactor is not None and self._compactor.running:
            self._compactor.stop()
        self._compactor = None
        self._is_ready = False
        if self._announcing is not None:
            self._announcing.cancel()
            self._announcing = None
        stopped = DatastoreUnavailable(f"datastore {','.join(self._endpoints)} stopped")
        for watch in list(self._watches):
            watch.fail(stopped)
        return Deferred.fromCoroutine(self._drain())

    async def _drain(self) -> None:
        # Requests still running finish (each is bounded by request_timeout)
        # before the pools close, so no connection outlives the service.
        if self._compacting is not None:
            await self._compacting
        while self._in_flight:
            await DeferredList(list(self._in_flight), consumeErrors=True)
        await DeferredList(
            [self._pool.closeCachedConnections(), self._watch_pool.closeCachedConnections()]
        )

    def when_ready(self) -> Deferred[None]:
        """Fires once etcd has answered (startService keeps trying until it does)."""
        if self._is_ready:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._ready_waiters.append(d)
        return d

    async def _announce(self) -> None:
        delay = 0.5
        attempt = 0
        endpoints = ",".join(self._endpoints)
        while True:
            attempt += 1
            try:
                # A linearizable read: it needs a leader and a quorum.
                revision = await self._current_revision()
            except DatastoreUnavailable as e:
                self._log.warn(
                    "datastore {endpoint} unreachable (attempt {attempt}): {reason}; "
                    "retrying in {delay:.1f}s",
                    endpoint=endpoints,
                    attempt=attempt,
                    reason=str(e),
                    delay=delay,
                )
                if not self.running:
                    return
                await deferLater(self._reactor, delay)
                delay = min(delay * 2, 10.0)
                continue
            break
        self._log.info(
            "datastore {endpoint} ready at revision {rev}", endpoint=endpoints, rev=revision
        )
        self._is_ready = True
        waiters, self._ready_waiters = self._ready_waiters, []
        for d in waiters:
            d.callback(None)

    # The HTTP layer

    async def _call(self, path: str, body: dict[str, Any], *, idempotent: bool) -> dict[str, Any]:
        """
        POST C{body} to C{path} on the preferred member, failing over to the
        others until one answers or C{request_timeout} has passed.

        :raises _EtcdError: etcd's own answer to a bad request.
        :raises DatastoreUnavailable: no member could serve it.
        """
        payload = json.dumps(body).encode("ascii")
        deadline = self._reactor.seconds() + self._request_timeout
        delay = 0.05
        failures: dict[str, str] = {}
        while True:
            for _ in range(len(self._endpoints)):
                endpoint = self._endpoints[self._preferred]
                remaining = deadline - self._reactor.seconds()
                if remaining <= 0:
                    break
                try:
                    return await self._attempt(endpoint, path, payload, remaining)
                except _NotSent as e:
                    failures[endpoint] = _describe(e)
                except _OutcomeUnknown as e:
                    failures[endpoint] = _describe(e)
                    if not idempotent:
                        raise DatastoreUnavailable(
                            f"etcd {endpoint} failed during {path}, outcome unknown: "
                            f"{failures[endpoint]}"
                        ) from None
                self._preferred = (self._preferred + 1) % len(self._endpoints)
            if self._reactor.seconds() + delay >= deadline:
                reasons = "; ".join(f"{ep}: {why}" for ep, why in failures.items())
                raise DatastoreUnavailable(f"etcd unavailable ({reasons or 'timed out'})")
            await deferLater(self._reactor, delay)
            delay = min(delay * 2, 0.5)

    async def _exchange(self, endpoint: str, path: str, payload: bytes) -> tuple[int, bytes]:
        # Agent opens a connection per concurrent request: bound them.
        await self._slots.acquire()
        try:
            response = await self._agent.request(
                b"POST",
                (endpoint + path).encode("ascii"),
                Headers({b"Content-Type": [b"application/json"]}),
                _JSONBody(payload),
            )
            return response.code, await _read_body(response)
        finally:
            self._slots.release()

    async def _attempt(
        self, endpoint: str, path: str, payload: bytes, timeout: float
    ) -> dict[str, Any]:
        exchange = Deferred.fromCoroutine(self._exchange(endpoint, path, payload))
        timer = self._reactor.callLater(timeout, exchange.cancel)
        self._in_flight.add(exchange)
        try:
            status, raw = await exchange
        except (ConnectError, DNSLookupError, RequestNotSent) as e:
            raise _NotSent(_describe(e)) from e
        except Exception as e:
            if timer.active():
                if _is_cancellation(e):
                    raise CancelledError() from e  # our caller gave up: not an outage
                raise _OutcomeUnknown(_describe(e)) from e
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
        code = _int(answer.get("code"))
        message = str(answer.get("message") or answer.get("error") or f"HTTP {status}")
        if code in _UNAVAILABLE_CODES or status >= 500:
            if any(text in message for text in _REFUSED_BEFORE_PROPOSAL):
                raise _NotSent(message)
            raise _OutcomeUnknown(message)
        raise _EtcdError(code, message)

    # Error translation

    async def _revision_error(self, error: _EtcdError, requested: int) -> DatastoreError:
        if _COMPACTED in error.message:
            return Compacted(requested, await self._compacted_revision())
        if _FUTURE in error.message:
            return FutureRevision(requested, await self._current_revision())
        return DatastoreError(f"etcd refused: {error.message}")

    # IDatastore

    def get(self, key: str, revision: int = 0) -> Deferred[KeyValue | None]:
        return Deferred.fromCoroutine(self._get(key, revision))

    async def _get(self, key: str, revision: int) -> KeyValue | None:
        body: dict[str, Any] = {"key": b64(key)}
        if revision:
            body["revision"] = str(revision)
        try:
            answer = await self._call("/v3/kv/range", body, idempotent=True)
        except _EtcdError as e:
            raise await self._revision_error(e, revision) from None
        kvs = answer.get("kvs") or []
        return _kv(kvs[0]) if kvs else None

    def list(
        self, prefix: str, limit: int = 0, continue_from: str | None = None, revision: int = 0
    ) -> Deferred[ListResult]:
        return Deferred.fromCoroutine(self._list(prefix, limit, continue_from, revision))

    async def _list(
        self, prefix: str, limit: int, continue_from: str | None, revision: int
    ) -> ListResult:
        raw_prefix = prefix.encode("utf-8")
        start = raw_prefix
        if continue_from is not None:
            start = max(start, continue_from.encode("utf-8") + b"\x00")
        body: dict[str, Any] = {**prefix_range(raw_prefix), "key": b64(start or b"\x00")}
        if limit:
            body["limit"] = str(limit)
        if revision:
            body["revision"] = str(revision)
        try:
            answer = await self._call("/v3/kv/range", body, idempotent=True)
        except _EtcdError as e:
            raise await self._revision_error(e, revision) from None
        items = [_kv(raw) for raw in answer.get("kvs") or []]
        at = revision or _int(answer.get("header", {}).get("revision"))
        return ListResult(items=items, revision=at, more=bool(answer.get("more")))

    def count(self, prefix: str) -> Deferred[int]:
        return Deferred.fromCoroutine(self._count(prefix))

    async def _count(self, prefix: str) -> int:
        raw_prefix = prefix.encode("utf-8")
        body = {**prefix_range(raw_prefix), "count_only": True}
        answer = await self._call("/v3/kv/range", body, idempotent=True)
        return _int(answer.get("count"))

    async def _grant(self, ttl: int) -> int:
        if not 0 < ttl <= _LEASE_MAX_TTL:
            raise ValueError(f"lease TTL must be between 1 and {_LEASE_MAX_TTL} seconds")
        while True:
            lease_id = _new_lease_id(ttl)
            try:
                # Granting a lease we name is idempotent: a retry that finds
                # it already there means the first attempt worked.
                await self._call(
                    "/v3/lease/grant", {"TTL": str(ttl), "ID": str(lease_id)}, idempotent=True
                )
            except _EtcdError as e:
                if _LEASE_EXISTS in e.message:
                    return lease_id
                raise DatastoreError(f"etcd refused a lease: {e.message}") from None
            return lease_id

    def _forget_lease(self, lease_id: int) -> None:
        """Revoke a lease that no key ended up using; it would expire anyway."""

        def ignore(failure: Failure) -> None:
            self._log.debug("revoking unused lease failed: {f}", f=failure.getErrorMessage())

        Deferred.fromCoroutine(
            self._call("/v3/lease/revoke", {"ID": str(lease_id)}, idempotent=True)
        ).addErrback(ignore)

    async def _txn(self, body: dict[str, Any], key: str) -> dict[str, Any]:
        try:
            return await self._call("/v3/kv/txn", body, idempotent=False)
        except _EtcdError as e:
            raise DatastoreError(f"etcd refused a write to {key}: {e.message}") from None

    def create(self, key: str, value: bytes, lease_ttl: int | None = None) -> Deferred[int]:
        return Deferred.fromCoroutine(self._create(key, value, lease_ttl))

    async def _create(self, key: str, value: bytes, lease_ttl: int | None) -> int:
        lease_id = await self._grant(lease_ttl) if lease_ttl else 0
        raw = b64(key)
        put: dict[str, Any] = {"key": raw, "value": b64(value)}
        if lease_id:
            put["lease"] = str(lease_id)
        answer = await self._txn(
            {
                "compare": [
                    {"key": raw, "target": "CREATE", "result": "EQUAL", "create_revision": "0"}
                ],
                "success": [{"request_put": put}],
            },
            key,
        )
        if not answer.get("succeeded"):
            if lease_id:
                self._forget_lease(lease_id)
            raise KeyExists(key)
        return _int(answer["header"]["revision"])

    def update(
        self, key: str, value: bytes, expected_revision: int, lease_ttl: int | None = None
    ) -> Deferred[int]:
        return Deferred.fromCoroutine(self._update(key, value, expected_revision, lease_ttl))

    async def _update(
        self, key: str, value: bytes, expected_revision: int, lease_ttl: int | None
    ) -> int:
        lease_id = await self._grant(lease_ttl) if lease_ttl else 0
        raw = b64(key)
        put: dict[str, Any] = {"key": raw, "value": b64(value)}
        if lease_id:
            put["lease"] = str(lease_id)
        answer = await self._txn(self._guarded(raw, expected_revision, {"request_put": put}), key)
        if not answer.get("succeeded"):
            if lease_id:
                self._forget_lease(lease_id)
            raise self._refusal(answer, key, expected_revision)
        return _int(answer["header"]["revision"])

    def delete(self, key: str, expected_revision: int | None = None) -> Deferred[int]:
        return Deferred.fromCoroutine(self._delete(key, expected_revision))

    async def _delete(self, key: str, expected_revision: int | None) -> int:
        raw = b64(key)
        if expected_revision is None:
            answer = await self._txn(
                {
                    "compare": [
                        {
                            "key": raw,
                            "target": "CREATE",
                            "result": "GREATER",
                            "create_revision": "0",
                        }
                    ],
                    "success": [{"request_delete_range": {"key": raw}}],
                },
                key,
            )
            if not answer.get("succeeded"):
                raise KeyNotFound(key)
            return _int(answer["header"]["revision"])
        answer = await self._txn(
            self._guarded(raw, expected_revision, {"request_delete_range": {"key": raw}}), key
        )
        if not answer.get("succeeded"):
            raise self._refusal(answer, key, expected_revision)
        return _int(answer["header"]["revision"])

    @staticmethod
    def _guarded(raw_key: str, expected_revision: int, operation: dict[str, Any]) -> dict[str, Any]:
        """A txn doing C{operation} if the key exists at C{expected_revision}, else reading it."""
        return {
            "compare": [
                {"key": raw_key, "target": "CREATE", "result": "GREATER", "create_revision": "0"},
                {
                    "key": raw_key,
                    "target": "MOD",
                    "result": "EQUAL",
                    "mod_revision": str(expected_revision),
                },
            ],
            "success": [operation],
            "failure": [{"request_range": {"key": raw_key}}],
        }

    @staticmethod
    def _refusal(answer: dict[str, Any], key: str, expected_revision: int) -> DatastoreError:
        responses = answer.get("responses") or [{}]
        kvs = responses[0].get("response_range", {}).get("kvs") or []
        if not kvs:
            return KeyNotFound(key)
        return Conflict(key, expected_revision, _kv(kvs[0]))

    def watch(
        self, prefix: str, start_revision: int, deliver: Callable[[Sequence[Event]], None]
    ) -> Deferred[IWatch]:
        return Deferred.fromCoroutine(self._watch(prefix, start_revision, deliver))

    async def _watch(
        self, prefix: str, start_revision: int, deliver: Callable[[Sequence[Event]], None]
    ) -> IWatch:
        if start_revision > 0:
            # etcd accepts a compacted start and cancels right after "created";
            # check first so that watch() itself fails with Compacted.
            try:
                await self._call(
                    "/v3/kv/range",
                    {
                        "key": b64(prefix or "\x00"),
                        "revision": str(start_revision),
                        "count_only": True,
                    },
                    idempotent=True,
                )
            except _EtcdError as e:
                error = await self._revision_error(e, start_revision)
                if not isinstance(error, FutureRevision):
                    raise error from None
        watch = _EtcdWatch(self, prefix, start_revision, deliver, self._watch_buffer)
        self._watches.add(watch)
        watch.open_stream()
        return await watch.established

    def current_revision(self) -> Deferred[int]:
        return Deferred.fromCoroutine(self._current_revision())

    async def _current_revision(self) -> int:
        answer = await self._call(
            "/v3/kv/range", {"key": b64(b"\x00"), "count_only": True}, idempotent=True
        )
        return _int(answer["header"]["revision"])

    def compact(self, revision: int) -> Deferred[None]:
        return Deferred.fromCoroutine(self._compact(revision))

    async def _compact(self, revision: int) -> None:
        try:
            await self._call("/v3/kv/compaction", {"revision": str(revision)}, idempotent=True)
        except _EtcdError as e:
            if _COMPACTED in e.message:
                return  # someone compacted at least this far already
            raise await self._revision_error(e, revision) from None

    def compacted_revision(self) -> Deferred[int]:
        return Deferred.fromCoroutine(self._compacted_revision())

    async def _compacted_revision(self) -> int:
        # etcd has no call for it: a read at revision 1 fails once anything
        # was compacted, and a watch from revision 1 is then cancelled with
        # the compacted revision in its answer.
        try:
            await self._call(
                "/v3/kv/range", {"key": b64(b"\x00"), "revision": "1"}, idempotent=True
            )
        except _EtcdError as e:
            if _COMPACTED not in e.message:
                raise DatastoreError(f"etcd refused: {e.message}") from None
        else:
            return 0
        return await self._compaction_probe()

    async def _compaction_probe(self) -> int:
        found: Deferred[int] = Deferred()

        def deliver(events: Sequence[Event]) -> None:
            pass

        probe = _EtcdWatch(self, "\x00k3stw-compaction-probe", 1, deliver, 0)
        self._watches.add(probe)

        def compacted(failure: Failure) -> None:
            if failure.check(Compacted) and not found.called:
                found.callback(failure.value.compact_revision)  # type: ignore[union-attr]
            elif not found.called:
                found.errback(failure)

        probe.ended.addErrback(compacted)
        probe.established.addErrback(compacted)
        probe.open_stream()
        found.addTimeout(self._request_timeout, self._reactor)
        try:
            return await found
        except defer.TimeoutError:
            raise DatastoreUnavailable("etcd did not report its compacted revision") from None
        finally:
            probe.cancel()

    def health(self) -> Deferred[None]:
        return Deferred.fromCoroutine(self._health())

    async def _health(self) -> None:
        # A linearizable read needs a leader and a quorum: that is "healthy".
        await self._current_revision()

    # Background compaction

    def _compact_tick(self) -> Deferred[None]:
        def failed(failure: Failure) -> None:
            if self.running:  # a tick cut short by stopService is no failure
                self._log.failure("etcd compaction failed", failure)

        self._compacting = Deferred.fromCoroutine(self._compact_once()).addErrback(failed)
        return self._compacting

    async def _compact_once(self) -> None:
        now = self._reactor.seconds()
        try:
            current = await self._current_revision()
        except DatastoreUnavailable as e:
            self._log.warn("etcd compaction skipped: {reason}", reason=str(e))
            return
        self.policy.observe(now, current)
        target = self.policy.target(now, current)
        if target <= 0 or target <= await self._compacted_revision():
            return
        await self._compact(target)
        self._log.info("etcd compacted to revision {rev}", rev=target)


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
        self._call("/v3/kv/range", {"key": b64(b"\0"), "count_only": True})

    def _call(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
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
            except (OSError, ValueError) as e:
                errors.append(f"{url}: {e}")
        raise DatastoreUnavailable("; ".join(errors))

    def list_prefix(self, prefix: str) -> dict[str, bytes]:
        answer = self._call("/v3/kv/range", prefix_range(prefix.encode()))
        return {
            base64.b64decode(kv["key"]).decode(): base64.b64decode(kv.get("value", ""))
            for kv in answer.get("kvs", [])
        }

    def create(self, key: str, value: bytes) -> bool:
        encoded = b64(key)
        answer = self._call(
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
