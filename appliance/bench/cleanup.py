"""Cleanup (issue 4): choosing a batch of the oldest unprotected captures at each of
:data:`plan.INDEX_SIZES`, and deleting captures through the store against bare ``os.unlink``; and
the two batch choices of the offload (issue 18) at the same sizes: the oldest unprotected
offloaded captures (what cleanup deletes first) and the captures not yet offloaded to a target,
oldest first (what a copy to a stick takes next).
"""

import datetime
import os
import time
from pathlib import Path

from appliance.bench import plan
from appliance.bench.index import _grow_index
from appliance.bench.measuring import _progress, _times_s
from appliance.cleanup import BATCH_SIZE
from appliance.store import CaptureStore, IndexReader
from appliance.store.synthetic import OFFLOAD_TARGET

PHOTO_BYTES, THUMBNAIL_BYTES = 3_000, 300  # small files: the cost measured is the file system's


def _write_files(paths: list[Path]) -> None:
    for path in paths:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"\0" * (THUMBNAIL_BYTES if path.suffix == ".webp" else PHOTO_BYTES))


# The offload's batch choices measured beside cleanup's own: (figure name, what it chooses).
OFFLOAD_CHOICES = (
    ("select_offloaded", "the oldest unprotected offloaded captures"),
    ("select_pending", f"captures not yet offloaded to {OFFLOAD_TARGET!r}, oldest first"),
)


def _offload_plans(store: CaptureStore) -> dict:
    """SQLite's plans of the offload's choices, as the store and the reader ask them."""
    from appliance.store.reader import NOT_OFFLOADED, PENDING_SQL
    from appliance.store.writer import OLDEST_BY_OFFLOAD

    def explain(sql: str, args: list) -> str:
        return " ".join(row[3] for row in store.db.execute(f"EXPLAIN QUERY PLAN {sql}", args))

    return {
        "select_offloaded_plan": explain(
            f"SELECT id FROM {OLDEST_BY_OFFLOAD[1]} ORDER BY seq LIMIT 500", [2**62]
        ),
        "select_pending_plan": explain(PENDING_SQL.format(NOT_OFFLOADED), [0, 50]),
    }


def cleanup_figures(data_dir: Path) -> dict:
    """Measure cleanup in ``data_dir`` (created; it should be on the card to measure).  Returns the
    figures: ``select_batch_ms`` by index size, ``select_ratio_1m_vs_1k``, ``delete_s``,
    ``unlink_s`` and ``delete_vs_unlink``; and for the offload's choices (:data:`OFFLOAD_CHOICES`)
    ``<name>_batch_ms`` by index size, ``<name>_ratio_1m_vs_1k`` and ``<name>_plan``."""
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
        choices = {
            "select": lambda index: index.oldest_unprotected(BATCH_SIZE),
            "select_offloaded": lambda index: index.oldest_unprotected(BATCH_SIZE, offloaded=True),
            "select_pending": lambda index: IndexReader(index.data_dir).pending_offload(
                OFFLOAD_TARGET, limit=plan.OFFLOAD_BATCH
            ),
        }
        times = {(name, size): [] for name in choices for size in stores}
        for _ in range(plan.SELECT_RUNS):
            for name, choose in choices.items():
                for size, index in stores.items():
                    times[name, size] += _times_s(lambda choose=choose, index=index: choose(index), 1)
        for name in choices:
            by_size = figures.setdefault(f"{name}_batch_ms", {})
            for size in stores:
                by_size[size] = round(min(times[name, size]) * 1000, 3)
            figures[f"{name}_ratio_1m_vs_1k"] = round(
                by_size[plan.INDEX_SIZES[-1]] / by_size[plan.INDEX_SIZES[0]], 2
            )
        figures |= _offload_plans(store)
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
