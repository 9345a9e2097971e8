"""A fake picamera2, for testing :class:`hw.camera.Picamera2Camera` off a Raspberry Pi.

It has the calls hw/camera.py makes, with picamera2 0.3.38's exact signatures (parameter names,
order, kinds and which have defaults: tests/test_picamera2_contract.py checks them against the
wheel), and behaviour in place of a camera.  The scene is one solid :attr:`Picamera2.colour`:
``save`` writes a real JPEG of it with Pillow at ``options["quality"]`` and ``make_array("lores")``
returns it as a real YUV420 buffer with padded rows.  ``picamera2.converters`` is not here: the
test fixture puts the wheel's real file beside this package with :func:`install_converters`.

A test sets up the camera and reads what happened through class attributes of
:class:`Picamera2` (each test imports this module afresh, so they start from the values below),
and makes calls fail with :func:`fail_next`.
"""

import contextlib
from pathlib import Path

import numpy as np
from PIL import Image


def install_converters(source: bytes, folder: Path) -> Path:
    """Make ``picamera2.converters`` the module ``source`` (picamera2's real converters.py, read
    from the wheel): written to ``folder``, which is added to this package's search path.  Returns
    the file written."""
    path = folder / "converters.py"
    path.write_bytes(source)
    __path__.append(str(folder))
    return path


def fail_next(method: str, error: Exception, count: int = 1) -> None:
    """Make the next ``count`` calls of ``Picamera2.<method>`` raise ``error``: ``"__init__"``
    (e.g. ``RuntimeError("Device or resource busy")``, another process has the camera),
    ``"configure"``, ``"start"``, ``"close"``, ``"captured_request"`` (e.g. ``TimeoutError()``,
    what picamera2's ``concurrent.futures`` wait raises) or ``"autofocus_cycle"``."""
    Picamera2.failures.setdefault(method, []).extend([error] * count)


def yuv420_buffer(image: Image.Image, stride: int) -> np.ndarray:
    """``image`` laid out as picamera2's ``make_array`` returns a YUV420 stream.

    The flat buffer holds Y (h rows of ``stride`` bytes), then U and V (h/2 rows of ``stride / 2``
    bytes each), and is reshaped to ``(h * 3 // 2, stride)``.  Padding bytes are 0, which would
    show up as vivid green if the converted frame were not trimmed.
    """
    width, height = image.size
    y, cb, cr = image.convert("YCbCr").split()
    half = (width // 2, height // 2)
    cb, cr = (p.resize(half, Image.Resampling.BOX) for p in (cb, cr))
    flat = np.zeros(height * 3 // 2 * stride, np.uint8)
    y_size, uv_size = height * stride, height // 2 * stride // 2
    flat[:y_size].reshape(height, stride)[:, :width] = np.asarray(y)
    u_plane = flat[y_size : y_size + uv_size].reshape(height // 2, stride // 2)
    v_plane = flat[y_size + uv_size :].reshape(height // 2, stride // 2)
    u_plane[:, : width // 2] = np.asarray(cb)
    v_plane[:, : width // 2] = np.asarray(cr)
    return flat.reshape(height * 3 // 2, stride)


def _padded_stride(width: int) -> int:
    # Always some padding (the ISP aligns rows; 640 -> 704), so a frame that kept it would show.
    return (width + 64) // 64 * 64


class Picamera2:
    """One camera.  Construction opens it, :meth:`close` releases it."""

    # Set by a test before constructing.
    model = "imx708"
    sensor_resolution = (1536, 864)  # small, so a full-resolution JPEG is quick to encode; the
    # largest sensor mode, as picamera2 sets it when the camera opens
    has_autofocus = True
    colour = (200, 120, 40)
    autofocus_succeeds = True
    attached = 1  # cameras global_camera_info() lists
    failures: dict[str, list[Exception]] = {}  # see fail_next()

    # Read by a test.
    instances: list["Picamera2"] = []  # every camera constructed, in order
    open_count = 0  # constructed and not yet closed
    max_open_count = 0  # the most ever open at once

    def __init__(self, camera_num=0, verbose_console=None, tuning=None, allocator=None):
        Picamera2._maybe_fail("__init__")
        self.camera_num = camera_num
        self.options = {}
        self.camera_config = {}
        self.started = False
        self.closed = False
        self.calls: list[tuple[str, dict]] = []  # (method, its arguments), in order
        self.requests: list[CompletedRequest] = []
        Picamera2.instances.append(self)
        Picamera2.open_count += 1
        Picamera2.max_open_count = max(Picamera2.max_open_count, Picamera2.open_count)

    @staticmethod
    def global_camera_info():
        """The attached cameras: none once a test sets :attr:`attached` to 0."""
        return [{"Model": Picamera2.model, "Id": f"/base/soc/i2c0mux/i2c@1/imx708@1a/{n}", "Num": n}
                for n in range(Picamera2.attached)]  # fmt: skip

    @classmethod
    def _maybe_fail(cls, method: str) -> None:
        if cls.failures.get(method):
            raise cls.failures[method].pop(0)

    @property
    def camera_properties(self):
        return {} if self.closed else {"Model": self.model, "PixelArraySize": self.sensor_resolution}

    @property
    def camera_controls(self):
        """Control name -> (min, max, default), as libcamera advertises them."""
        controls = {
            "ExposureTime": (1, 66666666, 20000),
            "AnalogueGain": (1.0, 16.0, 1.0),
            "AwbMode": (0, 7, 0),
        }
        if self.has_autofocus:
            controls.update(AfMode=(0, 2, 0), AfTrigger=(0, 1, 0), LensPosition=(0.0, 15.0, 1.0))
        return controls

    # None stands in for the real defaults that are {} (ruff B006) or libcamera objects.
    def create_still_configuration(
        self,
        main=None,
        lores=None,
        raw=None,
        transform=None,
        colour_space=None,
        buffer_count=1,
        controls=None,
        display=None,
        encode=None,
        queue=True,
        sensor=None,
        use_case="still",
    ):
        arguments = dict(main=main, lores=lores, buffer_count=buffer_count, controls=controls)
        self.calls.append(("create_still_configuration", arguments))
        if self.closed:
            raise RuntimeError("Camera not opened")
        main = {"format": "BGR888", "size": self.sensor_resolution, **(main or {})}
        if lores is not None:
            lores = {"format": "YUV420", "size": main["size"], **lores}
        return {
            "use_case": use_case,
            "buffer_count": buffer_count,
            "queue": queue,
            "display": display,
            "encode": encode,
            "main": main,
            "lores": lores,
            "controls": dict(controls or {}),
        }

    def configure(self, camera_config=None):
        self.calls.append(("configure", {"camera_config": camera_config}))
        self._maybe_fail("configure")
        # As picamera2 does: a shallow copy, whose stream dicts are updated in place.
        config = dict(camera_config)
        main, lores = config["main"]["size"], (config.get("lores") or {}).get("size")
        if lores is not None and (lores[0] > main[0] or lores[1] > main[1]):  # check_camera_config
            raise RuntimeError("lores stream dimensions may not exceed main stream")
        for name in ("main", "lores"):
            if config.get(name) is not None:
                config[name]["stride"] = _padded_stride(config[name]["size"][0])
        for name in config["controls"]:
            if name not in self.camera_controls:
                raise RuntimeError(f"Control {name} is not advertised by libcamera")
        self.camera_config = config

    def start(self, config=None, show_preview=False):
        self.calls.append(("start", {"config": config, "show_preview": show_preview}))
        self._maybe_fail("start")
        if config is not None:
            self.configure(config)
        if not self.camera_config:
            raise RuntimeError("Camera has not been configured")
        self.started = True

    def close(self):
        self.calls.append(("close", {}))
        if self.closed:
            return
        # A failed close leaves the camera acquired, as picamera2's does when release() fails.
        self._maybe_fail("close")
        self.started = False
        self.closed = True
        Picamera2.open_count -= 1

    @contextlib.contextmanager
    def captured_request(self, wait=None, flush=None):
        self.calls.append(("captured_request", {"wait": wait, "flush": flush}))
        self._maybe_fail("captured_request")
        if not self.started:
            raise TimeoutError()  # no frame ever comes
        request = CompletedRequest(len(self.requests), self)
        self.requests.append(request)
        try:
            yield request
        finally:
            request.release()

    def autofocus_cycle(self, wait=None, signal_function=None):
        self.calls.append(("autofocus_cycle", {"wait": wait, "signal_function": signal_function}))
        self._maybe_fail("autofocus_cycle")
        if "AfMode" not in self.camera_controls:
            raise RuntimeError("Control AfMode is not advertised by libcamera")
        return self.autofocus_succeeds


class CompletedRequest:
    """One frame: ``request`` is its sequence number."""

    def __init__(self, request, picam2):
        self.request = request
        self.picam2 = picam2
        self.config = picam2.camera_config
        self.released = False

    def release(self):
        self.released = True

    def _image(self, name: str) -> Image.Image:
        if self.released:
            raise RuntimeError("request already released")
        if self.config.get(name) is None:
            raise RuntimeError(f"Stream {name!r} is not defined")
        return Image.new("RGB", self.config[name]["size"], self.picam2.colour)

    def save(self, name, file_output, format=None, exif_data=None):
        """Pillow's JPEG (picamera2 uses simplejpeg) at the quality picamera2 would use."""
        if (format or Path(file_output).suffix.lstrip(".")).lower() not in ("jpg", "jpeg"):
            raise NotImplementedError("the fake saves JPEG only")
        self._image(name).save(file_output, "JPEG", quality=self.picam2.options.get("quality", 90))

    def make_array(self, name):
        """A YUV420 stream only: ``(height * 3 // 2, stride)`` uint8."""
        if self.config[name]["format"] != "YUV420":
            raise NotImplementedError("the fake makes YUV420 arrays only")
        return yuv420_buffer(self._image(name), self.config[name]["stride"])

    def get_metadata(self):
        """libcamera's metadata: some of it is what we keep, the rest tuning internals."""
        controls = self.config["controls"]
        metadata = {
            "SensorTimestamp": 5_000_000_000 + self.request * 33_333_333,
            "ExposureTime": controls.get("ExposureTime", 19_997),
            "AnalogueGain": controls.get("AnalogueGain", 1.123),
            "Lux": 412.5,
            "ColourTemperature": 5_600 if controls.get("AwbMode") == 5 else 4_870,
            "FrameDuration": 33_333,
            "ColourCorrectionMatrix": (1.7, -0.5, -0.2, -0.4, 1.8, -0.4, -0.1, -0.6, 1.7),
            "SensorBlackLevels": (4096, 4096, 4096, 4096),
        }
        if self.picam2.has_autofocus:
            metadata.update(LensPosition=1.5, AfState=2)
        return metadata
