"""Cleanup (issue 4): choosing a batch of the oldest unprotected captures at each of
:data:`plan.INDEX_SIZES`, and deleting captures through the store against bare ``os.unlink``.
"""

import datetime
import os
import time
from pathlib import Path

from appliance.bench import plan
from appliance.bench.index import _grow_index
from appliance.bench.measuring import _progress, _times_s
from appliance.cleanup import BATCH_SIZE
from appliance.store import CaptureStore

PHOTO_BYTES, THUMBNAIL_BYTES = 3_000, 300  # small files: the cost measured is the file system's


def _write_files(paths: list[Path]) -> None:
    for path in paths:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"\0" * (THUMBNAIL_BYTES if path.suffix == ".webp" else PHOTO_BYTES))


def cleanup_figures(data_dir: Path) -> dict:
    """Measure cleanup in ``data_dir`` (created; it should be on the card to measure).  Returns the
    figures: ``select_batch_ms`` by index size, ``select_ratio_1m_vs_1k``, ``delete_s``,
    ``unlink_s`` and ``delete_vs_unlink``."""
    store = CaptureStore(data_dir)
    # One index per size, the largest the store whose captures are then deleted; each holds the
    # first captures of the same history.
    smaller = {size: CaptureStore(data_dir / f"index-{size}") for size in plan.INDEX_SIZES[:-1]}
    stores = {**smaller, plan.INDEX_SIZES[-1]: store}
    figures: dict = {"select_batch_ms": {}}
    now = datetime.datetime.now(datetime.UTC)
    try:
        for size, index in stores.items():
            _grow_index(index, size, total=plan.INDEX_SIZES[-1], now=now)
            index.checkpoint()
        os.sync()  # or the kernel's writeback of the indexes just written runs through the timing
        # Interleaved, one run of each size a round, so that a busy moment weighs on all alike;
        # then the least of each: on a shared machine noise only adds.
        times: dict[int, list[float]] = {size: [] for size in stores}
        for _ in range(plan.SELECT_RUNS):
            for size, index in stores.items():
                times[size] += _times_s(lambda index=index: index.oldest_unprotected(BATCH_SIZE), 1)
        for size in stores:
            figures["select_batch_ms"][size] = round(min(times[size]) * 1000, 3)
        figures["select_ratio_1m_vs_1k"] = round(
            figures["select_batch_ms"][plan.INDEX_SIZES[-1]]
            / figures["select_batch_ms"][plan.INDEX_SIZES[0]],
            2,
        )
        figures["select_plan"] = " ".join(
            row[3] for row in store.db.execute(
                "EXPLAIN QUERY PLAN SELECT id FROM captures WHERE protected = 0 ORDER BY seq LIMIT 500"
            )
        )  # fmt: skip

        _progress(f"writing {plan.DELETED:,} captures' files twice")
        victims = store.oldest_unprotected(plan.DELETED)
        _write_files([data_dir / row[k] for row in victims for k in ("media_path", "thumbnail_path")])
        baseline = [
            data_dir / "baseline" / f"{i:05d}{ext}" for i in range(plan.DELETED) for ext in (".jpg", ".webp")
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
        for index in stores.values():
            index.close()
        _progress("")
    return figures
