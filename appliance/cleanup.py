"""Disk-pressure cleanup: never let the card fill, never delete what the user protected.

The policy (:class:`Policy`, from the config) and the decision (:func:`decide`, a pure function of
the disk usage, the policy and the recent capture rate) are separate from the work
(:class:`Cleanup`, driven by the main loop's scheduler):

- Cleaning **starts** when free space on the data filesystem falls below
  ``cleanup_start_free_percent`` of it OR below ``cleanup_start_free_bytes``, or below the
  **headroom**: the bytes captured in the last hour times ``headroom_hours``, so that cleanup
  starts early enough to keep that many hours of capturing free at the recent rate (capped at
  :data:`MAX_HEADROOM_FRACTION` of the filesystem); and always before capturing would pause.
- It **stops** once free space is back above both ``cleanup_stop_free_percent`` and
  ``cleanup_stop_free_bytes`` (raised by as much as the headroom raised the start): the gap between
  start and stop is the hysteresis that keeps cleanup from running after every capture.
- It deletes the **oldest unprotected** captures first, by ``seq`` (the capture order, never the
  wall clock); with an offload target set (``offload_usb_path``), the oldest unprotected captures
  already copied and verified there (:meth:`~appliance.store.CaptureStore.record_offloaded`)
  before the oldest of the others (``cleanup_prefer_offloaded``), or never those others
  (``cleanup_keep_unoffloaded``: capturing pauses at ``capture_min_free_bytes`` instead, with a
  banner asking for a USB stick); in batches sized to the card's speed (at most :data:`BATCH_SIZE`), for about
  :data:`TICK_BUDGET_S` per scheduler tick, so that triggers are served while a backlog is
  cleaned.  Protected captures are
  never deleted.  This follows Frigate's ``frigate/storage.py`` (oldest first, protected spared),
  with the root and the disk-usage function injected.
- With ``max_capture_age_days``, captures older than that are deleted too, but only while the
  clock is trusted now (:mod:`appliance.clocktrust`), and only from the oldest end of the capture
  order: walking the captures taken with a trusted clock by ``seq``, up to the last one older than
  that ahead of the first one that is not; those of unknown time before it go too (they were
  taken before it).  So a capture is never expired while an older one (by ``seq``) is kept, and a
  wrong clock can at worst expire captures in the order they were taken.
- Capturing **pauses** while a capture would leave less than ``capture_min_free_bytes`` free (only
  protected captures left, or a card filled by something else): the status page says so, a warning
  is logged once, and capturing resumes by itself when space returns.
- Photos are never deleted to make room for **something else filling the card** (another process,
  a copy over the network): a ledger of free space, kept in the index and begun again at most
  once a day, with the store's counters of the room its own files took and gave back, tells how
  much another writer took; past :data:`FOREIGN_MIN_BYTES`, a run frees only what the policy
  would ask if the card held only what the appliance put there, and then capturing pauses with
  the cause on the status page ("something else is filling the card: N GB in M min"), logged
  once, until free space is back above the start of cleaning.

The interval between checks is measured on the monotonic clock, so a wall clock that jumps by
years neither skips cleanup nor runs it in a loop.  Each run is recorded in ``cleanup_runs``.
"""

import dataclasses
import datetime
import errno
import itertools
import logging
import shutil
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from appliance.clocktrust import TrustedClock
from appliance.store import SHARDS, TEMP_NAME, CaptureStore, iso_utc
from hw.clock import ManualClock

log = logging.getLogger(__name__)

BATCH_SIZE = 500  # at most, per transaction
FIRST_BATCH_SIZE = 50  # before the time a deletion takes on this card is known
# Seconds of deleting per scheduler tick: a trigger waits about this long at most.
TICK_BUDGET_S = 0.2
# The capture rate for the headroom is measured over the last hour of this boot (at least these
# many minutes of it, so that a few captures just after boot do not make a huge rate).
RATE_WINDOW_S = 3600.0
MIN_RATE_WINDOW_S = 600.0
# One busy hour must not make cleanup empty the card: the headroom is at most this much of it.
MAX_HEADROOM_FRACTION = 0.5
_SQLITE_FULL = 13
# Something else is filling the card when the card has lost more room than the appliance's own
# files (photos, thumbnails, the index, counted by their blocks) explain, since the ledger began,
# by at least this many bytes and this share of the filesystem.
FOREIGN_MIN_BYTES = 64 << 20
FOREIGN_MIN_FRACTION = 0.01
# The ledger begins again (at a check with free space above the start of cleaning) once it is
# this old, in seconds since boot, or from another boot: so another writer that fills the card a
# little at a time within a day is seen as one.
LEDGER_DAYS_S = 86400.0
# Temporary files older than this are left over from a crash and removed.
ORPHAN_TEMP_AGE_S = 3600.0


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
    prefer_offloaded: bool = True
    keep_unoffloaded: bool = False
    # Whether an offload target is set (offload_usb_path or offload_remote); without one the two
    # above do nothing.
    offload_target: bool = False
    stick_label: str = "TRAPDATA"  # offload_usb_label, for the banner

    @classmethod
    def from_config(cls, config) -> "Policy":
        # getattr with a default: the offload settings may be absent from an older Config.
        derived = {
            "offload_target": bool(
                getattr(config, "offload_usb_path", "") or getattr(config, "offload_remote", "")
            ),
            "stick_label": getattr(config, "offload_usb_label", "TRAPDATA"),
        }
        read = {f.name: getattr(config, _CONFIG_KEYS.get(f.name, f.name)) for f in dataclasses.fields(cls)
                if f.name not in derived}  # fmt: skip
        return cls(**read, **derived)


_CONFIG_KEYS = {
    "start_free_percent": "cleanup_start_free_percent",
    "start_free_bytes": "cleanup_start_free_bytes",
    "stop_free_percent": "cleanup_stop_free_percent",
    "stop_free_bytes": "cleanup_stop_free_bytes",
    "prefer_offloaded": "cleanup_prefer_offloaded",
    "keep_unoffloaded": "cleanup_keep_unoffloaded",
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


@dataclass(frozen=True)
class CleanupStatus:
    """What :meth:`Cleanup.status` tells: ``state`` (``"ok"``, ``"cleaning"`` or ``"paused"``:
    capturing paused for space), ``reason`` (why, in words; "" when there is nothing to say) and
    the thresholds of the last decision in bytes, free space below which cleaning starts, above
    which it stops, and the headroom (None before the first decision), and the floor below which
    capturing pauses (``capture_min_free_bytes``)."""

    state: str
    reason: str
    start_free_bytes: int | None
    stop_free_bytes: int | None
    headroom_bytes: int | None
    capture_min_free_bytes: int


def decide(
    total: int,
    free: int,
    policy: Policy,
    bytes_per_hour: float,
    cleaning: bool,
    capture_bytes: int = 0,
) -> Decision:
    """Decide whether to delete, and how much, for a filesystem of ``total`` bytes with ``free``
    free, captures arriving at ``bytes_per_hour`` and taking about ``capture_bytes`` each, and
    ``cleaning`` whether a run is under way (hysteresis: it goes on until the stop threshold,
    where a new one would not start).

    The headroom is capped at :data:`MAX_HEADROOM_FRACTION` of the filesystem (one busy hour must
    not empty the card), and the start is never below ``capture_min_free_bytes`` plus one
    capture, so that cleanup always runs before capturing would pause.
    """
    headroom = int(min(bytes_per_hour * policy.headroom_hours, total * MAX_HEADROOM_FRACTION))
    static_start = max(total * policy.start_free_percent / 100, policy.start_free_bytes)
    static_stop = max(total * policy.stop_free_percent / 100, policy.stop_free_bytes)
    floor = policy.capture_min_free_bytes + capture_bytes
    start = int(max(static_start, headroom, floor))
    stop = int(start + max(0.0, static_stop - static_start))
    cause = "headroom" if headroom > max(static_start, floor) else "space"
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


def _disk_full(exc: BaseException) -> bool:
    if isinstance(exc, sqlite3.Error):
        return getattr(exc, "sqlite_errorcode", 0) & 0xFF == _SQLITE_FULL
    return isinstance(exc, OSError) and exc.errno == errno.ENOSPC


def _others(ledger: dict, free: int, written: int, freed: int, overhead: int) -> int:
    """Bytes something else took on the card since ``ledger`` began (negative: it gave some back):
    the free space lost, less the room the appliance's own files took (``written``, ``freed``: the
    store's counters; ``overhead``: its index now), all in bytes."""
    own = (written - ledger["written"]) - (freed - ledger["freed"]) + (overhead - ledger["overhead"])
    return ledger["free"] - free - own


class Cleanup:
    """Keeps free space on ``store``'s filesystem within ``policy`` (see the module docstring).

    :meth:`tick` is for the scheduler, every second or so: it checks every ``interval_s`` seconds
    (monotonic), and while a run is under way deletes for about :data:`TICK_BUDGET_S` per call, in
    batches sized from the time the last ones took.  :meth:`capture_pause` tells the main loop
    whether a capture may go ahead, and :meth:`captured` how much room the last one took.
    :attr:`state` is ``"ok"``, ``"cleaning"`` or ``"paused"`` (capturing paused for space).

    Files that cannot be deleted (``EACCES``, ``EBUSY``) are retried at each check and warned
    about once; a batch that frees less than half of what it should ends the run, and while
    none of them can be removed no new run starts, so a read-only card does not empty the index.
    A card filled to the last byte by something else is handled by releasing the reserve file
    (:data:`~appliance.store.RESERVE_BYTES`) the store keeps for this.

    A card being filled by something else (another process, a copy over the network) is not fed
    with photos: cleanup keeps a ledger of free space in the index (so that a restart does not
    forget it), begun at a check with free space above the start of cleaning and begun again at
    most once a day (:data:`LEDGER_DAYS_S`).  Against the store's counters of the room its files
    took and gave back, it tells how much of the card something else took; past
    :data:`FOREIGN_MIN_BYTES` and :data:`FOREIGN_MIN_FRACTION` of the card, a run deletes only what
    the policy would ask if the card held only what the appliance put there, then capturing pauses
    with the cause on the status page, logged once, until free space is back above the start of
    cleaning.

    :param store: the writer of the capture store whose files it deletes.
    :param policy: the :class:`Policy`; :meth:`configure` swaps it.
    :param interval_s: seconds (monotonic) between two checks of free space.
    :param disk_usage: ``disk_usage(path)`` as :func:`shutil.disk_usage` (injected for tests).
    :param clock: where the time comes from, a :class:`~appliance.clocktrust.TrustedClock` (by
        default one checked against the store's anchor), whose ``clock_synced`` says whether age
        expiry may run; a :class:`~hw.clock.ManualClock` in tests.
    :param monotonic: as :func:`time.monotonic` (injected for tests).
    """

    def __init__(
        self,
        store: CaptureStore,
        policy: Policy,
        *,
        interval_s: float = 60.0,
        disk_usage: Callable[[Path], object] = shutil.disk_usage,
        clock: TrustedClock | ManualClock | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ):
        self._store = store
        self.policy = policy
        self._interval_s = interval_s
        self._disk_usage = disk_usage
        self._clock = clock or TrustedClock(anchor=store.clock_anchor())
        self._monotonic = monotonic
        self._next_check = monotonic()  # the first tick checks at once
        self._runs: dict[str, dict | None] = {"space": None, "age": None}  # cleanup_runs rows under way
        self._batch = FIRST_BATCH_SIZE
        self._stuck: set[str] = set()  # captures whose files could not be removed, warned about
        self._blocked = False  # after a batch whose files would not go, until a retry frees some
        self._paused_reason: str | None = None
        self._only_protected = False
        self._kept_unoffloaded = False  # only captures that exist nowhere else are left to delete
        self._capture_cost = 0  # free space the last capture took, in bytes
        self._free_before_capture: int | None = None
        self._next_shard = 0  # for the orphan temporary files, a shard per check
        self._ledger: dict | None = store.free_space_ledger()  # see the class docstring
        self._free = 0  # free bytes at the last decision
        self._bytes_per_hour = 0.0  # the capture rate at the last decision
        self._others: str | None = None  # why nothing more is deleted: something else fills the card
        self.state = "ok"
        self.last_decision: Decision | None = None
        self.last_run: dict | None = None  # the cleanup_runs row of the last finished run

    def configure(self, policy: Policy) -> None:
        """Take ``policy`` from the next decision on (a config reload)."""
        self.policy = policy

    def tick(self) -> None:
        """Check free space when due, and delete for about :data:`TICK_BUDGET_S` if needed."""
        now = self._monotonic()
        if not any(self._runs.values()) and now < self._next_check:
            return
        if now >= self._next_check:
            self._next_check = now + self._interval_s
            self._retry_stuck()
            self._remove_orphan_temps()
        deadline = now + TICK_BUDGET_S
        if not self._blocked:
            self._delete_for_space(deadline)
            self._delete_expired(deadline)
        self._refresh_pause()

    def run_all(self) -> list[dict]:
        """Delete everything the policy asks for now, without a time budget (``appliance
        cleanup``).  Returns the ``cleanup_runs`` rows of what it did (none, one for space, one
        for age)."""
        runs = []
        self._retry_stuck()
        for work in (self._delete_for_space, self._delete_expired):
            self.last_run = None
            if not self._blocked:
                work(deadline=float("inf"))
            runs += [self.last_run] if self.last_run else []
        return runs

    def plan(self) -> dict:
        """What a cleanup would delete now, deleting nothing (``appliance cleanup --dry-run``):
        ``{"decision", "count", "bytes", "oldest", "newest"}`` with the first and last capture
        (rows) that would go, oldest first, or None.  Reads the index with a cursor."""
        decision = self._decide()
        count = freed = 0
        oldest = newest = None
        chosen: set[str] = set()
        if decision.bytes_to_free > 0:
            for row in self._iter_candidates():
                if freed >= decision.bytes_to_free:
                    break
                oldest, newest = oldest or row, row
                count, freed = count + 1, freed + row["bytes"]
                chosen.add(row["id"])
        cutoff = self._expiry_cutoff()
        bound = self._store.expiry_bound(cutoff, 2**62) if cutoff is not None else None
        if bound is not None:
            for row in self._store.iter_oldest_unprotected():
                if row["seq"] > bound:
                    break
                if row["id"] not in chosen:
                    count, freed = count + 1, freed + row["bytes"]
                    oldest = row if oldest is None or row["seq"] < oldest["seq"] else oldest
                    newest = row if newest is None or row["seq"] > newest["seq"] else newest
        return {"decision": decision, "count": count, "bytes": freed, "oldest": oldest, "newest": newest}

    def capture_pause(self) -> str | None:
        """Why a capture must not be taken now (it would leave less than ``capture_min_free_bytes``
        free), or None.  A capture is expected to take what the last one took (see
        :meth:`captured`) and half as much again.  Pausing logs a warning once and brings the
        next check forward.  Costs one ``statvfs``."""
        free = self._disk_usage(self._store.data_dir).free
        self._free_before_capture = free
        if self._others is not None:
            if self._paused_reason is None:
                self._next_check = self._monotonic()  # notice at once when space is back
            self._paused_reason = f"capturing paused: {self._others}"
            self.state = "paused"
            return self._paused_reason
        if self._room_for_a_capture(free):
            if self._paused_reason is not None:
                log.info("capturing resumes: %s free", _size(free))
                self._paused_reason = None
                self._refresh_pause()
            return None
        if self._paused_reason is None:
            log.warning(
                "capturing paused: %s free, and a capture needs %s above the floor of %s "
                "(capture_min_free_bytes)%s",
                _size(free),
                _size(self._expected_capture_bytes()),
                _size(self.policy.capture_min_free_bytes),
                "; only protected captures are left"
                if self._only_protected
                else "; the others exist only on this card (cleanup_keep_unoffloaded)"
                if self._kept_unoffloaded
                else "",
            )
            self._next_check = self._monotonic()  # clean now rather than at the next interval
        self._paused_reason = (
            f"capturing paused for space: {_size(free)} free, the floor is "
            f"{_size(self.policy.capture_min_free_bytes)}"
        )
        if self._kept_unoffloaded:
            self._paused_reason += (
                "; the photos left exist only on this card (cleanup_keep_unoffloaded): plug in a USB "
                f"stick labelled {self.policy.stick_label} to copy them, and cleanup makes room once "
                "they are verified on it"
            )
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

    def status(self) -> CleanupStatus:
        """The current state (a frozen value, safe to hand to another thread)."""
        decision = self.last_decision
        reason = self._paused_reason or (decision.reason if decision else "")
        if self._only_protected:
            reason += "; only protected captures remain"
        if self._blocked:
            reason += f"; {len(self._stuck)} captures' files cannot be deleted"
        return CleanupStatus(
            state=self.state,
            reason=reason.lstrip("; "),
            start_free_bytes=decision.start_bytes if decision else None,
            stop_free_bytes=decision.stop_bytes if decision else None,
            headroom_bytes=decision.headroom_bytes if decision else None,
            capture_min_free_bytes=self.policy.capture_min_free_bytes,
        )

    def _expected_capture_bytes(self) -> int:
        return self._capture_cost * 3 // 2

    def _room_for_a_capture(self, free: int) -> bool:
        return free - self._expected_capture_bytes() >= self.policy.capture_min_free_bytes

    def _refresh_pause(self) -> None:
        if self._paused_reason is not None and self._others is None:
            free = self._disk_usage(self._store.data_dir).free
            if self._room_for_a_capture(free):
                log.info("capturing resumes: %s free", _size(free))
                self._paused_reason = None
        self.state = "paused" if self._paused_reason else "cleaning" if self._runs["space"] else "ok"

    def _decide(self) -> Decision:
        usage = self._disk_usage(self._store.data_dir)
        stamp = self._clock.now()
        window = min(RATE_WINDOW_S, stamp.since_boot_s)
        recent = self._store.recent_bytes(stamp.boot_id, stamp.since_boot_s - window) if stamp.boot_id else 0
        bytes_per_hour = recent * 3600.0 / max(window, MIN_RATE_WINDOW_S)
        self._bytes_per_hour = bytes_per_hour
        decision = decide(
            usage.total,
            usage.free,
            self.policy,
            bytes_per_hour,
            cleaning=self._runs["space"] is not None,
            capture_bytes=self._expected_capture_bytes(),
        )
        self.last_decision, self._free = decision, usage.free
        if decision.bytes_to_free == 0 and self._others is not None:
            log.info("cleanup: free space is back (%s); capturing resumes", _size(usage.free))
            self._others = self._paused_reason = None
        ledger = self._ledger
        old = (
            ledger is None
            or ledger["boot_id"] != stamp.boot_id
            or (stamp.since_boot_s - ledger["since_boot_s"] >= LEDGER_DAYS_S)
        )
        if old and (decision.bytes_to_free == 0 or ledger is None):  # begun again from here
            written, freed = self._store.space_counters()
            self._ledger = {
                "free": usage.free, "written": written, "freed": freed,
                "overhead": self._store.overhead_bytes(), "boot_id": stamp.boot_id,
                "since_boot_s": stamp.since_boot_s, "started_at": iso_utc(stamp.wall),
            }  # fmt: skip
            self._store.set_free_space_ledger(self._ledger)
        return decision

    def _allowance(self, total: int) -> int | None:
        """Bytes the run may still free when something else is filling the card, or None when
        nothing else is (the run frees what the decision asks): what the policy would ask if the
        card held only what the appliance put there (the free space now plus what the other writer
        took).  Notes the cause when that is nothing, logged once."""
        others = _others(
            self._ledger, self._free, *self._store.space_counters(), self._store.overhead_bytes()
        )
        if others < max(FOREIGN_MIN_BYTES, total * FOREIGN_MIN_FRACTION):
            return None
        alone = decide(
            total,
            self._free + others,
            self.policy,
            self._bytes_per_hour,
            cleaning=self._runs["space"] is not None,
            capture_bytes=self._expected_capture_bytes(),
        )
        allowance = alone.bytes_to_free
        if allowance == 0 and self._others is None:
            stamp = self._clock.now()
            since = (
                f"in {max(1, round((stamp.since_boot_s - self._ledger['since_boot_s']) / 60))} min"
                if stamp.boot_id == self._ledger["boot_id"]
                else f"since {self._ledger['started_at'][:16].replace('T', ' ')} UTC"
            )
            self._others = (
                f"something else is filling the card: {_size(others)} {since} that the appliance did "
                "not write; cleanup deletes no photos to make room for it. Free space on the card "
                "(find what writes there) and capturing resumes by itself"
            )
            log.warning("cleanup: %s", self._others)
            self._paused_reason = f"capturing paused: {self._others}"
        return allowance

    def _delete_for_space(self, deadline: float) -> None:
        decision = self._decide()
        if decision.bytes_to_free > 0 and self._runs["space"] is None:
            # The WAL may hold megabytes the index no longer needs: give them back first.  Only a
            # help: on a card too full for it, deleting goes on without it.
            try:
                self._while_full(self._store.checkpoint)
            except (OSError, sqlite3.OperationalError) as exc:
                log.warning("cleanup: WAL checkpoint failed (%s); deleting anyway", exc)
            decision = self._decide()
        while decision.bytes_to_free > 0:
            allowance = self._allowance(self._disk_usage(self._store.data_dir).total)
            wanted = decision.bytes_to_free if allowance is None else min(decision.bytes_to_free, allowance)
            if wanted <= 0:
                break  # the rest is another writer's doing: capturing pauses instead
            rows = self._candidates(self._batch)
            if not rows:
                if self._keeps_unoffloaded() and self._store.oldest_unprotected(1, offloaded=False):
                    if not self._kept_unoffloaded:  # once, until space is back above the stop
                        log.warning(
                            "cleanup: only captures not yet offloaded are left to delete, and "
                            "cleanup_keep_unoffloaded keeps them; %s",
                            decision.reason,
                        )
                        self._kept_unoffloaded = True
                elif not self._only_protected:  # once, until space is back above the stop
                    log.warning("cleanup: only protected captures remain; %s", decision.reason)
                    self._only_protected = True
                break
            batch, batch_bytes = [], 0
            for row in rows:  # just enough, oldest first: a small card is not over-cleaned
                batch.append(row)
                batch_bytes += row["bytes"]
                if batch_bytes >= wanted:
                    break
            if not self._delete("space" if decision.cause != "headroom" else "headroom", batch):
                break  # the files would not go: the run ends, the next check tries again
            decision = self._decide()
            if decision.bytes_to_free > 0 and self._monotonic() >= deadline:
                return  # the rest at the next tick: triggers come first
        if decision.bytes_to_free == 0:
            self._only_protected = self._kept_unoffloaded = False
            self._store.ensure_reserve()
        self._finish_run("space")

    def _iter_candidates(self):
        """:meth:`_candidates`, all of them, read lazily (for :meth:`plan`)."""
        policy, store = self.policy, self._store
        if not policy.offload_target or not (policy.prefer_offloaded or policy.keep_unoffloaded):
            return store.iter_oldest_unprotected()
        if policy.keep_unoffloaded:
            return store.iter_oldest_unprotected(offloaded=True)
        return itertools.chain(
            store.iter_oldest_unprotected(offloaded=True), store.iter_oldest_unprotected(offloaded=False)
        )

    def _keeps_unoffloaded(self) -> bool:
        return self.policy.offload_target and self.policy.keep_unoffloaded

    def _candidates(self, limit: int) -> list[dict]:
        """Up to ``limit`` captures cleanup may delete for space, in the order it deletes them:
        the oldest unprotected; with an offload target set, those offloaded first (or only)."""
        policy = self.policy
        if not policy.offload_target:
            return self._store.oldest_unprotected(limit)
        if policy.keep_unoffloaded:
            return self._store.oldest_unprotected(limit, offloaded=True)
        if policy.prefer_offloaded:
            return self._store.oldest_unprotected(limit, offloaded=True) or self._store.oldest_unprotected(
                limit, offloaded=False
            )
        return self._store.oldest_unprotected(limit)

    def _expiry_cutoff(self) -> datetime.datetime | None:
        """Captures taken before this are past ``max_capture_age_days``; None when nothing
        expires now: no age limit, or a clock that is not trusted (``clock_synced`` of a
        :class:`~appliance.clocktrust.TrustedClock`)."""
        stamp = self._clock.now()
        if not self.policy.max_capture_age_days or not stamp.clock_synced:
            return None
        return stamp.wall - datetime.timedelta(days=self.policy.max_capture_age_days)

    def _delete_expired(self, deadline: float) -> None:
        cutoff = self._expiry_cutoff()
        # Only ever from the oldest end of the capture order (see CaptureStore.expiry_bound).
        while cutoff is not None and (bound := self._store.expiry_bound(cutoff, self._batch)) is not None:
            # Never one that exists nowhere else, with cleanup_keep_unoffloaded.
            offloaded = True if self._keeps_unoffloaded() else None
            rows = self._store.oldest_unprotected(self._batch, up_to_seq=bound, offloaded=offloaded)
            if not rows or not self._delete("age", rows):
                break
            if self._monotonic() >= deadline:
                return
        self._finish_run("age")

    def _delete(self, reason: str, rows: list[dict]) -> bool:
        """Delete ``rows`` within the run of ``reason``'s kind (started if needed).  Returns False
        when less than half of their bytes could be freed (their files would not go)."""
        kind = "age" if reason == "age" else "space"
        if self._runs[kind] is None:
            self._start_run(kind, reason)
        started = self._monotonic()
        freed, failed = self._while_full(lambda: self._store.delete(rows))
        # Size the next batches to take about half the tick's budget each.
        per_capture_s = max(self._monotonic() - started, 1e-6) / len(rows)
        self._batch = max(1, min(BATCH_SIZE, int(TICK_BUDGET_S / 2 / per_capture_s)))
        run = self._runs[kind]
        run["deleted"] += len(rows)
        run["bytes_freed"] += freed
        self._store.record_cleanup_run(run)
        self._note_stuck(failed)
        if freed >= sum(row["bytes"] for row in rows) / 2:
            return True
        self._blocked = True  # until a retry frees something: more row deletions would not help
        return False

    def _retry_stuck(self) -> None:
        freed, failed = self._while_full(self._store.retry_deletions)
        if self._stuck and not failed:
            log.info("cleanup: the files that could not be deleted are gone now")
        if freed or not failed:
            self._blocked = False
        self._stuck = set(failed)

    def _note_stuck(self, failed: list[str]) -> None:
        new = set(failed) - self._stuck
        if new:
            log.warning(
                "cleanup: the files of %d captures cannot be deleted now (permissions, busy, I/O "
                "error); their rows are gone, and the files are tried again at each check",
                len(new),
            )
        self._stuck |= new

    def _while_full(self, work):
        """Run ``work``; if the card is too full even for that (SQLite needs room to delete),
        release the store's reserve file and run it again."""
        try:
            return work()
        except (OSError, sqlite3.Error) as exc:
            if not _disk_full(exc) or not self._store.release_reserve():
                raise
            log.warning("cleanup: the card is full; released the reserve file to make room")
            return work()

    def _start_run(self, kind: str, reason: str) -> None:
        usage = self._disk_usage(self._store.data_dir)
        run = {
            "started_at": iso_utc(self._clock.now().wall),
            "reason": reason,
            "deleted": 0,
            "bytes_freed": 0,
            "free_bytes_before": usage.free,
            "total_bytes": usage.total,
        }
        run["id"] = self._while_full(lambda: self._store.record_cleanup_run(run))
        self._runs[kind] = run
        if kind == "space":
            log.info("cleanup: %s; deleting the oldest unprotected captures", self.last_decision.reason)
        else:
            log.info("cleanup: deleting captures older than %g days", self.policy.max_capture_age_days)
        self._refresh_pause()

    def _finish_run(self, kind: str) -> None:
        run = self._runs[kind]
        if run is None:
            return
        run["finished_at"] = iso_utc(self._clock.now().wall)
        run["free_bytes_after"] = self._disk_usage(self._store.data_dir).free
        self._store.record_cleanup_run(run)
        log.info(
            "cleanup: deleted %d captures, freed %s; %s free",
            run["deleted"],
            _size(run["bytes_freed"]),
            _size(run["free_bytes_after"]),
        )
        self._runs[kind], self.last_run = None, run

    def _remove_orphan_temps(self) -> None:
        """Remove temporary files older than an hour from the next shard (one per check); a
        symlink at such a name, or a shard folder that is one, is left alone."""
        shard = SHARDS[self._next_shard]
        self._next_shard = (self._next_shard + 1) % len(SHARDS)
        cutoff = time.time() - ORPHAN_TEMP_AGE_S
        for kind in ("media", "thumbnails"):
            try:
                with self._store.files.folder(f"{kind}/{shard}") as folder:
                    for entry in folder.entries():
                        try:
                            if (
                                TEMP_NAME.fullmatch(entry.name)
                                and entry.is_file(follow_symlinks=False)
                                and entry.stat(follow_symlinks=False).st_mtime < cutoff
                            ):
                                folder.unlink(entry.name)
                                log.info(
                                    "cleanup: removed the orphan temporary file %s", folder.path(entry.name)
                                )
                        except FileNotFoundError:
                            continue
                        except OSError as exc:
                            log.warning("cleanup: cannot remove %s: %s", folder.path(entry.name), exc)
            except OSError:
                continue
