"""Synthetic indexes for measurements (``appliance bench``): rows that look like captures, made
by SQLite in one statement per batch, with no files behind them and the same last day at every
size, and a history of disk samples.  Never used by the running appliance; here because only the
store package writes the store's tables.  The captures per hour (``activity_hours``) are counted
by the store's own trigger as the rows go in, as for real captures.
"""

import datetime
import json
from collections.abc import Callable

from appliance.store.schema import iso_utc
from appliance.store.writer import CaptureStore

# The index rows' timeline: the last day is the same at every size (one capture every
# RECENT_INTERVAL_S, the newest NEWEST_AGE_S old: 30 in the last hour, 720 in the last 24 h, all
# within the smallest index), so that the status counts do the same work at every size, and the
# sizes differ only by the history before it, spread evenly back to HISTORY_S.
RECENT_CAPTURES, RECENT_INTERVAL_S, NEWEST_AGE_S = 720, 120, 30
HISTORY_S = 90 * 86400
METADATA = json.dumps({"ExposureTime": 10000, "AnalogueGain": 1.0})
# A stick visit a week: the captures taken more than this many seconds before ``now`` are
# offloaded to OFFLOAD_TARGET (all but the newest week: about 93 % of the largest index, 26 % of
# the smallest, whose history is mostly its last day).
OFFLOADED_BEFORE_S = 7 * 86400
OFFLOAD_TARGET = "usb"

# One statement per batch, so that SQLite, not Python, makes the rows.  MATERIALIZED: without it
# SQLite flattens the CTE and evaluates randomblob() once per use of the id, giving a row whose
# paths name another id.
_FILL = """
WITH RECURSIVE numbers(seq) AS (SELECT :first UNION ALL SELECT seq + 1 FROM numbers WHERE seq < :last),
rows AS MATERIALIZED (
    SELECT seq, lower(hex(randomblob(16))) AS id,
           CASE WHEN :total - seq < :recent THEN :newest_s + (:total - seq) * :interval_s
                ELSE 86400 + (:total - seq - :recent + 1) * :spread_s END AS age_s
    FROM numbers
)
INSERT INTO captures (id, seq, captured_at, clock_synced, boot_id, since_boot_s, trigger, capture_method,
                      event_id, media_path, thumbnail_path, bytes, width, height, sha256, protected,
                      recovered, metadata)
SELECT id, seq, strftime('%Y-%m-%dT%H:%M:%f', julianday(:now) - age_s / 86400.0) || '+00:00', 1,
       printf('%032x', CAST(age_s / 86400 AS INTEGER)), 86400 - age_s % 86400,
       CASE seq % 10 WHEN 6 THEN 'timelapse' WHEN 7 THEN 'timelapse' WHEN 8 THEN 'button'
                     WHEN 9 THEN 'manual' ELSE 'motion' END,
       CASE seq % 10 WHEN 6 THEN 'timeLapse' WHEN 7 THEN 'timeLapse' ELSE 'activityDetection' END,
       id, 'media/' || substr(id, 1, 2) || '/' || id || '.jpg',
       'thumbnails/' || substr(id, 1, 2) || '/' || id || '.webp',
       2500000 + seq * 7919 % 1500000, 4056, 3040, lower(hex(randomblob(32))), seq % 1000 = 0, 0, :metadata
FROM rows
"""

# The rows of a batch taken before the cutoff, as CaptureStore.record_offloaded records them (one
# statement each, for speed): the offloads rows, whose trigger counts them per target, then the
# column cleanup chooses by, whose trigger counts the captures offloaded anywhere.
_OFFLOAD = (
    "INSERT INTO offloads (capture_id, target, sha256, offloaded_at) SELECT id, :target, sha256, :at "
    "FROM captures WHERE seq BETWEEN :first AND :last AND captured_at < :cutoff",
    "UPDATE captures SET offloaded = 1 WHERE seq BETWEEN :first AND :last AND captured_at < :cutoff",
)


def grow(
    store: CaptureStore,
    rows: int,
    *,
    total: int,
    now: datetime.datetime,
    progress: Callable[[str], None] = lambda line: None,
) -> None:
    """Add index rows (no files) up to ``rows`` captures, as fast as SQLite takes them, telling
    ``progress`` each batch of 50,000.

    The rows are those of seq ``store.last_seq + 1`` to ``rows`` in an index of ``total`` captures
    (seq 1 to ``total``) ending at ``now`` (aware): the newest :data:`RECENT_CAPTURES` one every
    :data:`RECENT_INTERVAL_S`, the others spread evenly back to :data:`HISTORY_S` before ``now``.
    Triggers are mixed (6 in 10 motion, 2 timelapse, 1 button, 1 manual), one capture in 1,000 is
    protected, and every row has its thumbnail path (the files are not written).  Those taken
    more than :data:`OFFLOADED_BEFORE_S` before ``now`` are offloaded to :data:`OFFLOAD_TARGET`
    (verified an hour before ``now``), counted by the store's triggers as
    :meth:`CaptureStore.record_offloaded` records them.
    """
    cutoff = iso_utc(now - datetime.timedelta(seconds=OFFLOADED_BEFORE_S))
    offloaded_at = iso_utc(now - datetime.timedelta(hours=1))
    spread_s = (HISTORY_S - 86400) / max(1, total - RECENT_CAPTURES)
    while store.last_seq < rows:
        last = min(rows, store.last_seq + 50_000)
        with store.db.atomic():
            store.db.execute(
                _FILL,
                {
                    "first": store.last_seq + 1, "last": last, "total": total, "now": iso_utc(now),
                    "recent": RECENT_CAPTURES, "newest_s": NEWEST_AGE_S, "interval_s": RECENT_INTERVAL_S,
                    "spread_s": spread_s, "metadata": METADATA,
                },
            )  # fmt: skip
            for statement in _OFFLOAD:
                store.db.execute(
                    statement,
                    {"first": store.last_seq + 1, "last": last, "cutoff": cutoff, "target": OFFLOAD_TARGET,
                     "at": offloaded_at},
                )  # fmt: skip
            store.db["counters"].update("last_seq", {"value": last})
        store.last_seq = last
        progress(f"building the index: {store.last_seq:,} captures")


def disk_history(store: CaptureStore, *, now: datetime.datetime, days: int, interval_s: float) -> int:
    """Record a disk sample every ``interval_s`` seconds over the ``days`` days up to ``now``
    (aware), the last at ``now``, through :meth:`CaptureStore.record_disk_sample` in one
    transaction: the free space falling slowly from 20 GB of 64 GB, and rising by 2 GB each day (a
    cleanup).  Returns how many."""
    count = int(days * 86400 // interval_s)
    with store.db.atomic():
        for n in range(count):
            age_s = (count - 1 - n) * interval_s
            free = 20_000_000_000 - n * 3_000_000 + int((days * 86400 - age_s) // 86400) * 2_000_000_000
            store.record_disk_sample(
                now - datetime.timedelta(seconds=age_s), free_bytes=free, total_bytes=64_000_000_000
            )
    return count
