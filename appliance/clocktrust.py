"""Time you can trust before you delete by it.

The kernel's word that the clock is synchronised (:func:`hw.clock.clock_synced`) is not enough: an
RTC with a flat battery or a bad time, a wrong NTP source or a hand that sets the clock can all
give a "synchronised" clock that is years off.  Deleting by age with such a clock deletes
everything.  So the appliance also checks the clock against its own history: the **anchor**, the
last moment it trusted the clock (its wall time, boot id and time since boot), kept in the index
(table ``clock_anchor``, moved on by every capture taken with a trusted clock and every
:data:`ANCHOR_INTERVAL_S` while trusted).

The clock is **trusted** when the kernel says it is synchronised and it agrees with the anchor:

- in the same boot, the wall clock has moved as the boot clock has (``CLOCK_BOOTTIME``, which never
  jumps) since the first moment it was trusted in this boot, give or take :data:`TOLERANCE_S` and
  :data:`DRIFT_RATE` of the time since (so that steps too small to notice one by one cannot walk
  it away either): a step of the wall clock beyond that is a jump;
- after a restart (another boot), the wall clock is not behind the anchor by more than
  :data:`TOLERANCE_S`, nor ahead of it by more than :data:`MAX_GAP_S` (a trap may be off for a
  season, but more than a year without running is rarer than a clock that is years off: a DS3231
  RTC's century bit, a GPS week-number rollover).

A clock accepted after a restart although it moved further ahead than captures are kept
(``max_capture_age_days``) would expire every capture at once if it was wrong (behind, before
the restart): ``gap_accepted(seconds)`` is called, and the appliance then lets the captures from
before be deleted by age only once newer ones are (an expiry floor, see
:meth:`~appliance.store.CaptureStore.set_expiry_floor`).

Otherwise the clock is **distrusted**: captures are stamped ``clock_synced = 0`` (their time is
doubtful), age expiry stops, the status page says why and what to do, and "captures in the last
hour" count by time since boot.  The anchor does not move while distrusted, so a restart does not
launder a wrong clock; distrust ends by itself as soon as the clock agrees with the anchor again
(its source fixed), or by ``appliance clock --trust`` when the clock is right and the history is
not (which sets the expiry floor too: the history's ages are not vouched for).  A clock the
kernel calls unsynchronised is simply that: captures are flagged, nothing is compared.

See also :mod:`appliance.cleanup`: age expiry deletes only from the oldest end of the capture order
(``seq``), so even a wrong clock that passes these checks can at worst expire captures in the order
they were taken.
"""

import datetime
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

from hw.clock import SystemClock, Timestamp

# Seconds the wall clock may step within one boot, or be behind the anchor across boots, and still
# be trusted: a resynchronisation after weeks without NTP steps it by less (100 ppm over a month
# is 260 s), a wrong time by far more.
TOLERANCE_S = 300.0
# Seconds ahead of the anchor a clock may be after a restart and still be trusted (366 days).
MAX_GAP_S = 366 * 86400.0
# How fast the wall clock may move against the boot clock within a boot, beyond TOLERANCE_S: the
# drift an NTP daemon corrects by stepping after days offline is a few parts per million.
DRIFT_RATE = 50e-6
# Seconds between two writes of the anchor while the clock is trusted and nothing is captured.
ANCHOR_INTERVAL_S = 600.0

TRUSTED, UNSYNCHRONISED, DISTRUSTED = "trusted", "unsynchronised", "distrusted"


@dataclass(frozen=True)
class ClockStatus:
    """What is known of the wall clock now: ``state`` (:data:`TRUSTED`, :data:`UNSYNCHRONISED`
    or :data:`DISTRUSTED`), ``reason`` (for the status page: what is wrong and what to do; "" unless
    distrusted), ``now`` (the wall clock when last read) and ``anchor`` (the last moment it was
    trusted, or None), both ISO 8601 in UTC."""

    state: str
    reason: str = ""
    now: str | None = None
    anchor: str | None = None


def _span(seconds: float) -> str:
    seconds = abs(seconds)
    for unit, size in (("years", 365.25 * 86400), ("days", 86400), ("hours", 3600), ("minutes", 60)):
        if seconds >= 2 * size:
            return f"{seconds / size:.0f} {unit}"
    return f"{seconds:.0f} s"


def disagreement(stamp: Timestamp, anchor: Timestamp) -> str | None:
    """Why the synchronised clock of ``stamp`` cannot be trusted given the ``anchor`` (in the same
    boot: the first moment it was trusted in that boot; in another boot: the last moment it was),
    or None when they agree (see the module docstring for the rule)."""
    gap = (stamp.wall - anchor.wall).total_seconds()
    if stamp.boot_id and stamp.boot_id == anchor.boot_id and stamp.since_boot_s is not None:
        elapsed = stamp.since_boot_s - anchor.since_boot_s
        step = gap - elapsed
        if abs(step) <= TOLERANCE_S + DRIFT_RATE * abs(elapsed):
            return None
        return f"the wall clock jumped {'forward' if step > 0 else 'back'} by {_span(step)} while running"
    if gap < -TOLERANCE_S:
        return f"it is {_span(gap)} behind the last time the appliance trusted it"
    if gap > MAX_GAP_S:
        return f"it is {_span(gap)} ahead of the last time the appliance trusted it"
    return None


class TrustedClock:
    """A clock whose :meth:`now` says ``clock_synced`` only when the time can be trusted.

    ``clock``: the machine's (:class:`~hw.clock.SystemClock`, or a
    :class:`~hw.clock.ManualClock` in tests); ``anchor``: the last moment the clock was trusted,
    from the index (:meth:`~appliance.store.CaptureStore.clock_anchor`), None for a new store;
    ``record_anchor(stamp)``: writes a new anchor into the index (the store's
    :meth:`~appliance.store.CaptureStore.set_clock_anchor`), called by :meth:`tick`;
    ``gap_accepted(seconds)``: called once when a restart's clock is trusted ahead of the anchor
    by more than :data:`TOLERANCE_S` (see the module docstring).  :meth:`now` and :meth:`tick`
    are for the store's thread; :meth:`status` for any thread.
    """

    def __init__(
        self,
        clock: SystemClock | None = None,
        anchor: Timestamp | None = None,
        *,
        record_anchor: Callable[[Timestamp], None] | None = None,
        gap_accepted: Callable[[float], None] | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ):
        self._clock = clock or SystemClock()
        self._anchor = anchor  # the last moment trusted: for another boot
        self._reference: Timestamp | None = None  # the first moment trusted in this boot
        self._gap_accepted = gap_accepted
        self._record = record_anchor
        self._monotonic = monotonic
        self._recorded_at = monotonic()
        self._lock = threading.Lock()
        self._status = ClockStatus(UNSYNCHRONISED)

    def now(self) -> Timestamp:
        """The time now (see :class:`~hw.clock.Timestamp`), with ``clock_synced`` True only when
        the kernel says so and it agrees with the anchor, which then moves to it."""
        stamp = self._clock.now()
        if not stamp.clock_synced:
            self._set(ClockStatus(UNSYNCHRONISED, "", iso_utc(stamp.wall), self._anchor_iso()))
            return stamp
        if self._reference is None and self._anchor is not None and self._anchor.boot_id == stamp.boot_id:
            self._reference = self._anchor  # the appliance restarted within this boot
        against = self._reference or self._anchor
        problem = disagreement(stamp, against) if against is not None else None
        if problem is None:
            if self._reference is None:  # the first trusted moment of this boot
                gap = (stamp.wall - self._anchor.wall).total_seconds() if self._anchor else 0.0
                if gap > TOLERANCE_S and self._gap_accepted is not None:
                    self._gap_accepted(gap)
                self._reference = stamp
            self._anchor = stamp
            self._set(ClockStatus(TRUSTED, "", iso_utc(stamp.wall), iso_utc(stamp.wall)))
            return stamp
        self._set(
            ClockStatus(
                DISTRUSTED,
                f"the clock says {_minutes(stamp.wall)} UTC, but {problem} "
                f"({_minutes(against.wall)} UTC): deleting photos by age is paused and new "
                "photos are marked as of doubtful time. If the clock is wrong, fix its source (the NTP "
                "server, the real-time clock); this clears by itself once it agrees. If it is right, stop "
                "the appliance and run: appliance clock --trust",
                iso_utc(stamp.wall),
                self._anchor_iso(),
            )
        )
        return replace(stamp, clock_synced=False)

    def tick(self) -> None:
        """Read the clock (so that a jump is noticed between captures) and, every
        :data:`ANCHOR_INTERVAL_S` while it is trusted, record the anchor.  For the scheduler."""
        stamp = self.now()
        due = self._monotonic() - self._recorded_at >= ANCHOR_INTERVAL_S
        if stamp.clock_synced and self._record is not None and due:
            self._record(stamp)
            self._recorded_at = self._monotonic()

    @property
    def trusted(self) -> bool:
        """Whether the clock was trusted when last read."""
        return self.status().state == TRUSTED

    def status(self) -> ClockStatus:
        """The state when the clock was last read (a frozen value; safe from any thread)."""
        with self._lock:
            return self._status

    def _set(self, status: ClockStatus) -> None:
        with self._lock:
            self._status = status

    def _anchor_iso(self) -> str | None:
        return iso_utc(self._anchor.wall) if self._anchor is not None else None


def iso_utc(moment: datetime.datetime) -> str:
    """``moment`` (aware) in ISO 8601 in UTC, to the second."""
    return moment.astimezone(datetime.UTC).isoformat(timespec="seconds")


def _minutes(moment: datetime.datetime) -> str:
    return moment.astimezone(datetime.UTC).strftime("%Y-%m-%d %H:%M")
