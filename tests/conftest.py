import subprocess
from pathlib import Path

import pytest

from appliance.store import CaptureStore
from hw.clock import ManualClock

SAMPLES = Path(__file__).resolve().parents[2] / "shared" / "samples"


@pytest.fixture
def samples() -> Path:
    """The real photos in ../shared/samples (see LICENSES.txt there)."""
    if not SAMPLES.is_dir():
        pytest.skip(f"sample photos not found at {SAMPLES}")
    return SAMPLES


@pytest.fixture
def burst_dir(samples) -> Path:
    return samples / "camtrap-dp-burst"


@pytest.fixture
def photo(burst_dir) -> bytes:
    """A real 2048x1440 camera-trap JPEG."""
    return (burst_dir / "20210531082538-RCNX0031.JPG").read_bytes()


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def store(tmp_path):
    store = CaptureStore(tmp_path / "data")
    yield store
    store.close()


@pytest.fixture
def tiny_fs(tmp_path):
    """A real 2 MiB tmpfs: writes past it fail with ENOSPC, as on a full SD card."""
    mount_point = tmp_path / "tiny"
    mount_point.mkdir()
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount_point)], capture_output=True
    )
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {result.stderr.decode().strip()}")
    yield mount_point
    subprocess.run(["umount", "-l", str(mount_point)], check=True)
