"""Probes of the machine's health for the status page: CPU temperature, firmware throttling, clock
synchronisation and free disk space.

Every probe returns None where its value is not available (off a Pi, a missing file, a failed
command) and never raises; the reason is logged at DEBUG.  :class:`Probes` gathers them into one
:class:`SystemStatus`, cached so that web requests cannot run ``vcgencmd`` more than once per
``ttl_s`` seconds.
"""

import logging
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from hw import clock

log = logging.getLogger(__name__)

THERMAL_ZONE = Path("/sys/class/thermal/thermal_zone0/temp")
THROTTLED_COMMAND = ("vcgencmd", "get_throttled")

# Raspberry Pi documentation, "Frequency management and thermal control"
# (https://www.raspberrypi.com/documentation/computers/raspberry-pi.html#frequency-management-and-thermal-control):
# on all models the firmware progressively throttles the Arm cores between 80 °C and 85 °C, and
# throttles the GPU as well at 85 °C.  (The separate "soft limit" of the 3B+ is 60 °C by default.)
HOT_C = 80.0


def cpu_temperature_c(path: Path = THERMAL_ZONE) -> float | None:
    """The SoC temperature in degrees Celsius, read from a Linux thermal zone.

    ``path``: a sysfs ``temp`` file, which holds an integer in millidegrees Celsius (``"48312\\n"``
    is 48.312 °C).  Returns None when the file is missing, unreadable or does not hold an integer.
    """
    try:
        return int(path.read_text().strip()) / 1000
    except (OSError, ValueError) as exc:
        log.debug("no CPU temperature from %s: %s", path, exc)
        return None


_THROTTLED_RE = re.compile(r"throttled=(0x[0-9a-fA-F]+)")


@dataclass(frozen=True)
class Throttled:
    """The firmware's throttling state, as reported by ``vcgencmd get_throttled``.

    ``raw``: the whole bit field.  Each flag is one bit of it; the ``_now`` flags describe the
    present moment, the ``_since_boot`` flags whether it has happened at any time since boot.  Bit
    meanings from the Raspberry Pi documentation, "vcgencmd get_throttled"
    (https://www.raspberrypi.com/documentation/computers/os.html#get_throttled): 0 under-voltage
    detected, 1 Arm frequency capped, 2 currently throttled, 3 soft temperature limit active, and
    16-19 the same four "has occurred".
    """

    raw: int
    under_voltage_now: bool
    frequency_capped_now: bool
    throttled_now: bool
    soft_temperature_limit_now: bool
    under_voltage_since_boot: bool
    frequency_capped_since_boot: bool
    throttled_since_boot: bool
    soft_temperature_limit_since_boot: bool

    @classmethod
    def parse(cls, text: str) -> "Throttled":
        """Parse the output of ``vcgencmd get_throttled``, e.g. ``"throttled=0x50005\\n"``.

        Raises ValueError for anything else.
        """
        match = _THROTTLED_RE.fullmatch(text.strip())
        if match is None:
            raise ValueError(f"not vcgencmd get_throttled output: {text!r}")
        raw = int(match[1], 16)
        return cls(
            raw=raw,
            under_voltage_now=bool(raw & 1 << 0),
            frequency_capped_now=bool(raw & 1 << 1),
            throttled_now=bool(raw & 1 << 2),
            soft_temperature_limit_now=bool(raw & 1 << 3),
            under_voltage_since_boot=bool(raw & 1 << 16),
            frequency_capped_since_boot=bool(raw & 1 << 17),
            throttled_since_boot=bool(raw & 1 << 18),
            soft_temperature_limit_since_boot=bool(raw & 1 << 19),
        )

    def problems(self) -> list[str]:
        """Short reasons for the conditions present now, in bit order (empty when all is well)."""
        reasons = [
            (self.under_voltage_now, "under-voltage"),
            (self.frequency_capped_now, "frequency capped"),
            (self.throttled_now, "throttled"),
            (self.soft_temperature_limit_now, "soft temperature limit"),
        ]
        return [reason for present, reason in reasons if present]


def throttled(command: Sequence[str] = THROTTLED_COMMAND, timeout_s: float = 2.0) -> Throttled | None:
    """Run ``command`` (no shell) and parse its output with :meth:`Throttled.parse`.

    ``timeout_s``: seconds to wait before the command is killed.  Returns None when the command is
    missing (off a Pi), cannot be run, exits non-zero, times out or prints something unparsable.
    """
    try:
        result = subprocess.run(list(command), capture_output=True, text=True, timeout=timeout_s)
    except (OSError, subprocess.TimeoutExpired) as exc:
        log.debug("no throttling state from %s: %s", command, exc)
        return None
    if result.returncode != 0:
        log.debug("no throttling state: %s exited %d: %s", command, result.returncode, result.stderr)
        return None
    try:
        return Throttled.parse(result.stdout)
    except ValueError as exc:
        log.debug("no throttling state from %s: %s", command, exc)
        return None


def clock_synced() -> bool | None:
    """:func:`hw.clock.clock_synced` (False also where the kernel cannot say), or None when asking
    it raised OSError."""
    try:
        return clock.clock_synced()
    except OSError as exc:
        log.debug("clock synchronisation unknown: %s", exc)
        return None


class DiskUsage(NamedTuple):
    """A file system's size, in bytes: the fields of :func:`shutil.disk_usage`'s result."""

    total: int
    used: int
    free: int


def disk_usage(path: Path) -> DiskUsage | None:
    """:func:`shutil.disk_usage` of the file system holding ``path`` (total, used, free, in bytes),
    or None when it cannot be had (e.g. ``path`` does not exist)."""
    try:
        return DiskUsage(*shutil.disk_usage(path))
    except OSError as exc:
        log.debug("no disk usage for %s: %s", path, exc)
        return None


@dataclass(frozen=True)
class SystemStatus:
    """What :meth:`Probes.status` tells: ``cpu_temperature_c`` (degrees Celsius), ``throttled``
    (the firmware's :class:`Throttled` state), ``problems`` (short reasons: throttling now, and a
    CPU at or above :data:`HOT_C`; empty when all is well) and ``clock_synced`` (see
    :func:`clock_synced`); None where a value is not available.  Disk usage is not here: the status
    reads it fresh, with :func:`disk_usage`."""

    cpu_temperature_c: float | None
    throttled: Throttled | None
    problems: tuple[str, ...]
    clock_synced: bool | None


class Probes:
    """All the probes in one :class:`SystemStatus`, cached for ``ttl_s`` seconds and safe to call
    from many threads.

    ``data_dir``: a directory on the file system whose space is reported.  ``thermal_path`` and
    ``throttled_command``: see :func:`cpu_temperature_c` and :func:`throttled`.  ``monotonic``: the
    clock the cache is timed by, in seconds.
    """

    def __init__(
        self,
        data_dir: Path,
        *,
        ttl_s: float = 5.0,
        thermal_path: Path = THERMAL_ZONE,
        throttled_command: Sequence[str] = THROTTLED_COMMAND,
        monotonic: Callable[[], float] = time.monotonic,
    ):
        self.data_dir = data_dir
        self.ttl_s = ttl_s
        self.thermal_path = thermal_path
        self.throttled_command = throttled_command
        self._monotonic = monotonic
        self._lock = threading.Lock()
        self._status: SystemStatus | None = None
        self._taken_at = 0.0

    def status(self) -> SystemStatus:
        """The probes' values, at most ``ttl_s`` seconds old (a frozen value: safe to share).

        A caller arriving while the probes run waits for them (up to the command's 2 s timeout)
        rather than running them again.
        """
        with self._lock:
            now = self._monotonic()
            if self._status is None or now - self._taken_at >= self.ttl_s:
                self._status = self._probe()
                self._taken_at = now
            return self._status

    def _probe(self) -> SystemStatus:
        temperature_c = cpu_temperature_c(self.thermal_path)
        state = throttled(self.throttled_command)
        problems = state.problems() if state else []
        if temperature_c is not None and temperature_c >= HOT_C:
            problems.append(f"CPU temperature {temperature_c:.0f} °C")
        return SystemStatus(temperature_c, state, tuple(problems), clock_synced())
