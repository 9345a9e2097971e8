"""Disk-pressure cleanup: never let the card fill, never delete what the user protected.

When free space on the data directory's filesystem falls below ``start_free_percent``, delete the
oldest unprotected captures (lowest ``seq``: the capture order, never the wall clock) in batches until
free space is back above ``stop_free_percent``.  The gap between the two is the hysteresis that keeps
cleanup from running after every capture.  Oldest-first with protected items spared follows
Frigate's ``frigate/storage.py``; unlike it, the root and the disk-usage function are injected.
"""

import logging
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from appliance.store import CaptureStore

log = logging.getLogger(__name__)

BATCH_SIZE = 500


@dataclass(frozen=True)
class CleanupResult:
    """What one :meth:`Cleanup.run` did: ``deleted`` captures, ``freed_bytes``, and the free space
    before and after as a percentage of the filesystem (0-100)."""

    deleted: int
    freed_bytes: int
    free_percent_before: float
    free_percent_after: float


def free_percent(usage) -> float:
    """Free space as a percentage (0-100) of ``usage``, a ``shutil.disk_usage`` result (bytes)."""
    return 100.0 * usage.free / usage.total if usage.total else 0.0


class Cleanup:
    """Deletes the oldest unprotected captures of ``store`` when space is short.

    ``disk_usage(path)`` returns an object with ``total``, ``used`` and ``free`` in bytes, like
    :func:`shutil.disk_usage` (the default); tests inject their own.
    """

    def __init__(
        self,
        store: CaptureStore,
        *,
        start_free_percent: float,
        stop_free_percent: float,
        disk_usage: Callable[[Path], object] = shutil.disk_usage,
    ):
        if stop_free_percent < start_free_percent:
            raise ValueError("stop_free_percent must be >= start_free_percent")
        self._store = store
        self._start = start_free_percent
        self._stop = stop_free_percent
        self._disk_usage = disk_usage

    def run(self) -> CleanupResult:
        """Check free space and, when below the start threshold, delete until above the stop one
        or until only protected captures remain (then a warning is logged).  Returns what it did.

        Each batch takes, oldest first, just enough captures (by their recorded size) to reach the
        stop threshold, at most :data:`BATCH_SIZE`, so a small card is not over-cleaned.
        """
        usage = self._disk_usage(self._store.data_dir)
        before = free_percent(usage)
        deleted = freed = 0
        if before < self._start:
            log.info("cleanup: %.1f%% free is below %.1f%%; deleting oldest captures", before, self._start)
            while (needed := self._stop / 100 * usage.total - usage.free) > 0:
                rows = self._store.oldest_unprotected(BATCH_SIZE)
                if not rows:
                    log.warning(
                        "cleanup: only protected captures remain and %.1f%% is free",
                        free_percent(usage),
                    )
                    break
                batch, batch_bytes = [], 0
                for row in rows:
                    batch.append(row)
                    batch_bytes += row["bytes"]
                    if batch_bytes >= needed:
                        break
                freed += self._store.delete(batch)
                deleted += len(batch)
                usage = self._disk_usage(self._store.data_dir)
            log.info(
                "cleanup: deleted %d captures, freed %d bytes; %.1f%% free",
                deleted,
                freed,
                free_percent(usage),
            )
        return CleanupResult(deleted, freed, before, free_percent(usage))
