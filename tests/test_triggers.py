"""Trigger rules on gpiozero's own MockFactory pins: bounce, cooldown, rate limit, hold, active
windows across midnight, timelapse; and the gate's guarantee, as a property."""

import datetime
import queue
import threading
import time

import pytest
from gpiozero.pins.mock import MockFactory
from hypothesis import given
from hypothesis import strategies as st

from hw.triggers import (
    ActiveWindows,
    GateSettings,
    GateStatus,
    SimulatedTriggerSource,
    Timelapse,
    TimelapseSettings,
    TriggerGate,
    Triggers,
)


@pytest.fixture
def factory():
    factory = MockFactory()
    yield factory
    factory.close()


def drain(events, timeout_s=0.3):
    got = []
    deadline = time.monotonic() + timeout_s
    while (left := deadline - time.monotonic()) > 0:
        try:
            got.append(events.get(timeout=left))
        except queue.Empty:
            break
    return got


def press(pin, hold_s=0.01):
    pin.drive_low()
    time.sleep(hold_s)
    pin.drive_high()


def test_cooldown_holds_back_the_same_source_but_not_another():
    gate = TriggerGate(GateSettings(cooldown_s=2, max_captures_per_minute=0))
    assert gate.admit("motion", now=100.0)
    assert not gate.admit("motion", now=101.9)
    assert gate.admit("button", now=101.9)
    assert gate.admit("motion", now=102.0)
    assert gate.status() == GateStatus(suppressed={"motion": 1}, suppressed_total=1)


def test_rate_limit_counts_bursts_whole_and_eases_after_a_minute(caplog):
    gate = TriggerGate(GateSettings(cooldown_s=0, max_captures_per_minute=10, captures_per_event=3))
    admitted = [gate.admit("motion", now=t) for t in (0, 1, 2, 3, 4)]
    assert admitted == [True, True, True, False, False]  # 3 bursts of 3 = 9; a fourth would be 12
    assert caplog.text.count("rate limit reached") == 1  # once per episode, not per trigger
    assert gate.admit("motion", now=60.0)  # the first burst left the window
    assert gate.status().suppressed_total == 2


def test_manual_shots_pass_whatever_the_gate_and_timelapse_skips_the_cooldown():
    gate = TriggerGate(GateSettings(cooldown_s=100, max_captures_per_minute=1))
    assert gate.admit("timelapse", now=0)
    assert gate.admit("timelapse", now=70)  # a minute later: no cooldown for timelapse
    assert gate.admit("manual", now=70) and gate.admit("manual", now=70)


def test_a_burst_larger_than_the_rate_limit_is_refused():
    with pytest.raises(ValueError, match="burst of 5 exceeds 4"):
        TriggerGate(GateSettings(cooldown_s=0, max_captures_per_minute=4, captures_per_event=5))


@given(
    cooldown_s=st.floats(0, 30),
    max_per_minute=st.integers(1, 20),
    burst=st.integers(1, 5),
    arrivals=st.lists(st.tuples(st.sampled_from(["button", "motion"]), st.floats(0, 50)), max_size=200),
)
def test_no_window_of_60_s_admits_more_captures_than_the_limit(cooldown_s, max_per_minute, burst, arrivals):
    if burst > max_per_minute:
        return
    gate = TriggerGate(GateSettings(cooldown_s, max_per_minute, burst))
    now, admitted = 0.0, []
    for source, gap in arrivals:
        now += gap
        if gate.admit(source, now=now):
            admitted.append((source, now))
    times = [t for _, t in admitted]
    for i, start in enumerate(times):
        assert sum(1 for t in times[i:] if t - start < 60) * burst <= max_per_minute
    for source in ("button", "motion"):
        mine = [t for s, t in admitted if s == source]
        assert all(b - a >= cooldown_s for a, b in zip(mine, mine[1:], strict=False))
    assert len(admitted) + gate.status().suppressed_total == len(arrivals)


def test_the_gate_is_safe_from_many_threads():
    gate = TriggerGate(GateSettings(cooldown_s=0, max_captures_per_minute=100))
    results = []
    barrier = threading.Barrier(8)

    def hammer():
        barrier.wait()
        results.extend(gate.admit(f"s{i % 3}") for i in range(50))

    threads = [threading.Thread(target=hammer) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results.count(True) == 100 and gate.status().suppressed_total == 300


def test_a_flapping_button_on_real_pins_captures_once_per_cooldown(factory):
    # bounce_time is the pin driver's (lgpio's) job and MockPin does not emulate it
    # (test_bounce_time_reaches_the_pin checks that it reaches the pin); the cooldown holds
    # whatever the driver does.
    events = queue.Queue()
    gate = TriggerGate(GateSettings(cooldown_s=0.5, max_captures_per_minute=0))
    triggers = Triggers(events, button_pin="GPIO17", motion_pin=None, bounce_time_s=None, gate=gate,
                        pin_factory=factory)  # fmt: skip
    pin = factory.pin("GPIO17")
    for _ in range(20):  # 20 presses in about 0.2 s
        press(pin)
    assert len(drain(events)) == 1
    assert gate.status().suppressed["button"] == 19
    time.sleep(0.5)
    press(pin)
    assert [e.source for e in drain(events)] == ["button"]
    triggers.close()


def test_holding_the_button_calls_the_hold_action_once_after_hold_time(factory):
    events, held = queue.Queue(), threading.Event()
    triggers = Triggers(events, button_pin="GPIO17", motion_pin=None, bounce_time_s=None, hold_time_s=0.2,
                        when_held=held.set, pin_factory=factory)  # fmt: skip
    pin = factory.pin("GPIO17")
    press(pin, hold_s=0.05)  # a short press: a capture, no hold
    assert not held.wait(0.3)
    pin.drive_low()
    started = time.monotonic()
    assert held.wait(2)
    assert time.monotonic() - started >= 0.15
    pin.drive_high()
    assert [e.source for e in drain(events)] == ["button", "button"]
    triggers.close()


@pytest.mark.parametrize(
    ("clock", "inside"),
    [("18:59", False), ("19:00", True), ("23:59", True), ("00:00", True), ("05:59", True), ("06:00", False),
     ("12:00", False)],
)  # fmt: skip
def test_a_window_across_midnight(clock, inside):
    windows = ActiveWindows(["19:00-06:00"])
    assert windows.contains(datetime.time.fromisoformat(clock)) is inside


def test_several_windows_and_no_windows():
    windows = ActiveWindows(["05:30-07:00", "20:00-22:00"])
    assert windows.contains(datetime.time(6)) and windows.contains(datetime.time(21))
    assert not windows.contains(datetime.time(12))
    assert ActiveWindows([]).contains(datetime.time(12))


@pytest.mark.parametrize("bad", ["19:00", "7:00-8:00", "24:00-01:00", "19:00-19:00", "dusk-dawn"])
def test_malformed_windows_are_refused_by_name(bad):
    with pytest.raises(ValueError, match=bad):
        ActiveWindows([bad])


def test_timelapse_captures_on_its_interval_only_inside_the_window():
    events = queue.Queue()
    timelapse = Timelapse(events, TimelapseSettings(60, ("19:00-06:00",)))
    night, noon = datetime.time(23), datetime.time(12)
    for t in range(0, 300, 1):  # five minutes of ticks, a second apart
        timelapse.tick(now=float(t), local_time=night if t < 200 else noon)
    times = [e.monotonic_s for e in drain(events, 0.1)]
    assert times == [0.0, 60.0, 120.0, 180.0]


def test_timelapse_goes_through_the_rate_limit():
    events = queue.Queue()
    gate = TriggerGate(GateSettings(cooldown_s=0, max_captures_per_minute=2))
    timelapse = Timelapse(events, TimelapseSettings(10), gate=gate)
    for t in range(0, 60, 10):
        timelapse.tick(now=float(t), local_time=datetime.time(12))
    assert len(drain(events, 0.1)) == 2
    assert gate.status().suppressed == {"timelapse": 4}


def test_a_shorter_interval_from_a_reload_applies_to_the_capture_already_waiting():
    events = queue.Queue()
    timelapse = Timelapse(events, TimelapseSettings(3600))
    now = time.monotonic()
    timelapse.tick(now=now, local_time=datetime.time(12))
    timelapse.configure(TimelapseSettings(60))
    timelapse.tick(now=now + 61, local_time=datetime.time(12))
    assert len(drain(events, 0.1)) == 2


def make_triggers(factory, events, **kwargs):
    options = {"button_pin": "GPIO17", "motion_pin": "GPIO4", "bounce_time_s": None}
    return Triggers(events, pin_factory=factory, **(options | kwargs))


def test_button_press_puts_one_event_and_never_captures(factory):
    events = queue.Queue()
    triggers = make_triggers(factory, events)
    before = time.monotonic()
    factory.pin("GPIO17").drive_low()
    factory.pin("GPIO17").drive_high()
    event = events.get(timeout=1)
    assert event.source == "button" and before <= event.monotonic_s <= time.monotonic()
    assert events.empty()
    triggers.close()


def test_pir_pulse_is_seen_through_gpiozero_sampling(factory):
    events = queue.Queue()
    triggers = make_triggers(factory, events)
    # gpiozero takes its first sample as the initial state, not as an edge
    assert triggers.motion.wait_for_no_motion(timeout=1)
    factory.pin("GPIO4").drive_high()
    assert events.get(timeout=2).source == "motion"
    factory.pin("GPIO4").drive_low()
    triggers.close()


def test_bounce_time_reaches_the_pin(factory):
    triggers = make_triggers(factory, queue.Queue(), bounce_time_s=0.05)
    assert triggers.button.pin.bounce == 0.05
    triggers.close()


def test_unfitted_sensor_is_not_built(factory):
    triggers = make_triggers(factory, queue.Queue(), motion_pin=None)
    assert triggers.motion is None and triggers.button is not None
    triggers.close()


def test_simulated_source_drives_the_real_callbacks_in_turn(factory):
    events = queue.Queue()
    triggers = make_triggers(factory, events)
    source = SimulatedTriggerSource(triggers, interval_s=0.05)
    source.start()
    sources = [events.get(timeout=2).source for _ in range(4)]
    source.stop()
    triggers.close()
    assert sources == ["button", "motion", "button", "motion"]
