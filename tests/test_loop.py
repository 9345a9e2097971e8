import datetime
import logging
import queue
import threading
import time

import pytest
import schedule

from appliance.exif import Identity
from appliance.loop import MainLoop, guarded
from appliance.store import CaptureStore, IndexReader
from hw.camera import SimulatedCamera
from hw.exc import CameraTimeout
from hw.triggers import TriggerEvent


def make_loop(store, camera=None, scheduler=None, clock=None):
    events = queue.Queue()
    loop = MainLoop(
        events=events,
        camera=camera or SimulatedCamera(size_px=(640, 480)),
        store=store,
        scheduler=scheduler or schedule.Scheduler(),
        capture_timeout_s=1.0,
        thumbnail_max_px=320,
        identity=Identity("Raspberry Pi", "simulated", "trap-07"),
        clock=clock,
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
