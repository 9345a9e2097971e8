"""Exceptions raised by the hardware layer.

Each also inherits the builtin a caller would naturally catch, as gpiozero's ``exc.py`` does.
"""


class HardwareError(Exception):
    """Base class for every error raised by :mod:`hw`."""


class CameraError(HardwareError, OSError):
    """The camera could not deliver a photo (missing, failed, or a replay folder with no usable photo)."""


class CameraTimeout(CameraError, TimeoutError):
    """A capture did not complete within its timeout."""


class UnsupportedCameraSize(HardwareError, ValueError):
    """A stream size the camera cannot deliver: ``stream`` is ``"main"`` (the photo) or ``"lores"``
    (the small stream), ``size_px`` the ``(width, height)`` asked for and ``largest_px`` the largest
    the camera (or, for ``lores``, the main stream) offers.  A setting to change, not a failure to
    retry: deliberately not a :class:`CameraError`, which the camera's recovery retries."""

    def __init__(self, stream: str, size_px: tuple[int, int], largest_px: tuple[int, int], why: str):
        self.stream, self.size_px, self.largest_px = stream, tuple(size_px), tuple(largest_px)
        super().__init__(
            f"{stream} stream {size_px[0]} x {size_px[1]} is larger than {largest_px[0]} x "
            f"{largest_px[1]}, {why}"
        )


class PinConfigError(HardwareError, ValueError):
    """A GPIO pin name is not a valid BCM name such as ``GPIO17``."""


class CameraUnavailable(CameraError):
    """The camera is closed while it recovers from a failure; the next attempt to re-open it is
    scheduled (see :class:`~hw.camera.RecoveringCamera`)."""


class CameraFailed(HardwareError):
    """The camera failed too many times in a row: only restarting the process (or the Pi) can help.
    Deliberately not a :class:`CameraError`, which the main loop logs and survives."""
