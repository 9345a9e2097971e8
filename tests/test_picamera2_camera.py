"""The real :class:`hw.camera.Picamera2Camera` and :class:`hw.camera.RecoveringCamera` driving the
fake picamera2 in tests/fake_picamera2, whose signatures tests/test_picamera2_contract.py checks
against the real wheel, with the wheel's real ``converters.py`` for the YUV420 frame.

Needs the picamera2 wheel, as the contract tests do (tests/picamera2_wheel.py gets it).
"""

import io
import logging

import gpiozero
import numpy as np
import pytest
from PIL import Image

from appliance.cli import main
from hw.camera import METADATA_KEYS, CameraStatus, Picamera2Camera, RecoveringCamera, camera_controls
from hw.exc import CameraError, CameraFailed, CameraTimeout, CameraUnavailable, UnsupportedCameraSize

LORES = (640, 480)
TIMEOUT_S = 2.5


@pytest.fixture
def fake(fake_picamera2):
    return fake_picamera2


class Monotonic:
    """A monotonic clock that moves only when a test says so."""

    def __init__(self):
        self.now_s = 1000.0

    def __call__(self) -> float:
        return self.now_s


def calls(picam2, method: str) -> list[dict]:
    return [arguments for name, arguments in picam2.calls if name == method]


def open_camera(**kwargs) -> Picamera2Camera:
    return Picamera2Camera(lores_size_px=LORES, **kwargs)


# Construction


def test_construction_configures_and_starts_one_camera(fake):
    controls = camera_controls(exposure_time_us=10000, analogue_gain=2.0, awb_mode="daylight")

    camera = open_camera(size_px=(1024, 768), jpeg_quality=77, controls=controls)

    assert len(fake.Picamera2.instances) == 1
    picam2 = fake.Picamera2.instances[0]
    assert picam2.camera_num == 0
    assert calls(picam2, "create_still_configuration") == [
        {"main": {"size": (1024, 768)}, "lores": {"size": LORES}, "buffer_count": 2, "controls": controls}
    ]
    (configured,) = calls(picam2, "configure")
    expected = {"ExposureTime": 10000, "AnalogueGain": 2.0, "AwbMode": 5}
    assert configured["camera_config"]["controls"] == expected
    assert picam2.options["quality"] == 77
    assert picam2.started
    assert camera.model == "imx708"
    camera.close()


def test_construction_without_a_size_takes_the_sensor_resolution(fake):
    camera = open_camera()

    picam2 = fake.Picamera2.instances[0]
    assert calls(picam2, "create_still_configuration")[0]["main"] == {}
    assert picam2.camera_config["main"]["size"] == fake.Picamera2.sensor_resolution
    camera.close()


def test_caller_controls_are_not_modified(fake):
    controls = camera_controls()

    open_camera(controls=controls, autofocus="continuous").close()

    assert controls == {"AwbMode": 0}


def test_camera_that_cannot_be_opened_raises_camera_error(fake):
    fake.fail_next("__init__", RuntimeError("Device or resource busy"))

    with pytest.raises(CameraError, match="Device or resource busy"):
        open_camera()

    assert fake.Picamera2.open_count == 0


@pytest.mark.parametrize("step", ["configure", "start"])
def test_failure_to_configure_or_start_closes_the_half_opened_camera(fake, step):
    fake.fail_next(step, RuntimeError(f"{step} failed"))

    with pytest.raises(CameraError, match=f"{step} failed"):
        open_camera()

    assert len(fake.Picamera2.instances) == 1
    assert fake.Picamera2.open_count == 0


def test_a_control_the_camera_lacks_closes_the_camera_and_raises_camera_error(fake):
    fake.Picamera2.has_autofocus = False

    with pytest.raises(CameraError, match="LensPosition is not advertised"):
        open_camera(controls={"LensPosition": 2.0})

    assert fake.Picamera2.open_count == 0


# Sizes


def test_a_photo_as_large_as_the_sensor_is_taken(fake):
    camera = open_camera(size_px=fake.Picamera2.sensor_resolution)

    assert fake.Picamera2.instances[0].camera_config["main"]["size"] == fake.Picamera2.sensor_resolution
    camera.close()


@pytest.mark.parametrize("extra", [(2, 0), (0, 2)], ids=["wider", "higher"])
def test_a_photo_larger_than_the_sensor_is_refused_before_configuring(fake, extra):
    width, height = fake.Picamera2.sensor_resolution

    with pytest.raises(UnsupportedCameraSize, match=r"main stream .* larger than 1536 x 864.*imx708") as info:
        open_camera(size_px=(width + extra[0], height + extra[1]))

    assert (info.value.stream, info.value.largest_px) == ("main", (width, height))
    assert calls(fake.Picamera2.instances[0], "configure") == []
    assert fake.Picamera2.open_count == 0  # closed: a camera not closed cannot be opened again


@pytest.mark.parametrize(
    ("size", "lores", "largest"),
    [((1024, 768), (1280, 480), (1024, 768)), (None, (1600, 480), (1536, 864))],
    ids=["within-the-photo", "within-the-sensor"],
)
def test_a_lores_stream_larger_than_the_photo_is_refused(fake, size, lores, largest):
    with pytest.raises(UnsupportedCameraSize, match="lores stream") as info:
        Picamera2Camera(size_px=size, lores_size_px=lores)

    assert (info.value.stream, info.value.size_px, info.value.largest_px) == ("lores", lores, largest)
    assert fake.Picamera2.open_count == 0


def test_a_size_the_camera_lacks_is_not_retried_as_a_camera_failure(fake, monotonic):
    """A size is a setting to change: RecoveringCamera does not count it as a failure to retry."""
    with pytest.raises(UnsupportedCameraSize):
        RecoveringCamera(lambda: open_camera(size_px=(4608, 2592)), monotonic=monotonic)

    assert len(fake.Picamera2.instances) == 1 and fake.Picamera2.open_count == 0


# Capture


def test_capture_returns_a_jpeg_at_the_configured_size_and_quality(fake):
    camera = open_camera(size_px=(1024, 768), jpeg_quality=95)

    shot = camera.capture(TIMEOUT_S)

    with Image.open(io.BytesIO(shot.jpeg)) as jpeg:
        assert (jpeg.format, jpeg.size) == ("JPEG", (1024, 768))
        pixels = np.asarray(jpeg.convert("RGB"), dtype=float)
    assert np.abs(pixels.mean(axis=(0, 1)) - fake.Picamera2.colour).max() < 3
    # The quality reached the encoder: a lower one makes a smaller file of the same scene.
    fake.Picamera2.instances[0].options["quality"] = 20
    assert len(camera.capture(TIMEOUT_S).jpeg) < len(shot.jpeg)
    camera.close()


def test_capture_frame_is_rgb_at_half_the_lores_size_with_the_scene_colours(fake):
    fake.Picamera2.colour = (30, 90, 210)
    camera = open_camera()

    frame = camera.capture(TIMEOUT_S).frame

    assert (frame.mode, frame.size) == ("RGB", (LORES[0] // 2, LORES[1] // 2))
    pixels = np.asarray(frame, dtype=float)
    # Every pixel: the row padding of the YUV420 buffer (zeros: vivid green) must not show.
    assert np.abs(pixels - (30, 90, 210)).max() < 6
    camera.close()


def test_capture_waits_for_a_fresh_frame_and_releases_the_request(fake):
    camera = open_camera()

    camera.capture(TIMEOUT_S)

    picam2 = fake.Picamera2.instances[0]
    assert calls(picam2, "captured_request") == [{"wait": TIMEOUT_S, "flush": True}]
    assert all(request.released for request in picam2.requests)
    camera.close()


def test_capture_metadata_keeps_only_the_known_keys_present(fake):
    fake.Picamera2.has_autofocus = False  # no LensPosition in the metadata
    camera = open_camera(controls=camera_controls(exposure_time_us=10000))

    metadata = camera.capture(TIMEOUT_S).metadata

    assert set(metadata) == set(METADATA_KEYS) - {"LensPosition"}
    assert metadata["ExposureTime"] == 10000
    camera.close()


def test_capture_timeout_raises_camera_timeout(fake):
    camera = open_camera()
    fake.fail_next("captured_request", TimeoutError())

    with pytest.raises(CameraTimeout):
        camera.capture(TIMEOUT_S)

    camera.capture(TIMEOUT_S)  # the camera itself is still usable
    camera.close()


def test_capture_runtime_error_raises_camera_error(fake):
    camera = open_camera()
    fake.fail_next("captured_request", RuntimeError("Camera frontend has timed out!"))

    with pytest.raises(CameraError, match="frontend has timed out") as raised:
        camera.capture(TIMEOUT_S)

    assert not isinstance(raised.value, CameraTimeout)
    camera.close()


# Autofocus


def test_continuous_autofocus_sets_af_mode_in_the_controls(fake):
    camera = open_camera(controls={"AwbMode": 0}, autofocus="continuous")

    picam2 = fake.Picamera2.instances[0]
    assert picam2.camera_config["controls"] == {"AwbMode": 0, "AfMode": 2}
    camera.capture(TIMEOUT_S)
    assert calls(picam2, "autofocus_cycle") == []
    camera.close()


def test_cycle_autofocus_runs_a_cycle_before_each_capture(fake):
    camera = open_camera(autofocus="cycle")
    picam2 = fake.Picamera2.instances[0]

    camera.capture(TIMEOUT_S)
    camera.capture(TIMEOUT_S)

    assert "AfMode" not in picam2.camera_config["controls"]
    assert [name for name, _ in picam2.calls if name in ("autofocus_cycle", "captured_request")] == [
        "autofocus_cycle",
        "captured_request",
    ] * 2
    assert calls(picam2, "autofocus_cycle") == [{"wait": TIMEOUT_S, "signal_function": None}] * 2
    camera.close()


def test_cycle_autofocus_that_does_not_converge_is_logged_and_the_photo_taken(fake, caplog):
    fake.Picamera2.autofocus_succeeds = False
    camera = open_camera(autofocus="cycle")

    with caplog.at_level(logging.WARNING, logger="hw.camera"):
        shot = camera.capture(TIMEOUT_S)

    assert shot.jpeg
    assert "autofocus did not converge" in caplog.text
    camera.close()


def test_cycle_autofocus_timeout_raises_camera_timeout(fake):
    camera = open_camera(autofocus="cycle")
    fake.fail_next("autofocus_cycle", TimeoutError())

    with pytest.raises(CameraTimeout):
        camera.capture(TIMEOUT_S)

    assert calls(fake.Picamera2.instances[0], "captured_request") == []
    camera.close()


@pytest.mark.parametrize("autofocus", ["continuous", "cycle"])
def test_autofocus_on_a_camera_without_it_is_logged_and_ignored(fake, caplog, autofocus):
    fake.Picamera2.has_autofocus = False

    with caplog.at_level(logging.WARNING, logger="hw.camera"):
        camera = open_camera(autofocus=autofocus)
    camera.capture(TIMEOUT_S)

    assert "has no autofocus" in caplog.text
    picam2 = fake.Picamera2.instances[0]
    assert "AfMode" not in picam2.camera_config["controls"]
    assert calls(picam2, "autofocus_cycle") == []
    camera.close()


# Close


def test_close_releases_the_camera_and_is_safe_twice(fake):
    camera = open_camera()

    camera.close()
    camera.close()

    assert fake.Picamera2.open_count == 0
    assert len(calls(fake.Picamera2.instances[0], "close")) == 1
    with pytest.raises(CameraError, match="closed"):
        camera.capture(TIMEOUT_S)


def test_a_closed_recovering_camera_refuses_to_capture_and_never_reopens(fake, monotonic):
    camera = RecoveringCamera(lambda: open_camera(), monotonic=monotonic)
    camera.close()
    monotonic.now_s += 3600
    camera.recover()
    with pytest.raises(CameraError, match="closed"):
        camera.capture(TIMEOUT_S)
    assert fake.Picamera2.open_count == 0 and len(fake.Picamera2.instances) == 1


def test_close_that_fails_is_logged_not_raised(fake, caplog):
    camera = open_camera()
    fake.fail_next("close", RuntimeError("Failed to release camera"))

    with caplog.at_level(logging.WARNING, logger="hw.camera"):
        camera.close()

    assert "closing the camera failed: Failed to release camera" in caplog.text
    camera.close()  # nothing left to close


# Recovery


@pytest.fixture
def monotonic():
    return Monotonic()


@pytest.fixture
def recovering(fake, monotonic):
    camera = RecoveringCamera(lambda: open_camera(), max_failures=3, monotonic=monotonic)
    yield camera
    camera.close()


def test_timeout_closes_the_camera_until_it_recovers(fake, recovering, monotonic):
    fake.fail_next("captured_request", TimeoutError())

    with pytest.raises(CameraTimeout):
        recovering.capture(TIMEOUT_S)

    assert fake.Picamera2.open_count == 0
    status = recovering.status()
    assert (status.state, status.failures, status.retry_in_s) == ("recovering", 1, 1.0)
    with pytest.raises(CameraUnavailable):
        recovering.capture(TIMEOUT_S)


def test_recover_waits_for_the_back_off_then_reopens_one_camera(fake, recovering, monotonic):
    fake.fail_next("captured_request", TimeoutError())
    with pytest.raises(CameraTimeout):
        recovering.capture(TIMEOUT_S)

    monotonic.now_s += 0.9
    recovering.recover()
    assert len(fake.Picamera2.instances) == 1

    monotonic.now_s += 0.1
    recovering.recover()
    recovering.recover()
    assert len(fake.Picamera2.instances) == 2
    assert fake.Picamera2.open_count == 1
    assert fake.Picamera2.max_open_count == 1
    assert recovering.status().state == "ok"
    assert recovering.capture(TIMEOUT_S).jpeg


def test_busy_camera_on_reopen_counts_as_a_failure(fake, recovering, monotonic):
    fake.fail_next("captured_request", TimeoutError())
    with pytest.raises(CameraTimeout):
        recovering.capture(TIMEOUT_S)
    fake.fail_next("__init__", RuntimeError("Device or resource busy"))

    monotonic.now_s += 1
    recovering.recover()

    status = recovering.status()
    assert (status.state, status.failures, status.retry_in_s) == ("recovering", 2, 2.0)
    assert "Device or resource busy" in status.last_error
    assert fake.Picamera2.open_count == 0


def test_third_failure_in_a_row_raises_camera_failed(fake, recovering, monotonic):
    fake.fail_next("captured_request", TimeoutError())
    fake.fail_next("__init__", RuntimeError("Device or resource busy"), count=2)
    with pytest.raises(CameraTimeout):
        recovering.capture(TIMEOUT_S)
    monotonic.now_s += 1
    recovering.recover()

    monotonic.now_s += 2
    with pytest.raises(CameraFailed, match="3 times in a row"):
        recovering.recover()

    assert recovering.status().state == "failed"
    assert fake.Picamera2.open_count == 0


def test_successful_capture_resets_the_failure_count(fake, recovering, monotonic):
    for _ in range(2):
        fake.fail_next("captured_request", TimeoutError())
        with pytest.raises(CameraTimeout):
            recovering.capture(TIMEOUT_S)
        monotonic.now_s += recovering.status().retry_in_s
        recovering.recover()
    assert recovering.status().failures == 2

    recovering.capture(TIMEOUT_S)

    assert recovering.status() == CameraStatus(
        state="ok", failures=0, total_failures=2, last_error=None, retry_in_s=None
    )
    fake.fail_next("captured_request", TimeoutError())
    with pytest.raises(CameraTimeout):
        recovering.capture(TIMEOUT_S)
    assert recovering.status().retry_in_s == 1.0  # the back-off starts again at 1 s


def test_repeated_failures_and_recoveries_never_leak_a_camera(fake, recovering, monotonic):
    for cycle in range(20):
        fake.fail_next("captured_request", TimeoutError() if cycle % 2 else RuntimeError("dequeue failed"))
        with pytest.raises(CameraError):
            recovering.capture(TIMEOUT_S)
        assert fake.Picamera2.open_count == 0
        fake.fail_next("__init__", RuntimeError("Device or resource busy"))
        for _ in range(2):  # the first re-open finds the camera busy, the second succeeds
            monotonic.now_s += recovering.status().retry_in_s
            recovering.recover()
        assert fake.Picamera2.open_count == 1
        recovering.capture(TIMEOUT_S)

    assert len(fake.Picamera2.instances) == 21
    assert fake.Picamera2.max_open_count == 1


# Through the real command, on "hardware": the fake picamera2, gpiozero's mock pins.


@pytest.mark.parametrize(
    ("setting", "key"),
    [
        ("camera_size_px = [1600, 900]", "camera_size_px"),
        ("camera_lores_size_px = [1600, 480]", "camera_lores_size_px"),
    ],
)
def test_appliance_run_refuses_a_size_the_camera_lacks_with_exit_status_2(
    fake, tmp_path, run_config, monkeypatch, capsys, setting, key
):
    monkeypatch.setenv("GPIOZERO_PIN_FACTORY", "mock")
    monkeypatch.setattr(gpiozero.Device, "pin_factory", None)  # made from the variable, then forgotten
    run_config.write_text(run_config.read_text() + setting + "\n")
    data_dir = tmp_path / "data"

    status = main(["run", "--config", str(run_config), "--data-dir", str(data_dir), "--host", "127.0.0.1",
                   "--port", "0", "--duration-s", "5"])  # fmt: skip

    assert status == 2
    err = capsys.readouterr().err
    assert f"appliance: config error: {run_config}: {key}: [1600, " in err
    assert "is larger than 1536 x 864" in err
    assert fake.Picamera2.open_count == 0
