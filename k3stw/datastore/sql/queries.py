"""
The SQL of the kine log, as blocking functions that run in pool threads.

Written once with ``?`` placeholders; the L{Dialect} adapts them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from k3stw.datastore.interface import (
    Compacted,
    Conflict,
    DatastoreUnavailable,
    FutureRevision,
    KeyExists,
    KeyNotFound,
    KeyValue,
    ListResult,
)
from k3stw.datastore.sql.dialect import Dialect, _Reconnect, _Retry
from k3stw.datastore.sql.log import COLUMNS, COMPACT_KEY, Row, prefix_end

_T = TypeVar("_T")


class KineQueries:
    """
    Every statement the datastore runs.  Methods take a connection (reads)
    or a cursor inside a transaction (writes) and block; call them only
    from the pools' threads.
    """

    write_retries = 8
    compact_batch = 1000

    def __init__(self, dialect: Dialect) -> None:
        self.dialect = dialect

    def transaction(self, conn: Any, fn: Callable[[Any], _T]) -> _T:
        dialect = self.dialect
        for _ in range(self.write_retries):
            try:
                cur = conn.cursor()
                cur.execute(dialect.begin_write)
            except BaseException as e:
                if dialect.is_driver_error(e):
                    raise _Reconnect() from e
                raise
            try:
                result = fn(cur)
            except BaseException as e:
                with contextlib.suppress(BaseException):
                    cur.execute("ROLLBACK")
                if isinstance(e, _Retry) or (
                    dialect.is_driver_error(e)
                    and (dialect.is_unique_violation(e) or dialect.is_retryable(e))
                ):
                    continue
                raise
            if dialect.notify_sql is not None:
                cur.execute(dialect.notify_sql)
            cur.execute("COMMIT")
            return result
        raise DatastoreUnavailable(
            f"datastore {dialect.description}: a write kept conflicting; try again"
        )

    def fetch(self, cur: Any, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        cur.execute(self.dialect.sql(sql), params)
        return list(cur.fetchall())

    def param(self, name: str) -> Any:
        return self.dialect.name_param(name)

    # -- schema -------------------------------------------------------------------

    def prepare(self, conn: Any) -> None:
        cur = conn.cursor()
        for statement in self.dialect.schema:
            cur.execute(statement)
        self.transaction(conn, self.ensure_compact_row)

    def ensure_compact_row(self, cur: Any) -> None:
        if self.fetch(cur, "SELECT id FROM kine WHERE name = ?", (self.param(COMPACT_KEY),)):
            return
        self.dialect.insert(
            cur,
            "INSERT INTO kine (name, created, deleted, create_revision, prev_revision, "
            "lease, value, old_value) VALUES (?, 1, 0, 0, 0, 0, ?, ?)",
            (self.param(COMPACT_KEY), b"", b""),
        )

    # -- reads (reader threads) --------------------------------------------------

    def max_id(self, conn: Any) -> int:
        rows = self.fetch(conn.cursor(), "SELECT MAX(id) FROM kine")
        return int(rows[0][0] or 0)

    def compact_rev(self, cur: Any) -> int:
        rows = self.fetch(
            cur, "SELECT prev_revision FROM kine WHERE name = ?", (self.param(COMPACT_KEY),)
        )
        return int(rows[0][0] or 0) if rows else 0

    def revisions(self, cur: Any) -> tuple[int, int]:
        rows = self.fetch(
            cur,
            "SELECT (SELECT MAX(id) FROM kine), "
            "(SELECT MAX(prev_revision) FROM kine WHERE name = ?)",
            (self.param(COMPACT_KEY),),
        )
        return int(rows[0][0] or 0), int(rows[0][1] or 0)

    def check_revision(self, cur: Any, revision: int) -> int:
        """The revision to read at; raise for compacted or future ones."""
        current, compacted = self.revisions(cur)
        if revision == 0:
            return current
        if revision > current:
            raise FutureRevision(revision, current)
        if revision < compacted:
            raise Compacted(revision, compacted)
        return revision

    def recheck_compacted(self, cur: Any, revision: int) -> None:
        compacted = self.compact_rev(cur)
        if revision < compacted:
            raise Compacted(revision, compacted)

    def latest(self, cur: Any, key: str, at: int | None = None) -> Row | None:
        if at is None:
            rows = self.fetch(
                cur,
                f"SELECT {COLUMNS} FROM kine WHERE name = ? ORDER BY id DESC LIMIT 1",
                (self.param(key),),
            )
        else:
            rows = self.fetch(
                cur,
                f"SELECT {COLUMNS} FROM kine WHERE name = ? AND id <= ? ORDER BY id DESC LIMIT 1",
                (self.param(key), at),
            )
        return Row.from_db(rows[0]) if rows else None

    def latest_ids(
        self, prefix: str, after: str | None, revision: int | None
    ) -> tuple[str, list[Any]]:
        """The inner query: the newest row id per name in the range."""
        where = ["name != ?"]
        params: list[Any] = [self.param(COMPACT_KEY)]
        if prefix:
            where.append("name >= ?")
            params.append(self.param(prefix))
            end = prefix_end(prefix)
            if end is not None:
                where.append("name < ?")
                params.append(self.param(end))
        if after is not None:
            where.append("name > ?")
            params.append(self.param(after))
        if revision is not None:
            where.append("id <= ?")
            params.append(revision)
        return (
            "SELECT MAX(id) AS mid FROM kine WHERE " + " AND ".join(where) + " GROUP BY name",
            params,
        )

    def page_sql(
        self, prefix: str, after: str | None, revision: int, limit: int
    ) -> tuple[str, list[Any]]:
        """
        One page of a list: walk the rows in name order and keep each name's
        newest row up to C{revision}, so the database can stop after
        C{limit} names instead of grouping the whole rest of the range.
        """
        where = ["k.name != ?"]
        params: list[Any] = [self.param(COMPACT_KEY)]
        if prefix:
            where.append("k.name >= ?")
            params.append(self.param(prefix))
            end = prefix_end(prefix)
            if end is not None:
                where.append("k.name < ?")
                params.append(self.param(end))
        if after is not None:
            where.append("k.name > ?")
            params.append(self.param(after))
        where.append("k.id <= ?")
        params.append(revision)
        where.append("k.id = (SELECT MAX(n.id) FROM kine n WHERE n.name = k.name AND n.id <= ?)")
        params.append(revision)
        where.append("k.deleted = 0")
        sql = (
            f"SELECT k.{COLUMNS.replace(', ', ', k.')} FROM kine k WHERE "
            + " AND ".join(where)
            + " ORDER BY k.name LIMIT ?"
        )
        params.append(limit)
        return sql, params

    def get_key(self, conn: Any, key: str, revision: int) -> KeyValue | None:
        cur = conn.cursor()
        if revision == 0:
            row = self.latest(cur, key)
        else:
            at = self.check_revision(cur, revision)
            row = self.latest(cur, key, at)
            self.recheck_compacted(cur, at)
        if row is None or row.deleted or row.internal:
            return None
        return row.kv()

    def list_keys(
        self, conn: Any, prefix: str, limit: int, after: str | None, revision: int
    ) -> ListResult:
        cur = conn.cursor()
        at = self.check_revision(cur, revision)
        if limit > 0:
            sql, params = self.page_sql(prefix, after, at, limit + 1)
        else:
            inner, params = self.latest_ids(prefix, after, at)
            sql = (
                f"SELECT k.{COLUMNS.replace(', ', ', k.')} FROM kine k JOIN ({inner}) m "
                "ON k.id = m.mid WHERE k.deleted = 0 ORDER BY k.name"
            )
        rows = [Row.from_db(r) for r in self.fetch(cur, sql, params)]
        if revision:
            self.recheck_compacted(cur, at)
        more = limit > 0 and len(rows) > limit
        if more:
            rows = rows[:limit]
        return ListResult([r.kv() for r in rows], at, more)

    def count_keys(self, conn: Any, prefix: str) -> int:
        inner, params = self.latest_ids(prefix, None, None)
        rows = self.fetch(
            conn.cursor(),
            f"SELECT COUNT(*) FROM kine k JOIN ({inner}) m ON k.id = m.mid WHERE k.deleted = 0",
            params,
        )
        return int(rows[0][0])

    def leased_keys(self, conn: Any, revision: int) -> list[KeyValue]:
        inner, params = self.latest_ids("", None, revision)
        rows = self.fetch(
            conn.cursor(),
            f"SELECT k.{COLUMNS.replace(', ', ', k.')} FROM kine k JOIN ({inner}) m "
            "ON k.id = m.mid WHERE k.deleted = 0 AND k.lease > 0",
            params,
        )
        return [Row.from_db(r).kv() for r in rows]

    def history(
        self, conn: Any, prefix: str, first: int, last: int, limit: int
    ) -> tuple[list[Row], int]:
        cur = conn.cursor()
        where = "id >= ? AND id <= ?"
        params: list[Any] = [first, last]
        if prefix:
            where += " AND name >= ?"
            params.append(self.param(prefix))
            end = prefix_end(prefix)
            if end is not None:
                where += " AND name < ?"
                params.append(self.param(end))
        rows = self.fetch(
            cur, f"SELECT {COLUMNS} FROM kine WHERE {where} ORDER BY id LIMIT ?", [*params, limit]
        )
        return [Row.from_db(r) for r in rows], self.compact_rev(cur)

    # -- writes (writer thread, inside a transaction) ---------------------------------

    def insert(
        self,
        cur: Any,
        name: str,
        *,
        created: bool,
        deleted: bool,
        create_revision: int,
        prev_revision: int,
        lease: int,
        value: bytes,
        old_value: bytes,
    ) -> int:
        return self.dialect.insert(
            cur,
            "INSERT INTO kine (name, created, deleted, create_revision, prev_revision, "
            "lease, value, old_value) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                self.param(name),
                int(created),
                int(deleted),
                create_revision,
                prev_revision,
                lease,
                value,
                old_value,
            ),
        )

    def create(self, cur: Any, key: str, value: bytes, lease: int) -> int:
        latest = self.latest(cur, key)
        if latest is not None and not latest.deleted:
            raise KeyExists(key)
        return self.insert(
            cur,
            key,
            created=True,
            deleted=False,
            create_revision=0,
            prev_revision=latest.id if latest else 0,
            lease=lease,
            value=value,
            old_value=b"",
        )

    def current_or_raise(self, cur: Any, key: str, expected: int | None) -> Row:
        latest = self.latest(cur, key)
        if latest is None or latest.deleted:
            raise KeyNotFound(key)
        if expected is not None and latest.id != expected:
            raise Conflict(key, expected, latest.kv())
        return latest

    def update(self, cur: Any, key: str, value: bytes, expected: int, lease: int) -> int:
        latest = self.current_or_raise(cur, key, expected)
        return self.insert(
            cur,
            key,
            created=False,
            deleted=False,
            create_revision=latest.key_create_revision,
            prev_revision=latest.id,
            lease=lease,
            value=value,
            old_value=latest.value,
        )

    def delete(self, cur: Any, key: str, expected: int | None) -> int:
        latest = self.current_or_raise(cur, key, expected)
        return self.insert(
            cur,
            key,
            created=False,
            deleted=True,
            create_revision=latest.key_create_revision,
            prev_revision=latest.id,
            lease=latest.lease,
            value=latest.value,
            old_value=latest.value,
        )

    def transaction_once(self, conn: Any, fn: Callable[[Any], _T]) -> _T:
        try:
            cur = conn.cursor()
            cur.execute(self.dialect.begin_write)
        except BaseException as e:
            if self.dialect.is_driver_error(e):
                raise _Reconnect() from e
            raise
        try:
            result = fn(cur)
        except BaseException:
            with contextlib.suppress(BaseException):
                cur.execute("ROLLBACK")
            raise
        cur.execute("COMMIT")
        return result

    def compact_step(self, cur: Any, target: int) -> int:
        """Compact one batch towards C{target}; return the new compacted revision."""
        old = self.compact_rev(cur)
        if old >= target:
            return old
        end = min(target, old + self.compact_batch)
        cur.execute(
            self.dialect.sql(
                "UPDATE kine SET prev_revision = ? WHERE name = ? AND prev_revision = ?"
            ),
            (end, self.param(COMPACT_KEY), old),
        )
        if cur.rowcount != 1:
            # Another server moved the compacted revision; read it again.
            raise _Retry()
        superseded = self.fetch(
            cur,
            "SELECT prev_revision FROM kine WHERE name != ? AND prev_revision != 0 "
            "AND id >= ? AND id < ?",
            (self.param(COMPACT_KEY), old, end),
        )
        ids = [int(r[0]) for r in superseded]
        for i in range(0, len(ids), 500):
            chunk = ids[i : i + 500]
            cur.execute(
                self.dialect.sql(
                    "DELETE FROM kine WHERE id IN (" + ", ".join("?" * len(chunk)) + ")"
                ),
                chunk,
            )
        cur.execute(
            self.dialect.sql("DELETE FROM kine WHERE deleted = 1 AND id >= ? AND id < ?"),
            (old, end),
        )
        return end

    def read_log(self, conn: Any, after: int) -> tuple[list[Row], int]:
        """The next rows of the log after C{after}, and the compacted revision if they skip ids."""
        cur = conn.cursor()
        rows = self.fetch(
            cur, f"SELECT {COLUMNS} FROM kine WHERE id > ? ORDER BY id LIMIT 500", (after,)
        )
        parsed = [Row.from_db(r) for r in rows]
        compacted = 0
        if parsed and parsed[0].id != after + 1:
            compacted = self.compact_rev(cur)
        return parsed, compacted

    def fill_gap(self, conn: Any, missing: int) -> None:
        """Write a fill row with id C{missing}, unless the real row landed meanwhile."""

        def fill(cur: Any) -> None:
            if self.fetch(cur, "SELECT id FROM kine WHERE id = ?", (missing,)):
                return
            cur.execute(
                self.dialect.sql(
                    "INSERT INTO kine (id, name, created, deleted, create_revision, "
                    "prev_revision, lease, value, old_value) VALUES (?, ?, 0, 1, 0, 0, 0, ?, ?)"
                ),
                (missing, self.param(f"gap-{missing}"), b"", b""),
            )

        try:
            self.transaction_once(conn, fill)
        except BaseException as e:
            if self.dialect.is_driver_error(e) and self.dialect.is_unique_violation(e):
                return
            raise
