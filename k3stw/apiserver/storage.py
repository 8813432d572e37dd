"""
Kubernetes objects over an L{IDatastore}: keys, resourceVersions, and the
object lifecycle rules (uid, creation timestamp, generation, generateName,
finalizers and graceful deletion) that every verb shares.

An object's ``metadata.resourceVersion`` is the datastore revision of its
last write; it is never stored, only set on the way out.
"""

from __future__ import annotations

import base64
import binascii
import builtins
import json
import uuid
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime

from k3stw.apiserver.allocation import Allocator, Reservation
from k3stw.apiserver.kinds import namespaces
from k3stw.apiserver.objectmeta import metadata_causes
from k3stw.apiserver.patch import record_update
from k3stw.apiserver.registry import ResourceType
from k3stw.apiserver.status import (
    NAMESPACE_MISMATCH,
    StatusError,
    already_exists,
    bad_request,
    conflict,
    gone,
    invalid,
    not_found,
)
from k3stw.apiserver.strategy import Cause, Strategy
from k3stw.datastore.interface import (
    Compacted,
    Conflict,
    DatastoreUnavailable,
    Event,
    EventType,
    FutureRevision,
    IDatastore,
    IWatch,
    KeyExists,
    KeyNotFound,
    KeyValue,
)
from k3stw.machinery.objects import Object, copy_json, generated_suffix, is_deleting
from k3stw.machinery.objects import metadata as metadata_of
from k3stw.machinery.times import parse_time, rfc3339

Predicate = Callable[[Object], bool]
#: L{ObjectStore._graceful}'s answer for a graceful deletion already under way.
_PENDING = object()
#: Told of every write that stored or removed an object: its resource, its
#: last state, and whether it is gone.
WriteObserver = Callable[[ResourceType, Object, bool], None]
#: Checks a client's write of the new object over the stored one (None on create), once
#: defaulted; raises L{StatusError} to refuse it (RBAC's escalation checks).
Admit = Callable[[Object, Object | None], None]


class AdmissionPlugins(Protocol):
    """The admission plugins that read other objects (LimitRanger, ResourceQuota)."""

    async def mutate(self, store: ObjectStore, resource: ResourceType, obj: Object) -> None:
        """Change a new object its kind has prepared and defaulted."""

    async def validate(
        self, store: ObjectStore, resource: ResourceType, obj: Object, old: Object | None = None
    ) -> None:
        """Refuse (raising L{StatusError}) a new object, or an update of C{old}, once validated."""


T = TypeVar("T")

_MAX_CAS_RETRIES = 16
NAMESPACE_CHECK_SECONDS = 1.0
#: Events are shared between watchers only while one delivery fans out, so a few suffice;
#: a large cache would hold thousands of decoded objects for nothing.
FANOUT_CACHE = 64


def unavailable(error: DatastoreUnavailable) -> StatusError:
    """The datastore is away: 503, never 500, so clients retry."""
    return StatusError(503, f"the datastore is unavailable: {error}")


@dataclass(frozen=True)
class ObjectList:
    """One page of a list: the objects, the revision read at, and the next page's token."""

    items: list[Object]
    resource_version: str
    continue_token: str


def encode_continue(revision: int, last_key: str) -> str:
    payload = json.dumps({"rv": revision, "start": last_key}).encode()
    return base64.urlsafe_b64encode(payload).decode("ascii")


def decode_continue(token: str) -> tuple[int, str]:
    try:
        payload = json.loads(base64.urlsafe_b64decode(token.encode("ascii")))
        return int(payload["rv"]), str(payload["start"])
    except (ValueError, KeyError, TypeError, binascii.Error, UnicodeEncodeError):
        raise bad_request(
            "continue key is not valid: incorrect encoded start resourceVersion"
        ) from None


def parse_resource_version(text: str) -> int:
    """A resourceVersion parameter as a revision; "" and "0" are 0 (any/latest)."""
    if text in ("", "0"):
        return 0
    try:
        value = int(text)
    except ValueError:
        raise bad_request(f'Invalid value: "{text}": resourceVersion must be an integer') from None
    if value < 0:
        raise bad_request(f'Invalid value: "{text}": resourceVersion must be positive')
    return value


def decode(kv: KeyValue, revision: int | None = None) -> Object:
    """The object stored in C{kv}, with its resourceVersion set."""
    obj: Object = json.loads(kv.value)
    obj.setdefault("metadata", {})["resourceVersion"] = str(revision or kv.mod_revision)
    return obj


def encode(obj: Object) -> bytes:
    """
    The stored form of C{obj}: compact JSON, ``metadata`` first and without
    ``resourceVersion``, so that L{raw_object} can add it without parsing.
    """
    metadata = {k: v for k, v in (obj.get("metadata") or {}).items() if k != "resourceVersion"}
    stored = {"metadata": metadata, **{k: v for k, v in obj.items() if k != "metadata"}}
    return json.dumps(stored, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


_METADATA_FIRST = b'{"metadata":{'


def raw_object(kv: KeyValue) -> bytes:
    """
    The JSON of the object in C{kv} with its resourceVersion, spliced into the
    stored bytes (which L{encode} writes metadata-first) instead of parsed.
    """
    if not kv.value.startswith(_METADATA_FIRST):
        return json.dumps(decode(kv), separators=(",", ":"), ensure_ascii=False).encode()
    return with_resource_version(kv.value, kv.mod_revision)


def with_resource_version(value: bytes, revision: int) -> bytes:
    """Bytes L{encode} wrote, with C{revision} spliced in as ``metadata.resourceVersion``."""
    at = len(_METADATA_FIRST)
    version = b'"resourceVersion":"%d"' % revision
    separator = b"" if value[at : at + 1] == b"}" else b","
    return value[:at] + version + separator + value[at:]


class ObjectStore:
    """
    The verbs of the Kubernetes API as datastore operations, following each
    kind's L{Strategy<k3stw.apiserver.strategy.Strategy>} on every write, a
    controller's as much as a client's.

    Every method raises L{StatusError} for anything a client should see
    (404, 409, 410, 422, and 503 when the datastore is away).
    """

    def __init__(
        self,
        datastore: IDatastore,
        clock: IReactorTime,
        dry_run: bool = False,
        checks: bool = True,
    ) -> None:
        """
        :param checks: whether kinds' defaults and validation apply (off only to
            measure what they cost: ``--unchecked-api``).
        """
        self.datastore = datastore
        self.clock = clock
        self.dry_run = dry_run
        self.checks = checks
        # Namespaces seen active, and when: a create does not read its namespace again
        # for NAMESPACE_CHECK_SECONDS (kube-apiserver's admission uses a cache the same way).
        self._active_namespaces: dict[str, float] = {}
        self.decoded = DecodedEvents()
        self._observers: builtins.list[WriteObserver] = []
        #: Per (group, plural), what claims values for its objects (Services' cluster IPs).
        self.allocators: dict[tuple[str, str], Allocator] = {}
        #: kube-apiserver's LimitRanger and ResourceQuota (L{k3stw.apiserver.admission}).
        self.admission: AdmissionPlugins | None = None

    def now(self) -> str:
        return rfc3339(self.clock.seconds())

    async def _reserve(
        self, resource: ResourceType, new: Object, old: Object | None
    ) -> Reservation | None:
        allocator = self.allocators.get((resource.group, resource.plural))
        return None if allocator is None else await allocator.reserve(new, old)

    async def _release(self, resource: ResourceType, gone: Object) -> None:
        allocator = self.allocators.get((resource.group, resource.plural))
        if allocator is not None:
            await allocator.release(gone)

    def observe(self, observer: WriteObserver) -> None:
        """Tell C{observer} of every write this store makes (a dry run makes none)."""
        self._observers.append(observer)

    def _written(self, resource: ResourceType, obj: Object, gone: bool = False) -> None:
        if not self.dry_run:
            for observer in self._observers:
                observer(resource, obj, gone)

    async def get(self, resource: ResourceType, namespace: str | None, name: str) -> Object:
        if (conversion := resource.conversion) is not None:
            return conversion.from_stored(await self.get(conversion.stored, namespace, name))
        kv = await self._get_kv(resource, namespace, name)
        if kv is None:
            raise not_found(resource.plural, resource.group, name)
        return decode(kv)

    async def _get_kv(
        self, resource: ResourceType, namespace: str | None, name: str, revision: int = 0
    ) -> KeyValue | None:
        try:
            found: KeyValue | None = await self.datastore.get(
                resource.storage_key(namespace, name), revision
            )
        except DatastoreUnavailable as e:
            raise unavailable(e) from None
        except Compacted as e:
            raise gone(f"too old resource version: {revision} ({e.compact_revision})") from None
        except FutureRevision as e:
            raise StatusError(
                504, f"Too large resource version: {e.requested}, current: {e.current}"
            ) from None
        return found

    async def list(
        self,
        resource: ResourceType,
        namespace: str | None,
        predicate: Predicate | None = None,
        limit: int = 0,
        continue_token: str = "",
        resource_version: str = "",
        exact: bool = False,
    ) -> ObjectList:
        """
        Objects in key order, filtered by C{predicate}, at most C{limit}
        (0: all), from one snapshot: the continuation reads at the same revision.
        """
        if (conversion := resource.conversion) is not None:
            listed = await self.list(
                conversion.stored,
                namespace,
                _converted(predicate, conversion.from_stored),
                limit,
                continue_token,
                resource_version,
                exact,
            )
            items = [conversion.from_stored(obj) for obj in listed.items]
            return ObjectList(items, listed.resource_version, listed.continue_token)

        def accept(kv: KeyValue) -> Object | None:
            obj = decode(kv)
            return obj if predicate is None or predicate(obj) else None

        items, revision, token = await self._page(
            resource, namespace, accept, limit, continue_token, resource_version, exact
        )
        return ObjectList(items, revision, token)

    async def list_raw(
        self,
        resource: ResourceType,
        namespace: str | None,
        limit: int = 0,
        continue_token: str = "",
        resource_version: str = "",
        exact: bool = False,
    ) -> tuple[builtins.list[bytes], str, str]:
        """
        L{list} without a filter, as each object's JSON: no decoding and
        re-encoding on the way through (see L{raw_object}).

        :return: the objects, the revision read at, and the continue token.
        """
        if resource.conversion is not None:
            page = await self.list(
                resource, namespace, None, limit, continue_token, resource_version, exact
            )
            raws = [json.dumps(obj, separators=(",", ":")).encode() for obj in page.items]
            return raws, page.resource_version, page.continue_token
        return await self._page(
            resource, namespace, raw_object, limit, continue_token, resource_version, exact
        )

    async def _page(
        self,
        resource: ResourceType,
        namespace: str | None,
        accept: Callable[[KeyValue], T | None],
        limit: int,
        continue_token: str,
        resource_version: str,
        exact: bool,
    ) -> tuple[builtins.list[T], str, str]:
        start: str | None = None
        revision = 0
        if continue_token:
            revision, start = decode_continue(continue_token)
        elif exact:
            revision = parse_resource_version(resource_version)
        else:
            parse_resource_version(resource_version)
        prefix = resource.storage_prefix(namespace if resource.namespaced else None)
        items: builtins.list[T] = []
        try:
            while True:
                want = 0 if not limit else max(limit - len(items), 1)
                page = await self.datastore.list(prefix, want, start, revision)
                revision = page.revision
                for kv in page.items:
                    start = kv.key
                    item = accept(kv)
                    if item is not None:
                        items.append(item)
                    if limit and len(items) >= limit:
                        break
                if limit and len(items) >= limit:
                    more = page.more or kv is not page.items[-1]
                    token = encode_continue(revision, start) if more and start else ""
                    return items, str(revision), token
                if not page.more:
                    return items, str(revision), ""
        except DatastoreUnavailable as e:
            raise unavailable(e) from None
        except Compacted as e:
            if continue_token:
                raise gone(
                    "The provided continue parameter is too old to display a consistent list "
                    "result. You can start a new list without the continue parameter."
                ) from None
            raise gone(f"too old resource version: {revision} ({e.compact_revision})") from None

    async def create(
        self,
        resource: ResourceType,
        namespace: str | None,
        obj: Object,
        manager: str | None = None,
        admit: Admit | None = None,
    ) -> Object:
        """
        Store a new object: name (or generateName), uid, creation timestamp,
        generation and the kind's defaults are set here; the namespace must
        exist and not be terminating.

        :param manager: the field manager to record the write under.
        :param admit: checks the defaulted object before it is validated.
        """
        created, _ = await self.create_json(resource, namespace, obj, manager, admit)
        return created

    async def create_json(
        self,
        resource: ResourceType,
        namespace: str | None,
        obj: Object,
        manager: str | None = None,
        admit: Admit | None = None,
    ) -> tuple[Object, bytes]:
        """
        L{create}, and the new object's JSON: the stored bytes with its
        resourceVersion spliced in, so an API answer need not encode it again.
        """
        if (conversion := resource.conversion) is not None:
            # The served version's own rules first; the stored kind's follow.
            if self.checks:
                name = str(metadata_of(obj).get("name", ""))
                _check(resource, name, resource.strategy.validate(obj))
            stored = conversion.to_stored(copy_json(obj))
            created = conversion.from_stored(
                await self.create(conversion.stored, namespace, stored, manager)
            )
            return created, json.dumps(created, separators=(",", ":")).encode()
        obj = copy_json(obj)
        metadata = obj.setdefault("metadata", {})
        if not isinstance(metadata, dict):
            raise bad_request("metadata must be an object")
        obj["apiVersion"] = resource.group_version
        obj["kind"] = resource.kind
        if resource.namespaced:
            if metadata.get("namespace") not in (None, "", namespace):
                raise bad_request(NAMESPACE_MISMATCH)
            metadata["namespace"] = namespace
            await self._require_active_namespace(namespace or "default")
        else:
            metadata.pop("namespace", None)
        generated = not metadata.get("name") and metadata.get("generateName")
        strategy = resource.strategy
        for _ in range(8 if generated else 1):
            if generated:
                metadata["name"] = metadata["generateName"] + generated_suffix()
            name = str(metadata.get("name") or "")
            metadata["uid"] = str(uuid.uuid4())
            metadata["creationTimestamp"] = self.now()
            for immutable in ("resourceVersion", "deletionTimestamp", "selfLink"):
                metadata.pop(immutable, None)
            if strategy.counts_generation:
                metadata["generation"] = 1
            strategy.prepare_create(obj, self.now())
            if self.checks:
                strategy.default(obj)
                if self.admission is not None:
                    await self.admission.mutate(self, resource, obj)
                if admit is not None:
                    admit(obj, None)
                causes = metadata_causes(obj, strategy.names) + strategy.validate(obj)
                _check(resource, name, causes)
                if self.admission is not None:
                    await self.admission.validate(self, resource, obj)
            elif not name:
                # Unchecked, an object still needs a name: it is the object's key.
                _check(resource, name, [("metadata.name", "Required value")])
            reservation = await self._reserve(resource, obj, None)
            stored = (
                record_update(None, obj, manager, now=self.now(), rules=strategy.merge_rules)
                if manager
                else obj
            )
            data = encode(stored)
            try:
                revision = await self.datastore.create(resource.storage_key(namespace, name), data)
            except BaseException as e:
                if reservation is not None:
                    await reservation.undo()
                if isinstance(e, KeyExists):
                    if generated:
                        continue
                    raise already_exists(resource.plural, resource.group, name) from None
                if isinstance(e, DatastoreUnavailable):
                    raise unavailable(e) from None
                raise
            stored["metadata"]["resourceVersion"] = str(revision)
            self._written(resource, stored)
            return stored, with_resource_version(data, revision)
        raise StatusError(
            500, f"could not generate a unique name from {metadata['generateName']!r}"
        )

    async def _require_active_namespace(self, namespace: str) -> None:
        seen = self._active_namespaces.get(namespace)
        if seen is not None and self.clock.seconds() - seen < NAMESPACE_CHECK_SECONDS:
            return
        kv = await self._get_kv(namespaces.RESOURCE, None, namespace)
        if kv is None:
            raise not_found("namespaces", "", namespace)
        if json.loads(kv.value).get("metadata", {}).get("deletionTimestamp"):
            self._active_namespaces.pop(namespace, None)
            raise StatusError(
                403,
                f"unable to create new content in namespace {namespace} because it is being "
                "terminated",
            )
        self._active_namespaces[namespace] = self.clock.seconds()

    def forget_namespace(self, namespace: str) -> None:
        """A namespace is being deleted: check it again before the next create in it."""
        self._active_namespaces.pop(namespace, None)

    async def update(
        self,
        resource: ResourceType,
        namespace: str | None,
        name: str,
        obj: Object,
        subresource: str | None = None,
        manager: str | None = None,
        admit: Admit | None = None,
    ) -> Object:
        """
        Replace an object (PUT), checking ``metadata.resourceVersion`` if given.
        Without a subresource, status is kept for kinds that have a status
        subresource; with ``status``, only status changes.
        """
        metadata = obj.get("metadata") or {}
        if metadata.get("name") not in (None, name):
            raise bad_request(
                f"the name of the object ({metadata.get('name')}) does not match the name on "
                f"the URL ({name})"
            )
        wanted = metadata.get("resourceVersion")
        if wanted:
            parse_resource_version(str(wanted))

        def replace(current: Object) -> Object:
            if wanted and str(wanted) != current["metadata"]["resourceVersion"]:
                raise conflict(resource.plural, resource.group, name)
            return merge_update(resource, current, obj, subresource)

        return await self.guaranteed_update(
            resource, namespace, name, replace, manager, subresource, admit=admit
        )

    async def guaranteed_update(
        self,
        resource: ResourceType,
        namespace: str | None,
        name: str,
        mutate: Callable[[Object], Object],
        manager: str | None = None,
        subresource: str | None = None,
        marks_deletion: bool = False,
        admit: Admit | None = None,
    ) -> Object:
        """
        Apply C{mutate} to the current object and store the result, retrying on
        a concurrent write (C{mutate} may raise L{StatusError} to stop).  An
        object whose last finalizer is removed while it is being deleted is deleted.

        :param manager: the field manager to record the change under, if any.
        :param marks_deletion: C{mutate} may set ``deletionTimestamp`` (the
            server starting a deletion); no client write ever may.
        :param admit: checks the defaulted result against the current object.
        """
        if (conversion := resource.conversion) is not None:

            def converted(current: Object) -> Object:
                updated = mutate(conversion.from_stored(current))
                if self.checks:
                    _check(resource, name, resource.strategy.validate(updated))
                return conversion.to_stored(updated)

            updated = await self.guaranteed_update(
                conversion.stored, namespace, name, converted, manager, subresource, marks_deletion
            )
            return conversion.from_stored(updated)
        key = resource.storage_key(namespace, name)
        strategy = resource.strategy
        for _ in range(_MAX_CAS_RETRIES):
            kv = await self._get_kv(resource, namespace, name)
            if kv is None:
                raise not_found(resource.plural, resource.group, name)
            current = decode(kv)
            updated = mutate(copy_json(current))
            if self.checks:
                strategy.default(updated)
            _keep_identity(current, updated, resource, marks_deletion)
            if self.checks:
                if admit is not None:
                    admit(updated, current)
                causes = metadata_causes(updated, None) + strategy.validate(updated)
                if causes:
                    # What the stored object already had (stored before these rules) may
                    # stay, so that its controllers' writes go on: an update is held to
                    # what it adds.
                    held = metadata_causes(current, None) + strategy.validate(current)
                    causes = [cause for cause in causes if cause not in held]
                _check(resource, name, causes + strategy.validate_update(updated, current))
            if _without_version(updated) == _without_version(current):
                return current
            if self.checks and self.admission is not None and subresource is None:
                await self.admission.validate(self, resource, updated, current)
            if manager:
                updated = record_update(
                    current,
                    updated,
                    manager,
                    now=self.now(),
                    subresource=subresource or "",
                    rules=strategy.merge_rules,
                )
            if strategy.counts_generation and updated.get("spec") != current.get("spec"):
                generation = current["metadata"].get("generation", 1)
                updated["metadata"]["generation"] = generation + 1
            strategy.prepare_update(updated, current)
            gone = is_deleting(updated) and strategy.finished_deleting(updated)
            reservation = None if gone else await self._reserve(resource, updated, current)
            try:
                revision = await self._compare_and_swap(
                    resource,
                    name,
                    self.datastore.delete(key, kv.mod_revision)
                    if gone
                    else self.datastore.update(key, encode(updated), kv.mod_revision),
                )
            except BaseException:
                if reservation is not None:
                    await reservation.undo()
                raise
            if revision is None:
                if reservation is not None:
                    await reservation.undo()
                continue
            if reservation is not None:
                await reservation.commit()
            if gone:
                await self._release(resource, current)
            updated["metadata"]["resourceVersion"] = str(revision)
            self._written(resource, updated, gone)
            return updated
        raise conflict(resource.plural, resource.group, name)

    async def _compare_and_swap(
        self, resource: ResourceType, name: str, write: Deferred[int]
    ) -> int | None:
        """A conditional write's revision; None when another write came first (read again)."""
        try:
            revision: int = await write
        except Conflict:
            return None
        except KeyNotFound:
            raise not_found(resource.plural, resource.group, name) from None
        except DatastoreUnavailable as e:
            raise unavailable(e) from None
        return revision

    async def delete(
        self,
        resource: ResourceType,
        namespace: str | None,
        name: str,
        preconditions: dict[str, Any] | None = None,
        finalizers_to_add: Sequence[str] = (),
        grace_period: int | None = None,
    ) -> tuple[Object, bool]:
        """
        Delete an object: at once, or, while it has finalizers (or gains
        C{finalizers_to_add}), by marking it with ``deletionTimestamp``.  A kind
        that deletes gracefully (pods) is marked with ``deletionTimestamp`` =
        now + its grace period instead, for its owner (the kubelet) to finish;
        with grace 0 it is marked, then removed (watchers see both, as kube's do).

        :param grace_period: DeleteOptions' ``gracePeriodSeconds`` (None: the
            kind's default for the object).
        :return: the object's last state, and whether it is gone now.
        """
        if (conversion := resource.conversion) is not None:
            last, gone_now = await self.delete(
                conversion.stored, namespace, name, preconditions, finalizers_to_add, grace_period
            )
            return conversion.from_stored(last), gone_now
        preconditions = preconditions or {}
        key = resource.storage_key(namespace, name)
        for _ in range(_MAX_CAS_RETRIES):
            kv = await self._get_kv(resource, namespace, name)
            if kv is None:
                raise not_found(resource.plural, resource.group, name)
            current = decode(kv)
            _check_preconditions(resource, name, current, preconditions)
            metadata = current["metadata"]
            finalizers = list(metadata.get("finalizers") or [])
            wanted = finalizers + [f for f in finalizers_to_add if f not in finalizers]
            graceful = self._graceful(resource.strategy, current, grace_period)
            if graceful is _PENDING:
                # Deleting already, with no shorter grace asked for: finalizers stay as they are.
                return current, False
            unchanged = bool(metadata.get("deletionTimestamp")) and finalizers == wanted
            if isinstance(graceful, dict) or (wanted and not unchanged):
                marked = copy_json(current)
                meta = marked["metadata"]
                if isinstance(graceful, dict):
                    meta.update(graceful)
                else:
                    meta.setdefault("deletionTimestamp", self.now())
                    meta.setdefault("deletionGracePeriodSeconds", 0)
                if wanted:
                    meta["finalizers"] = wanted
                write = self.datastore.update(key, encode(marked), kv.mod_revision)
                revision = await self._compare_and_swap(resource, name, write)
                if revision is None:
                    continue
                meta["resourceVersion"] = str(revision)
                self._written(resource, marked)
                if meta["deletionGracePeriodSeconds"] or wanted:
                    return marked, False
                # Grace 0 with nothing holding it: marked (watchers see it), now it goes.
                if await self._remove(resource, key, name, marked, revision):
                    return marked, True
                continue
            if wanted:
                return current, False  # its finalizers hold it, as they did
            if metadata.get("deletionTimestamp") and not resource.strategy.finished_deleting(
                current
            ):
                # Held by what the kind itself waits on (a namespace's spec.finalizers).
                return current, False
            if await self._remove(resource, key, name, current, kv.mod_revision):
                return current, True
        raise conflict(resource.plural, resource.group, name)

    async def _remove(
        self, resource: ResourceType, key: str, name: str, last: Object, revision: int
    ) -> bool:
        """Delete C{last} if it is still at C{revision}; False when another write came first."""
        deleted = await self._compare_and_swap(resource, name, self.datastore.delete(key, revision))
        if deleted is None:
            return False
        await self._release(resource, last)
        last["metadata"]["resourceVersion"] = str(deleted)
        self._written(resource, last, True)
        return True

    def _graceful(
        self, strategy: Strategy, current: Object, requested: int | None
    ) -> dict[str, Any] | object | None:
        """
        kube's BeforeDelete for a kind that deletes gracefully: the
        ``deletionTimestamp`` and ``deletionGracePeriodSeconds`` a DELETE sets;
        L{_PENDING} when a deletion already under way stays as it is; None when
        the object is deleted (or marked for its finalizers) the ordinary way.
        """
        if strategy.grace_period is None:
            return None
        if requested is not None and requested < 0:
            requested = 1  # negative grace periods are 1 s on the delete path
        metadata = current["metadata"]
        now = self.clock.seconds()
        if metadata.get("deletionTimestamp"):
            existing = metadata.get("deletionGracePeriodSeconds")
            if not existing:
                return None
            if requested is None or requested >= existing:
                return _PENDING
            # Only a shorter grace: move the deadline back by the difference, never into the past.
            deadline = (parse_time(metadata["deletionTimestamp"]) or now) - existing + requested
            if deadline < now:
                deadline = now
                requested = min(requested, 1)
            return {"deletionTimestamp": rfc3339(deadline), "deletionGracePeriodSeconds": requested}
        period = strategy.grace_period(current, requested)
        return {"deletionTimestamp": rfc3339(now + period), "deletionGracePeriodSeconds": period}

    async def watch(
        self,
        resource: ResourceType,
        namespace: str | None,
        resource_version: str,
        predicate: Predicate | None,
        send: Callable[[str, Object], None],
    ) -> IWatch:
        """
        Send ``(type, object)`` watch events: with no resourceVersion (or "0"),
        first an ADDED for every current object; then every change after it.
        Objects that start or stop matching C{predicate} arrive as ADDED or DELETED.

        :raises StatusError: 410 when the resourceVersion was compacted.
        """
        if (conversion := resource.conversion) is not None:

            def send_converted(kind: str, obj: Object) -> None:
                send(kind, conversion.from_stored(obj))

            watched = _converted(predicate, conversion.from_stored)
            return await self.watch(
                conversion.stored, namespace, resource_version, watched, send_converted
            )
        revision = parse_resource_version(resource_version)
        prefix = resource.storage_prefix(namespace if resource.namespaced else None)
        if revision == 0:
            current = await self.list(resource, namespace, predicate)
            for obj in current.items:
                send("ADDED", obj)
            revision = int(current.resource_version)

        def deliver(events: Sequence[Event]) -> None:
            for event in events:
                translated = translate(event, predicate, self.decoded)
                if translated is not None:
                    send(*translated)

        try:
            watch: IWatch = await self.datastore.watch(prefix, revision + 1, deliver)
        except Compacted as e:
            raise gone(f"too old resource version: {revision} ({e.compact_revision})") from None
        except DatastoreUnavailable as e:
            raise unavailable(e) from None
        return watch


class DecodedEvents:
    """
    The objects of recent datastore events, decoded once for every watcher that
    sees them (an event reaches each watch of its prefix).  Treat them as read-only.
    """

    def __init__(self, size: int = FANOUT_CACHE) -> None:
        self.size = size
        self._objects: OrderedDict[tuple[str, int, int], Object] = OrderedDict()

    def object(self, kv: KeyValue, revision: int | None = None) -> Object:
        key = (kv.key, kv.mod_revision, revision or 0)
        found = self._objects.get(key)
        if found is None:
            found = self._objects[key] = decode(kv, revision)
            if len(self._objects) > self.size:
                self._objects.popitem(last=False)
        return found


def translate(
    event: Event, predicate: Predicate | None, decoded: DecodedEvents | None = None
) -> tuple[str, Object] | None:
    """A datastore event as a watch event, seen through C{predicate}."""
    matches = predicate or (lambda _: True)
    read = decoded.object if decoded is not None else decode
    if event.type is EventType.DELETE:
        last = read(event.kv, event.revision)
        return ("DELETED", last) if matches(last) else None
    new = read(event.kv)
    was = event.prev is not None and matches(read(event.prev))
    now = matches(new)
    if event.type is EventType.CREATE or not was:
        return ("ADDED", new) if now else None
    return ("MODIFIED", new) if now else ("DELETED", new)


def _converted(
    predicate: Predicate | None, from_stored: Callable[[Object], Object]
) -> Predicate | None:
    """C{predicate} of served objects, asked of stored ones."""
    if predicate is None:
        return None
    selected = predicate
    return lambda obj: selected(from_stored(obj))


def merge_update(
    resource: ResourceType, current: Object, new: Object, subresource: str | None
) -> Object:
    """What a PUT stores: C{new}, except what its endpoint may not change."""
    if subresource == "approval":
        # A CertificateSigningRequest's approval changes its conditions and nothing else.
        updated = copy_json(current)
        status = updated.setdefault("status", {})
        status["conditions"] = (new.get("status") or {}).get("conditions") or []
        if not status["conditions"]:
            del status["conditions"]
        return updated
    if subresource == "status":
        updated = copy_json(current)
        if "status" in new:
            updated["status"] = new["status"]
        else:
            updated.pop("status", None)
        return updated
    updated = copy_json(new)
    updated["apiVersion"] = resource.group_version
    updated["kind"] = resource.kind
    if resource.has_status:
        if "status" in current:
            updated["status"] = current["status"]
        else:
            updated.pop("status", None)
    return updated


def _keep_identity(
    current: Object, updated: Object, resource: ResourceType, marks_deletion: bool = False
) -> None:
    """Fields no update may change: they are taken from the stored object."""
    metadata = updated.setdefault("metadata", {})
    kept = ["name", "namespace", "uid", "creationTimestamp", "generation"]
    if not marks_deletion or current["metadata"].get("deletionTimestamp"):
        kept += ["deletionTimestamp", "deletionGracePeriodSeconds"]
    for field in kept:
        if field in current["metadata"]:
            metadata[field] = current["metadata"][field]
        else:
            metadata.pop(field, None)
    metadata["resourceVersion"] = current["metadata"]["resourceVersion"]
    updated["apiVersion"] = resource.group_version
    updated["kind"] = resource.kind


def _check(resource: ResourceType, name: str, causes: list[Cause]) -> None:
    """Refuse, with kube-apiserver's 422, an object its kind's strategy found fault with."""
    if causes:
        raise invalid(resource.kind, name, causes, resource.group)


def _without_version(obj: Object) -> Object:
    copied = dict(obj)
    copied["metadata"] = {k: v for k, v in obj["metadata"].items() if k != "resourceVersion"}
    return copied


def _check_preconditions(
    resource: ResourceType, name: str, current: Object, preconditions: dict[str, Any]
) -> None:
    metadata = current["metadata"]
    uid = preconditions.get("uid")
    if uid and uid != metadata.get("uid"):
        raise StatusError(
            409,
            f"Precondition failed: UID in precondition: {uid}, UID in object meta: "
            f"{metadata.get('uid')}",
        )
    version = preconditions.get("resourceVersion")
    if version and str(version) != metadata.get("resourceVersion"):
        raise conflict(resource.plural, resource.group, name)
