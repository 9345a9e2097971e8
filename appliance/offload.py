"""Offload to a USB stick: copy the captures a target lacks, verify each copy by reading it back,
and keep a Camtrap DP package per deployment on the stick.

What lands on the stick (at its top, one folder per deployment, named by :func:`folder_name`)::

    <deployment id>/
        media/<capture id>.jpg     the photos, byte for byte as the store keeps them
        datapackage.json           the Camtrap DP 1.0.2 package of everything in media/
        deployments.csv  media.csv  observations.csv
        SHA256SUMS                 "<sha256>  media/<id>.jpg" per photo: cd there, sha256sum -c SHA256SUMS

The copy protocol (docs/design.md, "Offload") for each photo: written as ``media/.<id>.jpg.tmp``
while its SHA-256 is computed from the card's bytes, fsynced, renamed to ``<id>.jpg``, the folder
fsynced; then its pages are dropped from the page cache (``POSIX_FADV_DONTNEED``) and it is read
back from the stick and hashed.  Only a match with the capture's recorded SHA-256 counts.  A name
already on the stick is never overwritten: the same bytes count as copied (a run cut short before
recording them), other bytes are a conflict, reported and left alone.

Every :data:`CHECKPOINT_FACTOR` times the bytes of the tables (and at the end of the run) the tables
and SHA256SUMS are rewritten (each to a temporary name, fsynced, renamed), the folder fsynced, and
only then the verified captures are handed to ``record``: whatever the store records as offloaded
is in the stick's tables, and a stick pulled at any moment holds tables that are valid and
``SHA256SUMS`` lines that ``sha256sum -c`` verifies (it lists the photos only: they are written
once and never change, while the tables are rewritten).  The tables cover everything on the stick
for the deployment: the rows already there are kept (their captures may be gone from the card) and
the new ones added.

The store is only read (through :class:`~appliance.store.IndexReader` and the card's files through
:class:`~appliance.datadir.DataDir`); the caller's ``record`` hands each verified copy to the main
loop, the one writer.  Nothing here runs at import time.
"""

import contextlib
import csv
import datetime
import errno
import hashlib
import io
import json
import logging
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field

from appliance import export
from appliance.config import Config
from appliance.datadir import DataDir
from appliance.store import IndexReader
from hw.usb import UsbStick

log = logging.getLogger(__name__)

# Bytes read from the card, written to the stick and read back at a time.
CHUNK_BYTES = 1 << 20
# The tables are rewritten (and the verified captures recorded) once the photos copied since the
# last rewrite are this many times the tables' size: the rewrite costs at most 1/20 of the copy
# however many photos the stick holds.
CHECKPOINT_FACTOR = 20
SUMS_NAME = "SHA256SUMS"
TABLES = ("datapackage.json", "deployments.csv", "media.csv", "observations.csv")
TEMP_SUFFIX = ".tmp"
# Characters FAT and exFAT refuse in a name (and control characters).
_NOT_ON_FAT = re.compile(r'[\x00-\x1f"*/:<>?\\|]+')

# What a failed call on the stick means for the run, by errno.
_FULL = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
_READ_ONLY = {errno.EROFS}
_GONE = {errno.ENOTCONN, errno.ENODEV, errno.ENXIO, errno.ESHUTDOWN, errno.ENOENT, errno.ESTALE}


@dataclass
class CopyResult:
    """What a copy run did.  ``copied``: photos written and verified on the stick this run (each
    handed to ``record``); ``bytes``: their size in bytes; ``skipped``: captures that needed no
    copy (already on the stick with the same bytes, then recorded; or deleted from the card
    meanwhile); ``errors``: one line per capture not copied and why (a conflicting file, a
    mismatch, an unreadable photo on the card), and a line when the tables could not be written.
    ``reason``: None when the run went through every pending capture, else why it ended early
    (the stick full, read-only, removed, an I/O error, stopped) or why it did not finish cleanly
    (conflicting files left on the stick).  ``safe_to_remove``: every file written is fsynced and
    closed, and the stick is still there to remove."""

    copied: int = 0
    bytes: int = 0
    skipped: int = 0
    errors: list[str] = field(default_factory=list)
    reason: str | None = None
    safe_to_remove: bool = False


class StickTrouble(Exception):
    """The stick cannot go on being written (full, read-only, removed, failing): ends the run."""


def target_name(stick: UsbStick) -> str:
    """The offload target a stick is recorded as: ``"usb-<filesystem UUID>"`` (``"usb-8B11-8772"``),
    or ``"usb-<label>"`` when its filesystem has no UUID.  Each stick is its own target, so a
    second stick receives everything still on the card that it lacks, not only what the first
    one missed: sticks are carried home one at a time, and each holds a whole package."""
    return f"usb-{stick.uuid or stick.label}"


def folder_name(deployment_id: str) -> str:
    """The deployment's folder on the stick: its ID with what FAT refuses (``:``, ``/``, ``?``...)
    replaced by ``-``."""
    return _NOT_ON_FAT.sub("-", deployment_id).strip(" .") or "deployment"


def deployment_id(config: Config, reader: IndexReader) -> str:
    """The ID of the deployment the photos go to: ``deployment_id``, else the default one from
    ``camera_id`` and ``deployment_start`` or, unset, the oldest capture on the card (see
    :func:`~appliance.export.default_deployment_id`).  Set either for a folder that stays the
    same after cleanup deletes the oldest captures."""
    if config.deployment_id:
        return config.deployment_id
    start = config.deployment_start
    if not start:
        with reader.snapshot() as snapshot:
            start = snapshot.span(None, None)["first"]
    moment = datetime.datetime.fromisoformat(start) if start else datetime.datetime.now(datetime.UTC)
    return export.default_deployment_id(config.camera_id, moment)


def _present(stick: UsbStick) -> bool:
    """Whether the very mount :func:`~hw.usb.find_stick` found is still at its path."""
    try:
        return os.path.ismount(stick.path) and os.stat(stick.path).st_dev == stick.dev
    except OSError:  # a FUSE driver gone (ENOTCONN), an I/O error
        return False


def _trouble(exc: OSError, stick: UsbStick, doing: str) -> StickTrouble:
    """What ``exc``, raised while ``doing`` on ``stick``, means for the run."""
    name = errno.errorcode.get(exc.errno, str(exc.errno))
    if not _present(stick) or exc.errno in _GONE:
        return StickTrouble(f"the stick was removed while {doing} ({name})")
    if exc.errno in _FULL:
        return StickTrouble(f"the stick is full ({name} while {doing})")
    if exc.errno in _READ_ONLY:
        return StickTrouble("the stick is read-only (its write-protect switch, or mounted read-only)")
    if exc.errno == errno.EIO:
        return StickTrouble(f"the stick failed (I/O error while {doing}): try another stick")
    return StickTrouble(f"writing to the stick failed while {doing}: {exc.strerror} ({name})")


def _fsync_folder(fd: int) -> None:
    try:
        os.fsync(fd)
    except OSError as exc:  # some FUSE drivers cannot fsync a folder: their files are written through
        if exc.errno not in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP):
            raise


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _hash_file(folder_fd: int, name: str) -> str:
    """The SHA-256 of ``name`` as read from the stick itself: its cached pages dropped first."""
    fd = os.open(name, os.O_RDONLY | os.O_CLOEXEC, dir_fd=folder_fd)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        digest = hashlib.sha256()
        while chunk := os.read(fd, CHUNK_BYTES):
            digest.update(chunk)
        return digest.hexdigest()
    finally:
        os.close(fd)


def _read_text(folder_fd: int, name: str) -> str:
    try:
        fd = os.open(name, os.O_RDONLY | os.O_CLOEXEC, dir_fd=folder_fd)
    except FileNotFoundError:
        return ""
    with open(fd, "rb") as f:
        return f.read().decode("utf-8", errors="replace")


def _publish(folder_fd: int, name: str, chunks) -> int:
    """Write ``chunks`` (bytes) as ``name`` in the folder through a temporary name, fsynced,
    renamed (the folder is fsynced by the caller).  Returns the bytes written."""
    tmp = f".{name}{TEMP_SUFFIX}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644, dir_fd=folder_fd)
    size = 0
    try:
        for chunk in chunks:
            _write_all(fd, chunk)
            size += len(chunk)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(tmp, name, src_dir_fd=folder_fd, dst_dir_fd=folder_fd)
    return size


class _Deployment:
    """The deployment's folder on the stick, open as directory descriptors, and the copies
    verified since the tables were last written."""

    def __init__(self, stick: UsbStick, config: Config, deployment: str):
        self.stick, self.config, self.deployment_id = stick, config, deployment
        self.verified: list[tuple[dict, str]] = []  # (capture row, sha256) not yet in the tables
        self.tables_bytes = 0
        self.since_checkpoint = 0
        self.fds: list[int] = []
        root = self._open_folder(os.fspath(stick.path), None)
        if os.fstat(root).st_dev != stick.dev:
            raise StickTrouble("the stick was removed before the copy began")
        self.folder = self._open_folder(folder_name(deployment), root, make=True)
        self.media = self._open_folder("media", self.folder, make=True)
        for fd in (self.folder, self.media):  # what a killed run left half-written
            for entry in os.listdir(fd):
                if entry.startswith(".") and entry.endswith(TEMP_SUFFIX):
                    os.unlink(entry, dir_fd=fd)

    def _open_folder(self, name: str, parent: int | None, make: bool = False) -> int:
        if make:
            try:
                os.mkdir(name, dir_fd=parent)
                os.fsync(parent)
            except FileExistsError:
                pass
        fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent)
        self.fds.append(fd)
        return fd

    def close(self) -> None:
        while self.fds:
            with contextlib.suppress(OSError):  # a stick pulled out: nothing left to flush
                os.close(self.fds.pop())

    def checkpoint(self) -> tuple[list[tuple[dict, str]], str | None]:
        """Rewrite the tables and SHA256SUMS to cover what is verified; returns the copies now
        in them, to be recorded, and why the tables are missing (None when they are written)."""
        done, self.verified = self.verified, []
        missing = export.missing_settings(self.config)
        why = None
        if missing:
            why = f"Camtrap DP tables not written: set {', '.join(missing)} in the config"
        else:
            self.tables_bytes = self._write_tables(done)
        self._write_sums(done)
        _fsync_folder(self.folder)
        self.since_checkpoint = 0
        return done, why

    def _write_sums(self, done) -> None:
        old = _read_text(self.folder, SUMS_NAME)
        new = sums_lines(old, done)
        if new:
            _publish(self.folder, SUMS_NAME, [old.encode(), new.encode()])

    def _write_tables(self, done) -> int:
        files = tables(self.config, self.deployment_id, lambda name: _read_text(self.folder, name), done)
        return sum(_publish(self.folder, name, chunks) for name, chunks in files.items())


def sums_lines(old: str, done: list[tuple[dict, str]]) -> str:
    """The lines to add to a deployment's ``SHA256SUMS`` whose text is ``old`` for the verified
    copies ``done`` (``(capture row, sha256)``): one ``"<sha256>  media/<id>.jpg"`` line per photo
    not yet listed ("" when none), in the format ``sha256sum -c`` reads."""
    listed = {line[66:] for line in old.splitlines()}
    return "".join(
        f"{sha}  media/{row['id']}.jpg\n" for row, sha in done if f"media/{row['id']}.jpg" not in listed
    )


def tables(config: Config, deployment: str, read: Callable[[str], str], done: list[tuple[dict, str]]) -> dict:
    """The Camtrap DP tables of the deployment ``deployment`` on a target, covering what they
    listed before and the verified copies ``done`` (``(capture row, sha256)``): ``read(name)``
    gives a table's text as the target holds it ("" when it has none).  Returns ``{file name:
    iterator of bytes}`` in the order to write them (``datapackage.json`` last: a package whose
    descriptor is there has all its tables); ``{}`` when there is no media to list.  The rows
    already there are kept (their captures may be gone from the card), a burst cut in two by
    runs is one event again."""
    old_media = list(csv.DictReader(io.StringIO(read("media.csv"))))
    have = {row["mediaID"] for row in old_media}
    new_media = [export.media_row(row, deployment) for row, _ in done if row["id"] not in have]
    media = [row for row in old_media if row.get("deploymentID") == deployment] + new_media
    if not media:
        return {}
    events: dict[str, tuple[str, str]] = {}
    for row, _ in done:
        if row["id"] in have:
            continue
        event, stamp = row["event_id"] or row["id"], export._stamp(row["captured_at"])
        first, last = events.get(event, (stamp, stamp))
        events[event] = (min(first, stamp, key=_moment), max(last, stamp, key=_moment))
    observations = []
    for row in csv.DictReader(io.StringIO(read("observations.csv"))):
        if row["eventID"] in events:  # a burst cut in two by a run: one event again
            first, last = events.pop(row["eventID"])
            row["eventStart"] = min(row["eventStart"], first, key=_moment)
            row["eventEnd"] = max(row["eventEnd"], last, key=_moment)
        observations.append(row)
    observations += [export.observation_row(e, f, la, deployment) for e, (f, la) in events.items()]
    old_deployment = list(csv.DictReader(io.StringIO(read("deployments.csv"))))
    clock_issues = any(row["clock_synced"] == 0 for row, _ in done) or any(
        row.get("timestampIssues") == "true" for row in old_deployment
    )
    stamps = sorted((row["timestamp"] for row in media), key=_moment)
    start = _moment(config.deployment_start or stamps[0])
    end = _moment(config.deployment_end or stamps[-1])
    methods = sorted({row["captureMethod"] for row in media if row["captureMethod"]})
    now = datetime.datetime.now(datetime.UTC)
    descriptor = export.descriptor(config, deployment, start, end, methods, now)
    return {
        "deployments.csv": export.csv_chunks(
            export.DEPLOYMENT_FIELDS,
            [export.deployment_row(config, deployment, start, end, clock_issues)],
        ),
        "media.csv": export.csv_chunks(export.MEDIA_FIELDS, media),
        "observations.csv": export.csv_chunks(export.OBSERVATION_FIELDS, observations),
        "datapackage.json": iter([json.dumps(descriptor, indent=2).encode() + b"\n"]),
    }


def _moment(stamp: str) -> datetime.datetime:
    return export.parse_time(stamp)


def _copy_one(capture: dict, card: DataDir, place: _Deployment, result: CopyResult) -> int:
    """Copy and verify one capture; returns the bytes written to the stick (0 when none).
    Raises StickTrouble."""
    capture_id, sha = capture["id"], capture["sha256"]
    name = f"{capture_id}.jpg"
    stick = place.stick
    try:
        os.stat(name, dir_fd=place.media, follow_symlinks=False)
        on_stick = _hash_file(place.media, name)
    except FileNotFoundError:
        on_stick = None
    except OSError as exc:
        raise _trouble(exc, stick, f"reading media/{name}") from exc
    if on_stick == sha:  # copied by a run that ended before recording it
        place.verified.append((capture, sha))
        result.skipped += 1
        return 0
    if on_stick is not None:
        result.errors.append(
            f"media/{name}: a different file of that name is on the stick; left as it is, capture not copied"
        )
        return 0
    try:
        photo = card.open_read(capture["media_path"])
    except FileNotFoundError:  # deleted by cleanup since it was listed
        result.skipped += 1
        return 0
    except OSError as exc:
        result.errors.append(f"capture {capture_id}: cannot read its photo on the card: {exc}")
        return 0
    tmp = f".{name}{TEMP_SUFFIX}"
    size = 0
    with photo:
        try:
            out = os.open(
                tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644, dir_fd=place.media
            )
        except OSError as exc:
            raise _trouble(exc, stick, f"creating media/{tmp}") from exc
        try:
            while True:
                try:
                    chunk = photo.read(CHUNK_BYTES)
                except OSError as exc:
                    result.errors.append(f"capture {capture_id}: cannot read its photo on the card: {exc}")
                    _discard(place.media, tmp)
                    return 0
                if not chunk:
                    break
                _write_all(out, chunk)
                size += len(chunk)
            os.fsync(out)
        except OSError as exc:
            _discard(place.media, tmp)
            raise _trouble(exc, stick, f"writing media/{name}") from exc
        finally:
            with contextlib.suppress(OSError):
                os.close(out)
    try:
        os.rename(tmp, name, src_dir_fd=place.media, dst_dir_fd=place.media)
        _fsync_folder(place.media)
        on_stick = _hash_file(place.media, name)
    except OSError as exc:
        raise _trouble(exc, stick, f"writing media/{name}") from exc
    if on_stick != sha:  # the stick's fault, or the card's: the photo there may have rotted
        _discard(place.media, name)
        try:
            with card.open_read(capture["media_path"]) as again:
                card_ok = hashlib.file_digest(again, "sha256").hexdigest() == sha
        except OSError:
            card_ok = False
        where = "read back from the stick, it differs" if card_ok else "its photo on the card differs"
        result.errors.append(f"media/{name}: {where} from its recorded SHA-256; removed from the stick")
        return size
    place.verified.append((capture, sha))
    result.copied += 1
    result.bytes += size
    return size


def _discard(folder_fd: int, name: str) -> None:
    with contextlib.suppress(OSError):  # the stick is going anyway
        os.unlink(name, dir_fd=folder_fd)


def copy_run(
    stick: UsbStick,
    reader: IndexReader,
    data_dir,
    *,
    target: str,
    deployment: Config,
    record: Callable[[str, str], None],
    stop: Callable[[], bool] = lambda: False,
    progress: Callable[[int, int, int], None] | None = None,
    batch: int = 50,
) -> CopyResult:
    """Copy every capture ``reader.pending_offload(target)`` lists (oldest first, in batches of
    ``batch``, including those taken while the run goes on) to ``stick``, into the folder of the
    deployment ``deployment`` (the Config: its deployment settings name it and fill its tables),
    verifying each (see the module's docstring).  ``record(capture_id, sha256)`` is called for
    each verified copy once the stick's tables list it; the caller hands it to the store's one
    writer.  ``stop()`` is asked between photos: True ends the run (reason ``"stopped"``) after
    writing the tables.  ``progress(done, total, bytes)`` is called after each capture: captures
    gone through and pending (both counts), bytes written.  ``data_dir``: the data directory
    (only read).

    Returns a :class:`CopyResult`.  Never raises for trouble with the stick or the card's photos
    (the result says it); raises ``sqlite3`` errors of the index as the reader does."""
    result = CopyResult()
    if stick.read_only:
        result.reason = "the stick is read-only (its write-protect switch, or mounted read-only)"
        result.safe_to_remove = True
        return result
    total, _ = reader.offload_pending(target)
    card = DataDir(data_dir)
    done = 0
    written = 0
    place = None
    try:
        try:
            place = _Deployment(stick, deployment, deployment_id(deployment, reader))
        except OSError as exc:
            raise _trouble(exc, stick, "making the deployment's folder") from exc
        after_seq = 0
        while result.reason is None:
            captures = reader.pending_offload(target, after_seq=after_seq, limit=batch)
            if not captures:
                break
            for capture in captures:
                if stop():
                    result.reason = "stopped"
                    break
                if not _present(stick):
                    raise StickTrouble("the stick was removed")
                size = _copy_one(capture, card, place, result)
                written += size
                place.since_checkpoint += size
                after_seq = capture["seq"]
                done += 1
                if progress:
                    progress(done, max(total, done), written)
            if place.since_checkpoint > CHECKPOINT_FACTOR * place.tables_bytes:
                _checkpoint(place, record, result)
        _checkpoint(place, record, result)
    except StickTrouble as trouble:
        result.reason = str(trouble)
        log.warning("offload to %s ended: %s", stick.path, trouble)
        if place is not None and place.verified and "full" in result.reason:
            try:  # the tables are small: what is verified may still be listed and recorded
                _checkpoint(place, record, result)
            except StickTrouble as again:
                log.warning("offload to %s: tables not updated: %s", stick.path, again)
    finally:
        if place is not None:
            place.close()
    conflicts = sum("different file of that name" in line for line in result.errors)
    if result.reason is None and conflicts:
        result.reason = f"{conflicts} conflicting file(s) on the stick left as they are"
    result.safe_to_remove = _present(stick)
    return result


def _checkpoint(place: _Deployment, record: Callable[[str, str], None], result: CopyResult) -> None:
    try:
        done, why = place.checkpoint()
    except OSError as exc:
        raise _trouble(exc, place.stick, "writing the tables") from exc
    if why and why not in result.errors:
        result.errors.append(why)
    for capture, sha in done:
        record(capture["id"], sha)
