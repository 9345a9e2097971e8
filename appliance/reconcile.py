"""Start-up reconciliation: make the index and the files on disk agree again after any crash.

:func:`open_store` opens the capture store for writing and, unless the last writer closed cleanly
(the store's clean-shutdown marker), reconciles it first.  ``appliance run`` calls it before the
first capture; ``appliance check`` calls it with ``full=True``.  A full reconciliation:

- runs ``PRAGMA quick_check``; a damaged index is moved to ``damaged/`` (never deleted), the rows
  SQLite can still read from it are salvaged (so ``protected`` flags and ``seq`` survive) and the
  index is rebuilt from them and the photos;
- removes leftover temporary files (``.<name>.tmp``, a write the crash interrupted);
- indexes photos that have no row (a crash between rename and commit), with a new thumbnail, marked
  ``recovered``, trigger ``unknown``, ``captured_at`` from their EXIF ``DateTimeOriginal`` with
  ``OffsetTimeOriginal`` or else their modification time, and ``clock_synced`` 0;
- drops rows whose photo is missing, and sets aside photos whose size differs from their row's or
  that do not decode, dropping their rows;
- re-creates missing thumbnails and those whose WebP (RIFF) header is not intact (truncated or
  zeroed), and removes thumbnails of no capture.

Files it does not recognise are left alone and listed.  Cost: after a clean shutdown nothing is
read but the marker, whatever the number of captures.  Otherwise it is O(captures): quick_check
reads the whole database, the 256 shard folders are listed, the rows of each shard are read by an
id range on the primary key, and each thumbnail's 12-byte header is read.
"""

import contextlib
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

from PIL import ExifTags, Image

from appliance import thumbnails
from appliance.store import (
    DB_NAME,
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

SHARDS = [f"{n:02x}" for n in range(256)]
_ID = r"[0-9a-f]{32}"
_MEDIA_NAME = re.compile(rf"({_ID})\.jpg")
_THUMBNAIL_NAME = re.compile(rf"({_ID})\.webp")
_TEMP_NAME = re.compile(r"\..+\.tmp")


@dataclass
class Reconciliation:
    """What a reconciliation found and did.  Counts are numbers of files or rows."""

    full: bool = False  # False: skipped, the last shutdown was clean
    database_set_aside: str | None = None  # where a damaged index was moved
    rows_salvaged: int = 0  # rows read back from that damaged index
    temp_removed: int = 0
    recovered: int = 0  # photos indexed that had no row
    rows_dropped: int = 0  # rows whose photo was missing
    damaged: int = 0  # photos set aside: wrong size or not decodable
    thumbnails_remade: int = 0
    thumbnails_removed: int = 0  # thumbnails of no capture
    stray: list[str] = field(default_factory=list)  # unknown files, left alone
    duration_s: float = 0.0

    @property
    def repairs(self) -> int:
        """How many things were repaired (0 when the index already matched the disk)."""
        return (
            bool(self.database_set_aside)
            + self.temp_removed
            + self.recovered
            + self.rows_dropped
            + self.damaged
            + self.thumbnails_remade
            + self.thumbnails_removed
        )

    def summary(self) -> str:
        """One line for the log and ``appliance check``."""
        if not self.full:
            return "last shutdown was clean; nothing to check"
        parts = [
            f"{value} {label}"
            for value, label in (
                (self.temp_removed, "temporary files removed"),
                (self.recovered, "unindexed photos recovered"),
                (self.rows_dropped, "rows without a photo dropped"),
                (self.damaged, "damaged photos set aside"),
                (self.thumbnails_remade, "thumbnails re-created"),
                (self.thumbnails_removed, "orphan thumbnails removed"),
                (len(self.stray), "unknown files left alone"),
            )
            if value
        ]
        if self.database_set_aside:
            parts.insert(
                0,
                f"damaged index moved to {self.database_set_aside}, {self.rows_salvaged} rows salvaged",
            )
        done = "; ".join(parts) if parts else "index matches the disk"
        return f"full check in {self.duration_s:.1f} s: {done}"

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

    ``full``: reconcile even after a clean shutdown; ``thumbnail_max_px``: size of re-created
    thumbnails; ``progress(done, total)``: called after each of the 256 shards of a full pass.
    Returns the open store and what was done.  Raises :class:`~appliance.exc.StoreError` (and its
    subclass :class:`~appliance.store.NewerDatabaseError`) when the store cannot be opened, or
    ``OSError`` when a repair cannot be written.
    """
    started = time.monotonic()
    report = Reconciliation()
    store = None
    try:
        store = CaptureStore(data_dir)
        report.full = full or not store.shutdown_was_clean
        if report.full:
            store.quick_check()
    except CorruptDatabaseError as exc:
        if store is not None:
            store.close(clean=False)
        log.error("%s; rebuilding the index from the photos", exc)
        salvaged = _set_aside_and_salvage(Path(data_dir), report)
        store = CaptureStore(data_dir)
        columns = set(store.db["captures"].columns_dict)
        store.insert([{k: v for k, v in row.items() if k in columns} for row in salvaged])
        report.full = True
    try:
        if report.full:
            _reconcile_files(store, report, thumbnail_max_px, progress)
    except BaseException:
        store.close(clean=False)  # half reconciled: the next start must do it again
        raise
    report.duration_s = time.monotonic() - started
    return store, report


def _set_aside_and_salvage(data_dir: Path, report: Reconciliation) -> list[dict]:
    """Move the damaged index (and its WAL) to damaged/ and read back what rows SQLite still can."""
    # The WAL goes too: left beside a new, empty database it would be replayed into it.
    paths = [data_dir / name for name in (DB_NAME, DB_NAME + "-wal", DB_NAME + "-shm")]
    paths = [path for path in paths if path.exists()]
    if not paths or paths[0].name != DB_NAME:
        return []
    aside = set_aside(paths, data_dir)[0]
    report.database_set_aside = str(aside)
    rows = []
    # Read-only: the copy set aside stays as it was found.  Stop at the first unreadable page.
    with (
        contextlib.suppress(sqlite3.Error),
        contextlib.closing(sqlite3.connect(f"{aside.resolve().as_uri()}?mode=ro", uri=True)) as old,
    ):
        old.row_factory = sqlite3.Row
        for row in old.execute("SELECT * FROM captures"):
            rows.append(dict(row))
    # Keep only what is consistent with itself: unique ids and seqs, a photo of the right size.
    seen_ids, seen_seqs, usable = set(), set(), []
    for row in rows:
        if row.get("id") in seen_ids or row.get("seq") in seen_seqs:
            continue
        path = data_dir / media_path(row["id"])
        if not path.is_file() or path.stat().st_size != row.get("bytes"):
            continue
        seen_ids.add(row["id"])
        seen_seqs.add(row["seq"])
        usable.append(row)
    report.rows_salvaged = len(usable)
    return usable


def _reconcile_files(
    store: CaptureStore,
    report: Reconciliation,
    max_px: int,
    progress: Callable[[int, int], None] | None,
) -> None:
    data_dir = store.data_dir
    for kind in ("media", "thumbnails"):
        for entry in os.scandir(data_dir / kind):
            if entry.name not in SHARDS or not entry.is_dir(follow_symlinks=False):
                _remove_temp_or_note_stray(Path(entry.path), data_dir, report)
    recovered: list[dict] = []
    for done, shard in enumerate(SHARDS, 1):
        recovered += _reconcile_shard(store, shard, report, max_px)
        if progress:
            progress(done, len(SHARDS))
    # Recovered photos go after every indexed one, in the order they were taken.
    recovered.sort(key=lambda row: (row["captured_at"], row["id"]))
    for seq, row in enumerate(recovered, store.last_seq + 1):
        row["seq"] = seq
    store.insert(recovered)
    report.recovered = len(recovered)
    if report.repairs:
        log.warning("reconciliation: %s", report.summary())


def _remove_temp_or_note_stray(path: Path, data_dir: Path, report: Reconciliation) -> bool:
    """Remove ``path`` if it is one of our temporary files (True), else note it as stray."""
    if _TEMP_NAME.fullmatch(path.name) and path.is_file():
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
    except FileNotFoundError:
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


def _reconcile_shard(store: CaptureStore, shard: str, report: Reconciliation, max_px: int) -> list[dict]:
    """Reconcile one shard; returns rows for its unindexed photos (seq not yet assigned)."""
    data_dir = store.data_dir
    photos = _list(data_dir / "media" / shard, _MEDIA_NAME, data_dir, report)
    thumbs = _list(data_dir / "thumbnails" / shard, _THUMBNAIL_NAME, data_dir, report)
    # Ids are hex, so a shard's ids are those from "ab" up to (not including) "ab" + 1 in ASCII.
    upper = shard[0] + chr(ord(shard[1]) + 1)
    rows = {
        row["id"]: row
        for row in store.db.query(
            "SELECT id, bytes, thumbnail_path FROM captures WHERE id >= ? AND id < ?", [shard, upper]
        )
    }
    dropped, thumbnails_set, recovered = [], {}, []
    for capture_id, row in rows.items():
        size = photos.get(capture_id)
        if size is None:
            log.warning("reconciliation: photo of capture %s is missing; dropping its row", capture_id)
            report.rows_dropped += 1
            dropped.append(capture_id)
        elif size != row["bytes"]:
            _set_aside_photo(data_dir, capture_id, f"{size} bytes instead of {row['bytes']}", report)
            dropped.append(capture_id)
        elif capture_id not in thumbs or not _thumbnail_intact(data_dir, capture_id, thumbs[capture_id]):
            jpeg = (data_dir / media_path(capture_id)).read_bytes()
            thumbnails_set[capture_id] = _remake_thumbnail(data_dir, capture_id, jpeg, max_px)
            report.thumbnails_remade += thumbnails_set[capture_id] is not None
    for capture_id in photos.keys() - rows.keys():
        row = _recover(data_dir, capture_id, thumbs.get(capture_id), max_px, report)
        if row is not None:
            recovered.append(row)
    # Thumbnails of no photo, and of the photos dropped above.
    for capture_id in (thumbs.keys() - rows.keys() - photos.keys()) | (set(dropped) & thumbs.keys()):
        (data_dir / thumbnail_path(capture_id)).unlink()
        report.thumbnails_removed += 1
    if dropped or thumbnails_set:
        with store.db.atomic():
            store.db.conn.executemany("DELETE FROM captures WHERE id = ?", [(i,) for i in dropped])
            store.db.conn.executemany(
                "UPDATE captures SET thumbnail_path = ? WHERE id = ?",
                [(path, i) for i, path in thumbnails_set.items()],
            )
    return recovered


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


def _remake_thumbnail(data_dir: Path, capture_id: str, jpeg: bytes, max_px: int) -> str | None:
    """Write a new thumbnail for the photo ``jpeg``; its relative path, or None if it does not decode."""
    try:
        webp = thumbnails.from_jpeg(jpeg, max_px)
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        log.warning("reconciliation: no thumbnail for capture %s: %s", capture_id, exc)
        return None
    path = data_dir / thumbnail_path(capture_id)
    path.parent.mkdir(exist_ok=True)
    publish(path, webp)
    return thumbnail_path(capture_id)


def _set_aside_photo(data_dir: Path, capture_id: str, reason: str, report: Reconciliation) -> None:
    [moved] = set_aside([data_dir / media_path(capture_id)], data_dir)
    log.warning("reconciliation: photo of capture %s is damaged (%s); moved to %s", capture_id, reason, moved)
    report.damaged += 1


def _recover(
    data_dir: Path, capture_id: str, thumb_size: int | None, max_px: int, report: Reconciliation
) -> dict | None:
    """The index row for an unindexed photo, or None when it is damaged (then it is set aside)."""
    path = data_dir / media_path(capture_id)
    jpeg = path.read_bytes()
    try:
        with Image.open(io.BytesIO(jpeg)) as image:
            if image.format != "JPEG":
                raise ValueError(f"{image.format} is not JPEG")
            image.draft("RGB", (max_px, max_px))
            image.load()  # a truncated photo fails here
            taken = _exif_time(image)
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        _set_aside_photo(data_dir, capture_id, str(exc), report)
        return None
    if thumb_size is not None and _thumbnail_intact(data_dir, capture_id, thumb_size):
        thumb = thumbnail_path(capture_id)
    else:
        thumb = _remake_thumbnail(data_dir, capture_id, jpeg, max_px)
        report.thumbnails_remade += thumb is not None
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
    }


def _exif_time(image: Image.Image) -> datetime.datetime | None:
    """DateTimeOriginal + OffsetTimeOriginal (+ SubsecTimeOriginal) as an aware datetime, or None
    when the photo does not carry both (a time without its offset is ambiguous)."""
    exif = image.getexif().get_ifd(ExifTags.IFD.Exif)
    taken = exif.get(ExifTags.Base.DateTimeOriginal)
    offset = exif.get(ExifTags.Base.OffsetTimeOriginal)
    subsec = str(exif.get(ExifTags.Base.SubsecTimeOriginal, "0")).strip() or "0"
    if not taken or not offset:
        return None
    try:
        moment = datetime.datetime.strptime(f"{taken} {offset}", "%Y:%m:%d %H:%M:%S %z")
        return moment + datetime.timedelta(seconds=float(f"0.{subsec}"))
    except ValueError:
        return None
