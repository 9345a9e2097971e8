"""GPIO-switched lights: a flash for night captures and a UV light that attracts moths.

Each light is a gpiozero :class:`~gpiozero.DigitalOutputDevice` switching a relay or MOSFET; in
simulation and tests the same devices are built on gpiozero's own
:class:`~gpiozero.pins.mock.MockFactory`.
"""

import contextlib
import logging
import time
from dataclasses import dataclass

from gpiozero import DigitalOutputDevice

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LightsSettings:
    """How the lights are wired and used.

    ``flash_pin``, ``uv_pin``: BCM names such as ``"GPIO27"``, or None when not fitted;
    ``flash_active_high``, ``uv_active_high``: False when the light is on while its pin is low
    (many relay boards); ``flash_pre_delay_s``: seconds :meth:`Lights.flash` keeps the flash on
    before the exposure starts, so that a lamp that takes time to warm up (an LED driver's soft
    start, a relay's closing time) is at full output for the whole exposure.
    """

    flash_pin: str | None = None
    uv_pin: str | None = None
    flash_active_high: bool = True
    uv_active_high: bool = True
    flash_pre_delay_s: float = 0.0

    @classmethod
    def from_config(cls, config) -> "LightsSettings":
        """From the settings of the same names (an empty pin: not fitted)."""
        return cls(
            flash_pin=config.flash_pin or None,
            uv_pin=config.uv_pin or None,
            flash_active_high=config.flash_active_high,
            uv_active_high=config.uv_active_high,
            flash_pre_delay_s=config.flash_pre_delay_s,
        )


class Lights:
    """The flash and the UV light, as ``settings`` (:class:`LightsSettings`) says.

    Every light is off from the moment it is built (an active-low pin is driven high), and
    :meth:`close` turns them all off again.  To have them off after a crash too, close this
    object in the caller's ``try``/``finally`` or ``contextlib.ExitStack``.

    Raises gpiozero's ``PinInvalidPin`` or ``GPIOPinInUse`` for a pin that cannot be used; nothing
    is left reserved when it does.
    """

    def __init__(self, settings: LightsSettings, *, pin_factory=None):
        self.settings = settings
        self._flash = self._uv = None
        try:
            if settings.flash_pin:
                self._flash = DigitalOutputDevice(
                    settings.flash_pin,
                    active_high=settings.flash_active_high,
                    initial_value=False,
                    pin_factory=pin_factory,
                )
            if settings.uv_pin:
                self._uv = DigitalOutputDevice(
                    settings.uv_pin,
                    active_high=settings.uv_active_high,
                    initial_value=False,
                    pin_factory=pin_factory,
                )
        except BaseException:
            self.close()
            raise

    def configure(self, settings: LightsSettings) -> None:
        """Apply a config reload: ``flash_pre_delay_s`` from the next flash on.  The pins and their
        polarity are taken at construction only (changing them takes a restart).  Raises
        ``ValueError`` when they differ from the running ones."""
        wiring = ("flash_pin", "uv_pin", "flash_active_high", "uv_active_high")
        if any(getattr(settings, name) != getattr(self.settings, name) for name in wiring):
            raise ValueError("the lights' pins change only with a restart")
        self.settings = settings

    @contextlib.contextmanager
    def flash(self):
        """Keep the flash on for the body of a ``with`` block, after ``flash_pre_delay_s`` seconds.

        The flash goes off when the block ends, also when it raises.  Without a flash pin this
        does nothing (and does not wait).
        """
        if self._flash is None:
            yield
            return
        self._flash.on()
        try:
            time.sleep(self.settings.flash_pre_delay_s)
            yield
        finally:
            # close() may have run meanwhile (turning the flash off); don't mask the body's error
            if not self._flash.closed:
                self._flash.off()

    def set_uv(self, on: bool) -> None:
        """Switch the UV light on or off; does nothing without a UV pin."""
        if self._uv is None or on == self.uv_on:
            return
        self._uv.value = on
        log.info("UV light %s", "on" if on else "off")

    @property
    def uv_on(self) -> bool:
        """True while the UV light is on; False when it is off, not fitted or closed."""
        return self._uv is not None and not self._uv.closed and self._uv.is_active

    def close(self) -> None:
        """Turn every light off, then release the pins.  Safe to call more than once."""
        devices = [device for device in (self._flash, self._uv) if device is not None]
        for device in devices:
            if not device.closed:
                device.off()
        for device in devices:
            device.close()
