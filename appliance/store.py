"""The capture store: photos and thumbnails on disk, indexed in SQLite.

Layout under the data directory::

    captures.db                      the index (SQLite, WAL), table ``captures``
    media/<shard>/<id>.jpg           the photo, byte for byte as the camera gave it
    thumbnails/<shard>/<id>.webp     its WebP thumbnail

``<id>`` is 32 random hex characters (a UUID4, never derived from the clock) and ``<shard>`` its
first two characters, so no folder holds more than 1/256 of the captures.

Write protocol (the order is what makes a crash safe): each file is written to a temporary name in
its final folder, fsynced, renamed into place and the folder fsynced; only then is the index row
committed.  A crash before the commit leaves at worst an unindexed file, never a row without its
file.  A capture is acknowledged (logged, counted, shown) only after the commit.

One writer, :class:`CaptureStore`, owned by the main loop; readers (the web page) use
:class:`IndexReader`, which opens its own read-only connection for each query.
"""

import contextlib
import datetime
import hashlib
import io
import json
import logging
import os
import sqlite3
import uuid
from collections.abc import Callable
from pathlib import Path

import sqlite_utils
from PIL import Image

from appliance.exc import StoreError

log = logging.getLogger(__name__)

DB_NAME = "captures.db"
TRIGGERS = ("button", "motion", "timelapse", "manual")

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


def shard_of(capture_id: str) -> str:
    """The shard folder name of ``capture_id``: its first two hex characters (256 shards)."""
    return capture_id[:2]


def new_id() -> str:
    """A new capture id: 32 lowercase hex characters from a random UUID4 (122 random bits)."""
    return uuid.uuid4().hex


def utc_now() -> datetime.datetime:
    """The wall clock in UTC.  Data, never a timer: it may jump when NTP first syncs."""
    return datetime.datetime.now(datetime.UTC)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def publish(path: Path, data: bytes) -> None:
    """Durably write ``data`` to ``path``: temporary name, fsync, rename, fsync the folder.

    Either the whole new file is at ``path`` afterwards, or (on error or crash) the old state with
    at most a leftover ``.<name>.tmp``.  Raises ``OSError`` (``ENOSPC`` on a full disk).
    """
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _open_db(path: Path) -> sqlite_utils.Database:
    db = sqlite_utils.Database(path)
    db.enable_wal()
    # FULL, not NORMAL: in WAL mode NORMAL may lose the last commits on power loss, and a commit is
    # our acknowledgement that a capture is kept.  The cost is one WAL fsync per capture.
    db.execute("PRAGMA synchronous=FULL")
    return db


class CaptureStore:
    """The single writer of the capture store rooted at ``data_dir`` (created if missing).

    ``clock_synced()`` says whether the wall clock can be trusted; it is recorded with each capture.
    ``now()`` returns an aware datetime (default: the wall clock); ``captured_at`` is stored in UTC
    so that it sorts and compares as text.  Raises :class:`StoreError`
    when the folder or the database cannot be opened.
    """

    def __init__(
        self,
        data_dir: Path,
        *,
        clock_synced: Callable[[], bool],
        now: Callable[[], datetime.datetime] = utc_now,
    ):
        self.data_dir = Path(data_dir)
        self._clock_synced = clock_synced
        self._now = now
        try:
            for sub in ("media", "thumbnails"):
                (self.data_dir / sub).mkdir(parents=True, exist_ok=True)
            self.db = _open_db(self.data_dir / DB_NAME)
            migrations.apply(self.db)
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(f"cannot open the capture store in {self.data_dir}: {exc}") from exc
        self._next_seq = self.db["counters"].get("last_seq")["value"] + 1
        self._shards_made: set[Path] = set()

    def close(self) -> None:
        self.db.close()

    def _shard_dir(self, kind: str, capture_id: str) -> Path:
        path = self.data_dir / kind / shard_of(capture_id)
        if path not in self._shards_made:
            if not path.is_dir():
                path.mkdir()
                _fsync_dir(path.parent)
            self._shards_made.add(path)
        return path

    def add(
        self,
        jpeg: bytes,
        thumbnail: bytes | None,
        *,
        trigger: str,
        metadata: dict | None = None,
    ) -> dict:
        """Store one capture and return its index row (a dict of the ``captures`` columns).

        ``jpeg``: the photo; ``thumbnail``: its WebP thumbnail, or None when none could be made;
        ``trigger``: one of :data:`TRIGGERS`; ``metadata``: JSON-serialisable camera metadata.

        Raises ``ValueError`` for an unknown trigger and :class:`StoreError` when the capture
        could not be stored (full disk, I/O error): then nothing of it is left behind.
        """
        if trigger not in TRIGGERS:
            raise ValueError(f"unknown trigger {trigger!r}; expected one of {TRIGGERS}")
        width, height = _jpeg_size(jpeg)
        capture_id = new_id()
        media = self._shard_dir("media", capture_id) / f"{capture_id}.jpg"
        thumb = self._shard_dir("thumbnails", capture_id) / f"{capture_id}.webp"
        row = {
            "id": capture_id,
            "seq": self._next_seq,
            "captured_at": self._now().astimezone(datetime.UTC).isoformat(timespec="milliseconds"),
            "clock_synced": int(self._clock_synced()),
            "trigger": trigger,
            "media_path": media.relative_to(self.data_dir).as_posix(),
            "thumbnail_path": thumb.relative_to(self.data_dir).as_posix() if thumbnail else None,
            "bytes": len(jpeg),
            "width": width,
            "height": height,
            "sha256": hashlib.sha256(jpeg).hexdigest(),
            "protected": 0,
            "metadata": json.dumps(metadata or {}, default=str),
        }
        try:
            publish(media, jpeg)
            if thumbnail:
                publish(thumb, thumbnail)
            with self.db.atomic():
                self.db["captures"].insert(row)
                self.db["counters"].update("last_seq", {"value": row["seq"]})
        except (OSError, sqlite3.Error) as exc:
            for path in (media, thumb):
                # Best effort: a file that cannot be removed now is only an unindexed file, never a
                # row without its file; the error that matters is the one raised below.
                with contextlib.suppress(OSError):
                    path.unlink(missing_ok=True)
            raise StoreError(f"capture not stored: {exc}") from exc
        self._next_seq += 1
        return row

    def oldest_unprotected(self, limit: int) -> list[dict]:
        """Up to ``limit`` unprotected captures, oldest (lowest ``seq``) first."""
        return list(
            self.db["captures"].rows_where(
                "protected = 0", order_by="seq", limit=limit, select="id, media_path, thumbnail_path, bytes"
            )
        )

    def delete(self, rows: list[dict]) -> int:
        """Delete the captures ``rows`` (as returned by :meth:`oldest_unprotected`): their index rows
        in one transaction, then their files (a file already gone is fine).  Returns bytes freed.
        """
        with self.db.atomic():
            self.db.conn.executemany("DELETE FROM captures WHERE id = ?", [(r["id"],) for r in rows])
        freed = 0
        for row in rows:
            for rel in (row["media_path"], row["thumbnail_path"]):
                if rel is None:
                    continue
                path = self.data_dir / rel
                try:
                    freed += path.stat().st_size
                    path.unlink()
                except FileNotFoundError:
                    pass
        return freed

    def set_protected(self, capture_id: str, protected: bool) -> None:
        """Mark a capture as kept by the user (never deleted by cleanup) or not.
        Raises ``KeyError`` for an unknown id."""
        with self.db.atomic():
            cursor = self.db.execute(
                "UPDATE captures SET protected = ? WHERE id = ?", [int(protected), capture_id]
            )
        if cursor.rowcount == 0:
            raise KeyError(capture_id)


def _jpeg_size(jpeg: bytes) -> tuple[int, int]:
    # Image.open reads the header only; the pixels are not decoded.
    try:
        with Image.open(io.BytesIO(jpeg)) as image:
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

    def counts(self, now: datetime.datetime) -> dict:
        """``{"total": n, "last_24h": n}``: captures in the index, and those whose ``captured_at``
        is within 24 h before ``now`` (an aware datetime)."""
        since = (now - datetime.timedelta(hours=24)).astimezone(datetime.UTC)
        with self._db() as db:
            total = db.execute("SELECT COUNT(*) FROM captures").fetchone()[0]
            recent = db.execute(
                "SELECT COUNT(*) FROM captures WHERE captured_at >= ?",
                [since.isoformat(timespec="milliseconds")],
            ).fetchone()[0]
        return {"total": total, "last_24h": recent}
