"""Start-up reconciliation: make the index and the files on disk agree again after any crash.

:func:`open_store` opens the capture store for writing and reconciles it first, in one of three
scopes (:attr:`Reconciliation.scope`):

``"none"``
    The last writer closed cleanly (the store's clean-shutdown marker): nothing is read.
``"interrupted"``
    After a crash or a power cut: ``PRAGMA quick_check``, then only the captures whose writes the
    crash can have interrupted, which the store lists in its ``in_flight`` table (the id reserved
    for the next capture, and a deletion batch).  Its file work does not grow with the number of
    captures; quick_check reads the database once (about 0.6 s for 1,000,000 captures on a laptop).
    A :class:`FullCheck` is then due (:attr:`Reconciliation.full_check_due`): ``appliance run``
    does it a shard at a time between captures, so that capturing starts at once.
``"full"``
    ``appliance check`` (``full=True``) or a damaged index: every shard folder is listed and every
    capture checked as below, before the store is returned.

For each capture checked:

- leftover temporary files (``.<name>.tmp``, a write the crash interrupted) are removed;
- a photo without a row (a crash between rename and commit) is indexed with a thumbnail, marked
  ``recovered``, trigger ``unknown``, ``captured_at`` from its EXIF ``DateTimeOriginal`` with
  ``OffsetTimeOriginal`` or else its modification time, and ``clock_synced`` 0; one that does not
  decode is set aside in ``damaged/``;
- the files of a capture whose deletion was interrupted are removed;
- a row whose photo is missing is dropped; a photo whose size differs from its row's is set aside
  and its row dropped;
- a missing thumbnail, or one whose WebP (RIFF) header is not intact (truncated or zeroed), is made
  again; a thumbnail of no capture is removed.

A damaged index (``SQLITE_CORRUPT``, ``SQLITE_NOTADB`` or a failed quick_check) is moved to
``damaged/`` (never deleted); the rows SQLite can still read from it are salvaged (so ``protected``
and ``seq`` survive) and the index is rebuilt from them and a full check.  Files the appliance does
not recognise are left alone and listed.
"""

import datetime
import hashlib
import io
import logging
import os
import re
import sqlite3
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import schedule
from PIL import Image

from appliance import exif, thumbnails
from appliance.exc import StoreError
from appliance.store import (
    SHARDS,
    TEMP_NAME,
    CaptureStore,
    CorruptDatabaseError,
    fsync_dir,
    iso_utc,
    jpeg_size,
    media_path,
    publish,
    set_aside,
    thumbnail_path,
)

log = logging.getLogger(__name__)

# The columns of a recovered photo's row: every column of ``captures`` but seq, boot_id, since_boot_s.
_RECOVERED_COLUMNS = (
    "id", "captured_at", "clock_synced", "trigger", "media_path", "thumbnail_path", "bytes", "width",
    "height", "sha256", "protected", "recovered", "metadata", "capture_method", "event_id",
)  # fmt: skip
_ID = r"[0-9a-f]{32}"
_MEDIA_NAME = re.compile(rf"({_ID})\.jpg")
_THUMBNAIL_NAME = re.compile(rf"({_ID})\.webp")
# Seconds a full check beside capturing goes on per step (at least one shard folder, however long).
STEP_BUDGET_S = 0.1
# Tries of a shard folder that fails (an I/O error) before a full check leaves it for the next start.
MAX_SHARD_FAILURES = 3


@dataclass
class Reconciliation:
    """What a reconciliation found and did.  Counts are numbers of files or rows."""

    scope: str = "none"  # "none", "interrupted" or "full": see the module docstring
    full_check_due: bool = False  # a full check should follow (see FullCheck)
    full_check_progress: float | None = None  # 0 to 1 while a full check runs, 1 when done
    database_set_aside: str | None = None  # where a damaged index was moved
    rows_salvaged: int = 0  # rows read back from that damaged index
    temp_removed: int = 0
    recovered: int = 0  # photos indexed that had no row
    deletions_finished: int = 0  # captures whose interrupted deletion was completed
    rows_dropped: int = 0  # rows whose photo was missing
    damaged: int = 0  # photos set aside: wrong size or not decodable
    thumbnails_remade: int = 0
    thumbnails_removed: int = 0  # thumbnails of no capture
    stray: list[str] = field(default_factory=list)  # unknown files, left alone
    unreadable: list[str] = field(default_factory=list)  # captures an I/O error kept from checking
    shards_skipped: list[str] = field(default_factory=list)  # shard folders a full check gave up on
    duration_s: float = 0.0

    @property
    def needs_attention(self) -> bool:
        """Whether anything was repaired, unknown or left unchecked."""
        return bool(self.repairs or self.stray or self.unreadable or self.shards_skipped)

    @property
    def repairs(self) -> int:
        """How many things were repaired (0 when the index already matched the disk)."""
        return (
            bool(self.database_set_aside)
            + self.temp_removed
            + self.recovered
            + self.deletions_finished
            + self.rows_dropped
            + self.damaged
            + self.thumbnails_remade
            + self.thumbnails_removed
        )

    def summary(self) -> str:
        """One line for the log and ``appliance check``."""
        full = self.scope == "full" or self.full_check_progress == 1
        if self.scope == "none" and not full:
            return "last shutdown was clean; nothing to check"
        parts = [
            f"{value} {label}"
            for value, label in (
                (self.temp_removed, "temporary files removed"),
                (self.recovered, "unindexed photos recovered"),
                (self.deletions_finished, "interrupted deletions finished"),
                (self.rows_dropped, "rows without a photo dropped"),
                (self.damaged, "damaged photos set aside"),
                (self.thumbnails_remade, "thumbnails re-created"),
                (self.thumbnails_removed, "orphan thumbnails removed"),
                (len(self.stray), "unknown files left alone"),
                (len(self.unreadable), "captures unreadable for now (I/O errors), left as they are"),
                (len(self.shards_skipped), "shard folders unreadable for now, left for the next start"),
            )
            if value
        ]
        if self.database_set_aside:
            parts.insert(
                0,
                f"damaged index moved to {self.database_set_aside}, {self.rows_salvaged} rows salvaged",
            )
        done = "; ".join(parts) if parts else "index matches the disk"
        what = "full check" if full else "check after an unclean shutdown"
        what = f"incomplete {what}" if self.shards_skipped else what
        due = "; a full check follows, beside capturing" if self.full_check_due and not full else ""
        return f"{what} in {self.duration_s:.1f} s: {done}{due}"

    def as_dict(self) -> dict:
        return asdict(self) | {"repairs": self.repairs}


def open_store(
    data_dir: Path,
    *,
    thumbnail_max_px: int,
    full: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[CaptureStore, Reconciliation]:
    """Open the store in ``data_dir`` for writing, reconciled with the disk.

    ``full``: check every capture, whatever the last shutdown was; ``thumbnail_max_px``: size of
    re-created thumbnails; ``progress(done, total)``: called after each of the 256 shards of a full
    check.  Returns the open store and what was done.  Raises :class:`~appliance.exc.StoreError`
    (and its subclass :class:`~appliance.store.NewerDatabaseError`) when the store cannot be
    opened, or ``OSError`` when a repair cannot be written.
    """
    started = time.monotonic()
    report = Reconciliation()
    store = CaptureStore(data_dir, check=True if full else None)
    try:
        with store.guard():
            if store.rebuilt:
                report.database_set_aside = store.rebuilt["set_aside"]
                report.rows_salvaged = store.rebuilt["rows_salvaged"]
                report.scope = "full"
            elif full or (store.created and any((store.data_dir / "media").iterdir())):
                report.scope = "full"  # asked for, or photos without an index: index them first
            elif not store.shutdown_was_clean and not store.created:
                report.scope = "interrupted"
            report.full_check_due = report.scope == "interrupted" or store.full_check_pending
            if report.scope != "none":
                _finish_interrupted_writes(store, report, thumbnail_max_px)
            if report.scope == "full":
                FullCheck(store, report, thumbnail_max_px).run(progress)
                report.full_check_due = store.full_check_pending
        if report.unreadable:
            store.mark_unclean()  # so that the next start tries them again
    except BaseException as exc:
        store.close(clean=False)  # half reconciled: the next start must do it again
        if isinstance(exc, sqlite3.Error):
            raise StoreError(f"cannot check the capture store in {store.data_dir}: {exc}") from exc
        raise
    report.duration_s = time.monotonic() - started
    return store, report


def _finish_interrupted_writes(store: CaptureStore, report: Reconciliation, max_px: int) -> None:
    """Make the captures in the store's ``in_flight`` table agree with their files."""
    in_flight = store.in_flight()
    repair = _Repair(store, report, max_px)
    done = [
        capture_id
        for capture_id, reason in in_flight.items()
        if repair.capture(capture_id, deleting=reason == "delete")
    ]
    repair.commit()
    repair.commit_recovered()
    store.forget_in_flight(done)  # one that could not be read is tried again at the next start


class FullCheck:
    """A full check of every capture, one shard folder (1/256 of the captures) at a time, so that
    ``appliance run`` can do it between captures (:meth:`step`) and ``appliance check`` at once
    (:meth:`run`).  Call it only from the store's own thread, after :func:`open_store`.

    Progress and findings go to ``report``.  The store's ``full_check_pending`` flag is set while it
    runs, so one that is interrupted (by a crash or a stop) is due again at the next start.
    Photos found without a row are indexed at the end, in the order they were taken.  A shard that
    fails (an I/O error) is tried again, and after :data:`MAX_SHARD_FAILURES` tries left for the
    next start (``report.shards_skipped``).  Damage to the index raises
    :class:`~appliance.store.CorruptDatabaseError`.
    """

    def __init__(self, store: CaptureStore, report: Reconciliation, max_px: int):
        self._store, self._report = store, report
        self._repair = _Repair(store, report, max_px)
        self._next = 0  # the shard to check next; len(SHARDS): the finish is next
        self._failures = 0
        self.done = False
        report.full_check_progress = 0.0

    def run(self, progress: Callable[[int, int], None] | None = None) -> None:
        """Check every shard now.  ``progress(done, total)`` is called after each."""
        while not self.done:
            self._work()
            if progress:
                progress(self._next, len(SHARDS))

    def step(self, budget_s: float = STEP_BUDGET_S):
        """Check shards for about ``budget_s`` seconds (at least one shard, however long it
        takes).  Returns ``schedule.CancelJob`` once all are done (so that a scheduled step stops
        itself), else None."""
        started = time.monotonic()
        try:
            self._work()
            while not self.done and time.monotonic() < started + budget_s:
                self._work()
        finally:
            self._report.duration_s += time.monotonic() - started
        if not self.done:
            return None
        level = logging.WARNING if self._report.repairs or self._report.shards_skipped else logging.INFO
        log.log(level, "capture store: %s", self._report.summary())
        return schedule.CancelJob

    def _work(self) -> None:
        """Check the next shard, or finish; on an I/O error, undo what it counted and try again
        next time, until it has failed too often."""
        before = {key: value if isinstance(value, int) else len(value)
                  for key, value in vars(self._report).items() if isinstance(value, int | list)}  # fmt: skip
        try:
            with self._store.guard():
                if self._next < len(SHARDS):
                    self._check_shard(SHARDS[self._next])
                else:
                    self._repair.commit_recovered()
                    self._store.full_check_pending = bool(self._report.shards_skipped)
                    self.done = True
        except (OSError, sqlite3.Error) as exc:
            if isinstance(exc, CorruptDatabaseError):
                raise
            self._repair.reset()
            for key, value in before.items():
                if isinstance(getattr(self._report, key), list):
                    del getattr(self._report, key)[value:]
                else:
                    setattr(self._report, key, value)
            self._failures += 1
            what = f"shard {SHARDS[self._next]}" if self._next < len(SHARDS) else "the finish"
            if self._failures < MAX_SHARD_FAILURES:
                log.warning("full check: %s failed (%s); trying again", what, exc)
                raise
            log.error(
                "full check: %s failed %d times (%s); left for the next start", what, self._failures, exc
            )
            if self._next == len(SHARDS):
                self.done = True
            else:
                self._report.shards_skipped.append(SHARDS[self._next])
        else:
            if self.done:
                return
        self._next += 1
        self._failures = 0
        self._report.full_check_progress = min(1.0, self._next / len(SHARDS))

    def _check_shard(self, shard: str) -> None:
        store, report, data_dir = self._store, self._report, self._store.data_dir
        if self._next == 0:
            store.full_check_pending = True
            for kind in ("media", "thumbnails"):
                for entry in os.scandir(data_dir / kind):
                    if entry.name not in SHARDS or not entry.is_dir(follow_symlinks=False):
                        _remove_temp_or_note_stray(Path(entry.path), data_dir, report)
        photos = _list(data_dir / "media" / shard, _MEDIA_NAME, data_dir, report)
        thumbs = _list(data_dir / "thumbnails" / shard, _THUMBNAIL_NAME, data_dir, report)
        rows = self._repair.rows_of_shard(shard)
        reserved = store.in_flight()  # the next capture's id: no files yet, nothing to do
        for capture_id in (rows.keys() | photos.keys() | thumbs.keys()) - reserved.keys():
            self._repair.capture(capture_id, photos.get(capture_id), thumbs.get(capture_id), rows)
        self._repair.commit()


def _remove_temp_or_note_stray(path: Path, data_dir: Path, report: Reconciliation) -> bool:
    """Remove ``path`` if it is one of our temporary files (True), else note it as stray."""
    if TEMP_NAME.fullmatch(path.name) and path.is_file():
        path.unlink()
        report.temp_removed += 1
        return True
    report.stray.append(path.relative_to(data_dir).as_posix())
    log.warning("reconciliation: unknown file %s left alone", path)
    return False


def _list(folder: Path, pattern: re.Pattern, data_dir: Path, report: Reconciliation) -> dict[str, int]:
    """``{capture id: size in bytes}`` of the files in ``folder`` named by ``pattern``; temporary
    files are removed and others noted as stray."""
    found = {}
    try:
        entries = list(os.scandir(folder))
    except (FileNotFoundError, NotADirectoryError):  # a file in its place is listed as stray
        return found
    removed = False
    for entry in entries:
        match = pattern.fullmatch(entry.name)
        if match and entry.is_file(follow_symlinks=False):
            found[match[1]] = entry.stat(follow_symlinks=False).st_size
        else:
            removed |= _remove_temp_or_note_stray(Path(entry.path), data_dir, report)
    if removed:
        fsync_dir(folder)
    return found


class _Repair:
    """Decides, capture by capture, what makes its row and its files agree; collects the index
    changes so that they are committed together (per shard)."""

    def __init__(self, store: CaptureStore, report: Reconciliation, max_px: int):
        self.store, self.report, self.max_px = store, report, max_px
        self.data_dir = store.data_dir
        self.dropped: list[str] = []
        self.thumbnails_set: dict[str, str | None] = {}
        self.touched: set[Path] = set()  # folders with files removed, to fsync before committing
        # Rows of recovered photos wait in a temporary table (on disk, not in memory: a rebuilt
        # index may recover every photo) until they get their seq in the order they were taken.
        store.db.execute(
            f"CREATE TEMP TABLE IF NOT EXISTS recovered ({', '.join(_RECOVERED_COLUMNS)}, PRIMARY KEY (id))"
        )

    def rows_of_shard(self, shard: str) -> dict[str, dict]:
        # Ids are hex, so a shard's ids are those from "ab" up to (not including) "ab" + 1 in ASCII.
        upper = shard[0] + chr(ord(shard[1]) + 1)
        query = "SELECT id, bytes, thumbnail_path FROM captures WHERE id >= ? AND id < ?"
        return {row["id"]: row for row in self.store.db.query(query, [shard, upper])}

    def capture(
        self,
        capture_id: str,
        photo_size: int | None = None,
        thumb_size: int | None = None,
        rows: dict[str, dict] | None = None,
        *,
        deleting: bool = False,
    ) -> bool:
        """Make one capture consistent.  ``photo_size``, ``thumb_size``: sizes of its files from
        a folder listing (None: missing), and ``rows`` the rows of its shard; without ``rows``
        both are looked up here, and its temporary files removed.  ``deleting``: its deletion was
        interrupted.  Returns False when a file could not be read or removed (an I/O error,
        logged): the capture is left as it is, for a later check."""
        try:
            if rows is None:
                photo_size, thumb_size = self._stat(capture_id)
                rows = {r["id"]: r for r in self.store.db.query(
                    "SELECT id, bytes, thumbnail_path FROM captures WHERE id = ?", [capture_id]
                )}  # fmt: skip
            self._capture(capture_id, photo_size, thumb_size, rows.get(capture_id), deleting)
        except OSError as exc:
            log.error("reconciliation: capture %s left as it is for now: %s", capture_id, exc)
            self.report.unreadable.append(capture_id)
            return False
        return True

    def _capture(self, capture_id, photo_size, thumb_size, row, deleting) -> None:
        report = self.report
        if deleting and row is None:
            for rel, size in ((media_path(capture_id), photo_size), (thumbnail_path(capture_id), thumb_size)):
                if size is not None:
                    self._unlink(rel)
                # Even with nothing left to remove, an earlier removal may not be durable yet.
                if (self.data_dir / rel).parent.is_dir():
                    self.touched.add((self.data_dir / rel).parent)
            report.deletions_finished += photo_size is not None or thumb_size is not None
        elif row is None and photo_size is not None:
            recovered = self._recover(capture_id, thumb_size)
            if recovered is not None:
                self.store.db.execute(
                    f"INSERT OR REPLACE INTO temp.recovered ({', '.join(recovered)}) "
                    f"VALUES ({', '.join('?' * len(recovered))})",
                    list(recovered.values()),
                )
        elif row is None:
            if thumb_size is not None:  # a thumbnail of nothing
                self._unlink(thumbnail_path(capture_id))
                report.thumbnails_removed += 1
        elif photo_size is None or photo_size != row["bytes"]:
            if photo_size is None:
                log.warning("reconciliation: photo of capture %s is missing; dropping its row", capture_id)
                report.rows_dropped += 1
            else:
                self._set_aside_photo(capture_id, f"{photo_size} bytes instead of {row['bytes']}")
            self.dropped.append(capture_id)
            if thumb_size is not None:
                self._unlink(thumbnail_path(capture_id))
                report.thumbnails_removed += 1
        elif thumb_size is None or not _thumbnail_intact(self.data_dir, capture_id, thumb_size):
            jpeg = (self.data_dir / media_path(capture_id)).read_bytes()
            self.thumbnails_set[capture_id] = self._remake_thumbnail(capture_id, jpeg)
            report.thumbnails_remade += self.thumbnails_set[capture_id] is not None
        elif row["thumbnail_path"] is None:  # made, but its row was not updated before a crash
            self.thumbnails_set[capture_id] = thumbnail_path(capture_id)

    def _stat(self, capture_id: str) -> tuple[int | None, int | None]:
        """Sizes of the photo and thumbnail (None: missing), after removing their temporary files."""
        sizes = []
        for rel in (media_path(capture_id), thumbnail_path(capture_id)):
            path = self.data_dir / rel
            temp = path.with_name(f".{path.name}.tmp")
            if temp.exists():
                self._unlink(temp.relative_to(self.data_dir))
                self.report.temp_removed += 1
            try:
                sizes.append(path.stat().st_size)
            except FileNotFoundError:
                sizes.append(None)
        return tuple(sizes)

    def _unlink(self, rel) -> None:
        path = self.data_dir / rel
        path.unlink()
        self.touched.add(path.parent)

    def commit(self) -> None:
        """Make the removals durable, then commit the dropped rows and new thumbnail paths."""
        for folder in self.touched:
            fsync_dir(folder)
        if self.dropped or self.thumbnails_set:
            with self.store.db.atomic():
                db = self.store.db.conn
                db.executemany("DELETE FROM captures WHERE id = ?", [(i,) for i in self.dropped])
                db.executemany(
                    "UPDATE captures SET thumbnail_path = ? WHERE id = ?",
                    [(path, i) for i, path in self.thumbnails_set.items()],
                )
        self.reset()

    def reset(self) -> None:
        """Forget the changes collected and not committed (after a failure)."""
        self.dropped, self.thumbnails_set, self.touched = [], {}, set()

    def commit_recovered(self) -> None:
        """Index the recovered photos after every indexed capture, in the order they were taken."""
        store, columns = self.store, ", ".join(_RECOVERED_COLUMNS)
        count = store.db.execute("SELECT COUNT(*) FROM temp.recovered").fetchone()[0]
        if not count:
            return
        with store.db.atomic():
            store.db.execute(
                f"INSERT INTO captures (seq, {columns}) SELECT ? + ROW_NUMBER() OVER "
                f"(ORDER BY captured_at, id), {columns} FROM temp.recovered",
                [store.last_seq],
            )
            store.db.execute("DELETE FROM temp.recovered")
            store.db["counters"].update("last_seq", {"value": store.last_seq + count})
        store.last_seq += count
        self.report.recovered += count

    def _remake_thumbnail(self, capture_id: str, jpeg: bytes) -> str | None:
        """Write a new thumbnail of ``jpeg``; its relative path, or None if the photo does not decode."""
        try:
            webp = thumbnails.from_jpeg(jpeg, self.max_px)
        except (OSError, ValueError, Image.DecompressionBombError) as exc:
            log.warning("reconciliation: no thumbnail for capture %s: %s", capture_id, exc)
            return None
        path = self.data_dir / thumbnail_path(capture_id)
        path.parent.mkdir(exist_ok=True)
        publish(path, webp)
        return thumbnail_path(capture_id)

    def _set_aside_photo(self, capture_id: str, reason: str) -> None:
        [moved] = set_aside([self.data_dir / media_path(capture_id)], self.data_dir)
        log.warning(
            "reconciliation: photo of capture %s is damaged (%s); moved to %s", capture_id, reason, moved
        )
        self.report.damaged += 1

    def _recover(self, capture_id: str, thumb_size: int | None) -> dict | None:
        """The index row for an unindexed photo (seq not yet given), or None when it is damaged
        (then it is set aside, and its thumbnail removed)."""
        path = self.data_dir / media_path(capture_id)
        jpeg = path.read_bytes()
        try:
            with Image.open(io.BytesIO(jpeg)) as image:
                if image.format != "JPEG":
                    raise ValueError(f"{image.format} is not JPEG")
                image.draft("RGB", (self.max_px, self.max_px))
                image.load()  # a truncated photo fails here
                try:
                    taken = exif.original_time(exif.read(image))
                except ValueError:  # a damaged EXIF block: the file's time will do
                    taken = None
        except (OSError, ValueError, Image.DecompressionBombError) as exc:
            self._set_aside_photo(capture_id, str(exc))
            if thumb_size is not None:
                self._unlink(thumbnail_path(capture_id))
                self.report.thumbnails_removed += 1
            return None
        if thumb_size is not None and _thumbnail_intact(self.data_dir, capture_id, thumb_size):
            thumb = thumbnail_path(capture_id)
        else:
            thumb = self._remake_thumbnail(capture_id, jpeg)
            self.report.thumbnails_remade += thumb is not None
        if taken is None:
            taken = datetime.datetime.fromtimestamp(path.stat().st_mtime, datetime.UTC)
        width, height = jpeg_size(jpeg)
        log.warning("reconciliation: photo %s had no row; indexed it as recovered", path)
        return {
            "id": capture_id,
            "captured_at": iso_utc(taken),
            "clock_synced": 0,
            "trigger": "unknown",
            "media_path": media_path(capture_id),
            "thumbnail_path": thumb,
            "bytes": len(jpeg),
            "width": width,
            "height": height,
            "sha256": hashlib.sha256(jpeg).hexdigest(),
            "protected": 0,
            "recovered": 1,
            "metadata": "{}",
            "capture_method": None,  # unknown: what triggered it was in the lost row
            "event_id": capture_id,
        }


def _thumbnail_intact(data_dir: Path, capture_id: str, size: int) -> bool:
    # A WebP file is a RIFF container: "RIFF", the size of what follows (little-endian), "WEBP"
    # (https://developers.google.com/speed/webp/docs/riff_container).  Truncation or a zeroed
    # block, the ways a card damages a file, break this.
    with open(data_dir / thumbnail_path(capture_id), "rb") as f:
        header = f.read(12)
    return (
        header[:4] == b"RIFF"
        and header[8:12] == b"WEBP"
        and int.from_bytes(header[4:8], "little") + 8 == size
    )
