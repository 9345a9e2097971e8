"""Start-up reconciliation: make the index and the files on disk agree again after any crash.

:func:`open_store` opens the capture store for writing and reconciles it first, in one of three
scopes (:attr:`Reconciliation.scope`):

``"none"``
    The last writer closed cleanly (the store's clean-shutdown marker): no file is read (the
    store's ``PRAGMA quick_check`` still reads the index, at every start).
``"interrupted"``
    After a crash or a power cut: only the captures whose writes the crash can have interrupted,
    which the store lists in its ``in_flight`` table (the id reserved for the next capture, and a
    deletion batch).  Its file work does not grow with the number of captures.  A
    :class:`FullCheck` is then due (:attr:`Reconciliation.full_check_due`): ``appliance run`` does
    it beside capturing, so that capturing starts at once.
``"full"``
    ``appliance check`` (``full=True``), a damaged index, or photos without an index: every shard
    folder is listed and every capture checked as below, before the store is returned (or, for
    ``appliance run``, beside capturing: ``beside=True``).

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
not recognise, and anything that is not a regular file (a symlink above all), are left alone and
listed: nothing outside the data directory is ever read, moved or removed
(:mod:`appliance.datadir`).

A full check reads in a worker thread (listing the folders, reading and decoding the photos,
hashing them, making thumbnails: the work that costs) and hands what it found to the store's own
thread, which checks that each finding still holds (capturing and cleanup go on meanwhile) and
carries it out in steps of about :data:`STEP_BUDGET_S`, committing each step.  Photos found without
a row wait in the table ``recovery``; once every shard has been looked at, they are indexed in the
order they were taken, :data:`RECOVERY_BATCH` per commit.  The next shard to look at is committed
with each shard's last changes, so a full check cut short (a stop, a kill, a power cut) goes on
where it was at the next start.
"""

import contextlib
import datetime
import io
import logging
import queue
import sqlite3
import stat
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import schedule
from PIL import Image

from appliance import exif, thumbnails
from appliance.datadir import DataDir, UnsafePath, temp_name
from appliance.exc import StoreError
from appliance.store import (
    DB_NAME,
    MAX_PHOTO_BYTES,
    MEDIA_NAME,
    SHARDS,
    TEMP_NAME,
    THUMBNAIL_NAME,
    CaptureStore,
    CorruptDatabaseError,
    IndexGoneError,
    capture_row,
    media_path,
    set_aside,
    thumbnail_path,
)

log = logging.getLogger(__name__)

# Seconds of the store's thread a full check step may take beside capturing (at least one
# finding, however long): a trigger that comes meanwhile waits at most about this long.  Steps
# are due every STEP_INTERVAL_S, and end early when a trigger waits.
STEP_BUDGET_S = 0.05
STEP_INTERVAL_S = 0.1
# Findings the worker hands over at a time, and how many such hand-overs may wait: bounds the
# memory a full check holds (each may carry a thumbnail of a few kB).
CHUNK = 32
QUEUED_CHUNKS = 4
# Recovered photos indexed per commit once every shard has been looked at.
RECOVERY_BATCH = 256
# Tries of a shard folder that cannot be listed (an I/O error) before a full check leaves it for
# the next start.
MAX_SHARD_FAILURES = 3
# Seconds the worker waits before trying a failed shard again.
SHARD_RETRY_S = 1.0
# Longest wait, in seconds, before a step that failed is tried again.
MAX_BACKOFF_S = 60.0


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
    data_dir,
    *,
    thumbnail_max_px: int,
    full: bool = False,
    beside: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[CaptureStore, Reconciliation]:
    """Open the store in ``data_dir`` for writing, reconciled with the disk.

    ``full``: check every capture, whatever the last shutdown was; ``beside``: a full check that a
    damaged or lost index calls for is left to the caller, to run beside capturing
    (:attr:`Reconciliation.full_check_due`, with a :class:`FullCheck`), rather than done before
    returning (``full`` is always done before); ``thumbnail_max_px``: size of re-created
    thumbnails; ``progress(done, total)``: called after each of the 256 shards of a full check.

    Returns the open store and what was done.  Raises :class:`~appliance.exc.StoreError` (and its
    subclass :class:`~appliance.store.NewerDatabaseError`) when the store cannot be opened, or
    ``OSError`` when a repair cannot be written.  An exception raised meanwhile (a
    stop asked for by a signal handler, say) leaves the store closed and marked for checking.
    """
    started = time.monotonic()
    report = Reconciliation()
    store = CaptureStore(data_dir)
    try:
        with store.guard():
            if store.rebuilt:
                report.database_set_aside = store.rebuilt["set_aside"]
                report.rows_salvaged = store.rebuilt["rows_salvaged"]
                report.scope = "full"
            elif full or (store.created and _has_photos(store.files)):
                report.scope = "full"  # asked for, or photos without an index: index them first
            elif not store.shutdown_was_clean and not store.created:
                report.scope = "interrupted"
            report.full_check_due = report.scope == "interrupted" or store.full_check_pending
            if report.scope != "none":
                _finish_interrupted_writes(store, report, thumbnail_max_px)
        if report.scope == "full" and (full or not beside):
            with FullCheck(store, report, thumbnail_max_px, restart=full) as check:
                check.run(progress)
            report.full_check_due = store.full_check_pending
        elif report.scope == "full":
            report.full_check_due = True
        if report.unreadable:
            store.mark_unclean()  # so that the next start tries them again
    except BaseException as exc:
        store.close(clean=False)  # half reconciled: the next start must do it again
        if isinstance(exc, sqlite3.Error):
            raise StoreError(f"cannot check the capture store in {store.data_dir}: {exc}") from exc
        raise
    report.duration_s = time.monotonic() - started
    return store, report


def _has_photos(files: DataDir) -> bool:
    with files.folder("media") as media:
        return bool(media.entries())


def _finish_interrupted_writes(store: CaptureStore, report: Reconciliation, max_px: int) -> None:
    """Make the captures in the store's ``in_flight`` table agree with their files, now."""
    apply = _Apply(store, report)
    done = []
    for capture_id, reason in store.in_flight().items():
        for rel in (media_path(capture_id), thumbnail_path(capture_id)):
            folder, _, name = rel.rpartition("/")
            apply.carry_out(_Finding(capture_id, "temp", folder=folder, name=temp_name(name)))
        finding = _inspect_one(store, capture_id, max_px, deleting=reason == "delete")
        apply.carry_out(finding)
        if finding.action != "unreadable":  # else it stays, to be tried again at the next start
            done.append(capture_id)
    apply.commit()
    apply.index_queued_now()
    store.forget_in_flight(done)


# --- What a capture needs: found in the worker (or at once for in-flight ids) ----------------------


@dataclass
class _Finding:
    """What one capture needs, as found by reading its files and its row.  ``seen`` is what the
    decision rests on: the row's presence, the photo's ``(size, mtime_ns)`` and the thumbnail's
    size (None: missing); the store's thread carries the finding out only while that still holds.
    ``webp``: a thumbnail to publish; ``recovered``: the row of a photo found without one (no seq
    yet); ``name``/``folder``: the file of a temporary or unknown entry."""

    capture_id: str
    action: str
    seen: tuple = ()
    reason: str = ""
    webp: bytes | None = None
    recovered: dict | None = None
    folder: str = ""
    name: str = ""


def _inspect_one(store: CaptureStore, capture_id: str, max_px: int, *, deleting: bool) -> _Finding:
    """:func:`_inspect` of one capture, now, in the store's thread (an in-flight id)."""
    files = store.files
    try:
        photo, thumb_size = _states(files, capture_id)
    except OSError as exc:
        return _Finding(capture_id, "unreadable", reason=str(exc))
    # Outside the OSError handlers: damage to the index (a StoreError, so an OSError) is no
    # unreadable photo.
    row = store.checked_row(capture_id)
    try:
        return _inspect(files, capture_id, row, photo, thumb_size, max_px, deleting=deleting)
    except OSError as exc:
        return _Finding(capture_id, "unreadable", reason=str(exc))


def _states(files: DataDir, capture_id: str) -> tuple[tuple[int, int] | None, int | None]:
    """The photo's ``(size, mtime_ns)`` and the thumbnail's size (None: missing, or something
    else than a regular file under that name: not one of ours).  Raises
    :class:`~appliance.datadir.UnsafePath` when a folder on the way is a symlink or a file: then
    nothing can be said of the capture."""
    found = []
    for rel in (media_path(capture_id), thumbnail_path(capture_id)):
        parent, _, name = rel.rpartition("/")
        try:
            with files.folder(parent) as folder:
                st = folder.lstat(name)
            found.append((st.st_size, st.st_mtime_ns) if stat.S_ISREG(st.st_mode) else None)
        except FileNotFoundError:
            found.append(None)
    photo, thumb = found
    return photo, None if thumb is None else thumb[0]


def _inspect(
    files: DataDir,
    capture_id: str,
    row: dict | None,
    photo: tuple[int, int] | None,
    thumb_size: int | None,
    max_px: int,
    *,
    deleting: bool = False,
) -> _Finding:
    """Decide what ``capture_id`` needs from its ``row`` (None: none), its photo's ``(size,
    mtime_ns)`` and its thumbnail's size (None: missing), and do the costly part (read, decode,
    hash, make a thumbnail) without changing anything.  ``deleting``: its deletion was
    interrupted.  Raises ``OSError`` when a file cannot be read."""
    seen = (row is not None, photo, thumb_size)
    finding = _Finding(capture_id, "ok", seen)
    if deleting and row is None:
        finding.action = "finish deletion"
    elif row is None and photo is not None and photo[0] > MAX_PHOTO_BYTES:
        finding.action, finding.reason = "damaged", f"{photo[0]} bytes, more than a photo can be: not read"
    elif row is None and photo is not None:
        finding.action, finding.reason, finding.recovered, finding.webp = _recover(
            files, capture_id, photo, thumb_size, max_px
        )
    elif row is None:
        finding.action = "ok" if thumb_size is None else "remove thumbnail"
    elif photo is None:
        finding.action = "drop row"
    elif photo[0] != row["bytes"]:
        finding.action, finding.reason = "wrong size", f"{photo[0]} bytes instead of {row['bytes']}"
    elif thumb_size is None or not _thumbnail_intact(files, capture_id, thumb_size):
        finding.action = "remake thumbnail"
        if photo[0] > MAX_PHOTO_BYTES:
            finding.reason = f"{photo[0]} bytes, more than a photo can be: not read"
        else:
            finding.webp, finding.reason = _thumbnail_of(files.read_bytes(media_path(capture_id)), max_px)
    elif row["thumbnail_path"] is None:  # made, but its row was not updated before a crash
        finding.action = "thumbnail path"
    return finding


def _thumbnail_of(jpeg: bytes, max_px: int) -> tuple[bytes | None, str]:
    """A WebP thumbnail of ``jpeg``, or None with the reason when the photo does not decode."""
    try:
        return thumbnails.from_jpeg(jpeg, max_px), ""
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        return None, str(exc)


def _recover(files: DataDir, capture_id: str, photo, thumb_size, max_px: int):
    """``(action, reason, row, webp)`` for a photo found without its row: ``"recover"`` with the
    row it gets (no seq yet) and a thumbnail to publish (None when its own is intact), or
    ``"damaged"`` with why, when it does not decode as a JPEG."""
    jpeg = files.read_bytes(media_path(capture_id))
    try:
        with Image.open(io.BytesIO(jpeg)) as image:
            if image.format != "JPEG":
                raise ValueError(f"{image.format} is not JPEG")
            image.draft("RGB", (max_px, max_px))
            image.load()  # a truncated photo fails here
            try:
                taken = exif.original_time(exif.read(image))
            except ValueError:  # a damaged EXIF block: the file's time will do
                taken = None
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        return "damaged", str(exc), None, None
    webp = None
    if thumb_size is None or not _thumbnail_intact(files, capture_id, thumb_size):
        webp, _ = _thumbnail_of(jpeg, max_px)
    if taken is None:
        taken = datetime.datetime.fromtimestamp(photo[1] / 1e9, datetime.UTC)
    # No seq yet; thumbnail_path is set when it is carried out (the thumbnail there, or the new one).
    row = capture_row(
        capture_id, jpeg, trigger="unknown", captured_at=taken, clock_synced=False, thumbnail=False,
        recovered=True,
    )  # fmt: skip
    return "recover", "", row, webp


def _thumbnail_intact(files: DataDir, capture_id: str, size: int) -> bool:
    # A WebP file is a RIFF container: "RIFF", the size of what follows (little-endian), "WEBP"
    # (https://developers.google.com/speed/webp/docs/riff_container).  Truncation or a zeroed
    # block, the ways a card damages a file, break this.
    with files.open_read(thumbnail_path(capture_id)) as f:
        header = f.read(12)
    return (
        header[:4] == b"RIFF"
        and header[8:12] == b"WEBP"
        and int.from_bytes(header[4:8], "little") + 8 == size
    )


# --- Carrying findings out: in the store's thread, after checking they still hold ----------------


class _Apply:
    """Carries out findings in the store's own thread.  Each is first checked against the files
    and the row as they are now (one ``lstat`` each and a lookup by id); one that no longer holds
    was overtaken by the appliance's own work (a capture, a deletion) and is dropped.  File
    changes are made at once; index changes are collected and committed by :meth:`commit`, after
    the folders touched are fsynced."""

    def __init__(self, store: CaptureStore, report: Reconciliation, skip: Callable[[], dict] | None = None):
        self.store, self.report = store, report
        self._skip = skip  # ids not to touch (the in_flight table), read once per commit
        self._skipping: dict | None = None
        self.reset()

    def reset(self) -> None:
        """Forget the index changes collected and not committed."""
        self.dropped: list[str] = []
        self.thumbnails_set: dict[str, str | None] = {}
        self.queued: list[dict] = []
        self.touched: set[str] = set()  # folders with files removed or published, to fsync first
        self.written = self.freed = 0  # the room files published took and removed ones gave back

    def carry_out(self, finding: _Finding) -> None:
        """Carry ``finding`` out if it still holds.  Raises ``OSError`` when a file cannot be
        changed (then nothing of it is committed)."""
        report, files, sid = self.report, self.store.files, finding.capture_id
        if finding.action == "stray":
            report.stray.append(f"{finding.folder}/{finding.name}" if finding.folder else finding.name)
            log.warning("reconciliation: %s left alone (%s)", files.root / finding.folder / finding.name,
                        finding.reason or "unknown file")  # fmt: skip
            return
        if finding.action == "temp":
            try:
                with files.folder(finding.folder) as folder:
                    self.freed += folder.unlink(finding.name).st_blocks * 512
            except FileNotFoundError:
                return
            except UnsafePath as exc:  # not a regular file: not ours, never followed
                self.carry_out(
                    _Finding("", "stray", folder=finding.folder, name=finding.name, reason=str(exc))
                )
                return
            self.touched.add(finding.folder)
            report.temp_removed += 1
            return
        if finding.action == "unreadable":
            log.error("reconciliation: capture %s left as it is for now: %s", sid, finding.reason)
            report.unreadable.append(sid)
            return
        if self._skip is not None:
            if self._skipping is None:
                self._skipping = self._skip()
            if sid in self._skipping:
                return
        if finding.action == "ok":
            return
        try:
            now = self._now(sid)
        except UnsafePath as exc:  # a folder of the layout replaced meanwhile: touch nothing
            log.error("reconciliation: capture %s left as it is: %s", sid, exc)
            return
        if now != finding.seen:
            return
        media, thumb = media_path(sid), thumbnail_path(sid)
        action = finding.action
        if action == "finish deletion":
            _, photo, thumb_size = finding.seen
            for rel, present in ((media, photo is not None), (thumb, thumb_size is not None)):
                self._remove(rel, present)
            report.deletions_finished += photo is not None or thumb_size is not None
        elif action == "recover":
            row = dict(finding.recovered)
            if finding.webp is not None:
                self._publish_thumbnail(sid, finding.webp)
                report.thumbnails_remade += 1
                row["thumbnail_path"] = thumb
            elif finding.seen[2] is not None:
                row["thumbnail_path"] = thumb  # its own, intact
            # One line per photo at DEBUG only: a lost index can leave a million of them.
            log.debug("reconciliation: photo %s had no row; indexing it as recovered", files.root / media)
            self.queued.append(row)
        elif action == "damaged":
            self._set_aside(sid, finding.reason)
            self._remove_thumbnail(finding)
        elif action == "remove thumbnail":
            self._remove_thumbnail(finding)
        elif action in ("drop row", "wrong size"):
            if action == "drop row":
                log.warning("reconciliation: photo of capture %s is missing; dropping its row", sid)
                report.rows_dropped += 1
            else:
                self._set_aside(sid, finding.reason)
            self.dropped.append(sid)
            self._remove_thumbnail(finding)
        elif action == "remake thumbnail":
            if finding.webp is None:
                log.warning("reconciliation: no thumbnail for capture %s: %s", sid, finding.reason)
                self.thumbnails_set[sid] = None
            else:
                self._publish_thumbnail(sid, finding.webp)
                self.thumbnails_set[sid] = thumb
                report.thumbnails_remade += 1
        elif action == "thumbnail path":
            self.thumbnails_set[sid] = thumb

    def _now(self, capture_id: str) -> tuple:
        row = self.store.checked_row(capture_id)
        photo, thumb_size = _states(self.store.files, capture_id)
        return (row is not None, photo, thumb_size)

    def _remove(self, rel: str, present: bool = True) -> None:
        parent, _, name = rel.rpartition("/")
        try:
            with self.store.files.folder(parent) as folder:
                if present:
                    with contextlib.suppress(FileNotFoundError, UnsafePath):  # never a symlink
                        self.freed += folder.unlink(name).st_blocks * 512
                # Even with nothing left to remove, an earlier removal may not be durable yet.
                self.touched.add(parent)
        except FileNotFoundError:
            pass

    def _remove_thumbnail(self, finding: _Finding) -> None:
        if finding.seen[2] is not None:
            self._remove(thumbnail_path(finding.capture_id))
            self.report.thumbnails_removed += 1

    def _publish_thumbnail(self, capture_id: str, webp: bytes) -> None:
        self.written += self.store.publish_thumbnail(capture_id, webp, sync_folder=False)
        self.touched.add(thumbnail_path(capture_id).rpartition("/")[0])  # one fsync, at the commit

    def _set_aside(self, capture_id: str, reason: str) -> None:
        [moved] = set_aside(self.store.files, [media_path(capture_id)])
        log.warning(
            "reconciliation: photo of capture %s is damaged (%s); moved to %s", capture_id, reason, moved
        )
        self.report.damaged += 1

    def commit(self, counters: dict[str, int] | None = None) -> None:
        """Make the removals durable, then commit the dropped rows, the new thumbnail paths, the
        photos queued for recovery and ``counters`` (``{name: value}`` of the ``counters``
        table) in one transaction."""
        files = self.store.files
        for rel in sorted(self.touched):
            with contextlib.suppress(FileNotFoundError), files.folder(rel) as folder:
                folder.fsync()
        self.store.commit_repairs(
            dropped=self.dropped, thumbnails=self.thumbnails_set, recovered=self.queued,
            full_check=counters, written=self.written, freed=self.freed,
        )  # fmt: skip
        self.reset()
        self._skipping = None

    def index_recovered(self, limit: int) -> int:
        """Index up to ``limit`` of the photos waiting in ``recovery``, the earliest taken first,
        after every capture indexed so far, in one transaction; returns how many."""
        indexed = self.store.index_recovered(limit)
        self.report.recovered += indexed
        return indexed

    def index_queued_now(self) -> None:
        """Index every photo waiting in ``recovery`` now (after the in-flight ids of a start-up
        were queued and committed), rather than at the end of a full check."""
        while self.index_recovered(RECOVERY_BATCH):
            pass


# --- The full check -------------------------------------------------------------------------------


@dataclass
class _Chunk:
    findings: list[_Finding]
    shard_done: int | None = None  # the index of the shard whose last findings these are
    skipped: bool = False  # that shard could not be listed and is left for the next start
    error: BaseException | None = None  # what stopped the worker, for the store's thread to raise


class FullCheck:
    """A full check of every capture beside capturing (see the module docstring).

    ``store``: the open store, used only from the thread that calls :meth:`step` or :meth:`run`
    (the store's own); ``report``: where findings and progress go; ``max_px``: thumbnail size;
    ``busy()``: true when the store's thread has better things to do (a trigger waiting), which
    ends a step early; ``restart``: start again at the first shard (``appliance check``) rather
    than go on where an interrupted check stopped.  A worker thread reads ahead, at most
    :data:`QUEUED_CHUNKS` hand-overs.  Use it as a context manager, or call :meth:`close`, to stop
    the worker.  The store's ``full_check_pending`` flag is set while it runs, so one that is
    interrupted is due again at the next start.  A shard folder that cannot be listed is tried
    :data:`MAX_SHARD_FAILURES` times, then left for the next start (``report.shards_skipped``).
    Damage to the index raises :class:`~appliance.store.CorruptDatabaseError`.
    """

    def __init__(
        self,
        store: CaptureStore,
        report: Reconciliation,
        max_px: int,
        *,
        busy: Callable[[], bool] = lambda: False,
        restart: bool = False,
    ):
        self._store, self._report, self._max_px, self._busy = store, report, max_px, busy
        self._apply = _Apply(store, report, skip=store.in_flight)
        self._uri = (store.data_dir / DB_NAME).resolve().as_uri() + "?mode=ro"
        with store.guard():
            state = store.full_check_state()
            resume = not restart and state["pending"] and (state["shard"] < len(SHARDS) or state["queued"])
            self._next = state["shard"] if resume else 0
            self._skipped = state["skipped"] if resume else 0
            if not resume:
                store.start_full_check()
        self._chunks: queue.Queue[_Chunk] = queue.Queue(QUEUED_CHUNKS)
        if resume:
            log.info("full check: going on at shard %d of %d", self._next, len(SHARDS))
        self._pending: list[_Finding] = []
        self._failures = 0  # of the worker at the shard self._next, in a row
        self._errors = 0  # of the steps, in a row (see step)
        self._resume_at = 0.0  # no step before this (monotonic): the back-off after an error
        self._unsafe_logged = False
        self._stop = threading.Event()
        self._worker: threading.Thread | None = None
        self.done = False
        report.full_check_progress = min(0.999, self._next / len(SHARDS))

    def __enter__(self) -> "FullCheck":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def close(self) -> None:
        """Stop the worker (it ends between two captures it reads) and forget what it read ahead;
        idempotent."""
        self._stop.set()
        if self._worker is not None:
            with contextlib.suppress(queue.Empty):
                while True:
                    self._chunks.get_nowait()
            self._worker.join()
            self._worker = None
        self._chunks = queue.Queue(QUEUED_CHUNKS)
        self._pending = []
        self._stop = threading.Event()

    def run(self, progress: Callable[[int, int], None] | None = None) -> None:
        """Check every shard now, then index the photos found without a row.  ``progress(done,
        total)`` is called after each shard."""
        shown = self._next
        while not self.done:
            self._advance(float("inf"), wait=True)
            if progress and self._next != shown:
                shown = self._next
                progress(self._next, len(SHARDS))

    def step(self, budget_s: float = STEP_BUDGET_S):
        """Carry out what the worker found for about ``budget_s`` seconds (at least one finding,
        then until the budget is spent or ``busy()``), committing once; for the scheduler.
        Returns ``schedule.CancelJob`` once the check is done (so that a scheduled step stops
        itself), else None.

        A step that fails (a full card, an I/O error) commits nothing: what was read ahead is
        forgotten, the shard being checked is read again, and the next step waits 2, 4 ...
        seconds (at most :data:`MAX_BACKOFF_S`); the first failure in a row is logged.  Damage to
        the index, or an index gone, raises."""
        if time.monotonic() < self._resume_at:
            return None
        try:
            result = self._advance(budget_s, wait=False)
        except (CorruptDatabaseError, IndexGoneError):
            raise
        except (OSError, sqlite3.Error) as exc:
            self._errors += 1
            delay = min(MAX_BACKOFF_S, 2.0**self._errors)
            self._resume_at = time.monotonic() + delay
            log.log(logging.WARNING if self._errors == 1 else logging.DEBUG,
                    "full check: %s; trying again in %g s", exc, delay)  # fmt: skip
            return None
        self._errors = 0
        return result

    def _advance(self, budget_s: float, *, wait: bool):
        """:meth:`step` without the back-off: errors raise.  ``wait``: wait for the worker rather
        than return when it has nothing ready (``appliance check``)."""
        started = time.monotonic()
        idle = self._worker is None or not (self._worker.is_alive() or self._chunks.qsize() or self._pending)
        if idle and self._next < len(SHARDS):
            self._worker = threading.Thread(target=self._read, name="full-check", daemon=True)
            self._worker.start()
        counters = {}
        committed = (self._next, self._skipped, len(self._report.shards_skipped))
        try:
            with self._store.guard():
                first = True
                while not self.done and (
                    first or (time.monotonic() - started < budget_s and not self._busy())
                ):
                    first = False
                    if self._next < len(SHARDS):
                        if not self._take(counters, wait):
                            break
                    else:
                        self._apply.commit(counters)  # the last shard's queued photos first
                        counters.clear()
                        committed = (self._next, self._skipped, len(self._report.shards_skipped))
                        if not self._apply.index_recovered(RECOVERY_BATCH):
                            self._finish(counters)
                self._apply.commit(counters)
        except BaseException:
            # Nothing of this step was committed: what was read ahead is forgotten, and the shards
            # it went past are read again.
            self._apply.reset()
            self.close()
            self._next, self._skipped, kept = committed
            del self._report.shards_skipped[kept:]
            self.done = False
            raise
        finally:
            self._report.duration_s += time.monotonic() - started
        if not self.done:
            return None
        self.close()
        level = logging.WARNING if self._report.repairs or self._report.shards_skipped else logging.INFO
        log.log(level, "capture store: %s", self._report.summary())
        return schedule.CancelJob

    def _take(self, counters: dict, wait: bool) -> bool:
        """Carry out one finding (or note a shard done); False when the worker has nothing ready."""
        if not self._pending:
            try:
                chunk = self._chunks.get(timeout=1.0) if wait else self._chunks.get_nowait()
            except queue.Empty:
                return wait and self._worker is not None and self._worker.is_alive()
            if chunk.error is not None:
                # The worker has ended: the next step starts another where this one was, and after
                # too many failures at one shard, leaves it for the next start.
                self._worker = None
                self._failures += 1
                if isinstance(chunk.error, Exception) and self._failures >= MAX_SHARD_FAILURES:
                    log.error("full check: shard %s failed %d times (%s); left for the next start",
                              SHARDS[self._next], self._failures, chunk.error)  # fmt: skip
                    self._pending = [_Finding("", "shard done", (self._next, True))]
                    return True
                raise chunk.error
            self._pending = list(chunk.findings)
            if chunk.shard_done is not None:
                self._pending.append(_Finding("", "shard done", (chunk.shard_done, chunk.skipped)))
        finding = self._pending.pop(0)
        if finding.action == "shard done":
            index, skipped = finding.seen
            if skipped:
                self._report.shards_skipped.append(SHARDS[index])
                self._skipped += 1
            self._next, self._failures = index + 1, 0
            counters |= {"full_check_shard": self._next, "full_check_skipped": self._skipped}
            # 1 only once done: the photos found without a row are indexed after the last shard.
            self._report.full_check_progress = min(0.999, self._next / len(SHARDS))
        else:
            self._apply.carry_out(finding)
        return True

    def _finish(self, counters: dict) -> None:
        # A shard left unread means the next start must look again, from the first.
        self.done = True
        counters |= {
            "full_check_pending": int(self._skipped > 0),
            "full_check_shard": 0,
            "full_check_skipped": 0,
        }
        self._report.full_check_progress = 1.0

    # -- the worker's side: reads only --

    def _read(self) -> None:
        try:
            connection = sqlite3.connect(self._uri, uri=True, check_same_thread=True)
            with contextlib.closing(connection):
                for index in range(self._next, len(SHARDS)):
                    if self._stop.is_set():
                        return
                    self._read_shard(connection, index)
        except BaseException as exc:  # noqa: BLE001 -- handed to the store's thread, which raises it
            self._put(_Chunk([], error=exc))

    def _read_shard(self, connection: sqlite3.Connection, index: int) -> None:
        shard = SHARDS[index]
        for attempt in range(1, MAX_SHARD_FAILURES + 1):
            try:
                findings, listed = self._list_shard(index, shard)
                break
            except UnsafePath as exc:  # not a passing failure: left alone, for the next start
                if not self._unsafe_logged:
                    log.error("full check: %s; such shards are left for the next start", exc)
                    self._unsafe_logged = True
                self._put(_Chunk([], shard_done=index, skipped=True))
                return
            except OSError as exc:
                if attempt == MAX_SHARD_FAILURES:
                    log.error("full check: shard %s failed %d times (%s); left for the next start",
                              shard, attempt, exc)  # fmt: skip
                    self._put(_Chunk([], shard_done=index, skipped=True))
                    return
                log.warning("full check: shard %s failed (%s); trying again", shard, exc)
                if self._stop.wait(SHARD_RETRY_S):
                    return
        photos, thumbs = listed
        with connection:  # one read transaction: the rows and in_flight agree with each other
            connection.execute("BEGIN")
            upper = shard[0] + chr(ord(shard[1]) + 1)
            rows = {
                r[0]: {"id": r[0], "bytes": r[1], "thumbnail_path": r[2]}
                for r in connection.execute(
                    "SELECT id, bytes, thumbnail_path FROM captures WHERE id >= ? AND id < ?", [shard, upper]
                )
            }
            reserved = {r[0] for r in connection.execute("SELECT id FROM in_flight")}
            queued = {r[0] for r in connection.execute(
                "SELECT id FROM recovery WHERE id >= ? AND id < ?", [shard, upper]
            )}  # fmt: skip
        files = self._store.files
        for capture_id in sorted((rows.keys() | photos.keys() | thumbs.keys()) - reserved - queued):
            if self._stop.is_set():
                return
            try:
                finding = _inspect(
                    files, capture_id, rows.get(capture_id), photos.get(capture_id),
                    thumbs.get(capture_id), self._max_px,
                )  # fmt: skip
            except OSError as exc:
                finding = _Finding(capture_id, "unreadable", reason=str(exc))
            if finding.action != "ok":
                findings.append(finding)
            if len(findings) >= CHUNK:
                self._put(_Chunk(findings))
                findings = []
        self._put(_Chunk(findings, shard_done=index))

    def _list_shard(self, index: int, shard: str) -> tuple[list[_Finding], tuple[dict, dict]]:
        """The findings of the listing (temporary and unknown files) and ``({id: (size,
        mtime_ns)} of the photos, {id: size} of the thumbnails)`` of a shard; the first shard also
        looks at the tops of ``media/`` and ``thumbnails/``."""
        findings = []
        files = self._store.files
        if index == 0:
            for kind in ("media", "thumbnails"):
                with contextlib.suppress(FileNotFoundError), files.folder(kind) as folder:
                    for entry in folder.entries():
                        if entry.name not in SHARDS or not entry.is_dir(follow_symlinks=False):
                            findings.append(_entry_finding(kind, entry))
        listed = []
        for kind, pattern in (("media", MEDIA_NAME), ("thumbnails", THUMBNAIL_NAME)):
            found = {}
            try:
                with files.folder(f"{kind}/{shard}") as folder:
                    for entry in folder.entries():
                        match = pattern.fullmatch(entry.name)
                        if match and entry.is_file(follow_symlinks=False):
                            st = entry.stat(follow_symlinks=False)
                            found[match[1]] = (st.st_size, st.st_mtime_ns) if kind == "media" else st.st_size
                        else:
                            findings.append(_entry_finding(f"{kind}/{shard}", entry))
            except FileNotFoundError:
                pass
            listed.append(found)
        return findings, tuple(listed)

    def _put(self, chunk: _Chunk) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(queue.Full):
                self._chunks.put(chunk, timeout=0.2)
                return


def _entry_finding(folder: str, entry) -> _Finding:
    """A temporary file of ours to remove, or an unknown entry to leave alone."""
    if TEMP_NAME.fullmatch(entry.name) and entry.is_file(follow_symlinks=False):
        return _Finding("", "temp", folder=folder, name=entry.name)
    kind = "" if entry.is_file(follow_symlinks=False) else "a symlink" if entry.is_symlink() else "not a file"
    return _Finding("", "stray", folder=folder, name=entry.name, reason=kind)
