"""A damaged or vanished index: how damage is recognised, what is salvaged from a damaged index
(the rows SQLite can still read) and how the index is rebuilt from them, and how the index this
process still has open is written back when the file is removed or replaced under it.  Nothing
damaged is ever deleted: it goes to ``damaged/`` (:func:`~appliance.store.durable.set_aside`)."""

import contextlib
import logging
import os
import sqlite3
from pathlib import Path

import sqlite_utils

from appliance.datadir import DataDir
from appliance.exc import StoreError
from appliance.store.durable import free_number, new_database, numbered, set_aside
from appliance.store.paths import CAPTURE_ID, DAMAGED_DIR, DB_NAME, REBUILD_SUFFIX, media_path, thumbnail_path
from appliance.store.schema import FILL_METHOD_AND_EVENT, TRIGGERS, migrations

log = logging.getLogger(__package__)  # "appliance.store", one name for the whole store

# Primary SQLite result codes that mean the file itself is damaged (https://sqlite.org/rescode.html).
_SQLITE_CORRUPT, _SQLITE_NOTADB = 11, 26


class IndexGoneError(StoreError):
    """The index file was removed or replaced while the store had it open: nothing more is
    committed to it (see :meth:`CaptureStore.guard`)."""


class CorruptDatabaseError(StoreError):
    """SQLite says the index file is damaged (``SQLITE_CORRUPT``, ``SQLITE_NOTADB`` or a failed
    ``quick_check``)."""


def is_corruption(exc: sqlite3.Error) -> bool:
    """True when ``exc`` means the database file is damaged, not merely unusable right now."""
    return getattr(exc, "sqlite_errorcode", 0) & 0xFF in (_SQLITE_CORRUPT, _SQLITE_NOTADB)


def _salvage(db_path: Path) -> tuple[list[dict], int, dict[str, str]]:
    """What SQLite can still read from the damaged index at ``db_path`` (opened read-only): the
    ``captures`` rows, the highest seq given (``last_seq``, or the highest ``seq`` if higher) and
    the ``in_flight`` ids.

    Rows are read by ranges of rowid, halving a range that fails, so that a damaged page costs
    only the rows on it.  Every rowid is at most the highest seq (each row ever inserted had a seq
    above all before it), which bounds the search when ``max(rowid)`` cannot be read.  Only damage
    counts as unreadable: any other error (I/O, busy) raises :class:`StoreError`, so that nothing
    is moved and the next start tries again.
    """

    def read(sql: str, args=()) -> list | None:
        try:
            return old.execute(sql, args).fetchall()
        except sqlite3.Error as exc:
            if is_corruption(exc):
                return None
            raise StoreError(f"cannot read the damaged index {db_path}: {exc}") from exc

    def first_value(sql: str) -> int:
        rows = read(sql)
        value = rows[0][0] if rows else None
        return value if isinstance(value, int) and value > 0 else 0

    def rows_between(first: int, last: int) -> list:
        rows = read("SELECT * FROM captures WHERE rowid BETWEEN ? AND ?", [first, last])
        if rows is not None or first == last:
            return rows or []
        middle = (first + last) // 2
        return rows_between(first, middle) + rows_between(middle + 1, last)

    try:
        old = sqlite3.connect(f"{db_path.resolve().as_uri()}?mode=ro", uri=True)
    except sqlite3.Error as exc:
        if is_corruption(exc):
            return [], 0, {}
        raise StoreError(f"cannot read the damaged index {db_path}: {exc}") from exc
    old.row_factory = sqlite3.Row
    with contextlib.closing(old):
        max_seq = first_value("SELECT max(seq) FROM captures")
        last_seq = max(first_value("SELECT value FROM counters WHERE name = 'last_seq'"), max_seq)
        in_flight = {row[0]: row[1] for row in read("SELECT id, reason FROM in_flight") or []}
        top = first_value("SELECT max(rowid) FROM captures") or max_seq or last_seq
        rows = []
        for first in range(1, top + 1, 256):
            rows += rows_between(first, min(first + 255, top))
    return [dict(row) for row in rows], last_seq, in_flight


def plausible(row: dict) -> bool:
    """Whether a salvaged row is whole enough to index again (a damaged page can yield rows with
    NULLs or garbage); the photos of rows left out are indexed as recovered instead."""
    capture_id = row.get("id")
    return (
        isinstance(capture_id, str)
        and CAPTURE_ID.fullmatch(capture_id) is not None
        and row.get("media_path") == media_path(capture_id)
        and row.get("thumbnail_path") in (None, thumbnail_path(capture_id))
        and isinstance(row.get("seq"), int)
        and row["seq"] > 0
        and isinstance(row.get("bytes"), int)
        and row["bytes"] >= 0
        and isinstance(row.get("captured_at"), str)
        and row.get("clock_synced") in (0, 1)
        and row.get("protected") in (0, 1)
        and row.get("trigger") in TRIGGERS
    )


def rebuild(files: DataDir) -> tuple[Path, int]:
    """Replace the damaged index of the data directory ``files`` by one holding what can be
    salvaged from it, keeping the damaged files in ``damaged/``; its last connection must be
    closed (closing folds the WAL into the damaged file: nothing is lost).  The new index has
    ``full_check_pending`` set: the photos must be checked in full.  Returns ``(where the damaged
    index went, rows salvaged)``.

    Crash-safe: the new index is complete under a temporary name (:data:`REBUILD_SUFFIX`) before
    the damaged one is moved away, and :func:`finish_interrupted_rebuild` puts it in place if a
    crash comes between the two.  Raises :class:`StoreError` when the damaged index cannot be
    read for a reason other than damage, ``OSError`` and ``sqlite3.Error`` when the new one
    cannot be written.
    """
    db_path = files.root / DB_NAME
    new = db_path.with_name(DB_NAME + REBUILD_SUFFIX)
    rows, last_seq, in_flight = _salvage(db_path)
    with files.folder() as root:  # a rollback journal: one self-contained file once closed
        db = sqlite_utils.Database(new_database(root, new.name))
    migrations.apply(db)
    columns = set(db["captures"].columns_dict)
    salvaged = 0
    with db.atomic():
        for row in filter(plausible, rows):
            try:
                db["captures"].insert({k: v for k, v in row.items() if k in columns})
            except sqlite3.IntegrityError:  # a duplicate id or seq: one copy is enough
                continue
            salvaged += 1
            last_seq = max(last_seq, row["seq"])
        db.execute(FILL_METHOD_AND_EVENT)  # rows salvaged from an index older than m005
        db["counters"].update("last_seq", {"value": last_seq})
        db["counters"].update("full_check_pending", {"value": 1})
        in_flight = {i: r for i, r in in_flight.items() if isinstance(i, str) and r in ("capture", "delete")}
        db["in_flight"].insert_all([{"id": i, "reason": r} for i, r in in_flight.items()])
    db.close()
    # The WAL first: left beside the new index, SQLite would replay it into it.
    damaged = [DB_NAME + suffix for suffix in ("-wal", "-shm", "")]
    aside = set_aside(files, [name for name in damaged if (files.root / name).exists()])[-1]
    put_in_place(files, new)
    return aside, salvaged


def finish_interrupted_rebuild(files: DataDir) -> bool:
    """Put in place an index rebuilt before a crash (see :func:`rebuild`); True if there was one.
    Raises ``OSError``."""
    db_path = files.root / DB_NAME
    new = db_path.with_name(DB_NAME + REBUILD_SUFFIX)
    if not new.exists():
        return False
    if db_path.exists():
        new.unlink()  # the crash came while it was being written: rebuild again
        return False
    put_in_place(files, new)
    return True


def put_in_place(files: DataDir, new: Path) -> None:
    """Make the complete index ``new`` (in the data directory ``files``) the index, durably, after
    setting aside a WAL left beside the old one (SQLite would replay it into the new one).
    Raises ``OSError``."""
    with files.folder() as root:
        fd = root.open(new.name, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        leftovers = [
            DB_NAME + suffix for suffix in ("-wal", "-shm") if (files.root / (DB_NAME + suffix)).exists()
        ]
        if leftovers:
            set_aside(files, leftovers)
        os.replace(new.name, DB_NAME, src_dir_fd=root.fd, dst_dir_fd=root.fd)
        root.fsync()


def rescue_index(files: DataDir, db: sqlite_utils.Database, *, replaced: bool) -> str:
    """Copy the index the connection ``db`` still has open (``sqlite3`` backup: the database with
    its WAL) back into the data directory ``files``, close ``db``, and say where it went: in
    place of a removed index (through :data:`REBUILD_SUFFIX`, so a crash halfway is finished at
    the next start), or into ``damaged/`` beside a replaced one, which is left alone: the WAL left
    at its name is this connection's (SQLite would replay it into the replacement), so it goes
    into ``damaged/`` too.  Never raises for a copy that fails: the message says so."""
    db_path = files.root / DB_NAME
    names = [DB_NAME, f"{DB_NAME}-wal", f"{DB_NAME}-shm"]
    try:
        if replaced:
            with files.folder() as root:
                if root.mkdir(DAMAGED_DIR):
                    root.fsync()
            with files.folder(DAMAGED_DIR) as damaged:
                n = free_number(damaged, names)
                target = damaged.path(numbered(DB_NAME, n))
                copy = new_database(damaged, target.name)
        else:
            target = db_path.with_name(DB_NAME + REBUILD_SUFFIX)
            with files.folder() as root:
                copy = new_database(root, target.name)
        try:
            db.conn.backup(copy)
        finally:
            copy.close()
    except (OSError, sqlite3.Error) as exc:
        log.error("the index open in this process could not be copied back: %s", exc)
        return f"its rows could not be copied back ({exc}); a restart rebuilds it from the photos"
    finally:
        db.close()
    try:
        if not replaced:
            put_in_place(files, target)
            return "it was written back from the copy this process had open; a restart checks the store"
        with open(target, "rb") as f:
            os.fsync(f.fileno())
        with files.folder() as root, files.folder(DAMAGED_DIR) as damaged:
            for name in names[1:]:
                with contextlib.suppress(FileNotFoundError):
                    root.move(name, damaged, numbered(name, n))
            damaged.fsync()
            root.fsync()
    except OSError as exc:
        log.error("the copy of the index could not be put in place: %s", exc)
        return f"a copy of it is at {target}; a restart puts it in place"
    return f"the index this process had is kept as {target}; a restart checks the store"
