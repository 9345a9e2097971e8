"""GPIO triggers: a push button and a PIR motion sensor, built on gpiozero.

Callbacks run on gpiozero's threads, so they only put a :class:`TriggerEvent` on the main loop's
queue; capturing happens on the main loop.  In simulation the same gpiozero devices are built on
gpiozero's own :class:`~gpiozero.pins.mock.MockFactory`, and :class:`SimulatedTriggerSource`
drives their mock pins, so the real callback path runs.
"""

import itertools
import queue
import threading
import time
from dataclasses import dataclass

from gpiozero import Button, MotionSensor
from gpiozero.pins.mock import MockFactory

# How long the simulated PIR holds its output high.  gpiozero's MotionSensor samples its pin at
# 10 Hz by default, so a pulse must last a few samples to be seen (a real HC-SR501 holds >= 2.5 s).
SIMULATED_PIR_PULSE_S = 0.3
SIMULATED_PRESS_S = 0.05


@dataclass(frozen=True)
class TriggerEvent:
    """A reason to capture: ``source`` is ``button``, ``motion``, ``timelapse`` or ``manual``;
    ``monotonic_s`` is :func:`time.monotonic` when it happened (seconds, for latency)."""

    source: str
    monotonic_s: float


def make_pin_factory(simulate: bool):
    """Return gpiozero's ``MockFactory`` in simulation, else None (gpiozero's default factory)."""
    return MockFactory() if simulate else None


class Triggers:
    """The button and the PIR sensor, putting :class:`TriggerEvent` objects on ``events``.

    ``button_pin`` and ``motion_pin`` are BCM names such as ``"GPIO17"``, or None when not fitted.
    The button is wired between the pin and ground (internal pull-up; pressed = low) and debounced
    by gpiozero with ``bounce_time_s`` seconds.  The PIR output drives the pin high on motion
    (pull-down); gpiozero's ``MotionSensor`` has no ``bounce_time`` and samples the pin at 10 Hz
    instead, which is what tames a PIR's output.

    Raises gpiozero's ``PinInvalidPin`` or ``GPIOPinInUse`` for a pin that cannot be used.
    """

    def __init__(
        self,
        events: "queue.Queue[TriggerEvent]",
        *,
        button_pin: str | None,
        motion_pin: str | None,
        bounce_time_s: float | None,
        pin_factory=None,
    ):
        self._events = events
        self.button = self.motion = None
        try:
            if button_pin:
                self.button = Button(button_pin, bounce_time=bounce_time_s, pin_factory=pin_factory)
                self.button.when_pressed = lambda: self._put("button")
            if motion_pin:
                self.motion = MotionSensor(motion_pin, pin_factory=pin_factory)
                self.motion.when_motion = lambda: self._put("motion")
        except BaseException:
            self.close()
            raise

    def _put(self, source: str) -> None:
        self._events.put(TriggerEvent(source, time.monotonic()))

    def close(self) -> None:
        for device in (self.motion, self.button):
            if device is not None:
                device.close()


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
