"""Offload to an rclone remote: upload the captures the remote lacks, verify each by the remote's
own hash of it (or by reading it back), and keep a Camtrap DP package per deployment there.

What lands under ``offload_remote`` is what lands on a USB stick (:mod:`appliance.offload`): one
folder per deployment, named by :func:`~appliance.offload.folder_name`, holding ``media/<capture
id>.jpg``, the four Camtrap DP files and ``SHA256SUMS``.

The protocol (docs/design.md, "Offload"), batch by batch of at most :data:`BATCH_CAPTURES` captures
(:data:`BATCH_BYTES`), oldest first:

1. A symbolic link named ``<id>.jpg`` to each photo goes into a staging folder, and each photo
   is read once from the card: its SHA-256 must be the one the index holds, and the hash the
   remote will be asked for (the first of :data:`HASH_PREFERENCE` it reports: MD5 on S3, SHA-1
   or SHA-256 on others) is computed from the same bytes (photos are never written again once
   stored, so rclone sends those very bytes).  The reading happens while rclone sends the batch
   (step 3); a photo that rotted on the card is reported, not counted, and removed from the
   remote again.
2. Resuming: the first batch of a run (unless the deployment's folder has no ``media/`` yet), and
   each batch after one where some were found, asks the remote for its hashes of the batch
   first (the photos read before, then): a photo already there with the right hash (sent by a
   run cut short before recording it) is not sent again.  So a link that comes back re-sends
   at most the files that were in flight.
3. ``rclone copy`` sends the rest: on an object store (``BucketBased``) straight to their final
   keys, where an upload appears whole or not at all; on a file-like backend (a folder, SFTP,
   WebDAV) into ``.incoming/`` and then moved into ``media/`` (a rename on the server), so that no
   torn file ever stands under a final name.
4. The remote's own hash of each (``rclone hashsum``: on an object store from one listing while
   the folder holds at most :data:`LIST_MAX_OBJECTS` photos, else one request per photo; with
   ``--download`` when the backend reports none, i.e. read back) is compared with the local one:
   only a match counts as verified.
5. As on a stick, once the photos verified since the last time are
   :data:`~appliance.offload.CHECKPOINT_FACTOR` times the tables' size (at once when some were
   found there already, sent by a cut run), and at the end, the
   tables and ``SHA256SUMS`` are uploaded (moved into place one by one on a file-like backend,
   ``datapackage.json`` last) and verified the same way, and only then are the verified
   captures handed to ``record``: whatever the store records as offloaded is on the remote,
   with the right hash, and listed in its tables.

Nothing is kept beside the store: what is pending is what the index says is not yet offloaded to
the target (:func:`remote_target`), so a restart or a power cut loses nothing.
"""

import concurrent.futures
import contextlib
import hashlib
import json
import logging
import os
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from appliance import export
from appliance import rclone as rc
from appliance.config import Config
from appliance.datadir import DataDir
from appliance.exc import RemoteTrouble
from appliance.offload import (
    CHECKPOINT_FACTOR,
    SUMS_NAME,
    TABLES,
    CopyResult,
    deployment_id,
    folder_name,
    sums_lines,
    tables,
)
from appliance.store import IndexReader

log = logging.getLogger(__name__)

# A batch: what one rclone copy sends.  Each batch costs two rclone start-ups with their round
# trips (the copy and the hashsum; a checkpoint two more): 250 photos of a few hundred kB, or 55 of
# a 12 MP camera's 4.65 MB, keep them small against the transfer (appliance bench, "remote
# offload").  Photos are linked, not read into memory: the bound is on the time between
# verifications (4 minutes at 1 MB/s).
BATCH_CAPTURES = 250
BATCH_BYTES = 256 << 20
# Backstops on one rclone call; a stalled link fails much sooner, on rclone's own --timeout.
COPY_TIMEOUT_S = 3600
CHECK_TIMEOUT_S = 600
# On an object store, a folder of up to this many photos is verified by one listing (a page of up to
# 1,000 objects, each with its MD5) rather than a request per photo.
LIST_MAX_OBJECTS = 1000
# The hash asked of the remote, best first (rclone's names); none of them: the file is read back.
HASH_PREFERENCE = ("sha256", "sha1", "md5")
INCOMING = ".incoming"
CHUNK_BYTES = 1 << 20


@dataclass
class UploadResult(CopyResult):
    """What an upload run did: as :class:`~appliance.offload.CopyResult` (``copied`` photos sent
    and verified, their ``bytes``, ``skipped``: already on the remote or deleted meanwhile,
    ``errors``, ``reason`` why it ended early), and ``kind``: the
    :data:`appliance.rclone.KINDS` entry of the trouble that ended it (None when it finished,
    or ended for another reason).  ``safe_to_remove`` is never set: there is nothing to pull."""

    kind: str | None = None


def remote_target(remote: str) -> str:
    """The offload target an rclone remote is recorded as in the store: ``"rclone:<remote>"``
    (``"rclone:fleet:camtrap-2026/"``)."""
    return f"rclone:{remote}"


def join(remote: str, *parts: str) -> str:
    """``remote`` (``"fleet:bucket/a/"``, ``"fleet:"``, ``"/mnt/nas"``) and path ``parts`` as one
    rclone path."""
    base = remote if remote.endswith((":", "/")) else remote + "/"
    return base + "/".join(part.strip("/") for part in parts if part)


# rclone backend features by (binary, config file, its modification time, remote): they do not
# change while the config file does not, and asking costs an rclone start-up per run.
_FEATURES: dict[tuple, rc.Features] = {}


def _features(remote: rc.Rclone, root: str, stop) -> rc.Features:
    config = remote.config_path or str(rc.default_config_path())
    try:
        stamp = os.stat(config).st_mtime_ns
    except OSError:
        stamp = None
    key = (remote.binary, config, stamp, root.partition(":")[0] if ":" in root else "")
    if key not in _FEATURES:
        _FEATURES[key] = remote.features(root, stop=stop)
    return _FEATURES[key]


class _Place:
    """The deployment's folder on the remote: its tables as the remote holds them (read once per
    run, then kept up to date here) and the copies verified since they were last uploaded."""

    def __init__(self, remote: rc.Rclone, root: str, config: Config, deployment: str, staging: Path, stop):
        self.remote, self.config, self.deployment_id = remote, config, deployment
        self.folder = join(root, folder_name(deployment))
        self.staging = staging
        self.features = _features(remote, root, stop)
        usable = [h for h in HASH_PREFERENCE if h in self.features.hashes]
        self.hash_type = usable[0] if usable else "sha256"
        self.read_back = not usable
        # A file-like backend that can rename: upload under .incoming/, then move into place.
        self.via_incoming = not self.features.bucket_based and self.features.move
        # One listing says which tables there are to read, whether any photo can be there
        # already (a new folder has no media/: nothing to look for) and what a cut run left.
        there = self._listing(stop)
        self.media_there = "media/" in there
        names = [name for name in (*TABLES, SUMS_NAME) if name in there]
        if names:
            folder = staging / "remote"
            folder.mkdir()
            remote.copy(self.folder, str(folder), names, timeout_s=CHECK_TIMEOUT_S, stop=stop)
        self.text = {}
        for name in (*TABLES, SUMS_NAME):
            data = (staging / "remote" / name).read_bytes() if name in names else b""
            self.text[name] = data.decode("utf-8", errors="replace")
        self.tables_bytes = sum(len(text) for text in self.text.values())
        self.since_checkpoint = 0
        self.verified: list[tuple[dict, str]] = []
        # About how many photos media/ holds: what its table lists, and what this run adds.
        self.media_count = max(0, self.text["media.csv"].count("\n") - 1)
        if self.via_incoming and f"{INCOMING}/" in there:  # what a run cut short left half-sent
            with contextlib.suppress(RemoteTrouble):
                remote.run(["purge", join(self.folder, INCOMING)], timeout_s=CHECK_TIMEOUT_S, stop=stop)

    def _listing(self, stop) -> set[str]:
        """The names in the deployment's folder (not below it), folders with a ``/`` after;
        none when it is not there.  Raises RemoteTrouble (a missing bucket is found by the
        first upload)."""
        try:
            args = ["lsjson", "--no-mimetype", "--no-modtime", self.folder]
            said = self.remote.run(args, timeout_s=CHECK_TIMEOUT_S, stop=stop)
        except RemoteTrouble as trouble:
            if trouble.kind in (rc.NO_BUCKET, rc.FAILED):  # rclone's "directory not found"
                return set()
            raise
        try:
            entries = json.loads(said)
            return {entry["Name"] + ("/" if entry.get("IsDir") else "") for entry in entries}
        except (ValueError, TypeError, KeyError):
            raise RemoteTrouble(rc.FAILED, "rclone lsjson gave no JSON list") from None

    def hashes(self, sub: str, names: list[str], stop) -> dict[str, str]:
        """The remote's hashes of ``names`` in ``sub``: on an object store, from one listing
        while the folder is small (the tables' folder always is), else one request per name (or
        read back, without hashes)."""
        small = sub == "" or self.media_count + len(names) <= LIST_MAX_OBJECTS
        return self.remote.hashes(
            join(self.folder, sub),
            self.hash_type,
            names,
            download=self.read_back,
            listing=self.features.bucket_based and not self.read_back and small,
            timeout_s=CHECK_TIMEOUT_S,
            stop=stop,
        )

    def due(self) -> bool:
        """Whether the verified uploads are to be recorded now: the photos sent (or found) since
        the last time are :data:`~appliance.offload.CHECKPOINT_FACTOR` times the tables' size."""
        return self.since_checkpoint > CHECKPOINT_FACTOR * self.tables_bytes

    def send(self, source: Path, sub: str, names: list[str], stop) -> None:
        """Upload ``names`` from the local folder ``source`` into ``sub`` of the deployment's
        folder (see the module docstring, step 3).  Raises RemoteTrouble."""
        if not names:
            return
        final = join(self.folder, sub)
        if not self.via_incoming:
            self.remote.copy(source, final, names, timeout_s=COPY_TIMEOUT_S, stop=stop)
            return
        incoming = join(self.folder, INCOMING, sub or "tables")
        self.remote.copy(source, incoming, names, timeout_s=COPY_TIMEOUT_S, stop=stop)
        if sub:
            self.remote.move(incoming, final, names, timeout_s=COPY_TIMEOUT_S, stop=stop)
            return
        # rclone moves no folder into one that holds it: the tables go one by one, each replacing
        # the one there even when of the same size (see Rclone.move).
        for name in names:
            args = ["moveto", "--ignore-times", join(incoming, name), join(final, name)]
            self.remote.run(args, timeout_s=CHECK_TIMEOUT_S, stop=stop)

    def checkpoint(self, stop) -> tuple[list[tuple[dict, str]], str | None]:
        """Upload the tables and SHA256SUMS covering what is verified and check them; returns
        the copies now listed there, to be recorded, and why the tables are missing (None when
        they are uploaded).  Raises RemoteTrouble (nothing is then to be recorded)."""
        done = self.verified
        missing = export.missing_settings(self.config)
        files: dict[str, bytes] = {}
        if not missing:
            built = tables(self.config, self.deployment_id, self.text.get, done)
            files = {name: b"".join(chunks) for name, chunks in built.items()}
        new_sums = sums_lines(self.text[SUMS_NAME], done)
        if new_sums:
            files[SUMS_NAME] = (self.text[SUMS_NAME] + new_sums).encode()
        folder = self.staging / "tables"
        folder.mkdir(exist_ok=True)
        for name, data in files.items():
            (folder / name).write_bytes(data)
        # One call; moved into place one by one on a file-like backend, the descriptor last.
        self.send(folder, "", sorted(files, key=lambda name: name == "datapackage.json"), stop)
        expected = {name: hashlib.new(self.hash_type, data).hexdigest() for name, data in files.items()}
        found = self.hashes("", list(files), stop) if files else {}
        wrong = sorted(name for name in files if found.get(name) != expected[name])
        if wrong:
            raise RemoteTrouble(rc.FAILED, f"the remote's hash of {', '.join(wrong)} is not the one uploaded")
        for name, data in files.items():
            self.text[name] = data.decode("utf-8", errors="replace")
        self.tables_bytes = sum(len(text) for text in self.text.values())
        self.verified, self.since_checkpoint = [], 0
        why = f"Camtrap DP tables not written: set {', '.join(missing)} in the config" if missing else None
        return done, why


def _read_card(card: DataDir, capture: dict, hash_type: str) -> tuple[str | None, str | None]:
    """``(sha256, hash_type's hash)`` of the capture's photo as read from the card; ``(None,
    None)`` when it is gone (deleted by cleanup since it was listed).  Raises OSError."""
    sha = hashlib.sha256()
    other = hashlib.new(hash_type) if hash_type != "sha256" else sha
    try:
        photo = card.open_read(capture["media_path"])
    except FileNotFoundError:
        return None, None
    with photo:
        while chunk := photo.read(CHUNK_BYTES):
            sha.update(chunk)
            if other is not sha:
                other.update(chunk)
    return sha.hexdigest(), other.hexdigest()


def upload_run(
    remote: rc.Rclone,
    root: str,
    reader: IndexReader,
    data_dir,
    *,
    target: str,
    deployment: Config,
    record: Callable[[str, str], None],
    stop: threading.Event,
    progress: Callable[[int, int, int], None] | None = None,
    batch: int = BATCH_CAPTURES,
) -> UploadResult:
    """Upload every capture ``reader.pending_offload(target)`` lists (oldest first, including
    those taken while the run goes on) to the deployment's folder under ``root`` (an rclone path,
    ``offload_remote``) with ``remote``, verifying each (see the module docstring).
    ``record(capture_id, sha256)`` is called for each verified upload once the remote's tables
    list it; the caller hands it to the store's one writer.  ``stop`` set ends the run at once
    (the rclone call under way is killed; reason ``"stopped"``).  ``progress(done, total,
    bytes)`` is called after each batch.  ``data_dir``: the data directory (only read).

    Returns an :class:`UploadResult`: never raises for trouble with the remote (``reason`` and
    ``kind`` say it) or the card's photos; raises ``sqlite3`` errors of the index as the reader
    does."""
    result = UploadResult()
    total, _ = reader.offload_pending(target)
    card = DataDir(data_dir)
    done = written = 0
    with tempfile.TemporaryDirectory(prefix="appliance-upload-") as staging_name:
        staging = Path(staging_name)
        media = staging / "media"
        media.mkdir()
        place = None
        try:
            place = _Place(remote, root, deployment, deployment_id(deployment, reader), staging, stop)
            after_seq, look_first = 0, place.media_there
            while not stop.is_set():
                captures = _next_batch(reader, target, after_seq, batch)
                if not captures:
                    break
                after_seq = captures[-1]["seq"]
                found, size = _upload_batch(captures, card, place, media, look_first, stop, result)
                look_first = found > 0
                written += size
                # Found there counts as sent: a run after cut ones records them at the next
                # checkpoint, not only at its end, which a run cut again never reaches.
                place.since_checkpoint += found + size
                done += len(captures)
                if progress:
                    progress(done, max(total, done), written)
                if found or place.due():  # found: what cut runs sent is recorded at once
                    _checkpoint(place, record, result, stop)
            if stop.is_set():
                raise RemoteTrouble(rc.STOPPED, "stopped")
            _checkpoint(place, record, result, stop)
            if place.via_incoming:
                with contextlib.suppress(RemoteTrouble):
                    args = ["rmdirs", join(place.folder, INCOMING)]
                    remote.run(args, timeout_s=CHECK_TIMEOUT_S, stop=stop)
        except RemoteTrouble as trouble:
            result.reason, result.kind = str(trouble), trouble.kind
            level = logging.INFO if trouble.kind == rc.STOPPED else logging.WARNING
            log.log(level, "upload to %s ended: %s", root, trouble)
            if (
                place is not None
                and place.verified
                and trouble.kind not in (rc.STOPPED, rc.UNREACHABLE, rc.TIMEOUT)
            ):
                try:  # what is verified may still be listed and recorded (a quota hit by a photo)
                    _checkpoint(place, record, result, None)
                except RemoteTrouble as again:
                    log.warning("upload to %s: tables not updated: %s", root, again)
    if result.reason is None and result.errors and not result.copied and not result.skipped:
        result.reason, result.kind = result.errors[0], rc.FAILED
    return result


def _next_batch(reader: IndexReader, target: str, after_seq: int, limit: int) -> list[dict]:
    """The next pending captures after ``after_seq``: at most ``limit``, and at most
    :data:`BATCH_BYTES` (at least one)."""
    captures, size = [], 0
    for capture in reader.pending_offload(target, after_seq=after_seq, limit=limit):
        if captures and size + capture["bytes"] > BATCH_BYTES:
            break
        captures.append(capture)
        size += capture["bytes"]
    return captures


def _upload_batch(captures, card: DataDir, place: _Place, media: Path, look_first: bool, stop, result):
    """Steps 1 to 4 of the protocol for one batch; returns ``(bytes found already there, bytes
    sent)``.  Raises RemoteTrouble when the remote fails (other than for single files)."""
    for link in media.iterdir():
        link.unlink()
    present = []
    for capture in captures:
        path = os.path.abspath(card.root / capture["media_path"])
        if not os.path.exists(path):  # deleted by cleanup since it was listed
            result.skipped += 1
            continue
        (media / f"{capture['id']}.jpg").symlink_to(path)
        present.append(capture)
    # The hashes the store holds (SHA-256; MD5 since m013) need no reading; others are read from
    # the card: before a first look, which needs them, else while rclone sends.
    local = {f"{c['id']}.jpg": (c, c["sha256"], _stored(c, place.hash_type)) for c in present}
    unknown = [local.pop(f"{c['id']}.jpg")[0] for c in present if _stored(c, place.hash_type) is None]
    found_there = 0
    if look_first:
        local |= _hash_on_card(unknown, card, place.hash_type, result)
        there = place.hashes("media", list(local), stop) if local else {}
        already = [name for name, (_, _, digest) in local.items() if there.get(name) == digest]
        found_there = sum(local[name][0]["bytes"] for name in already)
        for name in already:
            capture, sha, _ = local.pop(name)
            place.verified.append((capture, sha))
            result.skipped += 1
        to_send, rotten = list(local), []
        _send(place, media, to_send, stop)
    else:
        to_send = [f"{capture['id']}.jpg" for capture in present]
        with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="upload-send") as pool:
            sending = pool.submit(_send, place, media, to_send, stop)
            local |= _hash_on_card(unknown, card, place.hash_type, result)  # hashlib frees the GIL
            sending.result()
        rotten = [name for name in to_send if name not in local]  # sent, then found rotten or unreadable
        to_send = [name for name in to_send if name in local]
    if not to_send:
        _remove_stray(place, media, rotten, stop)
        return found_there, 0
    there = place.hashes("media", to_send, stop)
    sent = 0
    for name in to_send:
        capture, sha, digest = local[name]
        size = capture["bytes"]
        if there.get(name) == digest:
            place.verified.append((capture, sha))
            place.media_count += 1
            result.copied += 1
            result.bytes += size
            sent += size
        elif not (card.root / capture["media_path"]).exists():
            result.skipped += 1  # deleted from the card while it was being sent
        elif not _intact(card, capture):  # the card's photo is not the one stored: not the remote's fault
            rotten.append(name)
            result.errors.append(
                f"capture {capture['id']}: its photo on the card differs from its recorded "
                "SHA-256; not uploaded"
            )
        elif name in there:
            result.errors.append(
                f"media/{name}: the remote's {place.hash_type} of it differs from the photo's"
            )
        else:
            result.errors.append(f"media/{name}: not on the remote after the upload")
    _remove_stray(place, media, rotten, stop)
    return found_there, sent


def _stored(capture: dict, hash_type: str) -> str | None:
    """The capture's ``hash_type`` hash as the store holds it (hashed from the bytes stored),
    None when it holds none."""
    return {"sha256": capture["sha256"], "md5": capture.get("md5")}.get(hash_type)


def _intact(card: DataDir, capture: dict) -> bool:
    """Whether the capture's photo on the card still hashes to its recorded SHA-256."""
    try:
        sha, _ = _read_card(card, capture, "sha256")
    except OSError:
        return False
    return sha in (None, capture["sha256"])


def _remove_stray(place: _Place, media: Path, rotten: list[str], stop) -> None:
    """Remove from the remote what was sent and is not to be counted: photos found rotten on the
    card (after or while sending), so that no wrong photo stands under a final name."""
    names = [name for name in rotten if (media / name).exists()]
    if names:
        with contextlib.suppress(RemoteTrouble):
            place.remote.run(
                ["delete", "--files-from-raw", _write_names(place.staging / "stray.txt", names),
                 join(place.folder, "media")], timeout_s=CHECK_TIMEOUT_S, stop=stop,
            )  # fmt: skip


def _send(place: _Place, media: Path, names: list[str], stop) -> None:
    """``place.send`` of a batch: one file failing (deleted from the card meanwhile, say) fails
    rclone's copy, and the others are checked all the same."""
    if not names:
        return
    try:
        place.send(media, "media", names, stop)
    except RemoteTrouble as trouble:
        if trouble.kind != rc.FAILED:
            raise
        log.info("upload: some files of a batch failed (%s): checking the others", trouble)


def _hash_on_card(captures, card: DataDir, hash_type: str, result) -> dict[str, tuple[dict, str, str]]:
    """``{name: (capture, sha256, hash_type's hash)}`` of the photos as read from the card, those
    whose SHA-256 is the one the index holds; the others are reported in ``result``."""
    local = {}
    for capture in captures:
        try:
            sha, digest = _read_card(card, capture, hash_type)
        except OSError as exc:
            result.errors.append(f"capture {capture['id']}: cannot read its photo on the card: {exc}")
            continue
        if sha is None:
            result.skipped += 1
            continue
        if sha != capture["sha256"]:
            result.errors.append(
                f"capture {capture['id']}: its photo on the card differs from its recorded "
                "SHA-256; not uploaded"
            )
            continue
        local[f"{capture['id']}.jpg"] = (capture, sha, digest)
    return local


def _write_names(path: Path, names: list[str]) -> str:
    path.write_text("".join(f"{name}\n" for name in names))
    return str(path)


def _checkpoint(place: _Place, record, result: UploadResult, stop) -> None:
    if not place.verified:
        return
    done, why = place.checkpoint(stop)
    if why and why not in result.errors:
        result.errors.append(why)
    for capture, sha in done:
        record(capture["id"], sha)
