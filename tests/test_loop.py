import contextlib
import datetime
import json
import logging
import queue
import re
import threading
import time

import pytest
import schedule
from gpiozero.pins.mock import MockFactory
from PIL import ExifTags, Image

from appliance.exc import NotCaptured, UnknownCapture
from appliance.exif import Identity
from appliance.loop import LoopSettings, MainLoop, Request, guarded
from appliance.store import CaptureStore, CorruptDatabaseError, IndexReader
from hw.camera import CameraStatus, RecoveringCamera, SimulatedCamera
from hw.clock import ManualClock
from hw.exc import CameraError, CameraFailed, CameraTimeout
from hw.lights import Lights, LightsSettings
from hw.triggers import TriggerEvent

DAY = datetime.timedelta(days=1)


def make_loop(store, camera=None, scheduler=None, clock=None, burst_count=1, burst_interval_s=0.5, **options):
    events = queue.Queue()
    loop = MainLoop(
        events=events,
        camera=camera or SimulatedCamera(size_px=(640, 480)),
        store=store,
        scheduler=scheduler or schedule.Scheduler(),
        settings=LoopSettings(
            capture_timeout_s=1.0,
            thumbnail_max_px=320,
            identity=Identity("Raspberry Pi", "simulated", "trap-07"),
            burst_count=burst_count,
            burst_interval_s=burst_interval_s,
        ),
        clock=clock,
        **options,
    )
    return loop, events


def trigger(source="button"):
    return TriggerEvent(source, time.monotonic())


def test_each_event_becomes_a_stored_capture_with_its_trigger(store):
    loop, events = make_loop(store)
    for source in ("button", "motion", "manual"):
        events.put(trigger(source))
    loop.run(duration_s=0.5)
    rows = IndexReader(store.data_dir).latest(10)
    assert [r["trigger"] for r in rows] == ["manual", "motion", "button"]
    assert all((store.data_dir / r["thumbnail_path"]).is_file() for r in rows)


def test_camera_failure_is_logged_and_the_loop_goes_on(store, caplog):
    camera = SimulatedCamera(size_px=(64, 48))
    loop, events = make_loop(store, camera)
    camera.inject_failure(CameraTimeout("no frame within 1.0 s"))
    events.put(trigger())
    events.put(trigger())
    loop.run(duration_s=0.3)
    assert "capture for button trigger failed: no frame within 1.0 s" in caplog.text
    assert len(IndexReader(store.data_dir).latest(10)) == 1


def test_full_disk_loses_the_capture_but_not_the_loop(tiny_fs, burst_dir, caplog):
    store = CaptureStore(tiny_fs)
    loop, events = make_loop(store, SimulatedCamera(replay_dir=burst_dir))
    for _ in range(12):  # 12 x 290 kB do not fit in 2 MiB
        events.put(trigger())
    loop.run(duration_s=1.0)
    stored = IndexReader(tiny_fs).latest(20)
    store.close()
    assert 0 < len(stored) < 12
    assert "capture not stored" in caplog.text and "No space left" in caplog.text


def test_failing_job_does_not_stop_other_jobs(store, caplog):
    scheduler = schedule.Scheduler()
    ran = []
    scheduler.every(0.05).seconds.do(guarded("broken", lambda: 1 / 0))
    scheduler.every(0.05).seconds.do(guarded("counter", lambda: ran.append(1)))
    loop, _ = make_loop(store, scheduler=scheduler)
    loop.run(duration_s=0.5)
    assert len(ran) >= 3
    assert "scheduled job broken failed" in caplog.text


def test_jobs_run_again_after_the_wall_clock_jumps_back_a_year(store, monkeypatch, caplog):
    scheduler = schedule.Scheduler()
    ran = threading.Event()
    job = scheduler.every(60).seconds.do(ran.set)
    loop, _ = make_loop(store, scheduler=scheduler)
    # As if the clock were set back a year after the job was scheduled: schedule would wait a year.
    job.next_run = datetime.datetime.now() + datetime.timedelta(days=365)
    real_time = time.time
    calls = iter(range(10**6))
    year_s = 365 * 86400
    monkeypatch.setattr(time, "time", lambda: real_time() - (year_s if next(calls) > 0 else 0))
    with caplog.at_level(logging.WARNING):
        loop.run(duration_s=1.0)
    assert ran.is_set()
    assert "wall clock jumped by -31536000 s" in caplog.text


def test_stop_request_lets_the_capture_in_flight_finish(store):
    camera = SimulatedCamera(size_px=(64, 48), capture_time_s=0.3)
    loop, events = make_loop(store, camera)
    events.put(trigger())
    events.put(trigger())
    # The stop request arrives while the first capture is in flight (the store is the loop's, so
    # the loop runs on this thread and the request comes from another, like a signal would).
    threading.Timer(0.1, loop.request_stop, args=("test",)).start()
    started = time.monotonic()
    loop.run(duration_s=5)
    assert time.monotonic() - started < 1.0
    assert len(IndexReader(store.data_dir).latest(10)) == 1


@pytest.mark.parametrize("duration_s", [0.0, 0.2])
def test_duration_bounds_the_run(store, duration_s):
    loop, _ = make_loop(store)
    started = time.monotonic()
    loop.run(duration_s=duration_s)
    assert duration_s <= time.monotonic() - started < duration_s + 1.0


def test_photos_taken_carry_exif_and_replayed_photos_keep_their_bytes(store, burst_dir):
    loop, events = make_loop(store)
    events.put(trigger())
    loop.run(duration_s=0.3)
    replay, replay_events = make_loop(store, SimulatedCamera(replay_dir=burst_dir))
    replay_events.put(trigger())
    replay.run(duration_s=0.3)

    replayed, taken = IndexReader(store.data_dir).latest(2)
    with Image.open(store.data_dir / taken["media_path"]) as image:
        tags = image.getexif()
        sub = tags.get_ifd(ExifTags.IFD.Exif)
    assert (tags[ExifTags.Base.Make], tags[ExifTags.Base.Model]) == ("Raspberry Pi", "simulated")
    assert sub[ExifTags.Base.BodySerialNumber] == "trap-07"
    assert json.loads(taken["metadata"])["exif"]["DateTimeOriginal"] == sub[ExifTags.Base.DateTimeOriginal]
    first = sorted(burst_dir.iterdir())[0].read_bytes()
    assert (store.data_dir / replayed["media_path"]).read_bytes() == first


def test_a_full_disk_is_reported_and_capturing_resumes_when_space_returns(tiny_fs, caplog):
    store = CaptureStore(tiny_fs)
    loop, events = make_loop(store)
    filler = tiny_fs / "filler"
    with open(filler, "wb", buffering=0) as f, contextlib.suppress(OSError):  # take the card's space
        while True:
            f.write(b"\0" * 65536)
            f.flush()
    events.put(trigger())
    loop.run(duration_s=0.3)
    # The photo's write or the index commit fails, whichever comes first.
    assert re.search("No space left on device|disk is full", loop.health.problems()["storage"])
    assert IndexReader(tiny_fs).latest(10) == []

    filler.unlink()
    events.put(trigger())
    loop.run(duration_s=0.3)
    assert loop.health.problems() == {}
    assert len(IndexReader(tiny_fs).latest(10)) == 1
    store.close()
    assert not list(tiny_fs.rglob(".*.tmp"))


def test_ten_year_clock_jumps_during_a_run_keep_seq_order_and_time_since_boot(store):
    clock = ManualClock(clock_synced=False)
    loop, events = make_loop(store, clock=clock)
    for jump in (datetime.timedelta(0), -3650 * DAY, 7300 * DAY, -3650 * DAY):
        clock.wall += jump
        events.put(trigger())
        loop.run(duration_s=0.2)
    rows = IndexReader(store.data_dir).latest(10)[::-1]
    assert [r["seq"] for r in rows] == [1, 2, 3, 4]
    assert [datetime.datetime.fromisoformat(r["captured_at"]).year for r in rows] == [2026, 2016, 2036, 2026]
    since_boot = [r["since_boot_s"] for r in rows]
    assert since_boot == sorted(since_boot) and len(set(since_boot)) == 4
    assert len({r["media_path"] for r in rows}) == 4


def test_a_damaged_index_keeps_the_photo_and_stops_the_loop_for_a_rebuild(store):
    loop, events = make_loop(store)
    for _ in range(3):
        events.put(trigger())
    loop.run(duration_s=0.5)
    store.checkpoint()
    # A bad block under the captures table, read from the card once SQLite's cache lets go of it.
    [root] = store.db.execute("SELECT rootpage FROM sqlite_master WHERE name = 'captures'").fetchone()
    page_size = store.db.execute("PRAGMA page_size").fetchone()[0]
    with open(store.db_path, "r+b") as f:
        f.seek((root - 1) * page_size)
        f.write(b"\xff" * page_size)
    store.db.execute("PRAGMA shrink_memory")

    events.put(trigger())
    events.put(trigger())
    loop.run(duration_s=2)
    assert isinstance(loop.fatal, CorruptDatabaseError)
    assert "is damaged" in loop.health.problems()["storage"]
    assert len(list((store.data_dir / "media").rglob("*.jpg"))) == 4  # kept, for the rebuild
    assert events.qsize() == 1  # the loop stopped after the first


def test_a_burst_takes_its_photos_at_the_interval_under_one_event(store):
    loop, events = make_loop(store, SimulatedCamera(size_px=(64, 48)), burst_count=3, burst_interval_s=0.2)
    events.put(trigger("motion"))
    events.put(trigger("button"))
    loop.run(duration_s=1.6)
    rows = IndexReader(store.data_dir).latest(10)[::-1]
    assert [r["trigger"] for r in rows] == ["motion"] * 3 + ["button"] * 3
    assert len({r["event_id"] for r in rows[:3]}) == len({r["event_id"] for r in rows[3:]}) == 1
    assert rows[0]["event_id"] != rows[3]["event_id"]
    gaps = [b["since_boot_s"] - a["since_boot_s"] for a, b in zip(rows[:2], rows[1:3], strict=True)]
    assert all(0.18 <= gap < 0.5 for gap in gaps)


def test_the_flash_is_on_only_while_the_camera_captures(store):
    factory = MockFactory()
    lights = Lights(LightsSettings("GPIO27", flash_pre_delay_s=0.05), pin_factory=factory)
    pin = factory.pin("GPIO27")
    seen = []

    class WatchedCamera(SimulatedCamera):
        def capture(self, timeout_s):
            seen.append(pin.state)  # the flash, as the exposure starts
            return super().capture(timeout_s)

    loop, events = make_loop(store, WatchedCamera(size_px=(64, 48)), lights=lights)
    pin.clear_states()
    events.put(trigger())
    loop.run(duration_s=0.4)
    assert seen == [True]
    assert [s.state for s in pin.states] == [False, True, False] and not pin.state
    assert pin.states[2].timestamp >= 0.05  # on for the pre-delay and the capture
    lights.close()
    factory.close()


def test_a_camera_that_fails_recovers_and_the_status_says_so(store):
    now = [0.0]
    cameras = []

    def open_camera():
        cameras.append(SimulatedCamera(size_px=(64, 48)))
        return cameras[-1]

    camera = RecoveringCamera(open_camera, max_failures=3, monotonic=lambda: now[0])
    loop, events = make_loop(store, camera)
    cameras[0].inject_failure(CameraTimeout("no frame within 1.0 s"))
    events.put(trigger())
    loop.run(duration_s=0.2)
    assert camera.status().state == "recovering"
    assert "no frame" in loop.health.problems()["camera"]
    events.put(trigger())  # before the back-off: refused at once, the closed camera untouched
    loop.run(duration_s=0.2)
    assert camera.status().failures == 1 and len(cameras) == 1
    now[0] = 1.0
    events.put(trigger())
    loop.run(duration_s=0.3)
    assert len(cameras) == 2 and cameras[0]._closed
    assert camera.status() == CameraStatus(
        state="ok", failures=0, total_failures=1, last_error=None, retry_in_s=None
    )
    assert "camera" not in loop.health.problems()
    assert store.db["captures"].count == 1


def test_a_camera_that_keeps_failing_stops_the_loop_as_fatal(store):
    now = [0.0]
    busy = CameraError("Device or resource busy")

    def open_camera():
        camera = SimulatedCamera(size_px=(64, 48))
        camera.inject_failure(busy, count=10)
        return camera

    camera = RecoveringCamera(open_camera, max_failures=2, monotonic=lambda: now[0])
    scheduler = schedule.Scheduler()
    scheduler.every(1).seconds.do(guarded("camera recovery", camera.recover))
    loop, events = make_loop(store, camera, scheduler=scheduler)
    events.put(trigger())
    loop.run(duration_s=0.2)
    now[0] = 5.0  # the back-off has passed: the recovery job re-opens, the next capture fails again
    events.put(trigger())
    events.put(trigger())
    loop.run(duration_s=2)
    assert isinstance(loop.fatal, CameraFailed)
    assert "failed 2 times in a row" in loop.health.problems()["camera"]
    assert events.qsize() == 1  # stopped at once


def test_no_flash_for_a_camera_that_is_recovering(store):
    factory = MockFactory()
    lights = Lights(LightsSettings("GPIO27"), pin_factory=factory)
    now = [0.0]
    simulated = SimulatedCamera(size_px=(64, 48))
    camera = RecoveringCamera(lambda: simulated, monotonic=lambda: now[0])
    loop, events = make_loop(store, camera, lights=lights)
    simulated.inject_failure(CameraTimeout("no frame"))
    events.put(trigger())
    loop.run(duration_s=0.2)
    pin = factory.pin("GPIO27")
    pin.clear_states()
    events.put(trigger())  # the camera is closed, waiting for its back-off
    loop.run(duration_s=0.2)
    assert [s.state for s in pin.states] == [False]  # never switched on
    lights.close()
    factory.close()


def test_a_request_carries_its_error_as_a_type(store):
    loop, events = make_loop(store)
    camera_failed = SimulatedCamera(size_px=(64, 48))
    unknown, shot = Request("protect", "0" * 32), Request("capture")
    events.put(unknown)
    loop.run(duration_s=0.2)
    assert isinstance(unknown.error, UnknownCapture) and isinstance(unknown.error, KeyError)
    assert unknown.error.capture_id == "0" * 32 and unknown.done.is_set()
    loop, events = make_loop(store, camera_failed)
    camera_failed.inject_failure(CameraTimeout("no frame within 1.0 s"))
    events.put(shot)
    loop.run(duration_s=0.2)
    assert isinstance(shot.error, NotCaptured) and shot.result == []
