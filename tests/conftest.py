import contextlib
import datetime
import errno
import importlib
import itertools
import os
import queue
import re
import shutil
import subprocess
import sys
import threading
import time
import types
import zipfile
from pathlib import Path

import pytest
import schedule
import webtest
from mqtt_broker import Broker, mosquitto_path
from picamera2_wheel import WheelUnavailable, download_picamera2_wheel
from s3_server import S3Server
from usb_sticks import FSTYPES, Sticks, missing_tools
from web_client import HOST, METADATA, OLD_DAY, TOKEN, app_over, shoot

from appliance import thumbnails
from appliance.exif import Identity
from appliance.loop import Health, LoopSettings, MainLoop
from appliance.status import StatusCollector
from appliance.store import CaptureStore, IndexReader
from appliance.web import WebDeps, WebServer, make_app
from hw import system
from hw.camera import RecoveringCamera, SimulatedCamera
from hw.clock import ManualClock
from hw.lights import Lights, LightsSettings
from hw.system import DiskUsage, Probes
from hw.triggers import GateSettings, TriggerGate

SAMPLES = Path(__file__).resolve().parents[2] / "shared" / "samples"
FAKE_PICAMERA2 = Path(__file__).parent / "fake_picamera2"


@pytest.fixture
def samples() -> Path:
    """The real photos in ../shared/samples (see LICENSES.txt there)."""
    if not SAMPLES.is_dir():
        pytest.skip(f"sample photos not found at {SAMPLES}")
    return SAMPLES


@pytest.fixture(scope="session")
def picamera2_wheel(pytestconfig):
    """The picamera2 wheel as a zip file (picamera2 cannot be imported off a Pi; its source is
    read): ``$PICAMERA2_WHEEL`` when set, else the one :func:`download_picamera2_wheel` gets.
    Skips when it cannot be had, except under CI, where it fails."""
    path = os.environ.get("PICAMERA2_WHEEL")
    if path and not Path(path).is_file():
        pytest.fail(f"PICAMERA2_WHEEL={path}: no such file; point it at a picamera2 wheel, or unset it "
                    "to let the tests download one", pytrace=False)  # fmt: skip
    unavailable = None
    try:
        path = path or download_picamera2_wheel(pytestconfig)
    except WheelUnavailable as exc:
        unavailable = str(exc)
    if unavailable and os.environ.get("CI") == "true":  # outside the except: one line, not two tracebacks
        pytest.fail(unavailable, pytrace=False)
    if unavailable:
        pytest.skip(unavailable)
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
def tmpfs(tmp_path):
    """``tmpfs(size, name)``: a real filesystem of ``size`` (``"2m"``, ``"512m"``: tmpfs's own
    units) mounted at ``tmp_path / name``, unmounted after the test.  Skips where mounting is not
    allowed (it needs root)."""
    mounted = []

    def mount(size: str, name: str = "fs") -> Path:
        mount_point = tmp_path / name
        mount_point.mkdir()
        result = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount_point)], capture_output=True
        )
        if result.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here (needs root): {result.stderr.decode().strip()}")
        mounted.append(mount_point)
        return mount_point

    yield mount
    for mount_point in mounted:
        subprocess.run(["umount", "-l", str(mount_point)], check=True)


@pytest.fixture
def usb_sticks(tmp_path):
    """``usb_sticks(fstype="vfat", *, size_bytes=64 MiB, label="TRAPDATA", mount_point=None,
    mount=True)``: real FAT32 (fusefat), exFAT (exfat-fuse) or ext4 (loop) sticks in image files
    (see tests/usb_sticks.py: ``pull()``, ``remount_read_only()``, ``unmount()``, ``files()``),
    all unmounted and detached after the test, whatever happened.  Skips where the tools (or
    root) are missing, except under CI, where it fails."""
    sticks = Sticks(tmp_path / "sticks")
    make = sticks.__call__

    def checked(fstype: str = "vfat", **options):
        missing = missing_tools(fstype)
        if missing:
            reason = f"cannot make a {fstype} stick here: missing {', '.join(missing)}"
            if os.environ.get("CI") == "true":
                pytest.fail(reason, pytrace=False)
            pytest.skip(reason)
        return make(fstype, **options)

    yield checked
    sticks.cleanup()


@pytest.fixture(scope="session")
def rclone_binary() -> str:
    """The path of Debian's ``rclone``.  Skips without it, except under CI, where it fails."""
    found = shutil.which("rclone")
    if found is None:
        reason = "rclone is not installed: apt install rclone"
        if os.environ.get("CI") == "true":
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason)
    return found


_BUCKET_NUMBERS = itertools.count(1)


@pytest.fixture(scope="module")
def s3_module_server(tmp_path_factory):
    """One S3 server (tests/s3_server.py) for a whole test module: starting one takes half a
    second.  Tests use :func:`s3_server`."""
    server = S3Server(tmp_path_factory.mktemp("s3-server"))
    with server.start():
        yield server


@pytest.fixture
def s3_server(s3_module_server) -> S3Server:
    """The module's real S3 server (moto) on 127.0.0.1, running and answering when the test
    starts, whatever the test before did to it (paused, stopped); ``.endpoint``,
    ``.credentials``, ``.rclone_config(path)``, ``.make_bucket(name)``, ``.pause()``,
    ``.resume()``, ``.stop()``, ``.start()``, ``.requests(method, prefix)``.  Each test makes
    its own buckets (:func:`s3_bucket`): a restart empties the server."""
    s3_module_server.resume()
    return s3_module_server.start()


@pytest.fixture
def s3_bucket(s3_server, request) -> str:
    """A new, empty bucket on :func:`s3_server`, named for the test."""
    name = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower())[:50].strip("-")
    return s3_server.make_bucket(f"{name}-{next(_BUCKET_NUMBERS)}")


@pytest.fixture(scope="session")
def mosquitto_binary() -> str:
    """The path of Debian's ``mosquitto`` (in /usr/sbin, outside a user's PATH).  Skips without
    it, except under CI, where it fails."""
    found = mosquitto_path()
    if found is None:
        reason = "mosquitto is not installed: apt install mosquitto"
        if os.environ.get("CI") == "true":
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason)
    return found


@pytest.fixture
def mqtt_broker(mosquitto_binary, tmp_path) -> Broker:
    """A fresh real MQTT broker (tests/mqtt_broker.py: mosquitto) on 127.0.0.1 and a free port,
    anonymous, accepting connects when the test starts, stopped after it: ``.host``, ``.port``,
    ``.stop()``, ``.start()`` (same port, retained messages kept), ``.kill()``, ``.log()``.
    A new one for each test, so that no retained message leaks from one test to the next."""
    with Broker(tmp_path / "mosquitto") as broker:
        yield broker


@pytest.fixture
def mqtt_broker_auth(mosquitto_binary, tmp_path) -> Broker:
    """As :func:`mqtt_broker`, refusing anonymous clients: users "trap" (reads and writes
    ``appliance/trap/#`` and ``homeassistant/#``), "watcher" (reads everything) and "other"
    (only writes ``appliance/other/#``), their passwords in ``.users``, written to a file by
    ``.password_file(user, path)``."""
    with Broker(tmp_path / "mosquitto-auth", auth=True) as broker:
        yield broker


@pytest.fixture
def mqtt_broker_tls(mosquitto_binary, tmp_path) -> Broker:
    """As :func:`mqtt_broker`, taking TLS only, with a certificate for 127.0.0.1 signed by a
    throw-away CA whose certificate is ``.ca_path``."""
    with Broker(tmp_path / "mosquitto-tls", tls=True) as broker:
        yield broker


@pytest.fixture(params=FSTYPES)
def stick_fstype(request) -> str:
    """Each stick filesystem in turn: "vfat" (FAT32), "exfat", "ext4"."""
    return request.param


@pytest.fixture
def tiny_fs(tmpfs):
    """A real 2 MiB tmpfs: writes past it fail with ENOSPC, as on a full SD card."""
    return tmpfs("2m", "tiny")


def disk_full(step: str) -> OSError:
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), step)


def _where(path, dir_fd=None) -> str:
    """The path a system call acts on: ``path`` relative to the folder ``dir_fd`` (as the store's
    calls go, see appliance.datadir), or the folder a descriptor ``path`` is open on."""
    if isinstance(path, int):
        return os.readlink(f"/proc/self/fd/{path}")
    if dir_fd is not None:
        return os.path.join(os.readlink(f"/proc/self/fd/{dir_fd}"), path)
    return os.fspath(path)


class FaultyDisk:
    """Makes a file-system step of the store (open, write, fsync, rename, folder open, unlink, list)
    raise ``error(step)``: the ``fail_at``-th step, the first of that name, with ``(name, n)`` the
    n-th of that name, or every step for which ``fail_at(name, path)`` is true (``path``: the
    file's whole path, whether the call named it or went through a folder's descriptor).
    ``fail_at`` 0 never fails and only records the steps: ``steps`` their names in order,
    ``paths`` what each acted on."""

    def __init__(self, monkeypatch, fail_at, error):
        self.fail_at, self.error, self.steps, self.paths = fail_at, error, [], []
        real = {
            name: getattr(os, name) for name in ("open", "write", "fsync", "replace", "unlink", "scandir")
        }
        real_open = open
        step = self.step

        def os_open(path, flags, mode=0o777, *, dir_fd=None):
            step("open folder" if flags & os.O_DIRECTORY else "open", _where(path, dir_fd))
            return real["open"](path, flags, mode, dir_fd=dir_fd)

        def replace(src, dst, *, src_dir_fd=None, dst_dir_fd=None):
            step("rename", _where(src, src_dir_fd))
            return real["replace"](src, dst, src_dir_fd=src_dir_fd, dst_dir_fd=dst_dir_fd)

        def unlink(path, *, dir_fd=None):
            step("unlink", _where(path, dir_fd))
            return real["unlink"](path, dir_fd=dir_fd)

        def scandir(path="."):
            step("list", _where(path))
            return real["scandir"](path)

        def builtin_open(file, *args, **kwargs):
            step("open", _where(file))
            return real_open(file, *args, **kwargs)

        monkeypatch.setattr("appliance.store.salvage.open", builtin_open, raising=False)
        monkeypatch.setattr(os, "open", os_open)
        monkeypatch.setattr(
            os, "write", lambda fd, data: (step("write", _where(fd)), real["write"](fd, data))[1]
        )
        monkeypatch.setattr(os, "fsync", lambda fd: (step("fsync", _where(fd)), real["fsync"](fd))[1])
        monkeypatch.setattr(os, "replace", replace)
        monkeypatch.setattr(os, "unlink", unlink)
        monkeypatch.setattr(os, "scandir", scandir)

    def step(self, name, path=None):
        self.steps.append(name)
        self.paths.append(path)
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


@pytest.fixture(scope="session")
def clockshift_library(tmp_path_factory) -> Path:
    """tests/clockshift/clockshift.c built as a shared library for LD_PRELOAD (see its comment)."""
    built = tmp_path_factory.mktemp("clockshift") / "clockshift.so"
    source = Path(__file__).parent / "clockshift" / "clockshift.c"
    try:
        subprocess.run(["gcc", "-shared", "-fPIC", "-O2", "-o", str(built), str(source), "-ldl"],
                       check=True, capture_output=True)  # fmt: skip
    except (OSError, subprocess.CalledProcessError) as exc:
        reason = f"cannot build the clock shim with gcc: {exc}"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    return built


class ShiftedClock:
    """The wall clock of the processes started with :meth:`env`, ``seconds`` away from the real
    one (:meth:`set` moves it while they run), and synchronised as far as the kernel says."""

    def __init__(self, library: Path, folder: Path):
        self.library, self.file = library, folder / "clock-shift"
        self.set(0)

    def set(self, seconds: float) -> None:
        tmp = self.file.with_name(".clock-shift.tmp")
        tmp.write_text(f"{int(seconds)}\n")
        os.replace(tmp, self.file)

    def env(self) -> dict:
        return os.environ | {"LD_PRELOAD": str(self.library), "CLOCKSHIFT_FILE": str(self.file),
                             "CLOCKSHIFT_SYNCED": "1"}  # fmt: skip


@pytest.fixture
def shifted_clock(clockshift_library, tmp_path) -> ShiftedClock:
    return ShiftedClock(clockshift_library, tmp_path)


# --- Captures and the web app -----------------------------------------------------------------------


@pytest.fixture
def captures(store) -> list[dict]:
    """Five captures, oldest first: a motion and a timelapse one on OLD_DAY, then a button, a motion
    (with camera metadata) and a manual one (without a thumbnail) in the last half hour."""
    camera = SimulatedCamera(size_px=(64, 48))
    old = ManualClock(datetime.datetime.combine(OLD_DAY, datetime.time(8), datetime.UTC))
    recent = ManualClock(datetime.datetime.now(datetime.UTC) - datetime.timedelta(minutes=30))
    plan = [
        (old, "motion", True, None),
        (old, "timelapse", True, None),
        (recent, "button", True, None),
        (recent, "motion", True, METADATA),
        (recent, "manual", False, None),
    ]
    rows = []
    for clock, trigger, with_thumbnail, metadata in plan:
        jpeg, thumbnail = shoot(camera)
        thumbnail = thumbnail if with_thumbnail else None
        rows.append(store.add(jpeg, thumbnail, timestamp=clock.now(), trigger=trigger, metadata=metadata))
    return rows


@pytest.fixture
def many(store) -> list[dict]:
    """63 captures, oldest first: 60 a minute apart on OLD_DAY from 08:00 UTC, motion and button in
    turn, then 3 motion ones the day after."""
    jpeg, _ = shoot(SimulatedCamera(size_px=(64, 48)))
    clock = ManualClock(datetime.datetime.combine(OLD_DAY, datetime.time(8), datetime.UTC), step_s=60)
    rows = [
        store.add(jpeg, None, timestamp=clock.now(), trigger=("motion", "button")[i % 2]) for i in range(60)
    ]
    clock.wall += datetime.timedelta(days=1)
    return rows + [store.add(jpeg, None, timestamp=clock.now(), trigger="motion") for _ in range(3)]


@pytest.fixture
def client(store):
    """``client(**options)``: the app over ``store`` (see :func:`app_over`) as a webtest.TestApp
    whose requests come to Host HOST."""

    def make(**options) -> webtest.TestApp:
        app = app_over(IndexReader(store.data_dir), **options)
        return webtest.TestApp(app, extra_environ={"HTTP_HOST": HOST})

    return make


@pytest.fixture
def hardware(store, tmp_path, monkeypatch):
    """The real hardware parts as main() wires them: a recovering camera over a simulated one, a
    trigger gate, lights without pins, and probes reading a thermal-zone file (51.7 °C) and a
    vcgencmd that reports nothing wrong; ``hardware.parts()`` gives them as StatusCollector
    takes them.  The kernel's clock is synchronised unless ``hardware.clock_synced`` is set False.
    ``hardware.camera`` may be replaced."""
    parts = types.SimpleNamespace(clock_synced=True, simulated=SimulatedCamera(size_px=(64, 48)))
    monkeypatch.setattr("hw.clock.clock_synced", lambda: parts.clock_synced)
    parts.camera = RecoveringCamera(lambda: parts.simulated, max_failures=2)
    parts.gate = TriggerGate(GateSettings(cooldown_s=10))
    parts.thermal = tmp_path / "thermal_zone0_temp"
    parts.thermal.write_text("51700\n")
    parts.vcgencmd = tmp_path / "vcgencmd"
    parts.vcgencmd.write_text("#!/bin/sh\necho throttled=0x0\n")
    parts.vcgencmd.chmod(0o755)
    probes = Probes(
        store.data_dir, ttl_s=0, thermal_path=parts.thermal, throttled_command=[str(parts.vcgencmd)]
    )

    lights = Lights(LightsSettings())

    def collector_parts() -> dict:
        return {"camera": parts.camera, "gate": parts.gate, "probes": probes, "lights": lights}

    parts.parts = collector_parts
    return parts


@pytest.fixture
def main_loop(tmp_path, monkeypatch):
    """A real MainLoop with a simulated camera running in a background thread, over a store in
    ``tmp_path / "data"``; ``main_loop.app(token)`` is the app handing its actions to the loop's
    own queue (as main() builds it).  The capture store is opened in the loop's thread, as in
    main(): its SQLite connection belongs to the thread that opened it."""
    monkeypatch.setattr("appliance.loop.MAX_WAIT_S", 0.05)  # the loop sees the stop request soon
    data_dir = tmp_path / "data"
    events, health, started = queue.Queue(), Health(), queue.Queue()

    def run() -> None:
        try:
            store = CaptureStore(data_dir)
        except BaseException as exc:
            started.put(exc)
            raise
        try:
            loop = MainLoop(
                events=events,
                camera=SimulatedCamera(size_px=(64, 48)),
                store=store,
                scheduler=schedule.Scheduler(),
                settings=LoopSettings(1.0, 32, Identity("Raspberry Pi", "simulated", "trap-07")),
                health=health,
            )
            started.put(loop)
            loop.run()
        finally:
            store.close()

    thread = threading.Thread(target=run, name="main loop")
    thread.start()
    loop = started.get(timeout=10)
    assert isinstance(loop, MainLoop), loop
    reader = IndexReader(data_dir)

    def app(token: str = TOKEN):
        return app_over(
            reader, started_monotonic=time.monotonic(), disk_usage=system.disk_usage, health=health,
            submit=events.put, token=token,
        )  # fmt: skip

    yield types.SimpleNamespace(app=app, reader=reader, submit=events.put)
    loop.request_stop("test over")
    thread.join(timeout=10)
    assert not thread.is_alive() and loop.fatal is None


@pytest.fixture
def loop_app(main_loop):
    """The app over :func:`main_loop` (token TOKEN) as a webtest.TestApp whose requests come to
    Host HOST."""
    app = webtest.TestApp(main_loop.app(), extra_environ={"HTTP_HOST": HOST})
    return types.SimpleNamespace(app=app, reader=main_loop.reader)


@pytest.fixture
def live(store, captures):
    """The app (actions on, behind a loop that never answers) served by WebServer on a free port."""
    app = app_over(
        IndexReader(store.data_dir), started_monotonic=time.monotonic(), token=TOKEN,
        submit=queue.Queue().put,
    )  # fmt: skip
    server = WebServer(app, "127.0.0.1", 0)
    yield server
    server.stop()


@pytest.fixture
def server(store, photo):
    clock = ManualClock(datetime.datetime.now(datetime.UTC) - datetime.timedelta(minutes=5))
    thumbnail = thumbnails.from_jpeg(photo, 320)
    rows = [store.add(photo, thumbnail, timestamp=clock.now(), trigger=t) for t in ("button", "motion")]
    store.add(photo, None, timestamp=clock.now(), trigger="manual")  # its thumbnail could not be made
    disk = DiskUsage(1000, 600, 400)
    reader = IndexReader(store.data_dir)
    status = StatusCollector(
        reader, mode="simulation", started_monotonic=time.monotonic() - 3725, disk_usage=lambda path: disk
    )
    server = WebServer(make_app(WebDeps(reader, status.collect)), "127.0.0.1", 0)
    server.rows = rows
    yield server
    server.stop()


@pytest.fixture
def filled(store, burst_dir):
    """The store with real photos: a button burst of 3, a motion capture taken with an unsynced
    clock, and 2 timelapse captures a day later.  Returns the rows in capture order."""
    photos = sorted(burst_dir.glob("*.JPG"))
    clock = ManualClock(datetime.datetime(2026, 6, 1, 21, 0, tzinfo=datetime.UTC), step_s=0.5)
    rows = [
        store.add(
            jpeg.read_bytes(),
            None,
            timestamp=clock.now(),
            trigger="button",
            event_id="burst1",
            metadata={"exif": {"Make": "Raspberry Pi", "ExposureTime": 0.01}},
        )  # fmt: skip
        for jpeg in photos[:3]
    ]
    clock.clock_synced = False
    rows.append(store.add(photos[3].read_bytes(), None, timestamp=clock.now(), trigger="motion"))
    clock.clock_synced = True
    clock.wall += datetime.timedelta(days=1)
    rows += [
        store.add(jpeg.read_bytes(), None, timestamp=clock.now(), trigger="timelapse") for jpeg in photos[4:6]
    ]
    store.set_protected(rows[1]["id"], True)
    return rows
