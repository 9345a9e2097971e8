"""Disk-pressure cleanup: never let the card fill, never delete what the user protected.

The policy (:class:`Policy`, from the config) and the decision (:func:`decide`, a pure function of
the disk usage, the policy and the recent capture rate) are separate from the work
(:class:`Cleanup`, driven by the main loop's scheduler):

- Cleaning **starts** when free space on the data filesystem falls below
  ``cleanup_start_free_percent`` of it OR below ``cleanup_start_free_bytes``, or below the
  **headroom**: the bytes captured in the last hour times ``headroom_hours``, so that cleanup
  starts early enough to keep that many hours of capturing free at the recent rate.
- It **stops** once free space is back above both ``cleanup_stop_free_percent`` and
  ``cleanup_stop_free_bytes`` (raised by as much as the headroom raised the start): the gap between
  start and stop is the hysteresis that keeps cleanup from running after every capture.
- It deletes the **oldest unprotected** captures first, by ``seq`` (the capture order, never the
  wall clock), in batches of at most :data:`BATCH_SIZE`, for at most :data:`TICK_BUDGET_S` per
  scheduler tick, so that triggers are served while a backlog is cleaned.  Protected captures are
  never deleted.  This follows Frigate's ``frigate/storage.py`` (oldest first, protected spared),
  with the root and the disk-usage function injected.
- With ``max_capture_age_days``, captures older than that are deleted too, but only those taken
  with a synchronised clock, and only while the clock is synchronised now: a capture whose time is
  unknown has no age.
- Capturing **pauses** while a capture would leave less than ``capture_min_free_bytes`` free (only
  protected captures left, or a card filled by something else): the status page says so, a warning
  is logged once, and capturing resumes by itself when space returns.

The interval between checks is measured on the monotonic clock, so a wall clock that jumps by
years neither skips cleanup nor runs it in a loop.  Each run is recorded in ``cleanup_runs``.
"""

import dataclasses
import datetime
import logging
import os
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from appliance.store import CaptureStore, iso_utc
from hw.clock import SystemClock

log = logging.getLogger(__name__)

BATCH_SIZE = 500
# Seconds of deleting per scheduler tick: a trigger waits at most about this long.
TICK_BUDGET_S = 0.2
# The capture rate for the headroom is measured over this many seconds.
RATE_WINDOW_S = 3600.0
# Temporary files older than this are left over from a crash and removed.
ORPHAN_TEMP_AGE_S = 3600.0
_TEMP_NAME = re.compile(r"\..+\.tmp")
_SHARDS = [f"{n:02x}" for n in range(256)]


def free_percent(usage) -> float:
    """Free space as a percentage (0-100) of ``usage``, a ``shutil.disk_usage`` result (bytes)."""
    return 100.0 * usage.free / usage.total if usage.total else 0.0


@dataclass(frozen=True)
class Policy:
    """The cleanup settings (see the module docstring); percentages 0-100, sizes in bytes."""

    start_free_percent: float = 10.0
    start_free_bytes: int = 1 << 30
    stop_free_percent: float = 20.0
    stop_free_bytes: int = 2 << 30
    headroom_hours: float = 24.0
    max_capture_age_days: float = 0.0  # 0: no age limit
    capture_min_free_bytes: int = 256 << 20

    @classmethod
    def from_config(cls, config) -> "Policy":
        return cls(
            **{f.name: getattr(config, _CONFIG_KEYS.get(f.name, f.name)) for f in dataclasses.fields(cls)}
        )


_CONFIG_KEYS = {
    "start_free_percent": "cleanup_start_free_percent",
    "start_free_bytes": "cleanup_start_free_bytes",
    "stop_free_percent": "cleanup_stop_free_percent",
    "stop_free_bytes": "cleanup_stop_free_bytes",
}


@dataclass(frozen=True)
class Decision:
    """What to do about free space now.

    ``start_bytes``/``stop_bytes``: the free space below which cleaning starts and above which it
    stops, headroom included; ``headroom_bytes``: the bytes of ``headroom_hours`` of capturing at
    the recent rate; ``bytes_to_free``: how much to delete now (0: nothing); ``cause``:
    ``"space"`` (a free-space threshold), ``"headroom"`` or ``""``; ``reason``: why, in words.
    """

    start_bytes: int
    stop_bytes: int
    headroom_bytes: int
    bytes_to_free: int
    cause: str
    reason: str


def decide(total: int, free: int, policy: Policy, bytes_per_hour: float, cleaning: bool) -> Decision:
    """Decide whether to delete, and how much, for a filesystem of ``total`` bytes with ``free``
    free, captures arriving at ``bytes_per_hour``, and ``cleaning`` whether a run is under way
    (hysteresis: it goes on until the stop threshold, where a new one would not start)."""
    headroom = int(bytes_per_hour * policy.headroom_hours)
    static_start = max(total * policy.start_free_percent / 100, policy.start_free_bytes)
    static_stop = max(total * policy.stop_free_percent / 100, policy.stop_free_bytes)
    start = int(max(static_start, headroom))
    stop = int(start + max(0.0, static_stop - static_start))
    cause = "headroom" if headroom > static_start else "space"
    if free < start:
        reason = f"{_size(free)} free is below {_size(start)}"
        if cause == "headroom":
            reason += f", {policy.headroom_hours:g} h of capturing at the last hour's rate"
    elif cleaning and free < stop:
        reason = f"{_size(free)} free, cleaning up to {_size(stop)}"
    else:
        return Decision(start, stop, headroom, 0, "", "")
    return Decision(start, stop, headroom, stop - free, cause, reason)


def _size(n: float) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB"


class Cleanup:
    """Keeps free space on ``store``'s filesystem within ``policy`` (see the module docstring).

    :meth:`tick` is for the scheduler, every second or so: it checks every ``interval_s`` seconds
    (monotonic), and while cleaning works for at most :data:`TICK_BUDGET_S` per call.
    :meth:`capture_pause` tells the main loop whether a capture may go ahead.  :attr:`state` is
    ``"ok"``, ``"cleaning"`` or ``"paused"`` (capturing paused for space).

    Injected for tests: ``disk_usage(path)`` (as :func:`shutil.disk_usage`), ``clock`` (a
    :class:`~hw.clock.SystemClock`), ``monotonic`` (as :func:`time.monotonic`).
    """

    def __init__(
        self,
        store: CaptureStore,
        policy: Policy,
        *,
        interval_s: float = 60.0,
        disk_usage: Callable[[Path], object] = shutil.disk_usage,
        clock: SystemClock | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ):
        self._store = store
        self.policy = policy
        self._interval_s = interval_s
        self._disk_usage = disk_usage
        self._clock = clock or SystemClock()
        self._monotonic = monotonic
        self._next_check = monotonic()  # the first tick checks at once
        self._run: dict | None = None  # the cleanup_runs row of the run under way
        self._paused_reason: str | None = None
        self._warned_protected = False
        self._capture_cost = 0  # free space the last capture took, in bytes
        self._free_before_capture: int | None = None
        self._next_shard = 0  # for the orphan temporary files, a shard per check
        self.state = "ok"
        self.last_decision: Decision | None = None
        self.last_run: dict | None = None  # the cleanup_runs row of the last finished run

    def tick(self) -> None:
        """Check free space when due, and delete for at most :data:`TICK_BUDGET_S` if needed."""
        now = self._monotonic()
        if self._run is None and now < self._next_check:
            return
        if now >= self._next_check:
            self._next_check = now + self._interval_s
            self._store.retry_deletions()
            self._remove_orphan_temps()
        deadline = now + TICK_BUDGET_S
        self._delete_for_space(deadline)
        if self._run is None:
            self._delete_expired(deadline)

    def run_all(self) -> list[dict]:
        """Delete everything the policy asks for now, without a time budget (``appliance
        cleanup``).  Returns the ``cleanup_runs`` rows of what it did (none, one for space, one
        for age)."""
        runs = []
        for work in (self._delete_for_space, self._delete_expired):
            self.last_run = None
            work(deadline=float("inf"))
            runs += [self.last_run] if self.last_run else []
        return runs

    def plan(self) -> dict:
        """What a cleanup would delete now, deleting nothing (``appliance cleanup --dry-run``):
        ``{"decision", "count", "bytes", "oldest", "newest"}`` with the first and last capture
        (rows) that would go, oldest first, or None."""
        decision = self._decide()
        chosen = []
        if decision.bytes_to_free > 0:
            freed = 0
            for row in self._store.oldest_unprotected(1 << 62):  # a cursor: stops when enough
                if freed >= decision.bytes_to_free:
                    break
                chosen.append(row)
                freed += row["bytes"]
        if self.policy.max_capture_age_days and self._clock.now().clock_synced:
            taken = {row["id"] for row in chosen}
            cutoff = self._clock.now().wall - datetime.timedelta(days=self.policy.max_capture_age_days)
            chosen += [row for row in self._store.expired(cutoff, 1 << 62) if row["id"] not in taken]
            chosen.sort(key=lambda row: row["seq"])
        return {
            "decision": decision,
            "count": len(chosen),
            "bytes": sum(row["bytes"] for row in chosen),
            "oldest": chosen[0] if chosen else None,
            "newest": chosen[-1] if chosen else None,
        }

    def capture_pause(self) -> str | None:
        """Why a capture must not be taken now (it would leave less than ``capture_min_free_bytes``
        free), or None.  A capture is expected to take what the last one took (see
        :meth:`captured`) and half as much again.  Logs a warning when capturing pauses and a note
        when it resumes, once each.  Costs one ``statvfs``."""
        free = self._disk_usage(self._store.data_dir).free
        self._free_before_capture = free
        expected_bytes = self._capture_cost * 3 // 2
        floor = self.policy.capture_min_free_bytes
        if free - expected_bytes >= floor:
            if self._paused_reason is not None:
                log.info("capturing resumes: %s free", _size(free))
                self._paused_reason = None
                self.state = "cleaning" if self._run else "ok"
            return None
        if self._paused_reason is None:
            log.warning(
                "capturing paused: %s free, and a capture needs %s above the floor of %s "
                "(capture_min_free_bytes); only protected captures are left, or the card is full "
                "of other files",
                _size(free),
                _size(expected_bytes),
                _size(floor),
            )
        self._paused_reason = f"capturing paused for space: {_size(free)} free, the floor is {_size(floor)}"
        self.state = "paused"
        return self._paused_reason

    def captured(self) -> None:
        """Note how much free space the capture just stored took (photo, thumbnail, index and
        file-system blocks), for :meth:`capture_pause`."""
        if self._free_before_capture is not None:
            taken = self._free_before_capture - self._disk_usage(self._store.data_dir).free
            if taken > 0:
                self._capture_cost = taken
            self._free_before_capture = None

    def status(self) -> dict:
        """The current state for the status page: ``state``, ``reason`` and the thresholds in
        bytes (a new dict each time, safe to hand to another thread)."""
        decision = self.last_decision
        return {
            "state": self.state,
            "reason": self._paused_reason or (decision.reason if decision else ""),
            "start_free_bytes": decision.start_bytes if decision else None,
            "stop_free_bytes": decision.stop_bytes if decision else None,
            "headroom_bytes": decision.headroom_bytes if decision else None,
            "capture_min_free_bytes": self.policy.capture_min_free_bytes,
        }

    def _decide(self) -> Decision:
        usage = self._disk_usage(self._store.data_dir)
        stamp = self._clock.now()
        window = min(RATE_WINDOW_S, stamp.since_boot_s)
        recent = self._store.recent_bytes(stamp.boot_id, stamp.since_boot_s - window) if stamp.boot_id else 0
        bytes_per_hour = recent * 3600.0 / RATE_WINDOW_S
        decision = decide(
            usage.total, usage.free, self.policy, bytes_per_hour, cleaning=self._run is not None
        )
        self.last_decision = decision
        return decision

    def _delete_for_space(self, deadline: float) -> None:
        decision = self._decide()
        if decision.bytes_to_free > 0 and self._run is None:
            # The WAL may hold megabytes the index no longer needs: give them back first.
            self._store.checkpoint()
            decision = self._decide()
        while decision.bytes_to_free > 0:
            rows = self._store.oldest_unprotected(BATCH_SIZE)
            if not rows:
                if not self._warned_protected:  # once, not at every check
                    log.warning("cleanup: only protected captures remain; %s", decision.reason)
                    self._warned_protected = True
                break
            self._warned_protected = False
            if self._run is None:
                self._start_run(decision.cause, self._disk_usage(self._store.data_dir))
                log.info("cleanup: %s; deleting the oldest unprotected captures", decision.reason)
            batch, batch_bytes = [], 0
            for row in rows:  # just enough, oldest first: a small card is not over-cleaned
                batch.append(row)
                batch_bytes += row["bytes"]
                if batch_bytes >= decision.bytes_to_free:
                    break
            self._delete(batch)
            decision = self._decide()
            if decision.bytes_to_free > 0 and self._monotonic() >= deadline:
                return  # the rest at the next tick: triggers come first
        if self._run is not None:
            self._finish_run()

    def _delete_expired(self, deadline: float) -> None:
        days = self.policy.max_capture_age_days
        stamp = self._clock.now()
        if not days or not stamp.clock_synced:
            return
        cutoff = stamp.wall - datetime.timedelta(days=days)
        while rows := self._store.expired(cutoff, BATCH_SIZE):
            if self._run is None:
                self._start_run("age", self._disk_usage(self._store.data_dir))
                log.info("cleanup: deleting captures older than %g days", days)
            self._delete(rows)
            if self._monotonic() >= deadline:
                return
        if self._run is not None:
            self._finish_run()

    def _delete(self, rows: list[dict]) -> None:
        freed, failed = self._store.delete(rows)
        self._run["deleted"] += len(rows)
        self._run["bytes_freed"] += freed
        self._store.record_cleanup_run(self._run)
        if failed:
            log.warning("cleanup: %d captures' files could not be removed yet; retried later", len(failed))

    def _start_run(self, reason: str, usage) -> None:
        self.state = "paused" if self._paused_reason else "cleaning"
        self._run = {
            "started_at": iso_utc(self._clock.now().wall),
            "reason": reason,
            "deleted": 0,
            "bytes_freed": 0,
            "free_bytes_before": usage.free,
            "total_bytes": usage.total,
        }
        self._run["id"] = self._store.record_cleanup_run(self._run)

    def _finish_run(self) -> None:
        run = self._run
        run["finished_at"] = iso_utc(self._clock.now().wall)
        run["free_bytes_after"] = self._disk_usage(self._store.data_dir).free
        self._store.record_cleanup_run(run)
        log.info(
            "cleanup: deleted %d captures, freed %s; %s free",
            run["deleted"],
            _size(run["bytes_freed"]),
            _size(run["free_bytes_after"]),
        )
        self._run, self.last_run = None, run
        self.state = "paused" if self._paused_reason else "ok"

    def _remove_orphan_temps(self) -> None:
        """Remove temporary files older than an hour from the next shard (one per check)."""
        shard = _SHARDS[self._next_shard]
        self._next_shard = (self._next_shard + 1) % len(_SHARDS)
        cutoff = time.time() - ORPHAN_TEMP_AGE_S
        for kind in ("media", "thumbnails"):
            try:
                entries = list(os.scandir(self._store.data_dir / kind / shard))
            except OSError:
                continue
            for entry in entries:
                try:
                    if _TEMP_NAME.fullmatch(entry.name) and entry.stat().st_mtime < cutoff:
                        os.unlink(entry.path)
                        log.info("cleanup: removed the orphan temporary file %s", entry.path)
                except OSError as exc:
                    log.warning("cleanup: cannot remove %s: %s", entry.path, exc)
