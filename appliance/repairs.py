"""What one capture needs to agree with its files, and carrying it out (see
:mod:`appliance.reconcile`).

:func:`inspect` decides from a capture's row and files what it needs and does the costly reading
(decode, hash, make a thumbnail) without changing anything; it runs in the full check's worker,
or at once for the captures a crash may have interrupted (:func:`inspect_one`).  :class:`Apply`
carries the findings out in the store's own thread: the files at once, the index through the
store's writer methods (:meth:`~appliance.store.CaptureStore.commit_repairs`,
:meth:`~appliance.store.CaptureStore.index_recovered`).
"""

import contextlib
import datetime
import io
import logging
import stat
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from PIL import Image

from appliance import exif, thumbnails
from appliance.datadir import DataDir, UnsafePath
from appliance.store import MAX_PHOTO_BYTES, CaptureStore, capture_row, media_path, set_aside, thumbnail_path

if TYPE_CHECKING:  # reconcile imports this module: only the annotations name its report
    from appliance.reconcile import Reconciliation

log = logging.getLogger("appliance.reconcile")  # one name for all of reconciliation, as before

# Recovered photos indexed per commit once every shard has been looked at.
RECOVERY_BATCH = 256


@dataclass
class Finding:
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


def inspect_one(store: CaptureStore, capture_id: str, max_px: int, *, deleting: bool) -> Finding:
    """:func:`inspect` of one capture, now, in the store's thread (an in-flight id)."""
    files = store.files
    try:
        photo, thumb_size = states(files, capture_id)
    except OSError as exc:
        return Finding(capture_id, "unreadable", reason=str(exc))
    # Outside the OSError handlers: damage to the index (a StoreError, so an OSError) is no
    # unreadable photo.
    row = store.checked_row(capture_id)
    try:
        return inspect(files, capture_id, row, photo, thumb_size, max_px, deleting=deleting)
    except OSError as exc:
        return Finding(capture_id, "unreadable", reason=str(exc))


def states(files: DataDir, capture_id: str) -> tuple[tuple[int, int] | None, int | None]:
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


def inspect(
    files: DataDir,
    capture_id: str,
    row: dict | None,
    photo: tuple[int, int] | None,
    thumb_size: int | None,
    max_px: int,
    *,
    deleting: bool = False,
) -> Finding:
    """Decide what ``capture_id`` needs from its ``row`` (None: none), its photo's ``(size,
    mtime_ns)`` and its thumbnail's size (None: missing), and do the costly part (read, decode,
    hash, make a thumbnail) without changing anything.  ``deleting``: its deletion was
    interrupted.  Raises ``OSError`` when a file cannot be read."""
    seen = (row is not None, photo, thumb_size)
    finding = Finding(capture_id, "ok", seen)
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


class Apply:
    """Carries out findings in the store's own thread.  Each is first checked against the files
    and the row as they are now (one ``lstat`` each and a lookup by id); one that no longer holds
    was overtaken by the appliance's own work (a capture, a deletion) and is dropped.  File
    changes are made at once; index changes are collected and committed by :meth:`commit`, after
    the folders touched are fsynced."""

    def __init__(self, store: CaptureStore, report: "Reconciliation", skip: Callable[[], dict] | None = None):
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

    def carry_out(self, finding: Finding) -> None:
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
                    Finding("", "stray", folder=finding.folder, name=finding.name, reason=str(exc))
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
        photo, thumb_size = states(self.store.files, capture_id)
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

    def _remove_thumbnail(self, finding: Finding) -> None:
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
