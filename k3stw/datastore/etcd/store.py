"""L{EtcdDatastore}: the L{IDatastore} over an etcd cluster's JSON gateway."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.task import deferLater
from twisted.python.failure import Failure
from zope.interface import implementer

from k3stw.datastore.etcd.codec import LEASE_MAX_TTL, decode_kv, new_lease_id
from k3stw.datastore.etcd.gateway import (
    EtcdError,
    EtcdGateway,
    EtcdTLS,
    as_int,
    b64,
    prefix_range,
)
from k3stw.datastore.etcd.watch import EtcdWatch
from k3stw.datastore.interface import (
    Compacted,
    Conflict,
    DatastoreError,
    DatastoreUnavailable,
    Event,
    FutureRevision,
    IDatastore,
    IWatch,
    KeyExists,
    KeyNotFound,
    KeyValue,
    ListResult,
)
from k3stw.datastore.readiness import DatastoreReadiness
from k3stw.datastore.sql import CompactionPolicy
from k3stw.logs import Logger
from k3stw.machinery.timing import PeriodicJob


@implementer(IDatastore)
class EtcdDatastore(Service):
    """
    L{IDatastore} on an etcd v3 cluster (3.4 or newer) through its JSON gateway.

    etcd already is a revisioned key-value log, so this backend translates
    rather than emulates: revisions are etcd's C{mod_revision}/C{create_revision},
    TTL keys are attached to etcd leases, compare-and-swap is an etcd
    transaction that compares C{mod_revision}, and a watch is one streaming
    C{POST /v3/watch}.

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
        self._reactor = reactor
        self.gateway = EtcdGateway(reactor, endpoints, tls, request_timeout=request_timeout)
        self._request_timeout = request_timeout
        self._watch_buffer = watch_buffer_events
        self.policy = compaction_policy or CompactionPolicy()
        self._watches: set[EtcdWatch] = set()
        self._compactor: PeriodicJob | None = None
        if compact_interval > 0:
            self._compactor = PeriodicJob(
                reactor,
                compact_interval,
                self._compact_tick,
                "etcd compaction",
                first=compact_interval,
            )
        self._announcing: Deferred[None] | None = None
        self._readiness = DatastoreReadiness(self.gateway.description, self._log)

    def __repr__(self) -> str:
        return f"<EtcdDatastore {self.gateway.description}>"

    # Service

    def startService(self) -> None:
        super().startService()
        self._announcing = Deferred.fromCoroutine(self._announce())
        self._announcing.addErrback(lambda f: f.trap(CancelledError))
        if self._compactor is not None:
            self._compactor.startService()

    def stopService(self) -> Deferred[None]:
        super().stopService()
        if self._compactor is not None and self._compactor.running:
            # A compaction under way is cancelled: its calls end at once.
            self._compactor.stopService()
        self._readiness.lost()
        if self._announcing is not None:
            self._announcing.cancel()
            self._announcing = None
        stopped = DatastoreUnavailable(f"datastore {self.gateway.description} stopped")
        for watch in list(self._watches):
            watch.fail(stopped)
        # Requests still running finish (each is bounded by request_timeout)
        # before the connections close, so no connection outlives the service.
        return Deferred.fromCoroutine(self.gateway.close())

    def when_ready(self) -> Deferred[None]:
        """Fires once etcd has answered (startService keeps trying until it does)."""
        return self._readiness.when_ready()

    async def _announce(self) -> None:
        attempt = 0
        while True:
            attempt += 1
            try:
                # A linearizable read: it needs a leader and a quorum.
                revision = await self._current_revision()
            except DatastoreUnavailable as e:
                delay = self._readiness.unreachable(attempt, e)
                if not self.running:
                    return
                await deferLater(self._reactor, delay)
                continue
            break
        self._readiness.reached(revision)

    # Error translation

    async def _revision_error(self, error: EtcdError, requested: int) -> DatastoreError:
        if error.compacted:
            return Compacted(requested, await self._compacted_revision())
        if error.future_revision:
            return FutureRevision(requested, await self._current_revision())
        return DatastoreError(f"etcd refused: {error.message}")

    # IDatastore

    def get(self, key: str, revision: int = 0) -> Deferred[KeyValue | None]:
        return Deferred.fromCoroutine(self._get(key, revision))

    async def _range(self, body: dict[str, Any], revision: int) -> dict[str, Any]:
        """A read as of C{revision} (0: now); a revision etcd has not is the datastore's error."""
        if revision:
            body["revision"] = str(revision)
        try:
            return await self.gateway.call("/v3/kv/range", body, idempotent=True)
        except EtcdError as e:
            raise await self._revision_error(e, revision) from None

    async def _get(self, key: str, revision: int) -> KeyValue | None:
        answer = await self._range({"key": b64(key)}, revision)
        kvs = answer.get("kvs") or []
        return decode_kv(kvs[0]) if kvs else None

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
        answer = await self._range(body, revision)
        items = [decode_kv(raw) for raw in answer.get("kvs") or []]
        at = revision or as_int(answer.get("header", {}).get("revision"))
        return ListResult(items=items, revision=at, more=bool(answer.get("more")))

    def count(self, prefix: str) -> Deferred[int]:
        return Deferred.fromCoroutine(self._count(prefix))

    async def _count(self, prefix: str) -> int:
        raw_prefix = prefix.encode("utf-8")
        body = {**prefix_range(raw_prefix), "count_only": True}
        answer = await self.gateway.call("/v3/kv/range", body, idempotent=True)
        return as_int(answer.get("count"))

    async def _grant(self, ttl: int) -> int:
        if not 0 < ttl <= LEASE_MAX_TTL:
            raise ValueError(f"lease TTL must be between 1 and {LEASE_MAX_TTL} seconds")
        while True:
            lease_id = new_lease_id(ttl)
            try:
                # Granting a lease we name is idempotent: a retry that finds
                # it already there means the first attempt worked.
                await self.gateway.call(
                    "/v3/lease/grant", {"TTL": str(ttl), "ID": str(lease_id)}, idempotent=True
                )
            except EtcdError as e:
                if e.lease_exists:
                    return lease_id
                raise DatastoreError(f"etcd refused a lease: {e.message}") from None
            return lease_id

    def _forget_lease(self, lease_id: int) -> None:
        """Revoke a lease that no key ended up using; it would expire anyway."""

        def ignore(failure: Failure) -> None:
            self._log.debug("revoking unused lease failed: {f}", f=failure.getErrorMessage())

        Deferred.fromCoroutine(
            self.gateway.call("/v3/lease/revoke", {"ID": str(lease_id)}, idempotent=True)
        ).addErrback(ignore)

    async def _txn(self, body: dict[str, Any], key: str) -> dict[str, Any]:
        try:
            return await self.gateway.call("/v3/kv/txn", body, idempotent=False)
        except EtcdError as e:
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
        return as_int(answer["header"]["revision"])

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
        return as_int(answer["header"]["revision"])

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
            return as_int(answer["header"]["revision"])
        answer = await self._txn(
            self._guarded(raw, expected_revision, {"request_delete_range": {"key": raw}}), key
        )
        if not answer.get("succeeded"):
            raise self._refusal(answer, key, expected_revision)
        return as_int(answer["header"]["revision"])

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
        return Conflict(key, expected_revision, decode_kv(kvs[0]))

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
                await self.gateway.call(
                    "/v3/kv/range",
                    {
                        "key": b64(prefix or "\x00"),
                        "revision": str(start_revision),
                        "count_only": True,
                    },
                    idempotent=True,
                )
            except EtcdError as e:
                error = await self._revision_error(e, start_revision)
                if not isinstance(error, FutureRevision):
                    raise error from None
        watch = self._new_watch(prefix, start_revision, deliver, self._watch_buffer)
        watch.open_stream()
        return await watch.established

    def _new_watch(
        self,
        prefix: str,
        start_revision: int,
        deliver: Callable[[Sequence[Event]], None],
        buffer_limit: int,
    ) -> EtcdWatch:
        """A watch that stopService ends; it opens its first stream when told to."""
        watch = EtcdWatch(
            self.gateway, prefix, start_revision, deliver, buffer_limit, self._watches.discard
        )
        self._watches.add(watch)
        return watch

    def current_revision(self) -> Deferred[int]:
        return Deferred.fromCoroutine(self._current_revision())

    async def _current_revision(self) -> int:
        answer = await self.gateway.call(
            "/v3/kv/range", {"key": b64(b"\x00"), "count_only": True}, idempotent=True
        )
        return as_int(answer["header"]["revision"])

    def compact(self, revision: int) -> Deferred[None]:
        return Deferred.fromCoroutine(self._compact(revision))

    async def _compact(self, revision: int) -> None:
        try:
            await self.gateway.call(
                "/v3/kv/compaction", {"revision": str(revision)}, idempotent=True
            )
        except EtcdError as e:
            if e.compacted:
                return  # someone compacted at least this far already
            raise await self._revision_error(e, revision) from None

    def compacted_revision(self) -> Deferred[int]:
        return Deferred.fromCoroutine(self._compacted_revision())

    async def _compacted_revision(self) -> int:
        # etcd has no call for it: a read at revision 1 fails once anything
        # was compacted, and a watch from revision 1 is then cancelled with
        # the compacted revision in its answer.
        try:
            await self.gateway.call(
                "/v3/kv/range", {"key": b64(b"\x00"), "revision": "1"}, idempotent=True
            )
        except EtcdError as e:
            if not e.compacted:
                raise DatastoreError(f"etcd refused: {e.message}") from None
        else:
            return 0
        return await self._compaction_probe()

    async def _compaction_probe(self) -> int:
        found: Deferred[int] = Deferred()

        def deliver(events: Sequence[Event]) -> None:
            pass

        probe = self._new_watch("\x00k3stw-compaction-probe", 1, deliver, 0)

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

    async def _compact_tick(self) -> None:
        try:
            await self._compact_once()
        except Exception:
            if self.running:  # a tick cut short by stopService is no failure
                self._log.failure("etcd compaction failed")

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
