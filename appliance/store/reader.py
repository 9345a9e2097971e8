"""Reading the index beside the writer: :class:`IndexReader` opens its own read-only connection
for each query (the web page, the status page, import), and a :class:`Snapshot` is one read
transaction that sees the index as it was when it opened (an export)."""

import datetime
import heapq
import json
import sqlite3
from pathlib import Path

import sqlite_utils

from appliance.store.paths import DB_NAME
from appliance.store.schema import clock_anchor, iso_utc
from hw.clock import Timestamp

# The captures not yet offloaded to a target, oldest first, in one index range per value of
# protected (0 or 1): those offloaded nowhere, and those offloaded elsewhere but not to it
# (arguments: protected, the target for the second, after_seq, limit).
PENDING_SQL = "SELECT * FROM {} AND seq > ? ORDER BY seq LIMIT ?"
NOT_OFFLOADED = "captures INDEXED BY idx_captures_unoffloaded_seq WHERE offloaded = 0"
OFFLOADED_ELSEWHERE = (
    "captures INDEXED BY idx_captures_offloaded_seq WHERE offloaded = 1 AND NOT EXISTS "
    "(SELECT 1 FROM offloads WHERE offloads.capture_id = captures.id AND offloads.target = ?)"
)


class IndexReader:
    """Read-only queries on the index in ``data_dir``, for readers other than the main loop.

    Each query opens its own read-only connection (``mode=ro``), so an instance may be shared by
    any number of threads and never takes a write lock.  Raises ``sqlite3.OperationalError`` when
    the database does not exist yet.
    """

    def __init__(self, data_dir: Path):
        self.data_dir = Path(data_dir)
        self._uri = (self.data_dir / DB_NAME).resolve().as_uri() + "?mode=ro"

    def _db(self) -> sqlite_utils.Database:
        return sqlite_utils.Database(sqlite3.connect(self._uri, uri=True), execute_plugins=False)

    def latest(self, limit: int) -> list[dict]:
        """The ``limit`` most recent captures (highest ``seq`` first), as dicts of all columns."""
        with self._db() as db:
            return list(db["captures"].rows_where(order_by="seq DESC", limit=limit))

    def get(self, capture_id: str) -> dict | None:
        """The capture with id ``capture_id``, or None."""
        with self._db() as db:
            rows = list(db["captures"].rows_where("id = ?", [capture_id]))
        return rows[0] if rows else None

    def by_seq(self, seq: int) -> dict | None:
        """The capture numbered ``seq`` (the ``#seq`` the pages show), or None (deleted, or never
        given).  An indexed lookup (the unique index on ``seq``)."""
        with self._db() as db:
            rows = list(db["captures"].rows_where("seq = ?", [seq]))
        return rows[0] if rows else None

    def with_sha256(self, sha256: str) -> str | None:
        """The id of a capture whose photo has this SHA-256 (hex), or None (index m007)."""
        with self._db() as db:
            row = db.execute("SELECT id FROM captures WHERE sha256 = ? LIMIT 1", [sha256]).fetchone()
        return row[0] if row else None

    def clock_anchor(self) -> Timestamp | None:
        """The last moment the wall clock was trusted (see :mod:`appliance.clocktrust`), or None."""
        with self._db() as db:
            if not db["clock_anchor"].exists():  # an index not yet opened by this version (m009)
                return None
            return clock_anchor(db)

    def cleanup_totals(self) -> tuple[int, int]:
        """``(runs, bytes freed)`` over every cleanup run recorded."""
        with self._db() as db:
            return tuple(
                db.execute("SELECT COUNT(*), COALESCE(SUM(bytes_freed), 0) FROM cleanup_runs").fetchone()
            )

    def last_cleanup_run(self) -> dict | None:
        """The most recent row of ``cleanup_runs``, or None."""
        with self._db() as db:
            rows = list(db["cleanup_runs"].rows_where(order_by="id DESC", limit=1))
        return rows[0] if rows else None

    def counts(self, now: datetime.datetime, *, boot: tuple[str, float] | None = None) -> dict:
        """``{"total": n, "last_hour": n, "last_24h": n, "bytes_last_hour": bytes}``: captures in
        the index (a counter kept by triggers, migration m006), and those taken within 1 h and
        24 h before ``now`` (an aware datetime), with the bytes of the last hour's.

        ``boot``: ``(boot id, seconds since boot)`` now, to count by time since boot instead (the
        captures of this boot only), for when the wall clock is not trusted; otherwise by
        ``captured_at``, and never a capture stamped in the future of ``now``.  Each is an indexed
        range: the cost grows with the captures of the last day, never with the size of the
        index."""
        with self._db() as db:
            total = db.execute("SELECT value FROM counters WHERE name = 'captures'").fetchone()[0]

            def within(hours: int, what: str) -> tuple:
                if boot is not None:
                    where, args = "boot_id = ? AND since_boot_s >= ?", [boot[0], boot[1] - hours * 3600]
                else:
                    where = "captured_at >= ? AND captured_at <= ?"
                    args = [iso_utc(now - datetime.timedelta(hours=hours)), iso_utc(now)]
                return db.execute(f"SELECT {what} FROM captures WHERE {where}", args).fetchone()

            last_hour, bytes_last_hour = within(1, "COUNT(*), COALESCE(SUM(bytes), 0)")
            (last_24h,) = within(24, "COUNT(*)")
        return {
            "total": total,
            "last_hour": last_hour,
            "last_24h": last_24h,
            "bytes_last_hour": bytes_last_hour,
        }

    def activity(self, since: datetime.datetime, until: datetime.datetime) -> dict:
        """What the status page's plots show (:mod:`appliance.activity`), from ``since`` to
        ``until`` (aware datetimes), read from the summary tables of migration m011, never from
        ``captures``: ``{"hours": [(hour start, trigger, captures)], "disk_hours": [(hour start,
        least free bytes, total bytes)], "any": bool}``, hour starts in Unix seconds (UTC).

        ``hours``: the captures taken (deletions do not lower them) in each UTC hour that starts
        at or after ``since`` and before ``until``, by trigger, in order; only hours and triggers
        with captures.  ``disk_hours``: the least free space sampled in each UTC hour from the one
        ``since`` is in to ``until`` that has a sample, and the filesystem's size last sampled in
        it, in order.  ``any``: whether a capture was ever counted.  Each is an indexed range (the
        primary key of ``activity_hours``, the unique index on ``disk_hours.hour_start_s``): the
        cost grows with the span, never with the size of the index; an index not yet opened by
        this version has none.
        """
        since_s, until_s = int(since.timestamp()), int(until.timestamp())
        with self._db() as db:
            if not db["activity_hours"].exists():
                return {"hours": [], "disk_hours": [], "any": False}
            hours = db.execute(
                "SELECT hour_start_s, trigger, captures FROM activity_hours "
                "WHERE hour_start_s >= ? AND hour_start_s < ? ORDER BY hour_start_s, trigger",
                [since_s, until_s],
            ).fetchall()
            disk = db.execute(
                "SELECT hour_start_s, free_bytes, total_bytes FROM disk_hours "
                "WHERE hour_start_s >= ? AND hour_start_s < ? ORDER BY hour_start_s",
                [since_s // 3600 * 3600, until_s],
            ).fetchall()
            (first,) = db.execute("SELECT MIN(hour_start_s) FROM activity_hours").fetchone()
        return {"hours": hours, "disk_hours": disk, "any": first is not None}

    def page(
        self,
        *,
        before: int | None = None,
        limit: int = 24,
        day: datetime.date | None = None,
        trigger: str | None = None,
        since: datetime.datetime | None = None,
        until: datetime.datetime | None = None,
    ) -> list[dict]:
        """Up to ``limit`` captures with ``seq`` below ``before`` (None: from the newest), newest
        first, optionally only those of ``trigger``, captured on ``day`` (UTC), or captured at
        ``since <= captured_at < until`` (aware datetimes, e.g. the bounds of a day in another
        zone; None: no bound).  Keyset pagination: the next page is ``before=<the last seq of this
        one>``, and each page costs the same whatever its depth and the size of the index (indexes
        on ``seq``, ``(trigger, seq)`` and ``captured_at``)."""
        where, args = ["seq < ?"], [before if before is not None else 2**63 - 1]
        if trigger is not None:
            where.append("trigger = ?")
            args.append(trigger)
        if day is not None:
            start = datetime.datetime.combine(day, datetime.time(), datetime.UTC)
            where.append("captured_at >= ? AND captured_at < ?")
            args += [iso_utc(start), iso_utc(start + datetime.timedelta(days=1))]
        for bound, operator in ((since, ">="), (until, "<")):
            if bound is not None:
                where.append(f"captured_at {operator} ?")
                args.append(iso_utc(bound))
        with self._db() as db:
            return list(
                db["captures"].rows_where(" AND ".join(where), args, order_by="seq DESC", limit=limit)
            )

    def pending_offload(self, target: str, *, after_seq: int = 0, limit: int = 100) -> list[dict]:
        """Up to ``limit`` captures not yet offloaded to ``target`` (no row of ``offloads`` for
        it, migration m012), with ``seq`` above ``after_seq``, oldest (lowest ``seq``) first, as
        dicts of all columns (as :meth:`page` returns them).  The next batch is
        ``after_seq=<the last seq of this one>``.

        Those offloaded nowhere are read by m012's partial index of them on ``seq``: O(log n +
        limit) whatever the size of the index.  Captures offloaded to another target but
        not to this one are looked for only when there are any (the counters of m012 say so in
        O(1)); that search walks the captures offloaded anywhere from ``after_seq`` on, so a first
        batch for a second target costs O(captures offloaded elsewhere) once.  An index not yet
        opened by this version has no offloads: every capture is pending."""
        with self._db() as db:
            if not db["offloads"].exists():
                return list(db["captures"].rows_where("seq > ?", [after_seq], order_by="seq", limit=limit))
            queries = [(NOT_OFFLOADED, [])]
            (offloaded,) = db.execute("SELECT value FROM counters WHERE name = 'offloaded'").fetchone()
            here = db.execute("SELECT captures FROM offload_targets WHERE target = ?", [target]).fetchone()
            if offloaded > (here[0] if here else 0):
                queries.append((OFFLOADED_ELSEWHERE, [target]))
            # One ordered range per partial index of m012 (offloaded 0, offloaded 1), merged.
            ranges = [
                db.query(PENDING_SQL.format(source), [*args, after_seq, limit]) for source, args in queries
            ]
            merged = heapq.merge(*ranges, key=lambda row: row["seq"])
            return [row for _, row in zip(range(limit), merged, strict=False)]

    def offload_pending(self, target: str) -> tuple[int, int]:
        """``(captures, bytes)`` in the index not yet offloaded to ``target``: the photos a copy to
        it would write and their size in bytes.  O(1): from counters kept by triggers
        (migration m012); an index not yet opened by this version counts every capture."""
        with self._db() as db:
            counters = dict(db.execute("SELECT name, value FROM counters").fetchall())
            if not db["offload_targets"].exists():
                (total,) = db.execute("SELECT COALESCE(SUM(bytes), 0) FROM captures").fetchone()
                return counters["captures"], total
            done = db.execute(
                "SELECT captures, bytes FROM offload_targets WHERE target = ?", [target]
            ).fetchone() or (0, 0)
        return counters["captures"] - done[0], counters["capture_bytes"] - done[1]

    def snapshot(self) -> "Snapshot":
        """A :class:`Snapshot` of the index as it is now (close it, or use it in a ``with``)."""
        return Snapshot(sqlite3.connect(self._uri, uri=True))


class Snapshot:
    """One read transaction on the index: every query sees the index as it was when the snapshot
    opened, whatever the main loop commits meanwhile (WAL readers are never blocked, nor block the
    writer; only a checkpoint cannot pass them, see :meth:`CaptureStore.checkpoint`).  For an
    export, so that the rows, events and photos it writes agree.  Times are ``since <= captured_at
    < until`` (aware datetimes; None: no bound).  A context manager; :meth:`close` ends it.
    """

    def __init__(self, connection: sqlite3.Connection):
        self._db = sqlite_utils.Database(connection, execute_plugins=False)
        try:
            self._db.execute("BEGIN")
            self._db.execute("SELECT 1 FROM captures LIMIT 1").fetchall()  # the read starts here
        except BaseException:
            connection.close()
            raise

    def __enter__(self) -> "Snapshot":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def close(self) -> None:
        self._db.close()

    @staticmethod
    def _range(since, until, exclude) -> tuple[str, list]:
        where, args = ["1"], []
        if since is not None:
            where.append("captured_at >= ?")
            args.append(iso_utc(since))
        if until is not None:
            where.append("captured_at < ?")
            args.append(iso_utc(until))
        if exclude:
            where.append("id NOT IN (SELECT value FROM json_each(?))")
            args.append(json.dumps(list(exclude)))
        return " AND ".join(where), args

    def span(self, since: datetime.datetime | None, until: datetime.datetime | None) -> dict:
        """``{"count": n, "first": captured_at, "last": captured_at, "clock_issues": bool,
        "capture_methods": [sorted methods]}`` of the captures in range; first and last are None
        when there are none, and clock_issues tells whether any was taken with an unsynchronised
        clock."""
        where, args = self._range(since, until, ())
        count, first, last, issues = self._db.execute(
            "SELECT COUNT(*), MIN(captured_at), MAX(captured_at), "
            f"COALESCE(MAX(clock_synced = 0), 0) FROM captures WHERE {where}",
            args,
        ).fetchone()
        methods = self._db.execute(
            f"SELECT DISTINCT capture_method FROM captures WHERE {where} AND capture_method IS NOT NULL",
            args,
        ).fetchall()
        return {
            "count": count,
            "first": first,
            "last": last,
            "clock_issues": bool(issues),
            "capture_methods": sorted(method for (method,) in methods),
        }

    def captures(self, since, until, exclude=()):
        """Yield the captures in range, but those whose id is in ``exclude``, as dicts of all
        columns in ``captured_at`` order (then ``seq``), without holding them all in memory."""
        where, args = self._range(since, until, exclude)
        yield from self._db.query(f"SELECT * FROM captures WHERE {where} ORDER BY captured_at, seq", args)

    def events(self, since, until, exclude=()):
        """Yield ``(event id, first captured_at, last captured_at)`` of the events (a trigger's
        burst; a capture without one is its own) of the captures in range, but ``exclude``,
        in the order of their first capture."""
        where, args = self._range(since, until, exclude)
        yield from self._db.execute(
            "SELECT COALESCE(event_id, id) AS event, MIN(captured_at), MAX(captured_at) FROM captures "
            f"WHERE {where} GROUP BY event ORDER BY MIN(captured_at), MIN(seq)",
            args,
        )
