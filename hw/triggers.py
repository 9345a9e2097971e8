"""What makes the appliance capture: a push button and a PIR motion sensor (gpiozero), and a
timelapse within active windows; and what keeps a flapping sensor from filling the card.

Callbacks run on gpiozero's threads, so they only put a :class:`TriggerEvent` on the main loop's
queue; capturing happens on the main loop.  Every event first passes a :class:`TriggerGate`
(per-source cooldown, global rate limit); suppressed ones are counted, not queued.  In simulation
the same gpiozero devices are built on gpiozero's own :class:`~gpiozero.pins.mock.MockFactory`, and
:class:`SimulatedTriggerSource` drives their mock pins, so the real callback path runs.
"""

import collections
import datetime
import itertools
import logging
import queue
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from gpiozero import Button, MotionSensor
from gpiozero.pins.mock import MockFactory

# How long the simulated PIR holds its output high.  gpiozero's MotionSensor samples its pin at
# 10 Hz by default, so a pulse must last a few samples to be seen (a real HC-SR501 holds >= 2.5 s).
SIMULATED_PIR_PULSE_S = 0.3
SIMULATED_PRESS_S = 0.05
# Every trigger source, and those a person asked for directly: never held back by the gate.
SOURCES = ("button", "motion", "timelapse", "manual")
UNGATED = ("manual",)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TriggerEvent:
    """A reason to capture: ``source`` is ``button``, ``motion``, ``timelapse`` or ``manual``;
    ``monotonic_s`` is :func:`time.monotonic` when it happened (seconds, for latency)."""

    source: str
    monotonic_s: float


def make_pin_factory(simulate: bool):
    """Return gpiozero's ``MockFactory`` in simulation, else None (gpiozero's default factory)."""
    return MockFactory() if simulate else None


@dataclass(frozen=True)
class GateStatus:
    """What :meth:`TriggerGate.status` tells: the trigger events counted but not captured
    (cooldown and rate limit) since start-up, ``suppressed`` by source (``{"motion": 3}``; a new
    dict each time) and ``suppressed_total``."""

    suppressed: dict[str, int]
    suppressed_total: int


@dataclass(frozen=True)
class GateSettings:
    """The rules of a :class:`TriggerGate`.

    ``cooldown_s``: seconds after an admitted event during which the same source is held back
    (>= 0); ``max_captures_per_minute``: captures admitted in any 60 s at most (0: no limit);
    ``captures_per_event``: captures each event makes (its burst, >= 1).

    Raises ``ValueError`` when a burst alone exceeds the rate limit (nothing could ever pass).
    """

    cooldown_s: float = 0.0
    max_captures_per_minute: int = 0
    captures_per_event: int = 1

    def __post_init__(self):
        if self.max_captures_per_minute and self.captures_per_event > self.max_captures_per_minute:
            raise ValueError(
                f"a burst of {self.captures_per_event} exceeds {self.max_captures_per_minute} "
                "captures per minute"
            )

    @classmethod
    def from_config(cls, config) -> "GateSettings":
        """From the appliance's settings ``trigger_cooldown_s``, ``max_captures_per_minute`` and
        ``burst_count`` (any object with those attributes)."""
        return cls(config.trigger_cooldown_s, config.max_captures_per_minute, config.burst_count)


class TriggerGate:
    """Decides which trigger events become captures, so that a flapping sensor cannot fill the card.

    An event from ``source`` is admitted unless (a) the same source was admitted less than
    ``settings.cooldown_s`` seconds ago (timelapse is exempt: its interval spaces it), or (b)
    admitting it would make more than ``settings.max_captures_per_minute`` captures in the last
    60 s, each event counting ``captures_per_event`` captures (its burst); 0 turns the rate limit
    off (:class:`GateSettings`).  ``manual`` events (a
    person asked) are always admitted and not counted.  Times are ``time.monotonic()`` seconds, so a
    wall-clock jump changes nothing.  Thread-safe: gpiozero's threads and the main loop call
    :meth:`admit` together.
    """

    def __init__(self, settings: "GateSettings"):
        self._lock = threading.Lock()
        self._last: dict[str, float] = {}
        self._admitted: collections.deque[float] = collections.deque()
        self._suppressed: collections.Counter[str] = collections.Counter()
        self._limiting = False
        self.configure(settings)

    def configure(self, settings: "GateSettings") -> None:
        """Change the rules (a config reload); what was admitted and counted so far is kept."""
        with self._lock:
            self.settings = settings
            self._max_events = settings.max_captures_per_minute // settings.captures_per_event

    def admit(self, source: str, now: float | None = None) -> bool:
        """Whether an event from ``source`` at ``now`` (monotonic s, default: now) may capture;
        a refused one is counted in :meth:`status`."""
        if source in UNGATED:
            return True
        now = time.monotonic() if now is None else now
        with self._lock:
            last = self._last.get(source)
            if source != "timelapse" and last is not None and now - last < self.settings.cooldown_s:
                self._suppressed[source] += 1
                return False
            while self._admitted and now - self._admitted[0] >= 60:
                self._admitted.popleft()
            if self._max_events and len(self._admitted) >= self._max_events:
                self._suppressed[source] += 1
                if not self._limiting:
                    log.warning(
                        "rate limit reached (%d events in the last minute); triggers are counted, "
                        "not captured, until it eases",
                        len(self._admitted),
                    )
                    self._limiting = True
                return False
            self._limiting = False
            self._last[source] = now
            self._admitted.append(now)
            return True

    def status(self) -> GateStatus:
        """The events suppressed since start-up (see :class:`GateStatus`)."""
        with self._lock:
            return GateStatus(dict(self._suppressed), sum(self._suppressed.values()))


class Triggers:
    """The button and the PIR sensor, putting :class:`TriggerEvent` objects on ``events``.

    The button is wired between its pin and ground (internal pull-up; pressed = low).  The PIR
    output drives its pin high on motion (pull-down); gpiozero's ``MotionSensor`` has no
    ``bounce_time`` and samples the pin at 10 Hz instead, which is what tames a PIR's output.

    :param events: the main loop's queue.
    :param button_pin: the button's BCM name such as ``"GPIO17"``, or None when not fitted.
    :param motion_pin: the PIR sensor's, the same way.
    :param bounce_time_s: the button's debounce time in seconds (gpiozero's ``bounce_time``), or
        None.
    :param gate: the :class:`TriggerGate` each event passes first (None: all pass).
    :param hold_time_s: seconds the button must be held before ``when_held`` is called.
    :param when_held: called once the button has been held (on a gpiozero thread: it must only
        hand work over); the press itself has already triggered a capture.
    :param pin_factory: gpiozero's pin factory (``MockFactory`` in simulation; None: the default).

    Raises gpiozero's ``PinInvalidPin`` or ``GPIOPinInUse`` for a pin that cannot be used.
    """

    def __init__(
        self,
        events: "queue.Queue[TriggerEvent]",
        *,
        button_pin: str | None,
        motion_pin: str | None,
        bounce_time_s: float | None,
        gate: TriggerGate | None = None,
        hold_time_s: float = 3.0,
        when_held: Callable[[], None] | None = None,
        pin_factory=None,
    ):
        self._events = events
        self._gate = gate
        self.button = self.motion = None
        try:
            if button_pin:
                self.button = Button(
                    button_pin, bounce_time=bounce_time_s, hold_time=hold_time_s, pin_factory=pin_factory
                )
                self.button.when_pressed = lambda: self._put("button")
                if when_held is not None:
                    self.button.when_held = when_held
            if motion_pin:
                self.motion = MotionSensor(motion_pin, pin_factory=pin_factory)
                self.motion.when_motion = lambda: self._put("motion")
        except BaseException:
            self.close()
            raise

    def _put(self, source: str) -> None:
        now = time.monotonic()
        if self._gate is None or self._gate.admit(source, now):
            self._events.put(TriggerEvent(source, now))

    def close(self) -> None:
        for device in (self.motion, self.button):
            if device is not None:
                device.close()


_WINDOW = re.compile(r"([01][0-9]|2[0-3]):([0-5][0-9])-([01][0-9]|2[0-3]):([0-5][0-9])")


class ActiveWindows:
    """Times of day, in local time, when timelapse captures and the UV light are on.

    ``windows``: strings ``"HH:MM-HH:MM"`` (24-hour clock, start included, end excluded); a window
    whose end is earlier than its start spans midnight (``"19:00-06:00"``).  No windows: always
    active.  Raises ``ValueError`` naming a malformed window, or one that starts where it ends.
    """

    def __init__(self, windows=()):
        self._spans = []
        for window in windows:
            match = _WINDOW.fullmatch(window)
            if not match:
                raise ValueError(f'{window!r} is not a window "HH:MM-HH:MM" such as "19:00-06:00"')
            h1, m1, h2, m2 = (int(g) for g in match.groups())
            start, end = datetime.time(h1, m1), datetime.time(h2, m2)
            if start == end:
                raise ValueError(f"{window!r} starts where it ends")
            self._spans.append((start, end))

    def contains(self, moment: datetime.time) -> bool:
        """Whether ``moment`` (a local time of day) falls in a window."""
        if not self._spans:
            return True
        return any(
            start <= moment < end if start < end else moment >= start or moment < end
            for start, end in self._spans
        )


@dataclass(frozen=True)
class TimelapseSettings:
    """``interval_s``: seconds between timelapse captures (0: none); ``windows``: when, as
    :class:`ActiveWindows` takes them (none: always).  Raises ``ValueError`` for a bad window."""

    interval_s: float = 0.0
    windows: tuple[str, ...] = ()

    def __post_init__(self):
        ActiveWindows(self.windows)  # a bad window is refused here, not at the first tick

    @classmethod
    def from_config(cls, config) -> "TimelapseSettings":
        """From the settings ``timelapse_interval_s`` and ``active_windows``."""
        return cls(config.timelapse_interval_s, tuple(config.active_windows))


class Timelapse:
    """Puts a ``timelapse`` :class:`TriggerEvent` on ``events`` every ``settings.interval_s``
    seconds (monotonic; 0: never) while the local time is within ``settings.windows``, through
    ``gate``.  :meth:`tick` is called by the main loop's scheduler (at least once a second); ``now``
    and ``local_time`` are for tests.
    """

    def __init__(self, events, settings: TimelapseSettings, *, gate: TriggerGate | None = None):
        self._events = events
        self._gate = gate
        self._due: float | None = None
        self.configure(settings)

    def configure(self, settings: TimelapseSettings) -> None:
        """Change the interval and windows (a config reload): a shorter interval applies to the
        capture already waiting too."""
        self.interval_s, self.windows = settings.interval_s, ActiveWindows(settings.windows)
        if self._due is not None:
            self._due = min(self._due, time.monotonic() + settings.interval_s)

    def tick(self, now: float | None = None, local_time: datetime.time | None = None) -> None:
        if not self.interval_s:
            return
        now = time.monotonic() if now is None else now
        local_time = datetime.datetime.now().time() if local_time is None else local_time
        if not self.windows.contains(local_time):
            self._due = None  # the first capture of the next window comes as it opens
            return
        if self._due is not None and now < self._due:
            return
        self._due = now + self.interval_s
        if self._gate is None or self._gate.admit("timelapse", now):
            self._events.put(TriggerEvent("timelapse", now))


class SimulatedTriggerSource:
    """Presses the button and pulses the PIR pin in turn, every ``interval_s`` seconds.

    Works only on devices built with ``MockFactory`` (their pins have ``drive_high``/``drive_low``).
    Runs on its own daemon thread between :meth:`start` and :meth:`stop`.
    """

    def __init__(self, triggers: Triggers, interval_s: float):
        self._actions = [
            action
            for device, action in (
                (triggers.button, self._press),
                (triggers.motion, self._pulse),
            )
            if device is not None
        ]
        self._triggers = triggers
        self._interval_s = interval_s
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="simulated-triggers", daemon=True)

    def start(self) -> None:
        if self._actions:
            self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        if self._thread.is_alive():
            self._thread.join()

    def _run(self) -> None:
        # Start to start, so the press or pulse itself does not stretch the interval.
        next_at = time.monotonic()
        for action in itertools.cycle(self._actions):
            next_at += self._interval_s
            if self._stopping.wait(max(0.0, next_at - time.monotonic())):
                return
            action()

    def _press(self) -> None:
        pin = self._triggers.button.pin
        pin.drive_low()
        self._stopping.wait(SIMULATED_PRESS_S)
        pin.drive_high()

    def _pulse(self) -> None:
        motion = self._triggers.motion
        # MotionSensor only fires on an edge it has sampled: its first sample sets the initial state
        # silently, and a pulse that starts before it has sampled the previous low is no edge.
        motion.wait_for_no_motion(timeout=1)
        pin = motion.pin
        pin.drive_high()
        self._stopping.wait(SIMULATED_PIR_PULSE_S)
        pin.drive_low()
