"""What time is it, and how far can that be trusted?

A Raspberry Pi has no real-time clock: until NTP (or GPS) has set it, the wall clock may be off by
years, and it jumps when it is set.  So every capture records, beside the wall clock, whether the
clock was synchronised, the kernel's boot id and the time since boot; within one boot, the time
since boot orders and spaces captures exactly whatever the wall clock did.
"""

import ctypes
import datetime
import time
from dataclasses import dataclass
from pathlib import Path

BOOT_ID_PATH = Path("/proc/sys/kernel/random/boot_id")

# struct timex from <sys/timex.h> (Linux, glibc): mode is an unsigned int followed by longs; status
# is the int after modes, offset, freq, maxerror, esterror.  We only read ``status`` and the
# return value, so the rest is padding big enough for the whole struct (it is < 256 bytes).
_STA_UNSYNC = 0x0040  # <linux/timex.h>: clock not synchronised
_TIME_ERROR = 5  # adjtimex() return value: clock not synchronised


class _Timex(ctypes.Structure):
    _fields_ = [
        ("modes", ctypes.c_uint),
        ("offset", ctypes.c_long),
        ("freq", ctypes.c_long),
        ("maxerror", ctypes.c_long),
        ("esterror", ctypes.c_long),
        ("status", ctypes.c_int),
        ("_rest", ctypes.c_byte * 256),
    ]


def clock_synced() -> bool:
    """Return True when the kernel says the system clock is synchronised (NTP, chrony, timesyncd).

    Uses ``adjtimex(2)`` in read-only mode (``modes = 0``): the clock is synchronised when the call
    does not return ``TIME_ERROR`` and ``STA_UNSYNC`` is clear.  Returns False when the call is not
    available (not Linux), since an unknown clock must not be trusted.  Costs a few microseconds.
    """
    libc = ctypes.CDLL(None)  # the C library this Python is linked against
    if not hasattr(libc, "adjtimex"):
        return False
    timex = _Timex()
    state = libc.adjtimex(ctypes.byref(timex))
    return state not in (-1, _TIME_ERROR) and not timex.status & _STA_UNSYNC


def boot_id() -> str:
    """The kernel's random id of this boot (``/proc/sys/kernel/random/boot_id``, 32 hex digits
    without dashes, as journald shows it), or ``""`` where there is none (not Linux)."""
    try:
        return BOOT_ID_PATH.read_text().strip().replace("-", "")
    except OSError:
        return ""


@dataclass(frozen=True)
class Timestamp:
    """When a capture was taken, as honestly as the machine knows it.

    ``wall``: the wall clock, an aware datetime (UTC); ``clock_synced``: whether the kernel said the
    wall clock was synchronised; ``boot_id``: :func:`boot_id`; ``since_boot_s``: seconds since boot
    (``CLOCK_BOOTTIME``, which keeps counting through suspend and never jumps).
    """

    wall: datetime.datetime
    clock_synced: bool
    boot_id: str
    since_boot_s: float


class SystemClock:
    """The machine's clocks.  :meth:`now` costs a few microseconds; the boot id is read once."""

    def __init__(self):
        self._boot_id: str | None = None

    def now(self) -> Timestamp:
        if self._boot_id is None:
            self._boot_id = boot_id()
        return Timestamp(
            wall=datetime.datetime.now(datetime.UTC),
            clock_synced=clock_synced(),
            boot_id=self._boot_id,
            since_boot_s=time.clock_gettime(time.CLOCK_BOOTTIME),
        )


class ManualClock:
    """A clock that tells the time it is set to, for tests and benchmarks (like gpiozero's
    ``MockFactory``, a fake that ships with the real thing).

    ``wall``: the aware datetime :meth:`now` starts from; each :meth:`now` then moves both clocks
    on by ``step_s`` seconds.  Set :attr:`wall` (a jump) and :attr:`clock_synced` at any time.
    """

    def __init__(
        self,
        wall: datetime.datetime = datetime.datetime(2026, 6, 1, 21, 0, tzinfo=datetime.UTC),
        *,
        clock_synced: bool = True,
        boot_id: str = "0" * 32,
        step_s: float = 0.5,
    ):
        self.wall = wall
        self.clock_synced = clock_synced
        self.boot_id = boot_id
        self.since_boot_s = 60.0
        self.step_s = step_s

    def now(self) -> Timestamp:
        stamp = Timestamp(self.wall, self.clock_synced, self.boot_id, self.since_boot_s)
        self.wall += datetime.timedelta(seconds=self.step_s)
        self.since_boot_s += self.step_s
        return stamp
