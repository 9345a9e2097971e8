"""Is the system clock synchronised?  A Raspberry Pi has no real-time clock, so until NTP (or GPS)
has set it, the wall clock may be off by years; every capture records whether it was trustworthy.
"""

import ctypes

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
