"""Exceptions raised by the hardware layer.

Each also inherits the builtin a caller would naturally catch, as gpiozero's ``exc.py`` does.
"""


class HardwareError(Exception):
    """Base class for every error raised by :mod:`hw`."""


class CameraError(HardwareError, OSError):
    """The camera could not deliver a photo (missing, failed, or a replay folder with no usable photo)."""


class CameraTimeout(CameraError, TimeoutError):
    """A capture did not complete within its timeout."""


class PinConfigError(HardwareError, ValueError):
    """A GPIO pin name is not a valid BCM name such as ``GPIO17``."""


class CameraUnavailable(CameraError):
    """The camera is closed while it recovers from a failure; the next attempt to re-open it is
    scheduled (see :class:`~hw.camera.RecoveringCamera`)."""


class CameraFailed(HardwareError):
    """The camera failed too many times in a row: only restarting the process (or the Pi) can help.
    Deliberately not a :class:`CameraError`, which the main loop logs and survives."""
