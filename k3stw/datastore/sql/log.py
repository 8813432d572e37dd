"""The rows of the kine log and the pure rules over them (no reactor, no driver)."""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from k3stw.datastore.interface import (
    Event,
    EventType,
    KeyValue,
)

_T = TypeVar("_T")

COMPACT_KEY = "compact_rev_key"

COLUMNS = "id, name, created, deleted, create_revision, prev_revision, lease, value, old_value"


def prefix_end(prefix: str) -> str | None:
    """
    The smallest string greater than every string starting with C{prefix}
    (None for the empty prefix, which has no upper bound).
    """
    chars = list(prefix)
    while chars:
        last = ord(chars.pop())
        if last < 0x10FFFF:
            nxt = last + 1
            if 0xD800 <= nxt <= 0xDFFF:
                nxt = 0xE000
            return "".join(chars) + chr(nxt)
    return None


@dataclass(frozen=True, slots=True)
class Row:
    """One row of table ``kine``."""

    id: int
    name: str
    created: bool
    deleted: bool
    create_revision: int
    prev_revision: int
    lease: int
    value: bytes
    old_value: bytes

    @classmethod
    def from_db(cls, raw: Sequence[Any]) -> Row:
        name = raw[1]
        if isinstance(name, bytes | bytearray | memoryview):
            name = bytes(name).decode("utf-8")
        return cls(
            int(raw[0]),
            name,
            bool(raw[2]),
            bool(raw[3]),
            int(raw[4] or 0),
            int(raw[5] or 0),
            int(raw[6] or 0),
            bytes(raw[7] or b""),
            bytes(raw[8] or b""),
        )

    @property
    def internal(self) -> bool:
        """The compaction bookkeeping row or a fill row: never shown to callers."""
        return self.name == COMPACT_KEY or (self.deleted and self.prev_revision == 0)

    @property
    def key_create_revision(self) -> int:
        return self.id if self.created else self.create_revision

    def kv(self) -> KeyValue:
        return KeyValue(self.name, self.value, self.key_create_revision, self.id, self.lease)

    def event(self) -> Event:
        if self.deleted:
            kv = KeyValue(self.name, self.old_value, self.create_revision, self.id, self.lease)
            prev = KeyValue(
                self.name, self.old_value, self.create_revision, self.prev_revision, self.lease
            )
            return Event(EventType.DELETE, self.id, kv, prev)
        if self.created:
            return Event(EventType.CREATE, self.id, self.kv(), None)
        prev = KeyValue(self.name, self.old_value, self.create_revision, self.prev_revision)
        return Event(EventType.UPDATE, self.id, self.kv(), prev)


class CompactionPolicy:
    """
    Which revision the background compactor may compact to: keep the last
    C{keep_revisions} revisions or the last C{keep_seconds} of history,
    whichever is more.

    Time is sampled: L{observe} records (time, current revision) on every
    compactor tick, and the revision at "now - keep_seconds" is taken as the
    newest sample at least that old, which never keeps less than asked.
    """

    def __init__(self, keep_revisions: int = 1000, keep_seconds: float = 300.0) -> None:
        self.keep_revisions = keep_revisions
        self.keep_seconds = keep_seconds
        self._samples: deque[tuple[float, int]] = deque()

    def observe(self, now: float, revision: int) -> None:
        self._samples.append((now, revision))

    def target(self, now: float, current: int) -> int:
        """The revision to compact to now; 0 means nothing to do."""
        horizon = now - self.keep_seconds
        old_enough = 0
        while self._samples and self._samples[0][0] <= horizon:
            old_enough = self._samples[0][1]
            if len(self._samples) > 1 and self._samples[1][0] <= horizon:
                self._samples.popleft()
            else:
                break
        return max(0, min(current - self.keep_revisions, old_enough))
