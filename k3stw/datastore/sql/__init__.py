"""
The kine log: L{IDatastore} over one SQL table, shared by SQLite, PostgreSQL and MySQL.

Every write appends a row to table ``kine``; the row's autoincrement ``id`` is
the global revision.  A key's current version is its newest row; a delete is
a tombstone row.  The unique index on ``(name, prev_revision)`` is what lets
several servers write to one database: two writers that both read revision
``n`` of a key both try to insert a row with ``prev_revision = n`` and only
one insert succeeds.  The loser re-reads and reports L{KeyExists} or
L{Conflict}.

Special rows, never shown to callers:

- ``compact_rev_key``: created once; its ``prev_revision`` holds the
  compacted revision (updated in place, so compaction uses no revision).
- fill rows (``gap-<id>``, ``deleted=1``, ``prev_revision=0``): written by
  the log follower when an id stays missing (a rolled-back insert on a
  server database burns its id), so watchers are never stuck on a hole.

The rooms of this package:

- C{log}: rows, events from rows, the compaction policy (pure);
- C{dialect}: what differs between databases (driver, placeholders, DDL,
  error classification, push notifications) and the thread pools that hold
  one connection per thread;
- C{queries}: every SQL statement, written once with ``?`` placeholders, as
  blocking functions for the pool threads;
- C{follow}: the log follower, which feeds the watches
  (L{k3stw.datastore.watch}) and the lease keeper (L{k3stw.datastore.lease});
- C{store}: L{SQLDatastore}, the service that ties them together.
"""

from __future__ import annotations

from k3stw.datastore.sql.dialect import Dialect
from k3stw.datastore.sql.follow import LogFollower
from k3stw.datastore.sql.log import COMPACT_KEY, CompactionPolicy, Row, prefix_end
from k3stw.datastore.sql.queries import KineQueries
from k3stw.datastore.sql.store import SQLDatastore

__all__ = [
    "COMPACT_KEY",
    "CompactionPolicy",
    "Dialect",
    "KineQueries",
    "LogFollower",
    "Row",
    "SQLDatastore",
    "prefix_end",
]
