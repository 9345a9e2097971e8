"""The camera: one small interface, a picamera2 implementation, a simulated one, and recovery.

A camera's :meth:`capture` returns a :class:`Shot`: the full-resolution JPEG as bytes, a small
RGB frame for the thumbnail (so the JPEG need not be decoded again) and the capture metadata.

:class:`Picamera2Camera` imports picamera2 only when constructed: picamera2 needs libcamera from
Raspberry Pi OS and cannot be installed elsewhere.  :class:`SimulatedCamera` produces real JPEGs,
either rendered with Pillow or replayed from a folder of photos, and can be told to fail.
:class:`RecoveringCamera` wraps either: a failed capture closes the camera and re-opens it with
exponential back-off, and too many failures in a row raise :class:`~hw.exc.CameraFailed`.
"""

import io
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from PIL import Image, ImageDraw, ImageFont, ImageOps

from hw.exc import CameraError, CameraFailed, CameraTimeout, CameraUnavailable, UnsupportedCameraSize

log = logging.getLogger(__name__)

# A replayed photo is decoded at reduced size (JPEG DCT scaling) to check it and make its frame.
REPLAY_FRAME_PX = 640
# The request metadata kept with each photo (libcamera control names; units: SensorTimestamp ns
# since boot, ExposureTime µs, AnalogueGain a factor, Lux lux, ColourTemperature K, LensPosition
# dioptres).  The rest (tuning internals such as ColourCorrectionMatrix) is not worth storing.
METADATA_KEYS = (
    "SensorTimestamp",
    "ExposureTime",
    "AnalogueGain",
    "Lux",
    "ColourTemperature",
    "LensPosition",
)
# libcamera's AwbModeEnum values (control_ids_core.yaml); picamera2 takes the integers
# (picamera2 issue #803).
AWB_MODES = {
    "auto": 0,
    "incandescent": 1,
    "tungsten": 2,
    "fluorescent": 3,
    "indoor": 4,
    "daylight": 5,
    "cloudy": 6,
}
AUTOFOCUS_MODES = ("off", "continuous", "cycle")
_AF_MODE_CONTINUOUS = 2  # libcamera AfModeEnum: Manual 0, Auto 1, Continuous 2
# Re-opening a failed camera waits 1, 2, 4 ... seconds, at most this long.
MAX_BACKOFF_S = 60.0
# The largest sensor any camera for the Raspberry Pi has, (width, height) in pixels: the OmniVision
# OV64A40 of Arducam's 64 MP cameras, whose active pixel array is 9248 x 6944 (Linux
# drivers/media/i2c/ov64a40.c, OV64A40_PIXEL_ARRAY_WIDTH/HEIGHT; libcamera ships its Raspberry Pi
# tuning, src/ipa/rpi/{vc4,pisp}/data/ov64a40.json).  No camera on a Pi can take a larger photo.
LARGEST_SENSOR_PX = (9248, 6944)
# The largest photo the simulated camera renders, (width, height) in pixels: the largest width and
# height of Raspberry Pi's own cameras at full resolution (Camera Module 3, IMX708: 4608 x 2592;
# HQ Camera, IMX477: 4056 x 3040), so that any of their configurations can be simulated.
SIMULATED_MAX_SIZE_PX = (4608, 3040)


def _fits(size_px, largest_px) -> bool:
    return size_px[0] <= largest_px[0] and size_px[1] <= largest_px[1]


@dataclass(frozen=True)
class Shot:
    """One photo as delivered by a camera.

    ``jpeg``: the encoded full-resolution photo, exactly as it will be stored.
    ``frame``: a small upright RGB image of the same scene (at most a few hundred pixels on its
    longest edge), or None when the camera has none.
    ``metadata``: camera metadata, JSON-serialisable (picamera2's names, e.g. ``ExposureTime`` in
    µs, ``SensorTimestamp`` in ns); empty when there is none.
    ``replayed_from``: the file a simulated camera replayed, whose bytes must be kept as they are
    (no EXIF of ours); None for a photo this camera took.
    """

    jpeg: bytes
    frame: Image.Image | None = None
    metadata: dict = field(default_factory=dict)
    replayed_from: str | None = None


class Camera(Protocol):
    """What the main loop needs from a camera.  ``model``: the camera's model name (for EXIF)."""

    model: str

    def capture(self, timeout_s: float) -> Shot:
        """Take one photo whose exposure starts after the call.

        Raises :class:`~hw.exc.CameraTimeout` when no frame arrives within ``timeout_s`` seconds
        and :class:`~hw.exc.CameraError` for any other failure.
        """

    def ready(self) -> bool:
        """Whether a capture can be tried now (the flash is switched on only then)."""

    def close(self) -> None:
        """Release the camera.  Safe to call more than once."""


def yuv420_frame(array, width: int, height: int) -> Image.Image:
    """Convert a picamera2 ``lores`` YUV420 buffer to an RGB image of half its size.

    ``array``: the ``(height * 3 // 2, stride)`` uint8 array from ``request.make_array("lores")``
    (stride >= width: rows may carry padding).  Returns an RGB image of ``(width // 2, height // 2)``
    pixels.  The colour conversion is picamera2's own ``converters.YUV420_to_RGB`` with its default
    full-range JPEG matrix (the lores stream of a still configuration is sYCC), called with
    ``rb_swap=False`` because Pillow wants R, G, B order (picamera2's default suits OpenCV's BGR).
    """
    from picamera2.converters import YUV420_to_RGB

    stride = array.shape[1]
    rgb = YUV420_to_RGB(array.reshape(-1), (stride, height), rb_swap=False, final_width=width // 2)
    return Image.fromarray(rgb, "RGB")


def attached_cameras() -> list[dict]:
    """The cameras libcamera sees, without opening any: picamera2's
    ``Picamera2.global_camera_info()``, one dict per camera with ``Model`` (the sensor, e.g.
    ``imx708``), ``Id`` and ``Num``, plus ``Location`` and ``Rotation`` when known.  Raises
    :class:`~hw.exc.CameraError` when picamera2 is not installed."""
    try:
        from picamera2 import Picamera2
    except ImportError as exc:
        raise CameraError("picamera2 is not installed (python3-picamera2 on Raspberry Pi OS)") from exc
    return Picamera2.global_camera_info()


def camera_controls(*, exposure_time_us: int = 0, analogue_gain: float = 0.0, awb_mode: str = "auto") -> dict:
    """libcamera controls for the still configuration.  ``exposure_time_us``: a fixed exposure in
    microseconds, 0 for automatic exposure; ``analogue_gain``: a fixed gain (1.0 is none), 0 for
    automatic; ``awb_mode``: a key of :data:`AWB_MODES`.  Raises ``KeyError`` for an unknown mode."""
    controls = {"AwbMode": AWB_MODES[awb_mode]}
    if exposure_time_us:
        controls["ExposureTime"] = int(exposure_time_us)
    if analogue_gain:
        controls["AnalogueGain"] = float(analogue_gain)
    return controls


class Picamera2Camera:
    """A Raspberry Pi camera driven by picamera2, kept running so a trigger never waits for start-up.

    One ``Picamera2`` for the life of this object, in a still configuration with a ``main`` and a
    ``lores`` stream; the JPEG is encoded in memory from each request.

    :param size_px: the photo's size (``main``), ``(width, height)`` in pixels; None: the
        sensor's full resolution.
    :param lores_size_px: the ``lores`` stream's size, in YUV420 (the only lores format every Pi
        model supports, the Pi 4 and older included), converted to an RGB frame of half that size
        by :func:`yuv420_frame` (a full colour conversion, not the Y plane).
    :param jpeg_quality: 1-95, Pillow's and picamera2's scale.
    :param camera_num: which camera, for picamera2 (0: the first).
    :param controls: libcamera controls applied from the start (see :func:`camera_controls`).
    :param autofocus: for cameras with a focus motor (e.g. Camera Module 3): ``"off"`` leaves the
        lens where libcamera puts it, ``"continuous"`` refocuses all the time, ``"cycle"`` runs
        one autofocus cycle before each capture (adds up to about a second).

    Metadata of each shot: the :data:`METADATA_KEYS` the request carries.

    The sizes are checked against the camera's own before it is configured: ``size_px`` must fit
    within picamera2's ``sensor_resolution`` (its largest sensor mode, which it also takes for a
    full-resolution photo), and ``lores_size_px`` within the main stream (picamera2 refuses a lores
    stream larger than the main one).

    Raises :class:`~hw.exc.UnsupportedCameraSize` (the camera closed first) for a size the camera
    cannot deliver, and :class:`~hw.exc.CameraError` when picamera2 is missing or the camera
    cannot be opened, configured or started (the half-opened camera is closed first).
    """

    def __init__(
        self,
        *,
        size_px: tuple[int, int] | None = None,
        lores_size_px: tuple[int, int] = (640, 480),
        jpeg_quality: int = 90,
        camera_num: int = 0,
        controls: dict | None = None,
        autofocus: str = "off",
    ):
        try:
            from picamera2 import Picamera2
        except ImportError as exc:
            raise CameraError(
                "picamera2 is not installed: on Raspberry Pi OS install python3-picamera2 and "
                "create the venv with --system-site-packages, or run with --simulate"
            ) from exc
        try:
            self._picam2 = Picamera2(camera_num)
        except (IndexError, RuntimeError) as exc:
            raise CameraError(f"camera {camera_num} could not be opened: {exc}") from exc
        try:
            controls = dict(controls or {})
            has_focus = "AfMode" in self._picam2.camera_controls
            if autofocus != "off" and not has_focus:
                log.warning("camera_autofocus = %r ignored: this camera has no autofocus", autofocus)
            self._autofocus_cycle = autofocus == "cycle" and has_focus
            if autofocus == "continuous" and has_focus:
                controls["AfMode"] = _AF_MODE_CONTINUOUS
            largest = tuple(self._picam2.sensor_resolution)
            main_size = tuple(size_px) if size_px else largest
            if not _fits(main_size, largest):
                why = (
                    f"the largest sensor mode of this camera ({self._picam2.camera_properties.get('Model')})"
                )
                raise UnsupportedCameraSize("main", main_size, largest, why)
            if not _fits(lores_size_px, main_size):
                raise UnsupportedCameraSize("lores", lores_size_px, main_size, "the main stream's size")
            main = {"size": tuple(size_px)} if size_px else {}
            # Two buffers so the camera keeps streaming while we hold one request.
            config = self._picam2.create_still_configuration(
                main=main, lores={"size": tuple(lores_size_px)}, buffer_count=2, controls=controls
            )
            self._picam2.configure(config)
            self._picam2.options["quality"] = jpeg_quality
            self._lores_size = config["lores"]["size"]
            self.model = self._picam2.camera_properties.get("Model", "unknown")  # the sensor, e.g. imx708
            self._picam2.start()
        except UnsupportedCameraSize:
            self.close()
            raise
        except (RuntimeError, ValueError, OSError) as exc:
            self.close()
            raise CameraError(f"camera {camera_num} could not be started: {exc}") from exc

    def capture(self, timeout_s: float) -> Shot:
        if self._picam2 is None:
            raise CameraError("camera is closed")
        jpeg = io.BytesIO()
        try:
            if self._autofocus_cycle and not self._picam2.autofocus_cycle(wait=timeout_s):
                log.warning("autofocus did not converge; capturing anyway")
            # flush=True: only a frame whose exposure started after now, so the photo shows what
            # triggered it rather than a frame already queued before the trigger.
            with self._picam2.captured_request(wait=timeout_s, flush=True) as request:
                request.save("main", jpeg, format="jpeg")
                lores = request.make_array("lores")
                metadata = request.get_metadata()
        except TimeoutError as exc:
            raise CameraTimeout(f"no frame within {timeout_s} s") from exc
        except RuntimeError as exc:
            raise CameraError(f"capture failed: {exc}") from exc
        frame = yuv420_frame(lores, *self._lores_size)
        kept = {key: metadata[key] for key in METADATA_KEYS if key in metadata}
        return Shot(jpeg.getvalue(), frame, kept)

    def ready(self) -> bool:
        return self._picam2 is not None

    def close(self) -> None:
        """Stop and release the camera (libcamera allows one user of a camera at a time, so a
        camera not closed cannot be opened again).  A failure to close is logged, not raised."""
        picam2, self._picam2 = self._picam2, None
        if picam2 is not None:
            try:
                picam2.close()
            except RuntimeError as exc:
                log.warning("closing the camera failed: %s", exc)


@dataclass(frozen=True)
class CameraStatus:
    """What :meth:`RecoveringCamera.status` tells: ``state`` is ``"ok"``, ``"recovering"`` (closed,
    waiting to be re-opened) or ``"failed"`` (too many failures in a row: the process must
    restart); ``failures`` in a row and ``total_failures`` since start-up (failed captures and
    failed re-opens); ``last_error``, the reason of the last failure (None after a success);
    ``retry_in_s``, seconds until the next re-open (None when none is scheduled)."""

    state: str
    failures: int
    total_failures: int
    last_error: str | None
    retry_in_s: float | None


class RecoveringCamera:
    """A camera that recovers by itself: ``open_camera()`` makes a new camera (a
    :class:`Picamera2Camera` or a :class:`SimulatedCamera`), and is called once here, so a camera
    missing at start-up raises :class:`~hw.exc.CameraError` at once.

    When a capture fails, the camera is closed (the old instance released before any new one is
    made: picamera2 leaks and libcamera refuses a second user otherwise) and re-opened by
    :meth:`recover` after a back-off of 1, 2, 4 ... s (at most :data:`MAX_BACKOFF_S`).  A capture
    meanwhile raises :class:`~hw.exc.CameraUnavailable`.  Failed captures and failed re-opens count
    together; ``max_failures`` in a row raise :class:`~hw.exc.CameraFailed`, from :meth:`capture` or
    :meth:`recover`, for the process to exit and be restarted (a call that hangs outright is left
    to systemd's watchdog).  A successful capture resets the count.

    :meth:`status` may be called from other threads.  ``monotonic``: the clock (for tests).
    """

    def __init__(
        self, open_camera: Callable[[], "Camera"], *, max_failures: int = 5, monotonic=time.monotonic
    ):
        self._open = open_camera
        self._max_failures = max_failures
        self._monotonic = monotonic
        self._lock = threading.Lock()
        self._camera = open_camera()
        self.model = self._camera.model
        self._failures = self._total_failures = 0
        self._retry_at: float | None = None
        self._last_error: str | None = None

    def status(self) -> CameraStatus:
        """The camera's state now (see :class:`CameraStatus`)."""
        with self._lock:
            if self._failures >= self._max_failures:
                state = "failed"
            elif self._camera is None:
                state = "recovering"
            else:
                state = "ok"
            retry = None if self._retry_at is None else max(0.0, round(self._retry_at - self._monotonic(), 1))
            return CameraStatus(state, self._failures, self._total_failures, self._last_error, retry)

    def capture(self, timeout_s: float) -> Shot:
        self.recover()
        if self._camera is None:
            if self._retry_at is None:
                raise CameraError("camera is closed")
            raise CameraUnavailable(f"camera recovering after: {self._last_error}")
        try:
            shot = self._camera.capture(timeout_s)
        except CameraError as exc:
            self._failed(f"capture: {exc}", close=True)
            raise
        with self._lock:
            self._failures, self._last_error = 0, None
        return shot

    def ready(self) -> bool:
        """Re-open the camera if its back-off has passed (see :meth:`recover`); then whether a
        capture can be tried now.  Raises :class:`~hw.exc.CameraFailed` as :meth:`recover` does."""
        self.recover()
        return self._camera is not None

    def recover(self) -> None:
        """Re-open the camera if it is closed and its back-off has passed; for the main loop's
        scheduler.  Raises :class:`~hw.exc.CameraFailed` after too many failures."""
        if self._camera is not None or self._retry_at is None or self._monotonic() < self._retry_at:
            return  # open, closed for good, or still backing off
        try:
            camera = self._open()
        except CameraError as exc:
            self._failed(f"re-open: {exc}", close=False)
            return
        with self._lock:
            self._camera, self._retry_at = camera, None
        log.info("camera re-opened after %d failures", self._failures)

    def _failed(self, reason: str, *, close: bool) -> None:
        if close:
            camera, self._camera = self._camera, None
            camera.close()
        with self._lock:
            self._failures += 1
            self._total_failures += 1
            self._last_error = reason
            backoff = min(MAX_BACKOFF_S, 2.0 ** (self._failures - 1))
            self._retry_at = self._monotonic() + backoff
            failures = self._failures
        if failures >= self._max_failures:
            raise CameraFailed(f"camera failed {failures} times in a row; last: {reason}")
        log.warning(
            "camera failure %d of %d (%s); re-opening in %.0f s",
            failures,
            self._max_failures,
            reason,
            backoff,
        )

    def close(self) -> None:
        camera, self._camera, self._retry_at = self._camera, None, None
        if camera is not None:
            camera.close()


def replay_files(folder: Path) -> list[Path]:
    """The files of ``folder`` a :class:`SimulatedCamera` replays, in the order it replays them
    (by name).  Raises ``OSError`` when the folder cannot be listed."""
    return sorted(p for p in Path(folder).iterdir() if p.is_file())


def replay_frame(jpeg: bytes) -> Image.Image:
    """Decode ``jpeg`` (JPEG bytes) upright as an RGB image, at the smallest JPEG scale (1/2, 1/4,
    1/8) that keeps both sides at least :data:`REPLAY_FRAME_PX` pixels.  Raises ``ValueError`` for
    an image that is not a JPEG, ``OSError`` for one that is not an image or is truncated, and
    ``PIL.Image.DecompressionBombError`` for one too large to decode."""
    with Image.open(io.BytesIO(jpeg)) as image:
        if image.format not in ("JPEG", "MPO"):
            raise ValueError(f"{image.format} is not JPEG")
        image.draft("RGB", (REPLAY_FRAME_PX, REPLAY_FRAME_PX))
        return ImageOps.exif_transpose(image).convert("RGB")


def first_replayable(files: list[Path]) -> Path | None:
    """The first of ``files`` that is a JPEG :func:`replay_frame` decodes, or None when none is
    (each file that is not is read and decoded, so this takes as long as that many photos)."""
    for path in files:
        try:
            replay_frame(path.read_bytes())
        except (OSError, ValueError, Image.DecompressionBombError):
            continue
        return path
    return None


class SimulatedCamera:
    """A camera with no hardware: renders a synthetic scene, or replays the photos in a folder.

    :meth:`inject_failure` makes captures fail, to exercise error handling and recovery; a closed
    camera refuses to capture, as a real one does.  :attr:`model` is ``"simulated"``.

    :param replay_dir: a folder whose JPEG files (sorted by name, looping) are returned byte for
        byte; a file that is not a decodable JPEG is logged with its name and skipped.  None: each
        capture renders a ``size_px`` scene (sky, ground and a moving "animal") with Pillow.
    :param size_px: the rendered photo's size, ``(width, height)``, at most
        :data:`SIMULATED_MAX_SIZE_PX` (as a real camera's is at most its sensor's).
    :param lores_size_px: the preview frame's size, the same way.
    :param jpeg_quality: 1-95, of the rendered photos.
    :param capture_time_s: a delay like a real exposure (one longer than the capture's timeout
        sleeps for the timeout, then raises ``CameraTimeout``: a hanging camera).

    Raises :class:`~hw.exc.UnsupportedCameraSize` for a larger size, :class:`~hw.exc.CameraError`
    at construction when ``replay_dir`` is not a folder or holds no decodable JPEG (see
    :func:`first_replayable`), and at capture when none of its files is one any more.
    """

    def __init__(
        self,
        *,
        replay_dir: Path | None = None,
        size_px: tuple[int, int] = (1280, 960),
        lores_size_px: tuple[int, int] = (640, 480),
        jpeg_quality: int = 90,
        capture_time_s: float = 0.0,
    ):
        for stream, size in (("main", size_px), ("lores", lores_size_px)):
            if not _fits(size, SIMULATED_MAX_SIZE_PX):
                why = "the largest the simulated camera renders"
                raise UnsupportedCameraSize(stream, size, SIMULATED_MAX_SIZE_PX, why)
        self.model = "simulated"
        self._size = tuple(size_px)
        self._frame_size = (lores_size_px[0] // 2, lores_size_px[1] // 2)
        self._quality = jpeg_quality
        self._capture_time_s = capture_time_s
        self._count = 0
        self._failures: list[Exception] = []
        self._closed = False
        self._replay: list[Path] = []
        if replay_dir is not None:
            replay_dir = Path(replay_dir)
            if not replay_dir.is_dir():
                raise CameraError(f"replay folder {replay_dir} does not exist")
            self._replay = replay_files(replay_dir)
            if first_replayable(self._replay) is None:  # rendering instead would hide the mistake
                raise CameraError(
                    f"replay folder {replay_dir} holds no decodable JPEG ({len(self._replay)} files)"
                )

    def inject_failure(self, error: Exception, count: int = 1) -> None:
        """Make the next ``count`` :meth:`capture` calls raise ``error`` (e.g.
        ``CameraTimeout("...")`` or ``CameraError("Device or resource busy")``)."""
        self._failures = [error] * count

    def capture(self, timeout_s: float) -> Shot:
        if self._closed:
            raise CameraError("camera is closed")
        if self._failures:
            raise self._failures.pop()
        if self._capture_time_s > timeout_s:
            time.sleep(timeout_s)
            raise CameraTimeout(f"no frame within {timeout_s} s")
        time.sleep(self._capture_time_s)
        shot = self._next_replayed() if self._replay else self._render()
        self._count += 1
        return shot

    def ready(self) -> bool:
        return not self._closed

    def close(self) -> None:
        self._closed = True

    def _next_replayed(self) -> Shot:
        for _ in range(len(self._replay)):
            path = self._replay[self._count % len(self._replay)]
            try:
                jpeg = path.read_bytes()
                frame = replay_frame(jpeg)
            except (OSError, ValueError, Image.DecompressionBombError) as exc:
                log.warning("replay: skipping %s: %s", path, exc)
                self._count += 1
                continue
            frame.thumbnail(self._frame_size)
            return Shot(jpeg, frame, {"ReplayedFile": path.name}, replayed_from=str(path))
        raise CameraError(f"no usable JPEG among {len(self._replay)} files to replay")

    def _render(self) -> Shot:
        width, height = self._size
        image = Image.new("RGB", self._size, (96, 140, 190))
        draw = ImageDraw.Draw(image)
        draw.rectangle((0, height * 2 // 3, width, height), fill=(70, 110, 50))
        x = (self._count * width // 5) % width
        y = height * 2 // 3
        draw.ellipse((x, y - height // 8, x + width // 6, y + height // 16), fill=(120, 80, 40))
        font = ImageFont.load_default(size=max(10, height // 10))
        draw.text(
            (width // 40, height // 40), f"simulated #{self._count + 1}", fill=(255, 255, 255), font=font
        )
        jpeg = io.BytesIO()
        image.save(jpeg, "JPEG", quality=self._quality)
        frame = image.resize(self._frame_size, Image.Resampling.BILINEAR)
        return Shot(jpeg.getvalue(), frame, {"Simulated": True})
