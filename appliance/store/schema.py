"""The index's schema: its tables, made and changed only by numbered migrations (sqlite-utils
``Migrations``), and what goes in a row of ``captures``: the triggers, the capture time as text,
the photo's size and the one builder of a capture row (:func:`capture_row`)."""

import datetime
import hashlib
import io
import json
import warnings
from pathlib import Path

import sqlite_utils
from PIL import Image

from appliance import __version__
from appliance.exc import StoreError
from appliance.store.paths import media_path, thumbnail_path
from hw.clock import Timestamp

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

migrations = sqlite_utils.Migrations("appliance")
# The names of the migrations below, in the order they are declared (sqlite-utils keeps its own
# list private): an index with an applied migration not among them is from a newer version.
MIGRATION_NAMES: list[str] = []


def _migration(function):
    MIGRATION_NAMES.append(function.__name__)
    return migrations()(function)


@_migration
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


@_migration
def m002_time_honesty_and_recovery(db: sqlite_utils.Database) -> None:
    # Time since boot orders captures within one boot whatever the wall clock did; the boot id says
    # which boot.  Both are NULL for captures recovered from disk, which are marked recovered.
    db["captures"].add_column("boot_id", str)
    db["captures"].add_column("since_boot_s", float)
    db["captures"].add_column("recovered", int, not_null_default=0)


@_migration
def m003_in_flight(db: sqlite_utils.Database) -> None:
    # Ids whose files may disagree with the index if the process dies now: the id reserved for the
    # next capture ("capture"), and the captures of a deletion batch whose files are being removed
    # ("delete").  Written in the same commits as the rows, so after a crash the start-up check
    # knows exactly where to look without walking the photos.
    db["in_flight"].create({"id": str, "reason": str}, pk="id", not_null={"reason"})
    # 1 while a full check runs: one that was interrupted is done again at the next start.
    db["counters"].insert({"name": "full_check_pending", "value": 0})


@_migration
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
FILL_METHOD_AND_EVENT = (
    "UPDATE captures SET event_id = id, capture_method = CASE trigger WHEN 'timelapse' THEN 'timeLapse' "
    "WHEN 'unknown' THEN NULL ELSE 'activityDetection' END WHERE event_id IS NULL"
)


@_migration
def m005_capture_method_and_event(db: sqlite_utils.Database) -> None:
    # Camtrap DP's captureMethod, recorded per capture; and the event (one trigger's burst) each
    # capture belongs to, for Camtrap DP's eventID.  Older rows: each capture its own event.
    db["captures"].add_column("capture_method", str)
    db["captures"].add_column("event_id", str)
    db.execute(FILL_METHOD_AND_EVENT)


@_migration
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


@_migration
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


@_migration
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


@_migration
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


@_migration
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


# The UTC hour a capture was taken in, as Unix seconds of the hour's start, from its captured_at
# (NULL for a captured_at SQLite cannot read as a time; such a capture is in no hour).
HOUR_START_S = "(CAST(strftime('%s', {0}) AS INTEGER) / 3600) * 3600"


@_migration
def m011_activity_at_a_glance(db: sqlite_utils.Database) -> None:
    # The status page's plots (appliance.activity) read these, never captures: a week of them costs
    # the same at 1,000 and at 1,000,000 captures.  Captures taken per UTC hour and trigger, kept
    # by a SQLite trigger in the same transaction as every insert into captures (a capture, an
    # import, a recovered photo, a rebuild), as m006's count is; never lowered by a deletion, so
    # they count the captures taken, not those kept.  From the captures there are, for an index
    # from before.
    db.execute(
        "CREATE TABLE activity_hours (hour_start_s INTEGER NOT NULL, trigger TEXT NOT NULL, "
        "captures INTEGER NOT NULL, PRIMARY KEY (hour_start_s, trigger)) WITHOUT ROWID"
    )
    db.execute(
        "INSERT INTO activity_hours (hour_start_s, trigger, captures) "
        f"SELECT {HOUR_START_S.format('captured_at')} AS hour, trigger, COUNT(*) FROM captures "
        "WHERE hour IS NOT NULL GROUP BY hour, trigger"
    )
    hour = HOUR_START_S.format("NEW.captured_at")
    db.execute(
        f"CREATE TRIGGER captures_counted_by_hour AFTER INSERT ON captures WHEN {hour} IS NOT NULL BEGIN "
        f"INSERT INTO activity_hours (hour_start_s, trigger, captures) VALUES ({hour}, NEW.trigger, 1) "
        "ON CONFLICT (hour_start_s, trigger) DO UPDATE SET captures = captures + 1; END"
    )
    # The free space of the data directory's filesystem, sampled every few minutes by the main
    # loop (CaptureStore.record_disk_sample), for the week's plot: the least of each UTC hour, one
    # row per hour (a week is 168 rows read by the index on hour_start_s), pruned as it is
    # written.  ``id`` grows with each new hour, whatever the clock says, for that pruning.
    db.execute(
        "CREATE TABLE disk_hours (id INTEGER PRIMARY KEY, hour_start_s INTEGER NOT NULL UNIQUE, "
        "free_bytes INTEGER NOT NULL, total_bytes INTEGER NOT NULL, samples INTEGER NOT NULL)"
    )


@_migration
def m012_offloads(db: sqlite_utils.Database) -> None:
    # What each capture has been copied to and verified on (appliance.offload): one row per capture
    # and target, written only once the copy read back from the target hashed to the capture's
    # sha256 (CaptureStore.record_offloaded), deleted with the capture (the trigger below, in the
    # same transaction as whatever deletes it).
    db.execute(
        "CREATE TABLE offloads (capture_id TEXT NOT NULL, target TEXT NOT NULL, sha256 TEXT NOT NULL, "
        "offloaded_at TEXT NOT NULL, PRIMARY KEY (capture_id, target))"
    )
    # 1 once a verified copy exists on any target.  Partial indexes on seq make "not offloaded
    # anywhere, oldest first" (the copy's queue), "offloaded somewhere" (the search for a second
    # target) and "the oldest unprotected offloaded" (what cleanup deletes first) index searches.
    # Partial, and none on protected alone: protecting a capture that is not offloaded (the card
    # full, the user keeping photos) writes no more index pages than before this migration.
    db["captures"].add_column("offloaded", int, not_null_default=0)
    db.execute("CREATE INDEX idx_captures_unoffloaded_seq ON captures (seq) WHERE offloaded = 0")
    db.execute("CREATE INDEX idx_captures_offloaded_seq ON captures (seq) WHERE offloaded = 1")
    db.execute(
        "CREATE INDEX idx_captures_unprotected_offloaded_seq ON captures (seq) "
        "WHERE protected = 0 AND offloaded = 1"
    )
    # The status page's "photos and bytes not yet on target T" without counting a million rows:
    # the bytes of every capture and the number offloaded anywhere (counters), and per target the
    # captures and bytes offloaded to it (offload_targets), each kept by SQLite triggers in the
    # same transaction as the change, whatever the code path.
    db.execute(
        "CREATE TABLE offload_targets (target TEXT PRIMARY KEY, captures INTEGER NOT NULL, "
        "bytes INTEGER NOT NULL) WITHOUT ROWID"
    )
    (total,) = db.execute("SELECT COALESCE(SUM(bytes), 0) FROM captures").fetchone()
    db["counters"].insert_all([{"name": "capture_bytes", "value": total}, {"name": "offloaded", "value": 0}])
    db.execute(
        "CREATE TRIGGER captures_bytes_in AFTER INSERT ON captures BEGIN "
        "UPDATE counters SET value = value + NEW.bytes WHERE name = 'capture_bytes'; "
        "UPDATE counters SET value = value + NEW.offloaded WHERE name = 'offloaded'; END"
    )
    db.execute(
        "CREATE TRIGGER captures_offloaded AFTER UPDATE OF offloaded ON captures "
        "WHEN NEW.offloaded != OLD.offloaded BEGIN "
        "UPDATE counters SET value = value + NEW.offloaded - OLD.offloaded WHERE name = 'offloaded'; END"
    )
    db.execute(
        "CREATE TRIGGER captures_bytes_out AFTER DELETE ON captures BEGIN "
        "UPDATE counters SET value = value - OLD.bytes WHERE name = 'capture_bytes'; "
        "UPDATE counters SET value = value - OLD.offloaded WHERE name = 'offloaded'; "
        "UPDATE offload_targets SET captures = captures - 1, bytes = bytes - OLD.bytes "
        "WHERE target IN (SELECT target FROM offloads WHERE capture_id = OLD.id); "
        "DELETE FROM offloads WHERE capture_id = OLD.id; END"
    )
    db.execute(
        "CREATE TRIGGER offloads_counted_in AFTER INSERT ON offloads BEGIN "
        "INSERT INTO offload_targets (target, captures, bytes) VALUES (NEW.target, 1, "
        "(SELECT bytes FROM captures WHERE id = NEW.capture_id)) "
        "ON CONFLICT (target) DO UPDATE SET captures = captures + 1, bytes = bytes + excluded.bytes; END"
    )


@_migration
def m013_md5(db: sqlite_utils.Database) -> None:
    # The photo's MD5 beside its SHA-256, hashed once from the bytes stored: the hash S3 (and
    # every object store rclone knows) reports of an object, so an upload is verified against the
    # capture itself without reading the photo from the card again (appliance.upload).  NULL for
    # the captures stored before, and for photos the full check finds without their row: the
    # upload then reads and hashes them.
    db["captures"].add_column("md5", str)


def m013_columns(jpeg: bytes) -> dict:
    """The columns m013 added, of a capture of the photo ``jpeg``: ``{"md5": hex}``."""
    return {"md5": hashlib.md5(jpeg).hexdigest()}


class NewerDatabaseError(StoreError):
    """The index was written by a newer version of the appliance (it has migrations we do not know)."""


def refuse_newer(db: sqlite_utils.Database, db_path: Path) -> None:
    """Raise :class:`NewerDatabaseError` when the index ``db`` (at ``db_path``, for the message)
    has a migration applied that this version does not know.  Writes nothing."""
    unknown = [m.name for m in migrations.applied(db) if m.name not in MIGRATION_NAMES]
    if unknown:
        raise NewerDatabaseError(
            f"{db_path} was written by a newer version of the appliance (migrations "
            f"{', '.join(unknown)} are unknown to version {__version__}); refusing to open it. "
            "Install that version again, or move the data directory aside."
        )


def iso_utc(moment: datetime.datetime) -> str:
    """``moment`` (aware) as stored in ``captured_at``: ISO 8601 in UTC to the millisecond, so
    that values sort and compare as text."""
    return moment.astimezone(datetime.UTC).isoformat(timespec="milliseconds")


def jpeg_size(jpeg: bytes) -> tuple[int, int]:
    """``(width, height)`` in pixels from the header (the pixels are not decoded); ``(0, 0)`` when
    the header cannot be read."""
    try:
        # Opening parses the EXIF block for the DPI: any warnings about its state are not ours.
        with warnings.catch_warnings(action="ignore"), Image.open(io.BytesIO(jpeg)) as image:
            return image.size
    except (OSError, ValueError):
        return (0, 0)


def capture_row(
    capture_id: str,
    jpeg: bytes,
    *,
    trigger: str,
    captured_at: datetime.datetime,
    clock_synced: bool,
    thumbnail: bool,
    metadata: dict | None = None,
    event_id: str | None = None,
    recovered: bool = False,
) -> dict:
    """The row of ``captures`` for the photo ``jpeg`` of ``capture_id``, but ``seq``, ``boot_id``
    and ``since_boot_s``: the columns of :data:`RECOVERED_COLUMNS`, in that order.  For a capture
    (:meth:`~appliance.store.CaptureStore.add`) and for a photo found without its row
    (:mod:`appliance.reconcile`), so that the two cannot drift apart.

    ``trigger``: one of :data:`TRIGGERS` (which sets ``capture_method``, see
    :data:`CAPTURE_METHODS`; raises ``KeyError`` for another); ``captured_at``: aware; ``thumbnail``:
    whether its thumbnail is published (else ``thumbnail_path`` is None); ``metadata``:
    JSON-serialisable camera metadata (None: ``{}``); ``event_id``: the id shared by the captures
    of one trigger's burst (None: the capture's own id); ``recovered``: found on disk without its
    row.  Reads the photo's header and hashes it (SHA-256); nothing is written.
    """
    width, height = jpeg_size(jpeg)
    return {
        "id": capture_id,
        "captured_at": iso_utc(captured_at),
        "clock_synced": int(clock_synced),
        "trigger": trigger,
        "media_path": media_path(capture_id),
        "thumbnail_path": thumbnail_path(capture_id) if thumbnail else None,
        "bytes": len(jpeg),
        "width": width,
        "height": height,
        "sha256": hashlib.sha256(jpeg).hexdigest(),
        "protected": 0,
        "recovered": int(recovered),
        "metadata": json.dumps(metadata or {}, default=str),
        "capture_method": CAPTURE_METHODS[trigger],
        "event_id": event_id or capture_id,
    }


def clock_anchor(db: sqlite_utils.Database) -> Timestamp | None:
    """The last moment the wall clock was trusted (see :mod:`appliance.clocktrust`) as the index
    ``db`` records it (table ``clock_anchor``, m009), or None."""
    row = db.execute("SELECT wall, boot_id, since_boot_s FROM clock_anchor WHERE id = 1").fetchone()
    if row is None:
        return None
    return Timestamp(datetime.datetime.fromisoformat(row[0]), True, row[1] or "", row[2])
