"""``appliance bench``: figures for the capture store, each against a baseline measured in the same
run, so that they mean the same on a busy CI machine and on a Pi.

So far it measures cleanup (issue 4): the time to choose a batch of the oldest unprotected
captures in an index of 1,000, 100,000 and 1,000,000 captures (it must not grow with the index),
and the time to delete 10,000 captures through the store against bare ``os.unlink`` of the same
number of files of the same sizes.
"""

import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

from appliance.cleanup import BATCH_SIZE
from appliance.store import CaptureStore, media_path, thumbnail_path

INDEX_SIZES = (1_000, 100_000, 1_000_000)
DELETED = 10_000
PHOTO_BYTES, THUMBNAIL_BYTES = 3_000, 300  # small files: the cost measured is the file system's


def _progress(text: str) -> None:
    if sys.stderr.isatty():
        print(f"\r{text:<60}", end="", file=sys.stderr, flush=True)


def _grow_index(store: CaptureStore, rows: int) -> None:
    """Add index rows (no files) up to ``rows`` captures, as fast as SQLite takes them."""
    metadata = json.dumps({"ExposureTime": 10000, "AnalogueGain": 1.0})
    while (count := store.db["captures"].count) < rows:
        batch = []
        for seq in range(store.last_seq + 1, store.last_seq + 1 + min(50_000, rows - count)):
            capture_id = uuid.uuid4().hex
            batch.append(
                (capture_id, seq, "2026-06-01T21:00:00.000+00:00", 1, "0" * 32, float(seq), "motion",
                 media_path(capture_id), thumbnail_path(capture_id), PHOTO_BYTES, 4056, 3040, "0" * 64, 0,
                 0, metadata)
            )  # fmt: skip
        with store.db.atomic():
            store.db.conn.executemany(
                "INSERT INTO captures (id, seq, captured_at, clock_synced, boot_id, since_boot_s, trigger, "
                "media_path, thumbnail_path, bytes, width, height, sha256, protected, recovered, metadata) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                batch,
            )
            store.db["counters"].update("last_seq", {"value": batch[-1][1]})
        store.last_seq = batch[-1][1]
        _progress(f"building the index: {store.last_seq:,} captures")


def _median_s(work, repeat: int = 21) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        work()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def _write_files(paths: list[Path]) -> None:
    for path in paths:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"\0" * (THUMBNAIL_BYTES if path.suffix == ".webp" else PHOTO_BYTES))


def cleanup_figures(data_dir: Path) -> dict:
    """Measure cleanup in ``data_dir`` (created; it should be on the card to measure).  Returns the
    figures: ``select_batch_ms`` by index size, ``select_ratio_1m_vs_1k``, ``delete_s``,
    ``unlink_s`` and ``delete_vs_unlink``."""
    store = CaptureStore(data_dir)
    figures: dict = {"select_batch_ms": {}}
    try:
        for size in INDEX_SIZES:
            _grow_index(store, size)
            seconds = _median_s(lambda: store.oldest_unprotected(BATCH_SIZE))
            figures["select_batch_ms"][size] = round(seconds * 1000, 3)
        figures["select_ratio_1m_vs_1k"] = round(
            figures["select_batch_ms"][INDEX_SIZES[-1]] / figures["select_batch_ms"][INDEX_SIZES[0]], 2
        )
        figures["select_plan"] = " ".join(
            row[3] for row in store.db.execute(
                "EXPLAIN QUERY PLAN SELECT id FROM captures WHERE protected = 0 ORDER BY seq LIMIT 500"
            )
        )  # fmt: skip

        _progress(f"writing {DELETED:,} captures' files twice")
        victims = store.oldest_unprotected(DELETED)
        _write_files([data_dir / row[k] for row in victims for k in ("media_path", "thumbnail_path")])
        baseline = [
            data_dir / "baseline" / f"{i:05d}{ext}" for i in range(DELETED) for ext in (".jpg", ".webp")
        ]
        _write_files(baseline)
        os.sync()  # both sets on the disk before either is deleted

        _progress("deleting through the store")
        started = time.perf_counter()
        for first in range(0, len(victims), BATCH_SIZE):
            store.delete(victims[first : first + BATCH_SIZE])
        figures["delete_s"] = round(time.perf_counter() - started, 3)
        _progress("deleting with bare os.unlink")
        started = time.perf_counter()
        for path in baseline:
            os.unlink(path)
        figures["unlink_s"] = round(time.perf_counter() - started, 3)
        figures["delete_vs_unlink"] = round(figures["delete_s"] / figures["unlink_s"], 2)
    finally:
        store.close()
        _progress("")
    return figures


def main(data_dir: str | None, as_json: bool) -> int:
    """``appliance bench``: print the figures as a table, or as one JSON object.  Returns 0."""
    with tempfile.TemporaryDirectory(dir=data_dir, prefix="appliance-bench-") as scratch:
        figures = cleanup_figures(Path(scratch))
    if as_json:
        print(json.dumps(figures))
        return 0
    print("cleanup: choosing a batch of the oldest unprotected captures (median of 21)")
    for size, ms in figures["select_batch_ms"].items():
        print(f"  {size:>9,} captures   {ms:8.3f} ms")
    print(f"  ratio 1,000,000 / 1,000: {figures['select_ratio_1m_vs_1k']}  ({figures['select_plan']})")
    print(f"cleanup: deleting {DELETED:,} captures (photo + thumbnail each)")
    print(f"  through the store  {figures['delete_s']:8.3f} s   (rows, files, folder fsyncs, in batches)")
    print(f"  bare os.unlink     {figures['unlink_s']:8.3f} s   (the same number of files, no fsync)")
    print(f"  ratio              {figures['delete_vs_unlink']:8.2f}")
    return 0
