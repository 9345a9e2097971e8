"""The camera: one small interface, a picamera2 implementation and a simulated one.

A camera's :meth:`capture` returns a :class:`Shot`: the full-resolution JPEG as bytes, a small
RGB frame for the thumbnail (so the JPEG need not be decoded again) and the capture metadata.

:class:`Picamera2Camera` imports picamera2 only when constructed: picamera2 needs libcamera from
Raspberry Pi OS and cannot be installed elsewhere.  :class:`SimulatedCamera` produces real JPEGs,
either rendered with Pillow or replayed from a folder of photos, and can be told to fail.
"""

import io
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from PIL import Image, ImageDraw, ImageFont, ImageOps

from hw.exc import CameraError, CameraTimeout

log = logging.getLogger(__name__)

# A replayed photo is decoded at reduced size (JPEG DCT scaling) to check it and make its frame.
REPLAY_FRAME_PX = 640


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


class Picamera2Camera:
    """A Raspberry Pi camera driven by picamera2, kept running so a trigger never waits for start-up.

    One ``Picamera2`` for the life of this object.  Still configuration with ``main`` at
    ``size_px`` (``None``: the sensor's full resolution) and a ``lores`` stream at ``lores_size_px``
    in YUV420 (the only lores format every Pi model supports), converted to an RGB frame of half that
    size by :func:`yuv420_frame`.  The JPEG is encoded in memory from the request at
    ``jpeg_quality`` (1-95, Pillow's and picamera2's scale).

    Raises :class:`~hw.exc.CameraError` when picamera2 is missing or no camera is attached.
    """

    def __init__(
        self,
        *,
        size_px: tuple[int, int] | None = None,
        lores_size_px: tuple[int, int] = (640, 480),
        jpeg_quality: int = 90,
        camera_num: int = 0,
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
        main = {"size": tuple(size_px)} if size_px else {}
        # Two buffers so the camera keeps streaming while we hold one request.
        config = self._picam2.create_still_configuration(
            main=main, lores={"size": tuple(lores_size_px)}, buffer_count=2
        )
        self._picam2.configure(config)
        self._picam2.options["quality"] = jpeg_quality
        self._lores_size = config["lores"]["size"]
        self.model = self._picam2.camera_properties.get("Model", "unknown")  # the sensor, e.g. imx708
        self._picam2.start()

    def capture(self, timeout_s: float) -> Shot:
        jpeg = io.BytesIO()
        try:
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
        return Shot(jpeg.getvalue(), frame, metadata)

    def close(self) -> None:
        if self._picam2 is not None:
            self._picam2.close()
            self._picam2 = None


class SimulatedCamera:
    """A camera with no hardware: renders a synthetic scene, or replays the photos in a folder.

    With ``replay_dir``, the JPEG files in it (sorted by name, looping) are returned byte for byte;
    a file that is not a decodable JPEG is logged with its name and skipped.  Without it, each
    capture renders a ``size_px`` scene (sky, ground and a moving "animal") with Pillow.

    ``capture_time_s`` adds a delay like a real exposure.  :meth:`inject_failure` makes the next
    capture raise, to exercise error handling.  :attr:`model` is ``"simulated"``.

    Raises :class:`~hw.exc.CameraError` at construction when ``replay_dir`` is not a folder, and at
    capture when no file in it is a usable JPEG.
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
        self.model = "simulated"
        self._size = tuple(size_px)
        self._frame_size = (lores_size_px[0] // 2, lores_size_px[1] // 2)
        self._quality = jpeg_quality
        self._capture_time_s = capture_time_s
        self._count = 0
        self._failure: Exception | None = None
        self._replay: list[Path] = []
        if replay_dir is not None:
            replay_dir = Path(replay_dir)
            if not replay_dir.is_dir():
                raise CameraError(f"replay folder {replay_dir} does not exist")
            self._replay = sorted(p for p in replay_dir.iterdir() if p.is_file())

    def inject_failure(self, error: Exception) -> None:
        """Make the next :meth:`capture` raise ``error`` (e.g. ``CameraTimeout("...")``)."""
        self._failure = error

    def capture(self, timeout_s: float) -> Shot:
        if self._failure is not None:
            error, self._failure = self._failure, None
            raise error
        if self._capture_time_s > timeout_s:
            time.sleep(timeout_s)
            raise CameraTimeout(f"no frame within {timeout_s} s")
        time.sleep(self._capture_time_s)
        shot = self._next_replayed() if self._replay else self._render()
        self._count += 1
        return shot

    def close(self) -> None:
        pass

    def _next_replayed(self) -> Shot:
        for _ in range(len(self._replay)):
            path = self._replay[self._count % len(self._replay)]
            try:
                jpeg = path.read_bytes()
                with Image.open(io.BytesIO(jpeg)) as image:
                    if image.format not in ("JPEG", "MPO"):
                        raise ValueError(f"{image.format} is not JPEG")
                    image.draft("RGB", (REPLAY_FRAME_PX, REPLAY_FRAME_PX))
                    frame = ImageOps.exif_transpose(image).convert("RGB")
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
