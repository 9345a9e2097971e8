"""The capture store: photos and thumbnails on disk, indexed in SQLite.

Layout under the data directory::

    captures.db                      the index (SQLite, WAL), table ``captures``
    media/<shard>/<id>.jpg           the photo
    thumbnails/<shard>/<id>.webp     its WebP thumbnail
    damaged/                         files and databases found damaged, set aside (never deleted)
    clean-shutdown                   present only while no writer is open, after a clean close
    .lock                            held (``flock``) by the one writer

``<id>`` is 32 random hex characters (a UUID4, never derived from the clock) and ``<shard>`` its
first two characters, so no folder holds more than 1/256 of the captures.  Captures are ordered by
``seq``, a counter that never repeats, never by ``captured_at``: the wall clock of a Pi without a
real-time clock can jump by years.

Write protocol, in this order, which is what makes a crash or a power cut safe:

1. the JPEG and then the thumbnail are each written to a temporary name (``.<id>.jpg.tmp``) in
   their final folder, fsynced, renamed into place, and the folder fsynced;
2. only then is the index row committed (WAL, ``synchronous=FULL``: the commit is on the card when
   it returns).

A capture is acknowledged (logged, counted, shown) only after step 2.  A crash before it leaves at
worst a temporary file or an unindexed file, never a row without its file and never a torn file
under a final name.  The id of each capture is reserved in the table ``in_flight`` by the commit
before it (and a deletion batch's ids by the commit that deletes their rows), so start-up
reconciliation (:mod:`appliance.reconcile`) finds what a crash left in O(1), without walking the
photos.
The WAL is checkpointed with ``TRUNCATE`` periodically and on close, so it stays small.

One writer, :class:`CaptureStore`, owned by the main loop; readers (the web page) use
:class:`IndexReader`, which opens its own read-only connection for each query.  No code outside
this package writes the tables ``captures``, ``counters``, ``in_flight``, ``activity_hours``,
``disk_hours``, ``offloads`` or ``offload_targets`` (``tests/test_store_writers.py`` checks it).

The package, by concept: :mod:`~appliance.store.paths` (names in the data directory, the capture
id and the shards), :mod:`~appliance.store.durable` (publishing and setting aside files),
:mod:`~appliance.store.schema` (migrations and the capture row), :mod:`~appliance.store.salvage`
(a damaged or vanished index), :mod:`~appliance.store.writer` (:class:`CaptureStore`) and
:mod:`~appliance.store.reader` (:class:`IndexReader`, :class:`Snapshot`); and
:mod:`~appliance.store.synthetic`, rows with no files for ``appliance bench``.  Everything public
is imported from here.
"""

from appliance.store.durable import publish, set_aside
from appliance.store.paths import (
    CAPTURE_FILE_NAME,
    CAPTURE_ID,
    CLEAN_MARKER,
    DAMAGED_DIR,
    DB_NAME,
    FOLDERS,
    LOCK_NAME,
    MEDIA_NAME,
    REBUILD_SUFFIX,
    RESERVE_NAME,
    SHARDS,
    TEMP_NAME,
    THUMBNAIL_NAME,
    TOP_FILES,
    media_path,
    new_id,
    shard_of,
    temp_name,
    thumbnail_path,
    unsafe_layout,
)
from appliance.store.reader import IndexReader, Snapshot
from appliance.store.salvage import CorruptDatabaseError, IndexGoneError, is_corruption
from appliance.store.salvage import plausible as _plausible
from appliance.store.schema import (
    CAPTURE_METHODS,
    MAX_PHOTO_BYTES,
    RECOVERED_COLUMNS,
    TRIGGERS,
    NewerDatabaseError,
    capture_row,
    iso_utc,
    jpeg_size,
    migrations,
)
from appliance.store.writer import (
    CHECKPOINT_INTERVAL_S,
    DISK_HOURS_KEPT_S,
    DISK_HOURS_MAX_ROWS,
    RESERVE_BYTES,
    CaptureStore,
)

__all__ = [
    "CAPTURE_FILE_NAME", "CAPTURE_ID", "CAPTURE_METHODS", "CHECKPOINT_INTERVAL_S", "CLEAN_MARKER",
    "DAMAGED_DIR", "DB_NAME", "DISK_HOURS_KEPT_S", "DISK_HOURS_MAX_ROWS", "FOLDERS", "LOCK_NAME",
    "MAX_PHOTO_BYTES", "MEDIA_NAME",
    "REBUILD_SUFFIX", "RECOVERED_COLUMNS", "RESERVE_BYTES", "RESERVE_NAME", "SHARDS", "TEMP_NAME",
    "THUMBNAIL_NAME", "TOP_FILES", "TRIGGERS", "CaptureStore", "CorruptDatabaseError",
    "IndexGoneError", "IndexReader", "NewerDatabaseError", "Snapshot", "_plausible", "capture_row",
    "is_corruption", "iso_utc", "jpeg_size", "media_path", "migrations", "new_id", "publish",
    "set_aside", "shard_of", "temp_name", "thumbnail_path", "unsafe_layout",
]  # fmt: skip
