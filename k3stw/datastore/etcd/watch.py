"""
One logical etcd watch over successive C{POST /v3/watch} streams, and the
typed Automat machine of its lifecycle: opening, open, waiting to reopen
(on the next member), ended.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, cast

from automat import TypeMachineBuilder
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IDelayedCall, IPushProducer
from twisted.internet.protocol import Protocol as TwistedProtocol
from twisted.internet.protocol import connectionDone
from twisted.python.failure import Failure
from zope.interface import implementer

from k3stw.datastore.etcd.codec import decode_event
from k3stw.datastore.etcd.gateway import (
    EtcdGateway,
    as_int,
    describe,
    prefix_range,
    read_body,
)
from k3stw.datastore.interface import (
    Compacted,
    DatastoreError,
    DatastoreUnavailable,
    Event,
    IWatch,
    WatchOverflow,
)
from k3stw.logs import Logger
from k3stw.machinery.timing import Backoff

#: The wait before a stream is reopened, once every member was tried.
_REOPEN = Backoff(0.05, maximum=1.0)


class _WatchLines(TwistedProtocol):
    """
    The body of one C{/v3/watch} response: one JSON object per line.  Feeds
    each message to the watch, and tells it when the stream ends.
    """

    def __init__(self, watch: EtcdWatch) -> None:
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

    watch: EtcdWatch


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
class EtcdWatch:
    """
    One logical watch, carried by successive C{/v3/watch} streams: when a
    stream dies it is reopened (on the next endpoint) from the revision after
    the last one delivered, so the caller sees no gap and no duplicate.

    :param buffer_limit: how many events it may hold while paused before it
        ends with L{WatchOverflow}.
    :param on_end: told once the watch has ended, however it ended.
    """

    _log = Logger()

    def __init__(
        self,
        gateway: EtcdGateway,
        prefix: str,
        start_revision: int,
        deliver: Callable[[Sequence[Event]], None],
        buffer_limit: int,
        on_end: Callable[[EtcdWatch], None],
    ) -> None:
        self._gateway = gateway
        self._prefix = prefix
        self._deliver = deliver
        self._buffer_limit = buffer_limit
        self._on_end = on_end
        #: The first revision not yet delivered (0 until etcd tells us "now").
        self._next_revision = start_revision
        self._stream: _WatchLines | None = None
        self._paused = False
        self._held: list[Event] = []
        self._retry_call: IDelayedCall | None = None
        self._unavailable_since: float | None = None
        self._failures = 0
        self._endpoint_index = gateway.preferred
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
            self._inputs.opened(stream, as_int(result.get("header", {}).get("revision")))
        if result.get("canceled"):
            compact_revision = as_int(result.get("compact_revision"))
            if compact_revision:
                self._inputs.end(Compacted(self._next_revision, compact_revision))
            else:
                reason = result.get("cancel_reason") or "etcd cancelled the watch"
                self._drop_stream(str(reason))
            return
        events = [decode_event(raw) for raw in result.get("events", ())]
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
        self._failures = 0
        if not self.established.called:
            self.established.callback(self)

    def schedule_retry(self, reason: str) -> None:
        reactor = self._gateway.reactor
        now = reactor.seconds()
        if self._unavailable_since is None:
            self._unavailable_since = now
            self._log.info(
                "etcd watch on {prefix!r} interrupted ({reason}); resuming from revision {rev}",
                prefix=self._prefix,
                reason=reason,
                rev=self._next_revision,
            )
        self._endpoint_index = (self._endpoint_index + 1) % len(self._gateway.endpoints)
        if now - self._unavailable_since >= self._gateway.request_timeout:
            # Give up from a fresh call stack: ending is an input.
            self._retry_call = reactor.callLater(
                0,
                self._inputs.end,
                DatastoreUnavailable(f"etcd watch on {self._prefix!r} lost: {reason}"),
            )
            return
        self._failures += 1
        # The next member at once; a pause only once all of them were tried.
        delay = _REOPEN.delay(self._failures) if self._endpoint_index == 0 else 0
        self._retry_call = reactor.callLater(delay, self._inputs.retry)

    def finish(self, error: DatastoreError | None) -> None:
        self._held = []
        if self._retry_call is not None and self._retry_call.active():
            self._retry_call.cancel()
        self._drop_stream(None)
        self._on_end(self)
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
        endpoint = self._gateway.endpoints[self._endpoint_index]
        stream = _WatchLines(self)
        try:
            response = await self._gateway.open_stream(
                endpoint, "/v3/watch", {"create_request": create}
            )
        except Exception as e:
            self._inputs.lost(f"{endpoint}: {describe(e)}")
            return
        if self.ended.called:
            response.deliverBody(stream)
            stream.close()
            return
        if response.code != 200:
            try:
                body = await read_body(response)
            except Exception as e:
                body = describe(e).encode()
            self._inputs.lost(f"{endpoint}: HTTP {response.code} {body[:200]!r}")
            return
        self._stream = stream
        response.deliverBody(stream)
