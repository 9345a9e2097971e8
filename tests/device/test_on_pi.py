"""On a Raspberry Pi with a camera attached: ``APPLIANCE_DEVICE_TESTS=1 .venv/bin/python -m pytest
tests/device -v`` (the venv made with ``--system-site-packages`` so that picamera2 is found).
Pins are gpiozero's default factory (lgpio on Bookworm); nothing needs to be pressed."""

import io
import time

from gpiozero import DigitalInputDevice
from PIL import Image

from hw import system
from hw.camera import Picamera2Camera, RecoveringCamera
from hw.lights import Lights, LightsSettings


def test_a_real_capture_is_a_jpeg_with_a_frame_and_metadata():
    camera = Picamera2Camera(size_px=(2028, 1520))
    try:
        camera.capture(5)  # the first frames settle exposure
        started = time.monotonic()
        shot = camera.capture(5)
        print(f"capture took {(time.monotonic() - started) * 1000:.0f} ms")
    finally:
        camera.close()
    assert Image.open(io.BytesIO(shot.jpeg)).size == (2028, 1520)
    assert shot.frame.mode == "RGB" and shot.frame.size == (320, 240)
    assert {"SensorTimestamp", "ExposureTime", "AnalogueGain"} <= set(shot.metadata)


def test_the_camera_closes_and_opens_again_many_times_without_leaking():
    for _ in range(5):
        camera = RecoveringCamera(lambda: Picamera2Camera(size_px=(640, 480)))
        camera.capture(5)
        camera.close()


def test_a_light_pin_is_driven_and_released():
    lights = Lights(LightsSettings("GPIO27"))
    with lights.flash():
        assert lights._flash.value == 1
    assert lights._flash.value == 0
    lights.close()
    DigitalInputDevice("GPIO27").close()  # released: the pin can be used again


def test_system_probes_answer_on_a_pi():
    assert 0 < system.cpu_temperature_c() < 100
    assert system.throttled() is not None
