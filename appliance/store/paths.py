"""Where the store keeps things: the names in the data directory, the capture id and the shard
scheme (see the layout in :mod:`appliance.store`).  The one definition of a capture id's form
(:data:`CAPTURE_ID`) and of a temporary file's name (:data:`TEMP_NAME`, from
:mod:`appliance.datadir`, whose :meth:`~appliance.datadir.Folder.publish` gives it)."""

import re
import uuid
from pathlib import Path

from appliance.datadir import TEMP_NAME, DataDir, UnsafePath, temp_name

__all__ = [
    "CAPTURE_FILE_NAME", "CAPTURE_ID", "CLEAN_MARKER", "DAMAGED_DIR", "DB_NAME", "FOLDERS",
    "LOCK_NAME", "MEDIA_NAME", "REBUILD_SUFFIX", "RESERVE_NAME", "SHARDS", "TEMP_NAME",
    "THUMBNAIL_NAME", "TOP_FILES", "media_path", "new_id", "shard_of", "temp_name",
    "thumbnail_path", "unsafe_layout",
]  # fmt: skip

DB_NAME = "captures.db"
CLEAN_MARKER = "clean-shutdown"
REBUILD_SUFFIX = ".new"  # captures.db.new: an index being rebuilt
RESERVE_NAME = ".reserve"
LOCK_NAME = ".lock"
DAMAGED_DIR = "damaged"

# A capture id, as new_id() makes it: 32 lowercase hex characters.
CAPTURE_ID = re.compile(r"[0-9a-f]{32}")
# The file names of a capture: the photo's, the thumbnail's, and either (group 1: the id; group 2:
# the extension, "jpg" or "webp").
MEDIA_NAME = re.compile(rf"({CAPTURE_ID.pattern})\.jpg")
THUMBNAIL_NAME = re.compile(rf"({CAPTURE_ID.pattern})\.webp")
CAPTURE_FILE_NAME = re.compile(rf"({CAPTURE_ID.pattern})\.(jpg|webp)")

# Every shard folder name, in order: the first two hex characters of an id.
SHARDS = [f"{n:02x}" for n in range(256)]
# The folders of the data directory, and the files at its top that SQLite and the store open by
# name: none of them may be a symlink (see unsafe_layout).
FOLDERS = ("media", "thumbnails", DAMAGED_DIR)
TOP_FILES = (
    DB_NAME, f"{DB_NAME}-wal", f"{DB_NAME}-shm", DB_NAME + REBUILD_SUFFIX,
    LOCK_NAME, CLEAN_MARKER, RESERVE_NAME,
)  # fmt: skip


def shard_of(capture_id: str) -> str:
    """The shard folder name of ``capture_id``: its first two hex characters (256 shards)."""
    return capture_id[:2]


def new_id() -> str:
    """A new capture id: 32 lowercase hex characters from a random UUID4 (122 random bits)."""
    return uuid.uuid4().hex


def media_path(capture_id: str) -> str:
    """The photo's path relative to the data directory: ``media/<shard>/<id>.jpg``."""
    return f"media/{shard_of(capture_id)}/{capture_id}.jpg"


def thumbnail_path(capture_id: str) -> str:
    """The thumbnail's path relative to the data directory: ``thumbnails/<shard>/<id>.webp``."""
    return f"thumbnails/{shard_of(capture_id)}/{capture_id}.webp"


def unsafe_layout(data_dir: Path) -> list[str]:
    """What in ``data_dir`` would lead out of it, as paths relative to it: the folders of
    :data:`FOLDERS` and the shard folders in ``media/`` and ``thumbnails/`` that are symlinks or
    not folders, and the files of :data:`TOP_FILES` that are not regular files.  Empty when all is
    well (or nothing exists yet).  Costs a listing of ``media/`` and ``thumbnails/``."""
    files = DataDir(data_dir)
    try:
        unsafe = files.unsafe_entries(("",), frozenset(FOLDERS))
        unsafe += files.unsafe_entries(tuple(f for f in ("media", "thumbnails") if f not in unsafe),
                                       frozenset(SHARDS))  # fmt: skip
        with files.folder() as root:
            for name in TOP_FILES:
                try:
                    root.regular_size(name)
                except UnsafePath:
                    unsafe.append(name)
    except FileNotFoundError:
        return []
    return unsafe
