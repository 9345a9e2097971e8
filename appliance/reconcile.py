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
carries it out in steps of about :data:`~appliance.fullcheck.STEP_BUDGET_S`, committing each
step.  Photos found without a row wait in the table ``recovery``; once every shard has been
looked at, they are indexed in the order they were taken,
:data:`~appliance.repairs.RECOVERY_BATCH` per commit.  The next shard to look at is committed
with each shard's last changes, so a full check cut short (a stop, a kill, a power cut) goes on
where it was at the next start.

The parts: what one capture needs and carrying it out (:mod:`appliance.repairs`), the full check
(:mod:`appliance.fullcheck`, whose names are also imported from here), and this module, which
decides the scope at start-up and reports.  Every change to the index goes through the store's
writer methods (:class:`~appliance.store.CaptureStore`).
"""

import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from appliance.datadir import DataDir, temp_name
from appliance.exc import StoreError
from appliance.fullcheck import STEP_BUDGET_S, STEP_INTERVAL_S, FullCheck
from appliance.repairs import Apply, Finding, inspect_one
from appliance.store import CaptureStore, media_path, thumbnail_path

__all__ = ["STEP_BUDGET_S", "STEP_INTERVAL_S", "FullCheck", "Reconciliation", "open_store"]


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

    def status(self) -> "Reconciliation":
        """A copy of what was found and done so far, for another thread: a full check running
        beside capturing goes on updating this one."""
        return replace(
            self,
            stray=list(self.stray),
            unreadable=list(self.unreadable),
            shards_skipped=list(self.shards_skipped),
        )


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
    apply = Apply(store, report)
    done = []
    for capture_id, reason in store.in_flight().items():
        for rel in (media_path(capture_id), thumbnail_path(capture_id)):
            folder, _, name = rel.rpartition("/")
            apply.carry_out(Finding(capture_id, "temp", folder=folder, name=temp_name(name)))
        finding = inspect_one(store, capture_id, max_px, deleting=reason == "delete")
        apply.carry_out(finding)
        if finding.action != "unreadable":  # else it stays, to be tried again at the next start
            done.append(capture_id)
    apply.commit()
    apply.index_queued_now()
    store.forget_in_flight(done)
