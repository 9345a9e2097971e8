"""The simulated camera (hw/camera.py): rendered scenes, replayed folders, injected failures."""

import io

import pytest
from PIL import Image

from hw.camera import SimulatedCamera
from hw.exc import CameraError, CameraTimeout


def test_rendered_scene_is_a_real_jpeg_with_a_frame():
    shot = SimulatedCamera(size_px=(800, 600)).capture(timeout_s=1)
    assert shot.jpeg[:2] == b"\xff\xd8"
    assert Image.open(io.BytesIO(shot.jpeg)).size == (800, 600)
    assert shot.frame.size == (320, 240) and shot.frame.mode == "RGB"


def test_replay_returns_files_byte_for_byte_in_order_and_loops(burst_dir):
    camera = SimulatedCamera(replay_dir=burst_dir)
    files = sorted(burst_dir.iterdir())
    shots = [camera.capture(timeout_s=1).jpeg for _ in range(len(files) + 1)]
    assert shots == [f.read_bytes() for f in files] + [files[0].read_bytes()]


def test_replay_skips_truncated_and_non_images_with_their_names(tmp_path, photo, caplog):
    (tmp_path / "a_truncated.jpg").write_bytes(photo[: len(photo) // 2])
    (tmp_path / "b_notes.txt").write_text("not an image")
    Image.new("RGB", (64, 64)).save(tmp_path / "c_image.png")
    (tmp_path / "d_good.jpg").write_bytes(photo)
    camera = SimulatedCamera(replay_dir=tmp_path)
    assert camera.capture(timeout_s=1).jpeg == photo
    for name in ("a_truncated.jpg", "b_notes.txt", "c_image.png"):
        assert name in caplog.text


def test_a_replay_folder_without_a_decodable_jpeg_is_refused_at_once(tmp_path, photo):
    (tmp_path / "x.jpg").write_bytes(b"nope")
    (tmp_path / "y.jpg").write_bytes(photo[:1000])  # truncated: its header alone is a JPEG's
    with pytest.raises(CameraError, match="holds no decodable JPEG \\(2 files\\)"):
        SimulatedCamera(replay_dir=tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(CameraError, match="holds no decodable JPEG \\(0 files\\)"):
        SimulatedCamera(replay_dir=tmp_path / "empty")  # not a rendered scene instead


def test_replay_of_photos_gone_bad_meanwhile_is_a_camera_error(tmp_path, photo):
    (tmp_path / "x.jpg").write_bytes(photo)
    camera = SimulatedCamera(replay_dir=tmp_path)
    (tmp_path / "x.jpg").write_bytes(b"nope")
    with pytest.raises(CameraError, match="no usable JPEG"):
        camera.capture(timeout_s=1)


def test_missing_replay_folder_is_a_camera_error(tmp_path):
    with pytest.raises(CameraError, match="does not exist"):
        SimulatedCamera(replay_dir=tmp_path / "missing")


def test_injected_failure_and_slow_camera_time_out():
    camera = SimulatedCamera(size_px=(64, 48))
    camera.inject_failure(CameraTimeout("wedged"))
    with pytest.raises(CameraTimeout, match="wedged"):
        camera.capture(timeout_s=1)
    assert camera.capture(timeout_s=1).jpeg  # the next one works
    with pytest.raises(TimeoutError):
        SimulatedCamera(size_px=(64, 48), capture_time_s=0.2).capture(timeout_s=0.05)
