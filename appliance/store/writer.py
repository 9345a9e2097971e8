"""The one writer of the capture store, :class:`CaptureStore`: it alone writes the files of the
data directory and the tables of the index (``captures``, ``counters``, ``in_flight`` and the
others), in the order of the write protocol (see :mod:`appliance.store`), and it alone gives seq
numbers (they never repeat)."""

import contextlib
import datetime
import fcntl
import functools
import json
import logging
import os
import sqlite3
from collections.abc import Sequence
from pathlib import Path

import sqlite_utils

from appliance.datadir import DataDir, UnsafePath
from appliance.exc import OffloadMismatch, StoreError, StoreInUse, UnknownCapture
from appliance.store import salvage
from appliance.store.paths import (
    CLEAN_MARKER,
    DAMAGED_DIR,
    DB_NAME,
    LOCK_NAME,
    RESERVE_NAME,
    media_path,
    new_id,
    shard_of,
    thumbnail_path,
    unsafe_layout,
)
from appliance.store.salvage import CorruptDatabaseError, IndexGoneError, is_corruption
from appliance.store.schema import (
    RECOVERED_COLUMNS,
    TRIGGERS,
    capture_row,
    clock_anchor,
    iso_utc,
    m013_columns,
    migrations,
    refuse_newer,
)
from hw.clock import Timestamp

log = logging.getLogger(__package__)  # "appliance.store", one name for the whole store

# Kept allocated for a card filled to the last byte by something else: released, it gives SQLite
# room to delete captures.  Bytes.
RESERVE_BYTES = 8 << 20
# Seconds between WAL checkpoints (TRUNCATE), which keep captures.db-wal from growing.
CHECKPOINT_INTERVAL_S = 600
# The hours of disk samples (table disk_hours, m011) that start more than this many seconds
# before the newest sample are deleted as each is written: a day beyond the week the status page
# plots.  And at most this many hours are kept, the newest written, whatever their times say (a
# wall clock set back would otherwise keep those "from the future" forever).
DISK_HOURS_KEPT_S = 8 * 86400
DISK_HOURS_MAX_ROWS = 500
# The counters a full check keeps (m003, m008): whether one is under way, the next shard it looks
# at, and how many shards it could not read (see appliance.reconcile).
FULL_CHECK_COUNTERS = ("full_check_pending", "full_check_shard", "full_check_skipped")

# Cleanup's choice among the unprotected captures by whether they are offloaded (argument: the
# highest seq), by offloaded (1 or 0): literal, so that SQLite may use m012's partial indexes.
# INDEXED BY: the planner, without statistics, would rather walk (protected, seq) and filter.
OLDEST_BY_OFFLOAD = {
    1: "captures INDEXED BY idx_captures_unprotected_offloaded_seq WHERE protected = 0 AND offloaded = 1 "
    "AND seq <= ?",
    0: "captures INDEXED BY idx_captures_unoffloaded_seq WHERE protected = 0 AND offloaded = 0 AND seq <= ?",
}


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
            if salvage.finish_interrupted_rebuild(self.files):
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
            refuse_newer(self.db, self.db_path)
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
        """Replace the damaged index by one holding what can be salvaged from it (see
        :func:`appliance.store.salvage.rebuild`) and open it.  Returns ``{"set_aside",
        "rows_salvaged"}``."""
        # Closing folds the WAL into the damaged file (SQLite does so on close): nothing is lost.
        self.db.close()
        self.db = None
        self._consume_clean_marker()  # from here on, a crash must not look like a clean stop
        aside, salvaged = salvage.rebuild(self.files)
        self._open_index()
        return {"set_aside": str(aside), "rows_salvaged": salvaged}

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
        try:
            kept = salvage.rescue_index(self.files, self.db, replaced=st is not None)
        finally:
            self.db = None
        raise IndexGoneError(f"{self.db_path} was {what} while the appliance ran; {kept}")

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
            raise StoreInUse(
                f"{self.data_dir} is in use by process {holder}: stop it first (one writer at a time)",
                holder,
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
    def full_check_state(self) -> dict:
        """Where a full check stands: ``{"pending": bool, "shard": the index in SHARDS of the next
        shard to look at, "skipped": shards it could not read, "queued": whether photos found
        without a row wait to be indexed}`` (see :mod:`appliance.reconcile`)."""
        counters = dict(self.db.execute("SELECT name, value FROM counters").fetchall())
        queued = self.db.execute("SELECT 1 FROM recovery LIMIT 1").fetchone() is not None
        return {
            "pending": bool(counters["full_check_pending"]),
            "shard": counters["full_check_shard"],
            "skipped": counters["full_check_skipped"],
            "queued": queued,
        }

    @_index_operation
    def start_full_check(self) -> None:
        """Record, in one commit, that a full check starts again from the first shard."""
        with self.db.atomic():
            self._set_counters({"full_check_pending": 1, "full_check_shard": 0, "full_check_skipped": 0})

    def _set_counters(self, values: dict[str, int]) -> None:
        unknown = set(values) - set(FULL_CHECK_COUNTERS)
        if unknown:  # last_seq above all: only the store moves it, and only up
            raise ValueError(f"not a counter of the full check: {', '.join(sorted(unknown))}")
        for name, value in values.items():
            self.db.execute("UPDATE counters SET value = ? WHERE name = ?", [value, name])

    @_index_operation
    def checked_row(self, capture_id: str) -> dict | None:
        """``{"id", "bytes", "thumbnail_path"}`` of the row of ``capture_id``, what reconciliation
        compares with its files, or None when it has none."""
        row = self.db.execute(
            "SELECT id, bytes, thumbnail_path FROM captures WHERE id = ?", [capture_id]
        ).fetchone()
        return dict(zip(("id", "bytes", "thumbnail_path"), row, strict=True)) if row else None

    @_index_operation
    def commit_repairs(
        self,
        *,
        dropped: Sequence[str] = (),
        thumbnails: dict[str, str | None] | None = None,
        recovered: Sequence[dict] = (),
        full_check: dict[str, int] | None = None,
        written: int = 0,
        freed: int = 0,
    ) -> None:
        """Commit what reconciliation repaired, in one transaction (its files already published
        or removed, durably): drop the rows of ``dropped`` (ids), set ``thumbnail_path`` to
        ``{id: path or None}`` of ``thumbnails``, queue the photos found without a row
        (``recovered``: rows from :func:`~appliance.store.schema.capture_row`, without seq) for
        :meth:`index_recovered`, set the counters of ``full_check`` (``{name: value}``, names
        from :data:`FULL_CHECK_COUNTERS`; raises ``ValueError`` for another), and add the room
        files took (``written``) and gave back (``freed``), in bytes, to their counters."""
        if not (dropped or thumbnails or recovered or full_check or written or freed):
            return
        with self.db.atomic():
            self.db.conn.executemany("DELETE FROM captures WHERE id = ?", [(i,) for i in dropped])
            self.db.conn.executemany(
                "UPDATE captures SET thumbnail_path = ? WHERE id = ?",
                [(path, i) for i, path in (thumbnails or {}).items()],
            )
            if recovered:
                self.db["recovery"].insert_all(recovered, replace=True)
            self._set_counters(full_check or {})
            self._count("bytes_written", written)
            self._count("bytes_freed", freed)

    @_index_operation
    def index_recovered(self, limit: int) -> int:
        """Index up to ``limit`` of the photos queued by :meth:`commit_repairs`, the earliest taken
        first (then by id), after every capture indexed so far (new seqs), in one transaction;
        returns how many (0: none was waiting)."""
        columns = ", ".join(RECOVERED_COLUMNS)
        with self.db.atomic():
            ids = [row[0] for row in self.db.execute(
                "SELECT id FROM recovery ORDER BY captured_at, id LIMIT ?", [limit]
            ).fetchall()]  # fmt: skip
            if not ids:
                return 0
            chosen = "SELECT value FROM json_each(?)"
            self.db.execute(
                f"INSERT INTO captures (seq, {columns}) SELECT ? + ROW_NUMBER() OVER "
                f"(ORDER BY captured_at, id), {columns} FROM recovery WHERE id IN ({chosen})",
                [self.last_seq, json.dumps(ids)],
            )
            self.db.execute(f"DELETE FROM recovery WHERE id IN ({chosen})", [json.dumps(ids)])
            self.db["counters"].update("last_seq", {"value": self.last_seq + len(ids)})
        self.last_seq += len(ids)
        return len(ids)

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
        try:
            if self._next_id is None:
                self._next_id = self._reserve_id()
        except sqlite3.Error as exc:  # not damage: _reserve_id raises that as CorruptDatabaseError
            raise StoreError(f"capture not stored: {exc}") from exc
        capture_id = self._next_id
        media, thumb = media_path(capture_id), thumbnail_path(capture_id)
        row = (
            {
                "id": capture_id,
                "seq": self.last_seq + 1,
                "boot_id": timestamp.boot_id or None,
                "since_boot_s": timestamp.since_boot_s,
            }
            | capture_row(
                capture_id,
                jpeg,
                trigger=trigger,
                captured_at=timestamp.wall,
                clock_synced=timestamp.clock_synced,
                thumbnail=bool(thumbnail),
                metadata=metadata,
                event_id=event_id,
            )
            | m013_columns(jpeg)  # the MD5 object stores report
        )
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
        return row | {"offloaded": 0}  # the column's default (m012): offloaded nowhere yet

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
    def oldest_unprotected(
        self, limit: int, *, up_to_seq: int | None = None, offloaded: bool | None = None
    ) -> list[dict]:
        """Up to ``limit`` unprotected captures, oldest (lowest ``seq``) first, only those with a
        ``seq`` of at most ``up_to_seq`` when given, and only those offloaded (verified on some
        target, see :meth:`record_offloaded`) or only those not, when ``offloaded`` is given.
        Uses the index on (``protected``, ``seq``), or with ``offloaded`` m012's partial indexes
        on ``seq``: the cost does not grow with the number of captures."""
        source = "captures WHERE protected = 0 AND seq <= ?"
        if offloaded is not None:
            source = OLDEST_BY_OFFLOAD[int(offloaded)]
        return list(
            self.db.query(
                f"SELECT id, seq, captured_at, media_path, thumbnail_path, bytes FROM {source} "
                "ORDER BY seq LIMIT ?",
                [up_to_seq if up_to_seq is not None else 2**63 - 1, limit],
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

    def delete_unless_protected(self, capture_id: str) -> int:
        """Delete the capture ``capture_id`` as :meth:`delete` does, unless it is protected or
        gone (``offload_delete_after``: a capture verified on a stick leaves the card).  Returns
        the bytes freed (0 when it was kept)."""
        row = self.db.execute("SELECT protected FROM captures WHERE id = ?", [capture_id]).fetchone()
        if row is None or row[0]:
            return 0
        return self.delete([{"id": capture_id}])[0]

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

    def iter_oldest_unprotected(self, *, offloaded: bool | None = None):
        """:meth:`oldest_unprotected`, all of them (only those offloaded, or only those not, when
        ``offloaded`` is given), read lazily (for ``cleanup --dry-run``)."""
        return self.db["captures"].rows_where(
            "protected = 0" + ("" if offloaded is None else f" AND offloaded = {int(offloaded)}"),
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
        return clock_anchor(self.db)

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
    def record_disk_sample(self, sampled_at: datetime.datetime, *, free_bytes: int, total_bytes: int) -> int:
        """Record the free space and size of the data directory's filesystem (bytes) sampled at
        ``sampled_at`` (aware; taken with a trusted clock) into its UTC hour of ``disk_hours``,
        which keeps the least free space of the hour, the size last sampled and the number of
        samples; and in the same commit delete the hours that start more than
        :data:`DISK_HOURS_KEPT_S` before it, and the oldest written beyond
        :data:`DISK_HOURS_MAX_ROWS`.  Returns how many hours were deleted."""
        hour = int(sampled_at.timestamp()) // 3600 * 3600
        with self.db.atomic():
            self.db.execute(
                "INSERT INTO disk_hours (hour_start_s, free_bytes, total_bytes, samples) VALUES (?, ?, ?, 1) "
                "ON CONFLICT (hour_start_s) DO UPDATE SET free_bytes = MIN(free_bytes, excluded.free_bytes), "
                "total_bytes = excluded.total_bytes, samples = samples + 1",
                [hour, free_bytes, total_bytes],
            )
            return self.db.execute(
                "DELETE FROM disk_hours WHERE hour_start_s < ? OR id <= (SELECT MAX(id) FROM disk_hours) - ?",
                [hour - DISK_HOURS_KEPT_S, DISK_HOURS_MAX_ROWS],
            ).rowcount

    @_index_operation
    def record_offloaded(self, capture_id: str, target: str, sha256: str, at: datetime.datetime) -> None:
        """Record that a copy of capture ``capture_id`` on ``target`` (a target's name, such as
        ``"usb"``) was read back and hashed to ``sha256`` (hex) at ``at`` (aware): in one
        transaction, its row of ``offloads`` and ``captures.offloaded = 1`` (which lets cleanup
        delete it before captures that exist nowhere else).  Idempotent: recording the same
        capture and target again changes nothing (the first time is kept).

        Raises :class:`~appliance.exc.UnknownCapture` (a ``KeyError``) for an id not in the index
        (deleted meanwhile, say), and :class:`~appliance.exc.OffloadMismatch` (a ``ValueError``)
        when ``sha256`` is not the SHA-256 the index holds for the capture (or it holds none):
        then nothing is recorded."""
        sha256 = sha256.lower()
        with self.db.atomic():
            row = self.db.execute("SELECT sha256 FROM captures WHERE id = ?", [capture_id]).fetchone()
            if row is None:
                raise UnknownCapture(capture_id)
            if row[0] != sha256:
                raise OffloadMismatch(capture_id, target, row[0], sha256)
            self.db.execute(
                "INSERT OR IGNORE INTO offloads (capture_id, target, sha256, offloaded_at) "
                "VALUES (?, ?, ?, ?)",
                [capture_id, target, sha256, iso_utc(at)],
            )
            self.db.execute("UPDATE captures SET offloaded = 1 WHERE id = ? AND offloaded = 0", [capture_id])

    @_index_operation
    def set_protected(self, capture_id: str, protected: bool) -> None:
        """Mark a capture as kept by the user (never deleted by cleanup) or not.
        Raises :class:`~appliance.exc.UnknownCapture` (a ``KeyError``) for an unknown id."""
        with self.db.atomic():
            cursor = self.db.execute(
                "UPDATE captures SET protected = ? WHERE id = ?", [int(protected), capture_id]
            )
        if cursor.rowcount == 0:
            raise UnknownCapture(capture_id)
