"""The capture store: photos and thumbnails on disk, indexed in SQLite.

Layout under the data directory::

    captures.db                      the index (SQLite, WAL), table ``captures``
    media/<shard>/<id>.jpg           the photo
    thumbnails/<shard>/<id>.webp     its WebP thumbnail
    damaged/                         files and databases found damaged, set aside (never deleted)
    clean-shutdown                   present only while no writer is open, after a clean close
    .lock                            held (``flock``) by the one writer

``<id>`` is 32 random hex characters (a UUID4, never derived from the clock) and ``<shard>`` its
first two characters, so no folder holds more than 1/256 of the captures.  Captures are ordered by
``seq``, a counter that never repeats, never by ``captured_at``: the wall clock of a Pi without a
real-time clock can jump by years.

Write protocol, in this order, which is what makes a crash or a power cut safe:

1. the JPEG and then the thumbnail are each written to a temporary name (``.<id>.jpg.tmp``) in
   their final folder, fsynced, renamed into place, and the folder fsynced;
2. only then is the index row committed (WAL, ``synchronous=FULL``: the commit is on the card when
   it returns).

A capture is acknowledged (logged, counted, shown) only after step 2.  A crash before it leaves at
worst a temporary file or an unindexed file, never a row without its file and never a torn file
under a final name.  The id of each capture is reserved in the table ``in_flight`` by the commit
before it (and a deletion batch's ids by the commit that deletes their rows), so start-up
reconciliation (:mod:`appliance.reconcile`) finds what a crash left in O(1), without walking the
photos.
The WAL is checkpointed with ``TRUNCATE`` periodically and on close, so it stays small.

One writer, :class:`CaptureStore`, owned by the main loop; readers (the web page) use
:class:`IndexReader`, which opens its own read-only connection for each query.
"""

import contextlib
import datetime
import fcntl
import functools
import hashlib
import io
import json
import logging
import os
import re
import sqlite3
import stat
import uuid
import warnings
from pathlib import Path

import sqlite_utils
from PIL import Image

from appliance import __version__
from appliance.datadir import DataDir, Folder, UnsafePath
from appliance.exc import StoreError
from hw.clock import Timestamp

log = logging.getLogger(__name__)

DB_NAME = "captures.db"
CLEAN_MARKER = "clean-shutdown"
REBUILD_SUFFIX = ".new"  # captures.db.new: an index being rebuilt
RESERVE_NAME = ".reserve"
# Kept allocated for a card filled to the last byte by something else: released, it gives SQLite
# room to delete captures.  Bytes.
RESERVE_BYTES = 8 << 20
LOCK_NAME = ".lock"
DAMAGED_DIR = "damaged"
# "unknown": a photo found on disk without its row (a crash between its rename and its commit);
# "import": a photo from elsewhere (appliance import).
TRIGGERS = ("button", "motion", "timelapse", "manual", "unknown", "import")
# Camtrap DP 1.0 media.captureMethod of each trigger (none for a photo recovered from disk).
CAPTURE_METHODS = {
    "button": "activityDetection",
    "motion": "activityDetection",
    "manual": "activityDetection",
    "timelapse": "timeLapse",
    "unknown": None,
    "import": None,  # unknown: another camera's reason
}
# The largest photo the store reads back (to check, hash or thumbnail it), in bytes: a 64 MP
# JPEG at the highest quality is well under it; a larger file is no photo of ours.
MAX_PHOTO_BYTES = 64 << 20
# Seconds between WAL checkpoints (TRUNCATE), which keep captures.db-wal from growing.
CHECKPOINT_INTERVAL_S = 600
# Primary SQLite result codes that mean the file itself is damaged (https://sqlite.org/rescode.html).
_SQLITE_CORRUPT, _SQLITE_NOTADB = 11, 26

migrations = sqlite_utils.Migrations("appliance")


@migrations()
def m001_captures(db: sqlite_utils.Database) -> None:
    db["captures"].create(
        {
            "id": str,
            "seq": int,
            "captured_at": str,
            "clock_synced": int,
            "trigger": str,
            "media_path": str,
            "thumbnail_path": str,
            "bytes": int,
            "width": int,
            "height": int,
            "sha256": str,
            "protected": int,
            "metadata": str,
        },
        pk="id",
        not_null={"seq", "captured_at", "clock_synced", "trigger", "media_path", "bytes", "protected"},
        defaults={"protected": 0},
    )
    db["captures"].create_index(["seq"], unique=True)
    # Cleanup picks the oldest unprotected captures; this index keeps that O(log n).
    db["captures"].create_index(["protected", "seq"])
    # "Captures in the last 24 h" on the status page.
    db["captures"].create_index(["captured_at"])
    # The highest seq ever given: seq must never repeat, even after cleanup has emptied captures.
    db["counters"].insert({"name": "last_seq", "value": 0}, pk="name")


@migrations()
def m002_time_honesty_and_recovery(db: sqlite_utils.Database) -> None:
    # Time since boot orders captures within one boot whatever the wall clock did; the boot id says
    # which boot.  Both are NULL for captures recovered from disk, which are marked recovered.
    db["captures"].add_column("boot_id", str)
    db["captures"].add_column("since_boot_s", float)
    db["captures"].add_column("recovered", int, not_null_default=0)


@migrations()
def m003_in_flight(db: sqlite_utils.Database) -> None:
    # Ids whose files may disagree with the index if the process dies now: the id reserved for the
    # next capture ("capture"), and the captures of a deletion batch whose files are being removed
    # ("delete").  Written in the same commits as the rows, so after a crash the start-up check
    # knows exactly where to look without walking the photos.
    db["in_flight"].create({"id": str, "reason": str}, pk="id", not_null={"reason"})
    # 1 while a full check runs: one that was interrupted is done again at the next start.
    db["counters"].insert({"name": "full_check_pending", "value": 0})


@migrations()
def m004_cleanup(db: sqlite_utils.Database) -> None:
    # The capture rate of the last hour, for cleanup's headroom: by time since boot, never the
    # wall clock, which may jump.
    db["captures"].create_index(["boot_id", "since_boot_s"])
    # Captures old enough for max_capture_age_days: only those whose time is known, so that the
    # search never wades through captures stamped 1970 before the clock was set.
    db.execute(
        "CREATE INDEX idx_captures_expiry ON captures (captured_at) WHERE protected = 0 AND clock_synced = 1"
    )
    # One row per cleanup run, for the status page and the record.
    db["cleanup_runs"].create(
        {
            "id": int,
            "started_at": str,
            "finished_at": str,
            "reason": str,
            "deleted": int,
            "bytes_freed": int,
            "free_bytes_before": int,
            "free_bytes_after": int,
            "total_bytes": int,
        },
        pk="id",
        not_null={"started_at", "reason", "deleted", "bytes_freed", "free_bytes_before", "total_bytes"},
    )


# Each capture its own event, its method from its trigger (CAPTURE_METHODS): for rows from before m005.
_FILL_METHOD_AND_EVENT = (
    "UPDATE captures SET event_id = id, capture_method = CASE trigger WHEN 'timelapse' THEN 'timeLapse' "
    "WHEN 'unknown' THEN NULL ELSE 'activityDetection' END WHERE event_id IS NULL"
)


@migrations()
def m005_capture_method_and_event(db: sqlite_utils.Database) -> None:
    # Camtrap DP's captureMethod, recorded per capture; and the event (one trigger's burst) each
    # capture belongs to, for Camtrap DP's eventID.  Older rows: each capture its own event.
    db["captures"].add_column("capture_method", str)
    db["captures"].add_column("event_id", str)
    db.execute(_FILL_METHOD_AND_EVENT)


@migrations()
def m006_counts_for_the_status_page(db: sqlite_utils.Database) -> None:
    # The number of captures, kept by SQLite triggers in the same transaction as every insert and
    # delete (whatever the code path: capture, cleanup, reconciliation, rebuild), so that the
    # status page never counts a million rows per request.
    db["counters"].insert({"name": "captures", "value": db["captures"].count})
    db.execute(
        "CREATE TRIGGER captures_counted_in AFTER INSERT ON captures BEGIN "
        "UPDATE counters SET value = value + 1 WHERE name = 'captures'; END"
    )
    db.execute(
        "CREATE TRIGGER captures_counted_out AFTER DELETE ON captures BEGIN "
        "UPDATE counters SET value = value - 1 WHERE name = 'captures'; END"
    )
    # The gallery filtered by trigger, newest first: keyset pages in O(log n + page).
    db["captures"].create_index(["trigger", "seq"])


@migrations()
def m007_content_hash_lookup(db: sqlite_utils.Database) -> None:
    # appliance import finds a photo already in the index by its SHA-256 in O(log n).
    db["captures"].create_index(["sha256"])


# The columns of a photo found on disk without its row, as the full check indexes it: every column
# of ``captures`` but seq, boot_id and since_boot_s (the seq is given when it is indexed).
RECOVERED_COLUMNS = {
    "id": str, "captured_at": str, "clock_synced": int, "trigger": str, "media_path": str,
    "thumbnail_path": str, "bytes": int, "width": int, "height": int, "sha256": str, "protected": int,
    "recovered": int, "metadata": str, "capture_method": str, "event_id": str,
}  # fmt: skip


@migrations()
def m008_resumable_full_check(db: sqlite_utils.Database) -> None:
    # Photos a full check found without a row wait here, committed as they are found, until the
    # check has looked at every shard; then they are indexed in the order they were taken.  With
    # the next shard to look at and the count of shards it could not read, a full check cut short
    # by a stop or a crash goes on where it was at the next start.
    db["recovery"].create(RECOVERED_COLUMNS, pk="id")
    db["recovery"].create_index(["captured_at", "id"])
    db["counters"].insert_all(
        [{"name": "full_check_shard", "value": 0}, {"name": "full_check_skipped", "value": 0}]
    )


@migrations()
def m009_time_you_can_trust(db: sqlite_utils.Database) -> None:
    # The last moment the appliance trusted the wall clock (appliance.clocktrust): moved on by every
    # capture taken with a trusted clock and every few minutes while it is; one row.  From the
    # newest capture taken with a synchronised clock, for an index from before.
    db["clock_anchor"].create({"id": int, "wall": str, "boot_id": str, "since_boot_s": float}, pk="id")
    newest = db.execute(
        "SELECT captured_at, boot_id, since_boot_s FROM captures "
        "WHERE clock_synced = 1 ORDER BY seq DESC LIMIT 1"
    ).fetchone()
    if newest:
        db["clock_anchor"].insert(
            {"id": 1, "wall": newest[0], "boot_id": newest[1] or "", "since_boot_s": newest[2]}
        )
    # Age expiry walks the captures with a trusted time in capture order (seq) from the oldest, so
    # that it only ever deletes from the oldest end of that order, whatever their captured_at.
    db.execute("DROP INDEX idx_captures_expiry")
    db.execute("CREATE INDEX idx_captures_timed_seq ON captures (seq) WHERE clock_synced = 1")
    # Captures below this seq are not aged by their own time, only by newer ones (set_expiry_floor).
    db["counters"].insert({"name": "expiry_from_seq", "value": 0})


@migrations()
def m010_free_space_ledger(db: sqlite_utils.Database) -> None:
    # The room the files the store has published took, and the room those it removed gave back
    # (their blocks, in bytes), both only ever growing, counted in the commits that make them
    # true: with the ledger cleanup keeps (one row), they tell how much of the card something else
    # took, across restarts and crashes.
    db["counters"].insert_all([{"name": "bytes_written", "value": 0}, {"name": "bytes_freed", "value": 0}])
    db["free_space_ledger"].create(
        {"id": int, "free": int, "written": int, "freed": int, "overhead": int, "boot_id": str,
         "since_boot_s": float, "started_at": str},
        pk="id",
    )  # fmt: skip


class IndexGoneError(StoreError):
    """The index file was removed or replaced while the store had it open: nothing more is
    committed to it (see :meth:`CaptureStore.guard`)."""


class NewerDatabaseError(StoreError):
    """The index was written by a newer version of the appliance (it has migrations we do not know)."""


class CorruptDatabaseError(StoreError):
    """SQLite says the index file is damaged (``SQLITE_CORRUPT``, ``SQLITE_NOTADB`` or a failed
    ``quick_check``)."""


def is_corruption(exc: sqlite3.Error) -> bool:
    """True when ``exc`` means the database file is damaged, not merely unusable right now."""
    return getattr(exc, "sqlite_errorcode", 0) & 0xFF in (_SQLITE_CORRUPT, _SQLITE_NOTADB)


# Every shard folder name, in order: the first two hex characters of an id.
SHARDS = [f"{n:02x}" for n in range(256)]
# The name publish() gives a file while it is written: ".<final name>.tmp" (datadir.temp_name).
TEMP_NAME = re.compile(r"\..+\.tmp")
# The folders of the data directory, and the files at its top that SQLite and the store open by
# name: none of them may be a symlink (see unsafe_layout).
FOLDERS = ("media", "thumbnails", DAMAGED_DIR)
TOP_FILES = (
    DB_NAME, f"{DB_NAME}-wal", f"{DB_NAME}-shm", DB_NAME + REBUILD_SUFFIX,
    LOCK_NAME, CLEAN_MARKER, RESERVE_NAME,
)  # fmt: skip


def shard_of(capture_id: str) -> str:
    """The shard folder name of ``capture_id``: its first two hex characters (256 shards)."""
    return capture_id[:2]


def new_id() -> str:
    """A new capture id: 32 lowercase hex characters from a random UUID4 (122 random bits)."""
    return uuid.uuid4().hex


def media_path(capture_id: str) -> str:
    """The photo's path relative to the data directory: ``media/<shard>/<id>.jpg``."""
    return f"media/{shard_of(capture_id)}/{capture_id}.jpg"


def thumbnail_path(capture_id: str) -> str:
    """The thumbnail's path relative to the data directory: ``thumbnails/<shard>/<id>.webp``."""
    return f"thumbnails/{shard_of(capture_id)}/{capture_id}.webp"


def iso_utc(moment: datetime.datetime) -> str:
    """``moment`` (aware) as stored in ``captured_at``: ISO 8601 in UTC to the millisecond, so
    that values sort and compare as text."""
    return moment.astimezone(datetime.UTC).isoformat(timespec="milliseconds")


def publish(path: Path, data: bytes) -> None:
    """Durably write ``data`` to ``path``: temporary name, fsync, rename, fsync the folder (see
    :meth:`appliance.datadir.Folder.publish`).

    Either the whole new file is at ``path`` afterwards, or (on error or crash) the old state with
    at most a leftover ``.<name>.tmp``.  Raises ``OSError`` (``ENOSPC`` on a full disk).
    """
    with DataDir(path.parent).folder() as folder:
        folder.publish(path.name, data)


def set_aside(files: DataDir, rels: list[str]) -> list[Path]:
    """Move the damaged regular files at ``rels`` (relative to the data directory ``files``) into
    its ``damaged/`` folder, and return where they went.

    Names are kept, with ``.N`` inserted after the stem when taken; one N for the whole group, so a
    database set aside stays beside its WAL.  Nothing is ever deleted: the user may still rescue
    it.  Raises :class:`~appliance.datadir.UnsafePath` for one that is not a regular file (a
    symlink is never followed nor moved).
    """
    with files.folder() as root:
        if root.mkdir(DAMAGED_DIR):
            root.fsync()
    with files.folder(DAMAGED_DIR) as damaged:
        n = _free_number(damaged, [rel.rpartition("/")[2] for rel in rels])
        for rel in rels:
            parent, _, name = rel.rpartition("/")
            with files.folder(parent) as folder:
                folder.move(name, damaged, _numbered(name, n))
        damaged.fsync()
        for parent in {rel.rpartition("/")[0] for rel in rels}:
            with files.folder(parent) as folder:
                folder.fsync()
        return [damaged.path(_numbered(rel.rpartition("/")[2], n)) for rel in rels]


def _numbered(name: str, n: int) -> str:
    stem, dot, rest = name.partition(".")
    return name if n == 1 else f"{stem}.{n}{dot}{rest}"


def _free_number(folder: Folder, names: list[str]) -> int:
    """The lowest N for which no ``_numbered(name, N)`` of ``names`` exists in ``folder``."""
    n = 1
    while True:
        for name in names:
            try:
                folder.lstat(_numbered(name, n))
                break
            except FileNotFoundError:
                continue
        else:
            return n
        n += 1


def _new_database(folder: Folder, name: str) -> sqlite3.Connection:
    """A new, empty SQLite database ``name`` in ``folder`` (replacing a leftover regular file),
    never reached through a symlink: the file is made with ``O_EXCL`` and ``O_NOFOLLOW`` (a
    symlink at the name is refused), and once SQLite has opened it by its path, which it must,
    the path is checked to still be that file.  Raises
    :class:`~appliance.datadir.UnsafePath` otherwise, having written nothing to it."""
    with contextlib.suppress(FileNotFoundError):
        folder.unlink(name)  # a leftover of a crash; a symlink raises UnsafePath and stays
    fd = folder.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:  # held open while checking, so that its inode number cannot be given to another file
        made = os.fstat(fd)
        connection = sqlite3.connect(folder.path(name))
        now = folder.lstat(name)
    finally:
        os.close(fd)
    if not stat.S_ISREG(now.st_mode) or (now.st_dev, now.st_ino) != (made.st_dev, made.st_ino):
        connection.close()
        raise UnsafePath(f"{folder.path(name)} was replaced while it was being made; not written")
    return connection


def unsafe_layout(data_dir: Path) -> list[str]:
    """What in ``data_dir`` would lead out of it, as paths relative to it: the folders of
    :data:`FOLDERS` and the shard folders in ``media/`` and ``thumbnails/`` that are symlinks or
    not folders, and the files of :data:`TOP_FILES` that are not regular files.  Empty when all is
    well (or nothing exists yet).  Costs a listing of ``media/`` and ``thumbnails/``."""
    files = DataDir(data_dir)
    try:
        unsafe = files.unsafe_entries(("",), frozenset(FOLDERS))
        unsafe += files.unsafe_entries(tuple(f for f in ("media", "thumbnails") if f not in unsafe),
                                       frozenset(SHARDS))  # fmt: skip
        with files.folder() as root:
            for name in TOP_FILES:
                try:
                    root.regular_size(name)
                except UnsafePath:
                    unsafe.append(name)
    except FileNotFoundError:
        return []
    return unsafe


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


_ID = re.compile(r"[0-9a-f]{32}")


def _plausible(row: dict) -> bool:
    """Whether a salvaged row is whole enough to index again (a damaged page can yield rows with
    NULLs or garbage); the photos of rows left out are indexed as recovered instead."""
    capture_id = row.get("id")
    return (
        isinstance(capture_id, str)
        and _ID.fullmatch(capture_id) is not None
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


def _index_operation(method):
    """Decorate a method using the index: damage found (``SQLITE_CORRUPT``, ``SQLITE_NOTADB``)
    becomes :class:`CorruptDatabaseError`, and the store is marked for a check at the next start."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        with self.guard():
            return method(self, *args, **kwargs)

    return wrapper


class CaptureStore:
    """The single writer of the capture store rooted at ``data_dir`` (created if missing).

    Opening takes an exclusive lock on ``data_dir/.lock``, applies pending migrations, and consumes
    the clean-shutdown marker: :attr:`shutdown_was_clean` tells whether the last writer closed
    cleanly with the index matching the disk (if not, see :func:`appliance.reconcile.open_store`);
    :attr:`created` whether the index did not exist before.  ``check``: run ``PRAGMA
    quick_check`` (True, the default: at every start, clean or not, so that pages damaged even
    after a clean stop are found before anything reads them; about 0.5 s for 1,000,000
    captures).  An index found damaged (by quick_check, or already on opening) is set aside and
    rebuilt from what SQLite can still read of it; :attr:`rebuilt` then says where it went and how
    many rows were salvaged, and the photos must be checked in full.  Damage found later, by any
    method, raises :class:`CorruptDatabaseError` and makes the next start check and rebuild.
    :meth:`close` checkpoints the WAL and writes the marker again.

    Files in the data directory are reached only through :attr:`files`
    (:class:`~appliance.datadir.DataDir`): no symlink inside it is followed.  A data directory
    with a symlink (or a file) where a folder of the layout or a shard folder should be, or a
    symlink at the name of the index, its WAL, the lock or the marker, is refused
    (:func:`unsafe_layout`).

    Raises :class:`NewerDatabaseError` for an index from a newer version, and :class:`StoreError`
    when the folder or the database cannot be opened, another process holds the lock, or the
    layout is unsafe.
    """

    def __init__(self, data_dir: Path, *, check: bool = True):
        self.data_dir = Path(data_dir)
        self.files = DataDir(self.data_dir)
        self.db_path = self.data_dir / DB_NAME
        self.db = None
        self._db_identity: tuple[int, int] | None = None
        self.rebuilt: dict | None = None
        self._lock = self._take_lock()
        try:
            unsafe = unsafe_layout(self.data_dir)
            if unsafe:
                raise UnsafePath(
                    f"{self.data_dir}: {', '.join(unsafe[:5])}{' ...' if len(unsafe) > 5 else ''} would lead "
                    "out of the data directory (a symlink, or a file where a folder belongs); move "
                    "them out of it"
                )
            if self._finish_interrupted_rebuild():
                self.rebuilt = {"set_aside": str(self.data_dir / DAMAGED_DIR), "rows_salvaged": 0}
            with self.files.folder() as root:
                if [sub for sub in ("media", "thumbnails") if root.mkdir(sub)]:
                    root.fsync()
            self.created = not self.db_path.exists()
            try:
                self._open_index()
                marker_seq = self._consume_clean_marker()
                # The marker records the last seq at close: a different one means someone wrote since.
                self.shutdown_was_clean = marker_seq is not None and marker_seq == self.last_seq
                if marker_seq is not None and marker_seq > self.last_seq:
                    # An index that lost commits (replaced, emptied): never give those seqs again.
                    log.warning(
                        "%s ends at seq %d, before %d: it lost rows", DB_NAME, self.last_seq, marker_seq
                    )
                    with self.db.atomic():
                        self.db["counters"].update("last_seq", {"value": marker_seq})
                    self.last_seq = marker_seq
                if check:
                    self.quick_check()
            except CorruptDatabaseError as exc:
                log.error("%s; rebuilding the index from what SQLite can still read and the photos", exc)
                self.rebuilt = self._rebuild_index()
                self.shutdown_was_clean = False
        except BaseException as exc:
            if self.db is not None:
                self.db.close()
            self._lock.close()
            if isinstance(exc, OSError | sqlite3.Error) and not isinstance(exc, StoreError):
                raise StoreError(f"cannot open the capture store in {self.data_dir}: {exc}") from exc
            raise
        self._consistent = True
        self._shards_made: set[str] = set()
        self._next_id: str | None = None

    def _open_index(self) -> None:
        self.db = sqlite_utils.Database(self.db_path)
        try:
            # Refuse a newer index before writing anything to it (not even the journal mode).
            known = {migration.name for migration in migrations._migrations}
            unknown = [m.name for m in migrations.applied(self.db) if m.name not in known]
            if unknown:
                raise NewerDatabaseError(
                    f"{self.db_path} was written by a newer version of the appliance (migrations "
                    f"{', '.join(unknown)} are unknown to version {__version__}); refusing to open it. "
                    "Install that version again, or move the data directory aside."
                )
            self.db.enable_wal()
            # FULL, not NORMAL: in WAL mode NORMAL may lose the last commits on power loss, and a
            # commit is our acknowledgement that a capture is kept.  It costs one WAL fsync per capture.
            self.db.execute("PRAGMA synchronous=FULL")
            migrations.apply(self.db)
            self.last_seq = self.db["counters"].get("last_seq")["value"]
            st = os.stat(self.db_path)
            self._db_identity = (st.st_dev, st.st_ino)
        except sqlite3.Error as exc:
            if is_corruption(exc):
                raise CorruptDatabaseError(f"{self.db_path} is damaged: {exc}") from exc
            raise

    def _rebuild_index(self) -> dict:
        """Replace the damaged index by one holding what can be salvaged from it, keeping the
        damaged files in ``damaged/``.  Crash-safe: the new index is complete under a temporary
        name before the damaged one is moved away, and :meth:`_finish_interrupted_rebuild` puts it
        in place if a crash comes between the two.  Returns ``{"set_aside", "rows_salvaged"}``."""
        # Closing folds the WAL into the damaged file (SQLite does so on close): nothing is lost.
        self.db.close()
        self.db = None
        self._consume_clean_marker()  # from here on, a crash must not look like a clean stop
        new = self.db_path.with_name(DB_NAME + REBUILD_SUFFIX)
        rows, last_seq, in_flight = _salvage(self.db_path)
        with self.files.folder() as root:  # a rollback journal: one self-contained file once closed
            db = sqlite_utils.Database(_new_database(root, new.name))
        migrations.apply(db)
        columns = set(db["captures"].columns_dict)
        salvaged = 0
        with db.atomic():
            for row in filter(_plausible, rows):
                try:
                    db["captures"].insert({k: v for k, v in row.items() if k in columns})
                except sqlite3.IntegrityError:  # a duplicate id or seq: one copy is enough
                    continue
                salvaged += 1
                last_seq = max(last_seq, row["seq"])
            db.execute(_FILL_METHOD_AND_EVENT)  # rows salvaged from an index older than m005
            db["counters"].update("last_seq", {"value": last_seq})
            db["counters"].update("full_check_pending", {"value": 1})
            in_flight = {
                i: r for i, r in in_flight.items() if isinstance(i, str) and r in ("capture", "delete")
            }
            db["in_flight"].insert_all([{"id": i, "reason": r} for i, r in in_flight.items()])
        db.close()
        # The WAL first: left beside the new index, SQLite would replay it into it.
        damaged = [DB_NAME + suffix for suffix in ("-wal", "-shm", "")]
        aside = set_aside(self.files, [name for name in damaged if (self.data_dir / name).exists()])[-1]
        self._put_in_place(new)
        self._open_index()
        return {"set_aside": str(aside), "rows_salvaged": salvaged}

    def _finish_interrupted_rebuild(self) -> bool:
        """Put in place an index rebuilt before a crash; True if there was one."""
        new = self.db_path.with_name(DB_NAME + REBUILD_SUFFIX)
        if not new.exists():
            return False
        if self.db_path.exists():
            new.unlink()  # the crash came while it was being written: rebuild again
            return False
        self._put_in_place(new)
        return True

    def _put_in_place(self, new: Path) -> None:
        """Make the complete index ``new`` (in the data directory) the index, durably, after
        setting aside a WAL left beside the old one (SQLite would replay it into the new one)."""
        with self.files.folder() as root:
            fd = root.open(new.name, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            leftovers = [
                DB_NAME + suffix
                for suffix in ("-wal", "-shm")
                if (self.data_dir / (DB_NAME + suffix)).exists()
            ]
            if leftovers:
                set_aside(self.files, leftovers)
            os.replace(new.name, DB_NAME, src_dir_fd=root.fd, dst_dir_fd=root.fd)
            root.fsync()

    @contextlib.contextmanager
    def guard(self):
        """Context for work on the index: damage found inside becomes
        :class:`CorruptDatabaseError`, and the next start checks and rebuilds the index.

        First it checks that the index file is still the one opened (the device and inode of
        ``captures.db`` against those at opening: one ``stat``), so that nothing is committed into
        a file removed or replaced under it, which would vanish with the process.  When it is not,
        the index as this connection still sees it is written back (removed: in its place;
        replaced: into ``damaged/``), the connection is closed, and :class:`IndexGoneError` is
        raised: the process should stop, and the next start checks the store.
        """
        self._check_index_file()
        try:
            yield
        except sqlite3.Error as exc:
            if not is_corruption(exc):
                raise
            self._consistent = False
            raise CorruptDatabaseError(f"{self.db_path} is damaged: {exc}") from exc

    def _check_index_file(self) -> None:
        if self.db is None:
            raise IndexGoneError(f"{self.db_path} is closed")
        if self._db_identity is None:
            return  # being opened or rebuilt
        try:
            st = os.stat(self.db_path)
        except FileNotFoundError:
            st = None
        if st is not None and (st.st_dev, st.st_ino) == self._db_identity:
            return
        self._consistent = False
        what = "replaced" if st is not None else "removed"
        kept = self._rescue_index(replaced=st is not None)
        raise IndexGoneError(f"{self.db_path} was {what} while the appliance ran; {kept}")

    def _rescue_index(self, *, replaced: bool) -> str:
        """Copy the index this connection still has open (``sqlite3`` backup: the database with
        its WAL) back into the data directory, close the connection, and say where it went: in
        place of a removed index (through :data:`REBUILD_SUFFIX`, so a crash halfway is finished
        at the next start), or into ``damaged/`` beside a replaced one, which is left alone: the
        WAL left at its name is this connection's (SQLite would replay it into the replacement),
        so it goes into ``damaged/`` too."""
        names = [DB_NAME, f"{DB_NAME}-wal", f"{DB_NAME}-shm"]
        try:
            if replaced:
                with self.files.folder() as root:
                    if root.mkdir(DAMAGED_DIR):
                        root.fsync()
                with self.files.folder(DAMAGED_DIR) as damaged:
                    n = _free_number(damaged, names)
                    target = damaged.path(_numbered(DB_NAME, n))
                    copy = _new_database(damaged, target.name)
            else:
                target = self.db_path.with_name(DB_NAME + REBUILD_SUFFIX)
                with self.files.folder() as root:
                    copy = _new_database(root, target.name)
            try:
                self.db.conn.backup(copy)
            finally:
                copy.close()
        except (OSError, sqlite3.Error) as exc:
            log.error("the index open in this process could not be copied back: %s", exc)
            return f"its rows could not be copied back ({exc}); a restart rebuilds it from the photos"
        finally:
            self.db.close()
            self.db = None
        try:
            if not replaced:
                self._put_in_place(target)
                return "it was written back from the copy this process had open; a restart checks the store"
            with open(target, "rb") as f:
                os.fsync(f.fileno())
            with self.files.folder() as root, self.files.folder(DAMAGED_DIR) as damaged:
                for name in names[1:]:
                    with contextlib.suppress(FileNotFoundError):
                        root.move(name, damaged, _numbered(name, n))
                damaged.fsync()
                root.fsync()
        except OSError as exc:
            log.error("the copy of the index could not be put in place: %s", exc)
            return f"a copy of it is at {target}; a restart puts it in place"
        return f"the index this process had is kept as {target}; a restart checks the store"

    def mark_unclean(self) -> None:
        """Have the next start check what it would after a crash (no clean-shutdown marker)."""
        self._consistent = False

    def _take_lock(self):
        try:
            self.data_dir.mkdir(parents=True, exist_ok=True)
            with self.files.folder() as root:
                lock = os.fdopen(root.open(LOCK_NAME, os.O_RDWR | os.O_CREAT), "r+")  # held until close()
        except OSError as exc:
            raise StoreError(f"cannot open the capture store in {self.data_dir}: {exc}") from exc
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            holder = lock.read().strip() or "another process"
            lock.close()
            raise StoreError(
                f"{self.data_dir} is in use by process {holder}: stop it first (one writer at a time)"
            ) from None
        lock.seek(0)
        lock.truncate()
        lock.write(str(os.getpid()))
        lock.flush()
        return lock

    def _consume_clean_marker(self) -> int | None:
        """Remove the marker durably (so a crash from now on is seen as one) and return the
        last seq it recorded, or None when there was no marker."""
        with self.files.folder() as root:
            try:
                last_seq = json.loads(root.read_bytes(CLEAN_MARKER))["last_seq"]
            except FileNotFoundError:
                return None
            except (ValueError, KeyError, TypeError):
                last_seq = None  # a marker we cannot read proves nothing
            root.unlink(CLEAN_MARKER)
            root.fsync()
        return last_seq

    def quick_check(self) -> None:
        """Run ``PRAGMA quick_check`` (reads every page: O(database size)).  Raises
        :class:`CorruptDatabaseError` with SQLite's first complaint when it is not ``ok``."""
        try:
            result = [row[0] for row in self.db.execute("PRAGMA quick_check").fetchall()]
        except sqlite3.DatabaseError as exc:
            if not is_corruption(exc):  # busy, I/O error, interrupted: not a verdict on the file
                raise StoreError(f"{self.db_path}: quick_check could not run: {exc}") from exc
            result = [str(exc)]
        if result != ["ok"]:
            raise CorruptDatabaseError(f"{self.db_path} fails quick_check: {result[0]}")

    @_index_operation
    def in_flight(self) -> dict[str, str]:
        """``{capture id: "capture" or "delete"}``: the writes a crash may have interrupted."""
        return dict(self.db.execute("SELECT id, reason FROM in_flight").fetchall())

    @_index_operation
    def forget_in_flight(self, capture_ids: list[str], *, freed: int = 0) -> None:
        """Drop ``capture_ids`` from :meth:`in_flight` once their files and rows agree again;
        ``freed``: the room their removed files gave back, in bytes, added to the counter
        ``bytes_freed`` in the same commit."""
        with self.db.atomic():
            self.db.conn.executemany("DELETE FROM in_flight WHERE id = ?", [(i,) for i in capture_ids])
            self._count("bytes_freed", freed)

    def _count(self, name: str, n: int) -> None:
        if n:
            self.db.execute("UPDATE counters SET value = value + ? WHERE name = ?", [n, name])

    @_index_operation
    def space_counters(self) -> tuple[int, int]:
        """``(bytes_written, bytes_freed)``: the room all the files the store has published took
        and the room those it removed gave back, in bytes, since the index was made (m010)."""
        counters = dict(self.db.execute(
            "SELECT name, value FROM counters WHERE name IN ('bytes_written', 'bytes_freed')"
        ).fetchall())  # fmt: skip
        return counters["bytes_written"], counters["bytes_freed"]

    def overhead_bytes(self) -> int:
        """The room the index (``captures.db`` and its WAL) and the reserve file take now, in
        bytes: what the appliance uses beside its photos and thumbnails."""
        total = 0
        with self.files.folder() as root:
            for name in (DB_NAME, f"{DB_NAME}-wal", f"{DB_NAME}-shm", RESERVE_NAME):
                with contextlib.suppress(FileNotFoundError):
                    total += root.lstat(name).st_blocks * 512
        return total

    @_index_operation
    def free_space_ledger(self) -> dict | None:
        """Cleanup's ledger of free space (its one row), or None."""
        rows = list(self.db["free_space_ledger"].rows_where("id = 1"))
        return rows[0] if rows else None

    @_index_operation
    def set_free_space_ledger(self, ledger: dict) -> None:
        """Replace cleanup's ledger of free space (see :mod:`appliance.cleanup`)."""
        with self.db.atomic():
            self.db["free_space_ledger"].insert(ledger | {"id": 1}, replace=True)

    @property
    @_index_operation
    def full_check_pending(self) -> bool:
        """True while a full check is under way, or after one was interrupted."""
        return bool(self.db["counters"].get("full_check_pending")["value"])

    @full_check_pending.setter
    @_index_operation
    def full_check_pending(self, pending: bool) -> None:
        with self.db.atomic():
            self.db["counters"].update("full_check_pending", {"value": int(pending)})

    @_index_operation
    def checkpoint(self) -> tuple[int, int, int]:
        """Copy the WAL into the database and truncate it (``PRAGMA wal_checkpoint(TRUNCATE)``).

        Returns SQLite's ``(busy, wal_frames, checkpointed_frames)``; busy is 1 when a reader kept
        it from finishing, which is harmless: the next checkpoint catches up.  It never waits: a
        TRUNCATE checkpoint calls the busy handler until every reader is on the newest snapshot
        (https://sqlite.org/c3ref/wal_checkpoint_v2.html), and an export streaming for an hour
        holds one, so with Python's default 5 s timeout each checkpoint would stall the main loop.
        """
        timeout_ms = self.db.execute("PRAGMA busy_timeout").fetchone()[0]
        self.db.execute("PRAGMA busy_timeout = 0")
        try:
            return tuple(self.db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone())
        finally:
            self.db.execute(f"PRAGMA busy_timeout = {int(timeout_ms)}")

    def close(self, *, clean: bool = True) -> bool:
        """Checkpoint, close the database, and write the clean-shutdown marker, unless ``clean`` is
        False or something went wrong that could leave a file without its row.  Releases the
        lock.  Never raises: returns False when closing failed (logged; the next start-up
        reconciles in full), True otherwise (also when already closed)."""
        if self._lock.closed:
            return True
        self._consistent = self._consistent and clean and self.db is not None
        try:
            if self._consistent:
                if self._next_id is not None:  # reserved, never used: it has no files
                    self.forget_in_flight([self._next_id])
                self.checkpoint()
            if self.db is not None:
                self.db.close()
                self.db = None
            if self._consistent:
                self.files.publish(CLEAN_MARKER, json.dumps({"last_seq": self.last_seq}).encode())
        except (OSError, sqlite3.Error) as exc:
            log.error("capture store not closed cleanly, the next start will check it in full: %s", exc)
            return False
        finally:
            self._lock.close()
        return True

    def publish_thumbnail(self, capture_id: str, webp: bytes, *, sync_folder: bool = True) -> int:
        """Durably write ``webp`` as the thumbnail of ``capture_id`` (see
        :meth:`~appliance.datadir.Folder.publish`; ``sync_folder`` False: the caller fsyncs its
        folder before it relies on it).  Returns the room it takes, for the counter
        ``bytes_written`` of the commit that indexes it.  Raises ``OSError``."""
        self._make_shard("thumbnails", capture_id)
        folder, _, name = thumbnail_path(capture_id).rpartition("/")
        with self.files.folder(folder) as f:
            return f.publish(name, webp, sync_folder=sync_folder)

    def _make_shard(self, kind: str, capture_id: str) -> None:
        shard = f"{kind}/{shard_of(capture_id)}"
        if shard not in self._shards_made:
            with self.files.folder(kind) as folder:
                folder.mkdir(shard_of(capture_id))
                folder.fsync()  # once per shard and process: the folder's entry is durable
            self._shards_made.add(shard)

    def add(
        self,
        jpeg: bytes,
        thumbnail: bytes | None,
        *,
        timestamp: Timestamp,
        trigger: str,
        metadata: dict | None = None,
        event_id: str | None = None,
    ) -> dict:
        """Store one capture and return its index row (a dict of the ``captures`` columns).

        ``jpeg``: the photo, stored byte for byte; ``thumbnail``: its WebP thumbnail, or None when
        none could be made; ``timestamp``: when it was taken; ``trigger``: one of :data:`TRIGGERS`
        (which sets ``capture_method``, see :data:`CAPTURE_METHODS`); ``metadata``:
        JSON-serialisable camera metadata; ``event_id``: the id shared by the captures of one
        trigger's burst (default: the capture's own id).

        Raises ``ValueError`` for an unknown trigger and :class:`StoreError` when the capture
        could not be stored (full disk, I/O error): then nothing of it is left behind, neither a
        file under its final name nor a row.  Raises :class:`CorruptDatabaseError` when the index
        turns out to be damaged: the files stay, for the rebuild at the next start to index.
        """
        if trigger not in TRIGGERS:
            raise ValueError(f"unknown trigger {trigger!r}; expected one of {TRIGGERS}")
        width, height = jpeg_size(jpeg)
        try:
            if self._next_id is None:
                self._next_id = self._reserve_id()
        except sqlite3.Error as exc:  # not damage: _reserve_id raises that as CorruptDatabaseError
            raise StoreError(f"capture not stored: {exc}") from exc
        capture_id = self._next_id
        media, thumb = media_path(capture_id), thumbnail_path(capture_id)
        row = {
            "id": capture_id,
            "seq": self.last_seq + 1,
            "captured_at": iso_utc(timestamp.wall),
            "clock_synced": int(timestamp.clock_synced),
            "boot_id": timestamp.boot_id or None,
            "since_boot_s": timestamp.since_boot_s,
            "trigger": trigger,
            "media_path": media_path(capture_id),
            "thumbnail_path": thumbnail_path(capture_id) if thumbnail else None,
            "bytes": len(jpeg),
            "width": width,
            "height": height,
            "sha256": hashlib.sha256(jpeg).hexdigest(),
            "protected": 0,
            "recovered": 0,
            "metadata": json.dumps(metadata or {}, default=str),
            "capture_method": CAPTURE_METHODS[trigger],
            "event_id": event_id or capture_id,
        }
        try:
            self._make_shard("media", capture_id)
            written = self.files.publish(media, jpeg)
            if thumbnail:
                written += self.publish_thumbnail(capture_id, thumbnail)
            next_id = new_id()
            self.insert([row], in_flight={capture_id: None, next_id: "capture"}, written=written)
            self._next_id = next_id
        except (CorruptDatabaseError, IndexGoneError) as exc:
            # Keep the files for the next start to index; never reuse the id.
            self._next_id = None
            raise type(exc)(f"capture kept on disk but not indexed: {exc}") from exc
        except sqlite3.Error as exc:
            self._remove_unindexed(media, thumb)
            raise StoreError(f"capture not stored: {exc}") from exc
        except OSError as exc:
            self._remove_unindexed(media, thumb)
            raise StoreError(f"capture not stored: {exc}") from exc
        return row

    def _remove_unindexed(self, *rels: str) -> None:
        for rel in rels:
            folder, _, name = rel.rpartition("/")
            try:
                with self.files.folder(folder) as f:
                    f.unlink(name)
            except FileNotFoundError:
                continue
            except OSError:
                # An unindexed file is harmless, but the next start must look for it.
                self._consistent = False

    @_index_operation
    def _reserve_id(self) -> str:
        capture_id = new_id()
        with self.db.atomic():
            self.db["in_flight"].insert({"id": capture_id, "reason": "capture"})
        return capture_id

    @_index_operation
    def insert(
        self, rows: list[dict], in_flight: dict[str, str | None] | None = None, *, written: int = 0
    ) -> None:
        """Commit complete index ``rows`` (their files already published) in one transaction, and
        raise the seq counter to the highest seq among them.  For :meth:`add` and reconciliation.

        ``in_flight``: changes to :meth:`in_flight` in the same commit, ``{id: reason}`` to add
        and ``{id: None}`` to remove; ``written``: the room their files took, in bytes, added to
        the counter ``bytes_written`` in the same commit.
        """
        last_seq = max(self.last_seq, *(row["seq"] for row in rows)) if rows else self.last_seq
        timed = [row for row in rows if row["clock_synced"] and row.get("boot_id") is not None]
        with self.db.atomic():
            self.db["captures"].insert_all(rows)
            self.db["counters"].update("last_seq", {"value": last_seq})
            self._count("bytes_written", written)
            if timed:  # the clock was trusted: the anchor moves on (appliance.clocktrust)
                newest = max(timed, key=lambda row: row["seq"])
                self._write_anchor(newest["captured_at"], newest["boot_id"], newest["since_boot_s"])
            for capture_id, reason in (in_flight or {}).items():
                if reason is None:
                    self.db.execute("DELETE FROM in_flight WHERE id = ?", [capture_id])
                else:
                    self.db["in_flight"].insert({"id": capture_id, "reason": reason})
        self.last_seq = last_seq

    @_index_operation
    def oldest_unprotected(self, limit: int, *, up_to_seq: int | None = None) -> list[dict]:
        """Up to ``limit`` unprotected captures, oldest (lowest ``seq``) first, only those with a
        ``seq`` of at most ``up_to_seq`` when given.  Uses the index on (``protected``, ``seq``):
        the cost does not grow with the number of captures."""
        return list(
            self.db["captures"].rows_where(
                "protected = 0 AND seq <= ?",
                [up_to_seq if up_to_seq is not None else 2**63 - 1],
                order_by="seq",
                limit=limit,
                select="id, seq, captured_at, media_path, thumbnail_path, bytes",
            )
        )

    @_index_operation
    def delete(self, rows: list[dict]) -> tuple[int, list[str]]:
        """Delete the captures ``rows`` (as returned by :meth:`oldest_unprotected`): their index rows
        in one transaction, then their files (a file already gone is fine).

        Returns ``(bytes freed, ids of captures a file of which could not be removed)``.  Those
        (``EACCES``, ``EBUSY``, ``EIO``) stay in :meth:`in_flight` for
        :meth:`retry_deletions`; their rows are gone all the same, so they are never deleted twice
        nor shown again.
        """
        ids = [(row["id"],) for row in rows]
        with self.db.atomic():
            self.db.conn.executemany("DELETE FROM captures WHERE id = ?", ids)
            self.db.conn.executemany("INSERT INTO in_flight (id, reason) VALUES (?, 'delete')", ids)
        return self._remove_files([row["id"] for row in rows])

    @_index_operation
    def retry_deletions(self) -> tuple[int, list[str]]:
        """Try again to remove the files of captures whose deletion did not finish.  Returns as
        :meth:`delete` does."""
        ids = [capture_id for capture_id, reason in self.in_flight().items() if reason == "delete"]
        return self._remove_files(ids) if ids else (0, [])

    def _remove_files(self, capture_ids: list[str]) -> tuple[int, list[str]]:
        freed, room, failed = 0, 0, []
        by_folder: dict[str, list[tuple[str, str]]] = {}
        for capture_id in capture_ids:
            for rel in (media_path(capture_id), thumbnail_path(capture_id)):
                folder, _, name = rel.rpartition("/")
                by_folder.setdefault(folder, []).append((capture_id, name))
        for rel, names in sorted(by_folder.items()):
            try:
                with self.files.folder(rel) as folder:
                    for capture_id, name in names:
                        try:
                            removed = folder.unlink(name)
                            freed, room = freed + removed.st_size, room + removed.st_blocks * 512
                        except FileNotFoundError:
                            continue  # gone already, perhaps not durably (a retry after a failed fsync)
                        except UnsafePath as exc:
                            log.warning("%s", exc)  # a symlink under its name: not ours to remove
                        except OSError as exc:
                            log.debug("cannot delete %s now: %s", folder.path(name), exc)
                            failed.append(capture_id)
                    # The unlinks must be on the card before the ids leave in_flight, or a power
                    # cut could bring the files back with nothing left to say they were going.
                    folder.fsync()
            except FileNotFoundError:
                continue  # no such shard folder: none of these files is there
            except UnsafePath as exc:
                log.warning("%s", exc)
        self.forget_in_flight([i for i in capture_ids if i not in failed], freed=room)
        return freed, sorted(set(failed))

    @_index_operation
    def expiry_bound(self, captured_before: datetime.datetime, limit: int) -> int | None:
        """The highest ``seq`` up to which age expiry may delete: walking the unprotected
        captures with a trusted time (``clock_synced``) in capture order from the oldest, the
        ``seq`` of the last one taken before ``captured_before`` (aware) ahead of the first one
        that was not; None when the oldest was not.  Every unprotected capture up to that ``seq``
        (those of unknown time among them) was taken before it, so before ``captured_before``:
        deleting them deletes only from the oldest end of the capture order, and a capture whose
        time is wrong (in the future, say) stops the walk rather than being skipped.  Captures
        below the expiry floor (:meth:`set_expiry_floor`) are not walked: their time is not
        vouched for, and they go only with a newer capture that is expired.  Looks at
        ``limit`` captures at most (index ``idx_captures_timed_seq``: the cost does not grow with
        the number of captures)."""
        bound = None
        cutoff = iso_utc(captured_before)
        floor = self.db["counters"].get("expiry_from_seq")["value"]
        for seq, captured_at in self.db.execute(
            "SELECT seq, captured_at FROM captures INDEXED BY idx_captures_timed_seq "
            "WHERE clock_synced = 1 AND protected = 0 AND seq >= ? ORDER BY seq LIMIT ?",
            [floor, limit],
        ):
            if captured_at >= cutoff:
                break
            bound = seq
        return bound

    def iter_oldest_unprotected(self):
        """:meth:`oldest_unprotected`, all of them, read lazily (for ``cleanup --dry-run``)."""
        return self.db["captures"].rows_where(
            "protected = 0",
            order_by="seq",
            select="id, seq, captured_at, media_path, thumbnail_path, bytes",
        )

    def ensure_reserve(self) -> None:
        """Keep :data:`RESERVE_BYTES` allocated in ``.reserve``, for :meth:`release_reserve` to
        give back when the card is full to the last byte (SQLite needs room even to delete).
        Best effort: without the room for it now, it is made at a later call."""
        try:
            with self.files.folder() as root:
                if root.regular_size(RESERVE_NAME) is not None:
                    return
                fd = root.open(RESERVE_NAME, os.O_WRONLY | os.O_CREAT, 0o600)
                try:
                    os.posix_fallocate(fd, 0, RESERVE_BYTES)  # real blocks, not a sparse file
                    os.fsync(fd)
                except OSError:
                    with contextlib.suppress(OSError):
                        root.unlink(RESERVE_NAME)
                    raise
                finally:
                    os.close(fd)
        except OSError:
            return  # made at a later call

    def release_reserve(self) -> bool:
        """Delete the reserve file; True if there was one to give back."""
        with self.files.folder() as root:
            try:
                root.unlink(RESERVE_NAME)
            except FileNotFoundError:
                return False
            root.fsync()
        return True

    @_index_operation
    def clock_anchor(self) -> Timestamp | None:
        """The last moment the wall clock was trusted (see :mod:`appliance.clocktrust`), or None."""
        return _anchor(
            self.db.execute("SELECT wall, boot_id, since_boot_s FROM clock_anchor WHERE id = 1").fetchone()
        )

    @_index_operation
    def set_clock_anchor(self, stamp: Timestamp) -> None:
        """Record ``stamp`` (taken with a trusted clock) as the last moment the clock was trusted."""
        with self.db.atomic():
            self._write_anchor(iso_utc(stamp.wall), stamp.boot_id, stamp.since_boot_s)

    def _write_anchor(self, wall: str, boot_id: str, since_boot_s: float | None) -> None:
        self.db.execute(
            "INSERT OR REPLACE INTO clock_anchor (id, wall, boot_id, since_boot_s) VALUES (1, ?, ?, ?)",
            [wall, boot_id or "", since_boot_s],
        )

    @_index_operation
    def set_expiry_floor(self) -> int:
        """From now on, the captures taken so far are deleted by age only once a newer one is
        (see :meth:`expiry_bound`): for when the clock that timed them is not vouched for.
        Returns the floor (the next seq)."""
        with self.db.atomic():
            self.db["counters"].update("expiry_from_seq", {"value": self.last_seq + 1})
        return self.last_seq + 1

    @_index_operation
    def mark_time_doubtful(self, after: datetime.datetime) -> int:
        """Mark the captures stamped after ``after`` (aware) as taken with an untrusted clock
        (``clock_synced = 0``): their time is in the future of a clock now trusted, so it was
        wrong.  Returns how many."""
        with self.db.atomic():
            cursor = self.db.execute(
                "UPDATE captures SET clock_synced = 0 WHERE clock_synced = 1 AND captured_at > ?",
                [iso_utc(after)],
            )
        return cursor.rowcount

    @_index_operation
    def recent_bytes(self, boot_id: str, since_boot_s: float) -> int:
        """Bytes of the captures taken in boot ``boot_id`` at or after ``since_boot_s``."""
        return self.db.execute(
            "SELECT COALESCE(SUM(bytes), 0) FROM captures WHERE boot_id = ? AND since_boot_s >= ?",
            [boot_id, since_boot_s],
        ).fetchone()[0]

    @_index_operation
    def record_cleanup_run(self, run: dict) -> int:
        """Insert or (with ``id``) update a row of ``cleanup_runs``; returns its id."""
        with self.db.atomic():
            if "id" in run:
                self.db["cleanup_runs"].update(run["id"], run)
                return run["id"]
            return self.db["cleanup_runs"].insert(run).last_pk

    @_index_operation
    def set_protected(self, capture_id: str, protected: bool) -> None:
        """Mark a capture as kept by the user (never deleted by cleanup) or not.
        Raises ``KeyError`` for an unknown id."""
        with self.db.atomic():
            cursor = self.db.execute(
                "UPDATE captures SET protected = ? WHERE id = ?", [int(protected), capture_id]
            )
        if cursor.rowcount == 0:
            raise KeyError(capture_id)


def _anchor(row: tuple | None) -> Timestamp | None:
    if row is None:
        return None
    return Timestamp(datetime.datetime.fromisoformat(row[0]), True, row[1] or "", row[2])


def jpeg_size(jpeg: bytes) -> tuple[int, int]:
    """``(width, height)`` in pixels from the header (the pixels are not decoded); ``(0, 0)`` when
    the header cannot be read."""
    try:
        # Opening parses the EXIF block for the DPI: any warnings about its state are not ours.
        with warnings.catch_warnings(action="ignore"), Image.open(io.BytesIO(jpeg)) as image:
            return image.size
    except (OSError, ValueError):
        return (0, 0)


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
            row = db.execute("SELECT wall, boot_id, since_boot_s FROM clock_anchor WHERE id = 1").fetchone()
        return _anchor(row)

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

    def page(
        self,
        *,
        before: int | None = None,
        limit: int = 24,
        day: datetime.date | None = None,
        trigger: str | None = None,
    ) -> list[dict]:
        """Up to ``limit`` captures with ``seq`` below ``before`` (None: from the newest), newest
        first, optionally only those of ``trigger`` or captured on ``day`` (UTC).  Keyset
        pagination: the next page is ``before=<the last seq of this one>``, and each page costs the
        same whatever its depth and the size of the index (indexes on ``seq``, ``(trigger, seq)``
        and ``captured_at``)."""
        where, args = ["seq < ?"], [before if before is not None else 2**63 - 1]
        if trigger is not None:
            where.append("trigger = ?")
            args.append(trigger)
        if day is not None:
            start = datetime.datetime.combine(day, datetime.time(), datetime.UTC)
            where.append("captured_at >= ? AND captured_at < ?")
            args += [iso_utc(start), iso_utc(start + datetime.timedelta(days=1))]
        with self._db() as db:
            return list(
                db["captures"].rows_where(" AND ".join(where), args, order_by="seq DESC", limit=limit)
            )

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
