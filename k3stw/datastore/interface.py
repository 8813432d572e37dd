"""
The datastore contract: a revisioned key-value log, as the Kubernetes API needs it.

Every backend (embedded SQLite, PostgreSQL, MySQL/MariaDB, etcd v3) provides
L{IDatastore} with the same semantics, which is what the conformance suite in
``tests/datastore`` checks against each real server:

- One global revision counter.  Every write (create, update, delete, TTL
  expiry) gets the next revision; revisions only grow.
- Reads can be made "as of" an older revision until it is compacted.
- A watch delivers every change under a prefix from a start revision, in
  revision order, with no gap and no duplicate.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IPushProducer
from zope.interface import Attribute, Interface


@dataclass(frozen=True, slots=True)
class KeyValue:
    """
    One version of one key.

    :ivar create_revision: the revision that created this key (since its last delete).
    :ivar mod_revision: the revision of this version.
    :ivar lease: the TTL in seconds the key was written with, 0 for none.
    """

    key: str
    value: bytes
    create_revision: int
    mod_revision: int
    lease: int = 0


class EventType(enum.Enum):
    CREATE = "create"
    UPDATE = "update"
    DELETE = "delete"


@dataclass(frozen=True, slots=True)
class Event:
    """
    One change seen by a watch.

    :ivar revision: the revision of the change.
    :ivar kv: the key's new version; for a delete, the deleted value with the
        key's create_revision and lease, and mod_revision = the delete's revision.
    :ivar prev: the version before this change (``None`` for a create).
    """

    type: EventType
    revision: int
    kv: KeyValue
    prev: KeyValue | None


@dataclass(frozen=True, slots=True)
class ListResult:
    """
    One page of a list.

    :ivar revision: the revision the page was read at; pass it back with
        ``continue_from`` to read the next page from the same snapshot.
    :ivar more: more keys follow this page.
    """

    items: Sequence[KeyValue]
    revision: int
    more: bool


class DatastoreError(Exception):
    """Base of every typed datastore failure."""


class KeyExists(DatastoreError):
    """``create`` of a key that exists."""

    def __init__(self, key: str) -> None:
        super().__init__(f"key already exists: {key}")
        self.key = key


class KeyNotFound(DatastoreError):
    """``update`` or ``delete`` of a key that does not exist."""

    def __init__(self, key: str) -> None:
        super().__init__(f"key not found: {key}")
        self.key = key


class Conflict(DatastoreError):
    """
    ``update`` or ``delete`` with an expected revision that is no longer current.

    :ivar current: the key's current version, so the caller can retry.
    """

    def __init__(self, key: str, expected_revision: int, current: KeyValue) -> None:
        super().__init__(
            f"revision conflict on {key}: expected {expected_revision}, "
            f"current is {current.mod_revision}"
        )
        self.key = key
        self.expected_revision = expected_revision
        self.current = current


class Compacted(DatastoreError):
    """A read or watch asked for a revision older than the compacted one."""

    def __init__(self, requested: int, compact_revision: int) -> None:
        super().__init__(
            f"required revision {requested} has been compacted (compacted to {compact_revision})"
        )
        self.requested = requested
        self.compact_revision = compact_revision


class FutureRevision(DatastoreError):
    """A read asked for a revision that does not exist yet."""

    def __init__(self, requested: int, current: int) -> None:
        super().__init__(f"required revision {requested} is a future revision (current {current})")
        self.requested = requested
        self.current = current


class WatchOverflow(DatastoreError):
    """A watcher fell too far behind and was cut off instead of buffering without bound."""


class DatastoreUnavailable(DatastoreError):
    """The backend cannot be reached or refused to serve; the message says why."""


class IWatch(IPushProducer):
    """
    A running watch.  As an L{IPushProducer} it can be paused by a slow
    consumer; events are held while paused, up to a bound, past which the
    watch ends with L{WatchOverflow}.
    """

    ended = Attribute(
        "A Deferred that fires with None after cancel(), or fails with "
        "Compacted, WatchOverflow or DatastoreUnavailable when the watch ends "
        "for any other reason.  No event is delivered after it fires."
    )

    def cancel() -> None:
        """Stop the watch; idempotent."""


class IDatastore(Interface):
    """
    A revisioned key-value store.  Every method returns a Deferred and never
    blocks the reactor.  Keys are ``str`` (``/registry/pods/default/web``),
    values ``bytes``.  ``revision=0`` means "the current revision".
    """

    def get(key: str, revision: int = 0) -> Deferred[KeyValue | None]:
        """
        The version of C{key} current at C{revision}, or None if absent then.

        :raises Compacted: C{revision} is older than the compacted revision.
        :raises FutureRevision: C{revision} is newer than the current one.
        """

    def list(
        prefix: str, limit: int = 0, continue_from: str | None = None, revision: int = 0
    ) -> Deferred[ListResult]:
        """
        Keys under C{prefix} in key order, as of C{revision}.

        :param limit: at most this many items (0: no limit).
        :param continue_from: start strictly after this key; with the
            C{revision} of the previous page this gives a stable continuation.
        :raises Compacted: C{revision} was compacted.
        """

    def count(prefix: str) -> Deferred[int]:
        """How many keys exist under C{prefix} now."""

    def create(key: str, value: bytes, lease_ttl: int | None = None) -> Deferred[int]:
        """
        Create C{key}; with C{lease_ttl} it is deleted (with a delete event)
        about that many seconds later unless updated with a new TTL.

        :return: the new revision.
        :raises KeyExists: the key exists.
        """

    def update(
        key: str, value: bytes, expected_revision: int, lease_ttl: int | None = None
    ) -> Deferred[int]:
        """
        Replace C{key} if its mod revision is still C{expected_revision}.

        :return: the new revision.
        :raises KeyNotFound: the key does not exist.
        :raises Conflict: the key changed since C{expected_revision}.
        """

    def delete(key: str, expected_revision: int | None = None) -> Deferred[int]:
        """
        Delete C{key}, if given only while its mod revision is C{expected_revision}.

        :return: the new revision.
        :raises KeyNotFound: the key does not exist.
        :raises Conflict: the key changed since C{expected_revision}.
        """

    def watch(
        prefix: str, start_revision: int, deliver: Callable[[Sequence[Event]], None]
    ) -> Deferred[IWatch]:
        """
        Deliver every change under C{prefix} with revision >= C{start_revision}
        (0: changes after now) to C{deliver}, in revision order, in batches.

        The Deferred fires once the watch is established.

        :raises Compacted: C{start_revision} is older than the compacted revision.
        """

    def current_revision() -> Deferred[int]:
        """The newest revision."""

    def compact(revision: int) -> Deferred[None]:
        """Forget history older than C{revision}; the newest version of every live key stays."""

    def compacted_revision() -> Deferred[int]:
        """The revision history was compacted to (0 if never)."""

    def health() -> Deferred[None]:
        """
        Succeed when the backend answers.

        :raises DatastoreUnavailable: with the reason it does not.
        """
