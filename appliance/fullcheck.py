"""The full check: every capture of every shard checked beside capturing (see
:mod:`appliance.reconcile`).  A worker thread lists the shard folders and reads, decodes and
hashes what it finds (:func:`appliance.repairs.inspect`); the store's thread carries the findings
out in steps (:class:`appliance.repairs.Apply`), committing each, and keeps where the check is in
the index so that one cut short goes on at the next start."""

import contextlib
import logging
import queue
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import schedule

from appliance.datadir import UnsafePath
from appliance.repairs import RECOVERY_BATCH, Apply, Finding, inspect
from appliance.store import (
    DB_NAME,
    MEDIA_NAME,
    SHARDS,
    TEMP_NAME,
    THUMBNAIL_NAME,
    CaptureStore,
    CorruptDatabaseError,
    IndexGoneError,
)

if TYPE_CHECKING:  # reconcile imports this module: only the annotations name its report
    from appliance.reconcile import Reconciliation

log = logging.getLogger("appliance.reconcile")  # one name for all of reconciliation, as before

# Seconds of the store's thread a full check step may take beside capturing (at least one
# finding, however long): a trigger that comes meanwhile waits at most about this long.  Steps
# are due every STEP_INTERVAL_S, and end early when a trigger waits.
STEP_BUDGET_S = 0.05
STEP_INTERVAL_S = 0.1
# Findings the worker hands over at a time, and how many such hand-overs may wait: bounds the
# memory a full check holds (each may carry a thumbnail of a few kB).
CHUNK = 32
QUEUED_CHUNKS = 4
# Tries of a shard folder that cannot be listed (an I/O error) before a full check leaves it for
# the next start.
MAX_SHARD_FAILURES = 3
# Seconds the worker waits before trying a failed shard again.
SHARD_RETRY_S = 1.0
# Longest wait, in seconds, before a step that failed is tried again.
MAX_BACKOFF_S = 60.0


@dataclass
class _Chunk:
    findings: list[Finding]
    shard_done: int | None = None  # the index of the shard whose last findings these are
    skipped: bool = False  # that shard could not be listed and is left for the next start
    error: BaseException | None = None  # what stopped the worker, for the store's thread to raise


class FullCheck:
    """A full check of every capture beside capturing (see :mod:`appliance.reconcile`).

    ``store``: the open store, used only from the thread that calls :meth:`step` or :meth:`run`
    (the store's own); ``report``: where findings and progress go; ``max_px``: thumbnail size;
    ``busy()``: true when the store's thread has better things to do (a trigger waiting), which
    ends a step early; ``restart``: start again at the first shard (``appliance check``) rather
    than go on where an interrupted check stopped.  A worker thread reads ahead, at most
    :data:`QUEUED_CHUNKS` hand-overs.  Use it as a context manager, or call :meth:`close`, to stop
    the worker.  The store's ``full_check_pending`` flag is set while it runs, so one that is
    interrupted is due again at the next start.  A shard folder that cannot be listed is tried
    :data:`MAX_SHARD_FAILURES` times, then left for the next start (``report.shards_skipped``).
    Damage to the index raises :class:`~appliance.store.CorruptDatabaseError`.
    """

    def __init__(
        self,
        store: CaptureStore,
        report: "Reconciliation",
        max_px: int,
        *,
        busy: Callable[[], bool] = lambda: False,
        restart: bool = False,
    ):
        self._store, self._report, self._max_px, self._busy = store, report, max_px, busy
        self._apply = Apply(store, report, skip=store.in_flight)
        self._uri = (store.data_dir / DB_NAME).resolve().as_uri() + "?mode=ro"
        with store.guard():
            state = store.full_check_state()
            resume = not restart and state["pending"] and (state["shard"] < len(SHARDS) or state["queued"])
            self._next = state["shard"] if resume else 0
            self._skipped = state["skipped"] if resume else 0
            if not resume:
                store.start_full_check()
        self._chunks: queue.Queue[_Chunk] = queue.Queue(QUEUED_CHUNKS)
        if resume:
            log.info("full check: going on at shard %d of %d", self._next, len(SHARDS))
        self._pending: list[Finding] = []
        self._failures = 0  # of the worker at the shard self._next, in a row
        self._errors = 0  # of the steps, in a row (see step)
        self._resume_at = 0.0  # no step before this (monotonic): the back-off after an error
        self._unsafe_logged = False
        self._stop = threading.Event()
        self._worker: threading.Thread | None = None
        self.done = False
        report.full_check_progress = min(0.999, self._next / len(SHARDS))

    def __enter__(self) -> "FullCheck":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def close(self) -> None:
        """Stop the worker (it ends between two captures it reads) and forget what it read ahead;
        idempotent."""
        self._stop.set()
        if self._worker is not None:
            with contextlib.suppress(queue.Empty):
                while True:
                    self._chunks.get_nowait()
            self._worker.join()
            self._worker = None
        self._chunks = queue.Queue(QUEUED_CHUNKS)
        self._pending = []
        self._stop = threading.Event()

    def run(self, progress: Callable[[int, int], None] | None = None) -> None:
        """Check every shard now, then index the photos found without a row.  ``progress(done,
        total)`` is called after each shard."""
        shown = self._next
        while not self.done:
            self._advance(float("inf"), wait=True)
            if progress and self._next != shown:
                shown = self._next
                progress(self._next, len(SHARDS))

    def step(self, budget_s: float = STEP_BUDGET_S):
        """Carry out what the worker found for about ``budget_s`` seconds (at least one finding,
        then until the budget is spent or ``busy()``), committing once; for the scheduler.
        Returns ``schedule.CancelJob`` once the check is done (so that a scheduled step stops
        itself), else None.

        A step that fails (a full card, an I/O error) commits nothing: what was read ahead is
        forgotten, the shard being checked is read again, and the next step waits 2, 4 ...
        seconds (at most :data:`MAX_BACKOFF_S`); the first failure in a row is logged.  Damage to
        the index, or an index gone, raises."""
        if time.monotonic() < self._resume_at:
            return None
        try:
            result = self._advance(budget_s, wait=False)
        except (CorruptDatabaseError, IndexGoneError):
            raise
        except (OSError, sqlite3.Error) as exc:
            self._errors += 1
            delay = min(MAX_BACKOFF_S, 2.0**self._errors)
            self._resume_at = time.monotonic() + delay
            log.log(logging.WARNING if self._errors == 1 else logging.DEBUG,
                    "full check: %s; trying again in %g s", exc, delay)  # fmt: skip
            return None
        self._errors = 0
        return result

    def _advance(self, budget_s: float, *, wait: bool):
        """:meth:`step` without the back-off: errors raise.  ``wait``: wait for the worker rather
        than return when it has nothing ready (``appliance check``)."""
        started = time.monotonic()
        idle = self._worker is None or not (self._worker.is_alive() or self._chunks.qsize() or self._pending)
        if idle and self._next < len(SHARDS):
            self._worker = threading.Thread(target=self._read, name="full-check", daemon=True)
            self._worker.start()
        counters = {}
        committed = (self._next, self._skipped, len(self._report.shards_skipped))
        try:
            with self._store.guard():
                first = True
                while not self.done and (
                    first or (time.monotonic() - started < budget_s and not self._busy())
                ):
                    first = False
                    if self._next < len(SHARDS):
                        if not self._take(counters, wait):
                            break
                    else:
                        self._apply.commit(counters)  # the last shard's queued photos first
                        counters.clear()
                        committed = (self._next, self._skipped, len(self._report.shards_skipped))
                        if not self._apply.index_recovered(RECOVERY_BATCH):
                            self._finish(counters)
                self._apply.commit(counters)
        except BaseException:
            # Nothing of this step was committed: what was read ahead is forgotten, and the shards
            # it went past are read again.
            self._apply.reset()
            self.close()
            self._next, self._skipped, kept = committed
            del self._report.shards_skipped[kept:]
            self.done = False
            raise
        finally:
            self._report.duration_s += time.monotonic() - started
        if not self.done:
            return None
        self.close()
        level = logging.WARNING if self._report.repairs or self._report.shards_skipped else logging.INFO
        log.log(level, "capture store: %s", self._report.summary())
        return schedule.CancelJob

    def _take(self, counters: dict, wait: bool) -> bool:
        """Carry out one finding (or note a shard done); False when the worker has nothing ready."""
        if not self._pending:
            try:
                chunk = self._chunks.get(timeout=1.0) if wait else self._chunks.get_nowait()
            except queue.Empty:
                return wait and self._worker is not None and self._worker.is_alive()
            if chunk.error is not None:
                # The worker has ended: the next step starts another where this one was, and after
                # too many failures at one shard, leaves it for the next start.
                self._worker = None
                self._failures += 1
                if isinstance(chunk.error, Exception) and self._failures >= MAX_SHARD_FAILURES:
                    log.error("full check: shard %s failed %d times (%s); left for the next start",
                              SHARDS[self._next], self._failures, chunk.error)  # fmt: skip
                    self._pending = [Finding("", "shard done", (self._next, True))]
                    return True
                raise chunk.error
            self._pending = list(chunk.findings)
            if chunk.shard_done is not None:
                self._pending.append(Finding("", "shard done", (chunk.shard_done, chunk.skipped)))
        finding = self._pending.pop(0)
        if finding.action == "shard done":
            index, skipped = finding.seen
            if skipped:
                self._report.shards_skipped.append(SHARDS[index])
                self._skipped += 1
            self._next, self._failures = index + 1, 0
            counters |= {"full_check_shard": self._next, "full_check_skipped": self._skipped}
            # 1 only once done: the photos found without a row are indexed after the last shard.
            self._report.full_check_progress = min(0.999, self._next / len(SHARDS))
        else:
            self._apply.carry_out(finding)
        return True

    def _finish(self, counters: dict) -> None:
        # A shard left unread means the next start must look again, from the first.
        self.done = True
        counters |= {
            "full_check_pending": int(self._skipped > 0),
            "full_check_shard": 0,
            "full_check_skipped": 0,
        }
        self._report.full_check_progress = 1.0

    # -- the worker's side: reads only --

    def _read(self) -> None:
        try:
            connection = sqlite3.connect(self._uri, uri=True, check_same_thread=True)
            with contextlib.closing(connection):
                for index in range(self._next, len(SHARDS)):
                    if self._stop.is_set():
                        return
                    self._read_shard(connection, index)
        except BaseException as exc:  # noqa: BLE001 -- handed to the store's thread, which raises it
            self._put(_Chunk([], error=exc))

    def _read_shard(self, connection: sqlite3.Connection, index: int) -> None:
        shard = SHARDS[index]
        for attempt in range(1, MAX_SHARD_FAILURES + 1):
            try:
                findings, listed = self._list_shard(index, shard)
                break
            except UnsafePath as exc:  # not a passing failure: left alone, for the next start
                if not self._unsafe_logged:
                    log.error("full check: %s; such shards are left for the next start", exc)
                    self._unsafe_logged = True
                self._put(_Chunk([], shard_done=index, skipped=True))
                return
            except OSError as exc:
                if attempt == MAX_SHARD_FAILURES:
                    log.error("full check: shard %s failed %d times (%s); left for the next start",
                              shard, attempt, exc)  # fmt: skip
                    self._put(_Chunk([], shard_done=index, skipped=True))
                    return
                log.warning("full check: shard %s failed (%s); trying again", shard, exc)
                if self._stop.wait(SHARD_RETRY_S):
                    return
        photos, thumbs = listed
        with connection:  # one read transaction: the rows and in_flight agree with each other
            connection.execute("BEGIN")
            upper = shard[0] + chr(ord(shard[1]) + 1)
            rows = {
                r[0]: {"id": r[0], "bytes": r[1], "thumbnail_path": r[2]}
                for r in connection.execute(
                    "SELECT id, bytes, thumbnail_path FROM captures WHERE id >= ? AND id < ?", [shard, upper]
                )
            }
            reserved = {r[0] for r in connection.execute("SELECT id FROM in_flight")}
            queued = {r[0] for r in connection.execute(
                "SELECT id FROM recovery WHERE id >= ? AND id < ?", [shard, upper]
            )}  # fmt: skip
        files = self._store.files
        for capture_id in sorted((rows.keys() | photos.keys() | thumbs.keys()) - reserved - queued):
            if self._stop.is_set():
                return
            try:
                finding = inspect(
                    files, capture_id, rows.get(capture_id), photos.get(capture_id),
                    thumbs.get(capture_id), self._max_px,
                )  # fmt: skip
            except OSError as exc:
                finding = Finding(capture_id, "unreadable", reason=str(exc))
            if finding.action != "ok":
                findings.append(finding)
            if len(findings) >= CHUNK:
                self._put(_Chunk(findings))
                findings = []
        self._put(_Chunk(findings, shard_done=index))

    def _list_shard(self, index: int, shard: str) -> tuple[list[Finding], tuple[dict, dict]]:
        """The findings of the listing (temporary and unknown files) and ``({id: (size,
        mtime_ns)} of the photos, {id: size} of the thumbnails)`` of a shard; the first shard also
        looks at the tops of ``media/`` and ``thumbnails/``."""
        findings = []
        files = self._store.files
        if index == 0:
            for kind in ("media", "thumbnails"):
                with contextlib.suppress(FileNotFoundError), files.folder(kind) as folder:
                    for entry in folder.entries():
                        if entry.name not in SHARDS or not entry.is_dir(follow_symlinks=False):
                            findings.append(_entry_finding(kind, entry))
        listed = []
        for kind, pattern in (("media", MEDIA_NAME), ("thumbnails", THUMBNAIL_NAME)):
            found = {}
            try:
                with files.folder(f"{kind}/{shard}") as folder:
                    for entry in folder.entries():
                        match = pattern.fullmatch(entry.name)
                        if match and entry.is_file(follow_symlinks=False):
                            st = entry.stat(follow_symlinks=False)
                            found[match[1]] = (st.st_size, st.st_mtime_ns) if kind == "media" else st.st_size
                        else:
                            findings.append(_entry_finding(f"{kind}/{shard}", entry))
            except FileNotFoundError:
                pass
            listed.append(found)
        return findings, tuple(listed)

    def _put(self, chunk: _Chunk) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(queue.Full):
                self._chunks.put(chunk, timeout=0.2)
                return


def _entry_finding(folder: str, entry) -> Finding:
    """A temporary file of ours to remove, or an unknown entry to leave alone."""
    if TEMP_NAME.fullmatch(entry.name) and entry.is_file(follow_symlinks=False):
        return Finding("", "temp", folder=folder, name=entry.name)
    kind = "" if entry.is_file(follow_symlinks=False) else "a symlink" if entry.is_symlink() else "not a file"
    return Finding("", "stray", folder=folder, name=entry.name, reason=kind)
