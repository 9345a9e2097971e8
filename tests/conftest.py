import contextlib
import errno
import importlib
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from appliance.store import CaptureStore
from hw.clock import ManualClock

SAMPLES = Path(__file__).resolve().parents[2] / "shared" / "samples"
FAKE_PICAMERA2 = Path(__file__).parent / "fake_picamera2"


@pytest.fixture
def samples() -> Path:
    """The real photos in ../shared/samples (see LICENSES.txt there)."""
    if not SAMPLES.is_dir():
        pytest.skip(f"sample photos not found at {SAMPLES}")
    return SAMPLES


@pytest.fixture(scope="session")
def picamera2_wheel():
    """The picamera2 wheel at ``$PICAMERA2_WHEEL`` as a zip file (picamera2 cannot be imported off
    a Pi; its source is read).  Skips without it, except under CI, where .ci/run must download it."""
    path = os.environ.get("PICAMERA2_WHEEL")
    if not path:
        reason = "PICAMERA2_WHEEL is not set (path to a wheel from: pip download --no-deps picamera2)"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{reason}; under CI, .ci/run must download the picamera2 wheel")
        pytest.skip(reason)
    with zipfile.ZipFile(path) as zf:
        yield zf


@pytest.fixture
def fake_picamera2(picamera2_wheel, tmp_path, monkeypatch):
    """The fake ``picamera2`` package (tests/fake_picamera2, its signatures checked against the
    wheel), imported afresh so its class-level state starts clean, whose ``converters`` is the
    wheel's real file."""
    for name in ("picamera2", "picamera2.converters"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    monkeypatch.syspath_prepend(str(FAKE_PICAMERA2))
    fake = importlib.import_module("picamera2")
    fake.install_converters(picamera2_wheel.read("picamera2/converters.py"), tmp_path)
    yield fake
    # Forget the fake package (monkeypatch then restores whatever was there before).
    for name in [n for n in sys.modules if n.split(".")[0] == "picamera2"]:
        del sys.modules[name]


@pytest.fixture
def burst_dir(samples) -> Path:
    return samples / "camtrap-dp-burst"


@pytest.fixture
def photo(burst_dir) -> bytes:
    """A real 2048x1440 camera-trap JPEG."""
    return (burst_dir / "20210531082538-RCNX0031.JPG").read_bytes()


# For runs of the real command: whatever the free space of the machine running the tests, cleanup
# deletes nothing; and simulated triggers come faster than a real sensor's, so none is held back.
RUN_CONFIG = """\
trigger_cooldown_s = 0
max_captures_per_minute = 0
cleanup_start_free_percent = 0
cleanup_start_free_bytes = 0
cleanup_stop_free_percent = 0
cleanup_stop_free_bytes = 0
headroom_hours = 0
capture_min_free_bytes = 0
"""


@pytest.fixture
def run_config(tmp_path) -> Path:
    """A config file for runs of the real command (see :data:`RUN_CONFIG`)."""
    config = tmp_path / "run-config.toml"
    config.write_text(RUN_CONFIG)
    return config


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


def disk_full(step: str) -> OSError:
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), step)


class FaultyDisk:
    """Makes a file-system step of the store (open, write, fsync, rename, folder open, unlink, list)
    raise ``error(step)``: the ``fail_at``-th step, the first of that name, with ``(name, n)`` the
    n-th of that name, or every step for which ``fail_at(name, path)`` is true.  ``fail_at`` 0
    never fails and only records the steps."""

    def __init__(self, monkeypatch, fail_at, error):
        self.fail_at, self.error, self.steps = fail_at, error, []
        real_open, real_fsync, real_replace, real_os_open, real_unlink, real_scandir = (
            open, os.fsync, os.replace, os.open, os.unlink, os.scandir
        )  # fmt: skip
        step = self.step

        class File:
            def __init__(self, *args, **kwargs):
                step("open")
                self._file = real_open(*args, **kwargs)

            def write(self, data):
                step("write")
                return self._file.write(data)

            def __getattr__(self, name):
                return getattr(self._file, name)

            def __enter__(self):
                return self

            def __exit__(self, *exc):
                self._file.close()

        monkeypatch.setattr("appliance.store.open", File, raising=False)
        monkeypatch.setattr(os, "fsync", lambda fd: (step("fsync"), real_fsync(fd))[1])
        monkeypatch.setattr(os, "replace", lambda a, b: (step("rename", a), real_replace(a, b))[1])
        monkeypatch.setattr(
            os, "open", lambda p, *a, **k: (step("open folder", p), real_os_open(p, *a, **k))[1]
        )
        monkeypatch.setattr(os, "unlink", lambda p, *a, **k: (step("unlink", p), real_unlink(p, *a, **k))[1])
        monkeypatch.setattr(os, "scandir", lambda p=".": (step("list", p), real_scandir(p))[1])

    def step(self, name, path=None):
        self.steps.append(name)
        if callable(self.fail_at):
            if self.fail_at(name, path):
                raise self.error(name)
            return
        wanted, n = self.fail_at if isinstance(self.fail_at, tuple) else (self.fail_at, 1)
        if len(self.steps) == wanted or (name == wanted and self.steps.count(name) == n):
            raise self.error(name)


@pytest.fixture
def faulty_disk(monkeypatch):
    """``faulty_disk(fail_at, error=disk_full)``: a context manager installing a :class:`FaultyDisk`."""

    @contextlib.contextmanager
    def install(fail_at=0, error=disk_full):
        with monkeypatch.context() as patch:
            yield FaultyDisk(patch, fail_at, error)

    return install
