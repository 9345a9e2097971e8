import itertools
import logging
import time

import pytest
from gpiozero import DigitalOutputDevice
from gpiozero.exc import GPIOPinInUse, PinInvalidPin
from gpiozero.pins.mock import MockFactory

from hw.lights import Lights, LightsSettings

PRE_DELAY_S = 0.1


@pytest.fixture
def factory():
    factory = MockFactory()
    yield factory
    factory.close()


def make_lights(factory, **kwargs):
    options = {"flash_pin": "GPIO27", "uv_pin": "GPIO22"}
    return Lights(LightsSettings(**(options | kwargs)), pin_factory=factory)


def levels(pin):
    return [record.state for record in pin.states]


def change_times(pin):
    """Seconds from the pin's clear_states() to each recorded change.

    MockPin records each change as seconds since the previous one, so sum them.
    """
    return list(itertools.accumulate(record.timestamp for record in pin.states))


def test_lights_are_off_from_construction_active_high(factory):
    lights = make_lights(factory)
    for name in ("GPIO27", "GPIO22"):
        assert factory.pin(name).state is False
        assert levels(factory.pin(name)) == [False]  # never went high
    lights.close()


def test_lights_are_off_from_construction_active_low(factory):
    lights = make_lights(factory, flash_active_high=False, uv_active_high=False)
    for name in ("GPIO27", "GPIO22"):
        assert factory.pin(name).state is True
        # straight from the floating input to driven high, never driven low
        assert levels(factory.pin(name)) == [False, True]
    assert not lights.uv_on
    lights.close()


def test_flash_is_on_for_the_pre_delay_before_the_body_and_off_right_after(factory):
    lights = make_lights(factory, flash_pre_delay_s=PRE_DELAY_S)
    pin = factory.pin("GPIO27")
    pin.clear_states()
    # taken just after clear_states(), so the change times below are late by microseconds, if at
    # all: the pre-delay check errs on the strict side
    cleared_at = time.monotonic()
    with lights.flash():
        body_at = time.monotonic()
        assert pin.state is True
    done_at = time.monotonic()
    assert pin.state is False
    assert levels(pin) == [False, True, False]
    _, on_at, off_at = (cleared_at + t for t in change_times(pin))
    assert body_at - on_at >= PRE_DELAY_S
    assert body_at <= off_at <= done_at + 1e-3
    pin.assert_states_and_times([(0.0, False), (0.0, True), (PRE_DELAY_S, False)])
    lights.close()


def test_flash_goes_off_when_the_body_raises_and_the_error_propagates(factory):
    lights = make_lights(factory)
    pin = factory.pin("GPIO27")
    with pytest.raises(ValueError, match="bad exposure"), lights.flash():
        assert pin.state is True
        raise ValueError("bad exposure")
    assert pin.state is False
    assert levels(pin) == [False, True, False]
    lights.close()


def test_active_low_flash_drives_the_pin_low_while_on(factory):
    lights = make_lights(factory, flash_active_high=False)
    pin = factory.pin("GPIO27")
    pin.clear_states()
    with lights.flash():
        assert pin.state is False
    assert pin.state is True
    assert levels(pin) == [True, False, True]
    lights.close()


def test_set_uv_switches_the_pin_and_logs_each_change_once(factory, caplog):
    caplog.set_level(logging.INFO, logger="hw.lights")
    lights = make_lights(factory)
    pin = factory.pin("GPIO22")
    lights.set_uv(True)
    lights.set_uv(True)
    assert lights.uv_on and pin.state is True
    lights.set_uv(False)
    lights.set_uv(False)
    assert not lights.uv_on and pin.state is False
    assert [r.getMessage() for r in caplog.records] == ["UV light on", "UV light off"]
    assert all(r.levelno == logging.INFO for r in caplog.records)
    assert levels(pin) == [False, True, False]
    lights.close()


def test_active_low_uv_drives_the_pin_low_while_on(factory):
    lights = make_lights(factory, uv_active_high=False)
    lights.set_uv(True)
    assert lights.uv_on and factory.pin("GPIO22").state is False
    lights.close()


def test_close_turns_everything_off_and_is_safe_twice(factory):
    lights = make_lights(factory)
    lights.set_uv(True)
    with lights.flash():
        lights.close()  # e.g. the main loop's ExitStack unwinding mid-capture
        assert factory.pin("GPIO27").state is False
        assert factory.pin("GPIO22").state is False
        assert not lights.uv_on
        lights.close()
    for name in ("GPIO27", "GPIO22"):
        assert factory.pin(name).function == "input"


def test_close_leaves_active_low_pins_high(factory):
    lights = make_lights(factory, flash_active_high=False, uv_active_high=False)
    lights.set_uv(True)
    assert factory.pin("GPIO22").state is False
    lights.close()
    lights.close()
    assert factory.pin("GPIO27").state is True
    assert factory.pin("GPIO22").state is True


def test_without_pins_flash_and_uv_do_nothing(factory, caplog):
    caplog.set_level(logging.INFO, logger="hw.lights")
    lights = make_lights(factory, flash_pin=None, uv_pin=None, flash_pre_delay_s=10)
    started_at = time.monotonic()
    with lights.flash():
        pass
    assert time.monotonic() - started_at < 1  # no pre-delay without a flash
    lights.set_uv(True)
    assert not lights.uv_on
    assert caplog.records == []
    lights.close()
    lights.close()


@pytest.mark.parametrize(
    ("uv_pin", "error"),
    [("GPIO27", GPIOPinInUse), ("GPIO99", PinInvalidPin), ("NOT_A_PIN", PinInvalidPin)],
)
def test_failure_building_the_uv_light_releases_the_flash_pin(factory, uv_pin, error):
    with pytest.raises(error):
        make_lights(factory, flash_active_high=False, uv_pin=uv_pin)
    assert factory.pin("GPIO27").function == "input"
    DigitalOutputDevice("GPIO27", pin_factory=factory).close()  # the pin is free again
