"""The status contract: one collector feeds the page, ``/api/status``, ``/healthz``, ``/metrics``
and systemd's ``STATUS=`` line; the JSON keeps the shape it had before the contract existed."""

import datetime
import json
import signal
import time
import types
from pathlib import Path

import pytest
import webtest
from prometheus_client.parser import text_string_to_metric_families

from appliance import __version__
from appliance.cleanup import Cleanup, Policy
from appliance.clocktrust import TRUSTED, TrustedClock
from appliance.config import Config
from appliance.loop import Health
from appliance.offloader import Offloader, OffloadSettings
from appliance.reconcile import Reconciliation
from appliance.status import (
    UNSYNCHRONISED_REASON,
    CaptureCounts,
    Disk,
    Problem,
    Status,
    StatusCollector,
)
from appliance.store import IndexReader
from appliance.web import WebDeps, make_app
from hw.camera import RecoveringCamera, SimulatedCamera
from hw.clock import ManualClock
from hw.exc import CameraTimeout
from hw.lights import Lights, LightsSettings
from hw.system import DiskUsage, Probes
from hw.triggers import GateSettings, TriggerGate
from tests.test_end_to_end import start, status_url, wait_for_captures

FIXTURE = Path(__file__).with_name("fixtures") / "api_status.json"


# Objects keyed by data, not by the contract: problems by area, suppressed triggers by source.
MAPPINGS = {("problems",), ("triggers", "suppressed")}


def shape(value, path=()):
    """The keys of ``value``, all the way down (a list by its first item; None and scalars: a
    leaf; the objects in :data:`MAPPINGS`: "mapping")."""
    if path in MAPPINGS:
        return "mapping"
    if isinstance(value, dict):
        return {key: shape(item, (*path, key)) for key, item in value.items()}
    if isinstance(value, list):
        return [shape(value[0], path)] if value and isinstance(value[0], dict) else []
    return None


def test_api_status_of_a_simulated_run_keeps_the_keys_it_had_before_the_status_contract(tmp_path, run_config):
    # The fixture is /api/status of `appliance run --simulate` taken on c9d1fb4, before the
    # status contract: a key renamed or dropped breaks every reader of the API.
    process = start(tmp_path / "data", run_config, "--trigger-interval-s", "0.2")
    try:
        status = wait_for_captures(status_url(process), 2)
    finally:
        process.send_signal(signal.SIGTERM)
        process.communicate(timeout=15)
    assert shape(status) == shape(json.loads(FIXTURE.read_text()))


# --- The collector, with real parts ----------------------------------------------------------------

DISK = DiskUsage(total=64_000_000_000, used=48_000_000_000, free=16_000_000_000)


@pytest.fixture
def parts(store, tmp_path, monkeypatch):
    """Every part the collector reads, real ones as main() builds them: the main loop's health, a
    recovering camera over a simulated one, a trigger gate, lights without pins, probes reading a
    thermal-zone file (51.7 °C) and a vcgencmd that reports nothing wrong (the kernel's clock
    synchronised), a trusted clock, the cleanup (its disk: ``parts.free`` bytes free of DISK) and
    the start-up check."""
    parts = types.SimpleNamespace(simulated=SimulatedCamera(size_px=(64, 48)), free=DISK.free, requests=[])
    monkeypatch.setattr("hw.clock.clock_synced", lambda: True)
    parts.health = Health()
    parts.camera = RecoveringCamera(lambda: parts.simulated, max_failures=3)
    parts.gate = TriggerGate(GateSettings(cooldown_s=10))
    parts.lights = Lights(LightsSettings())
    (tmp_path / "temp").write_text("51700\n")
    parts.vcgencmd = tmp_path / "vcgencmd"
    parts.vcgencmd.write_text("#!/bin/sh\necho throttled=0x0\n")
    parts.vcgencmd.chmod(0o755)
    parts.probes = Probes(
        store.data_dir, ttl_s=0, thermal_path=tmp_path / "temp", throttled_command=[str(parts.vcgencmd)]
    )
    parts.wall = ManualClock(datetime.datetime.now(datetime.UTC) - datetime.timedelta(minutes=5))
    parts.clock = TrustedClock(parts.wall)
    parts.clock.now()

    def disk_usage(path):
        return DiskUsage(DISK.total, DISK.total - parts.free, parts.free)

    parts.disk_usage = disk_usage
    parts.cleanup = Cleanup(store, Policy(), disk_usage=disk_usage, clock=parts.clock)
    parts.reconciliation = Reconciliation()
    parts.offloader = Offloader(
        IndexReader(store.data_dir),
        store.data_dir,
        OffloadSettings(),
        submit=parts.requests.append,
        config=Config,
    )
    return parts


def collector_of(store, parts, **options) -> StatusCollector:
    """A collector over ``store`` and every one of ``parts``."""
    return StatusCollector(
        IndexReader(store.data_dir),
        **{
            "mode": "hardware",
            "started_monotonic": time.monotonic() - 90,
            "health": parts.health,
            "reconciliation": parts.reconciliation,
            "cleanup": parts.cleanup,
            "camera": parts.camera,
            "gate": parts.gate,
            "probes": parts.probes,
            "lights": parts.lights,
            "clock": parts.clock,
            "offloader": parts.offloader,
            "disk_usage": parts.disk_usage,
        }
        | options,
    )


def take(store, parts, trigger="motion") -> dict:
    shot = parts.simulated.capture(1.0)
    return store.add(shot.jpeg, None, timestamp=parts.wall.now(), trigger=trigger)


def test_a_healthy_appliance_is_ok_with_every_part_in_its_status(store, parts):
    rows = [take(store, parts) for _ in range(3)]
    status = collector_of(store, parts).collect()
    assert status.level == "ok" and status.problems == ()
    assert (status.version, status.mode) == (__version__, "hardware") and 89 < status.uptime_s < 100
    rate = sum(row["bytes"] for row in rows)
    assert status.captures == CaptureCounts(total=3, last_hour=3, last_24h=3, bytes_last_hour=rate)
    floor = Policy().capture_min_free_bytes
    assert status.disk == Disk(DISK.total, DISK.free, 25.0, round((DISK.free - floor) / rate, 1))
    assert status.camera.state == "ok" and status.triggers.suppressed_total == 0
    assert status.system.cpu_temperature_c == 51.7 and status.uv_light_on is False
    assert status.clock.state == TRUSTED and status.cleanup.state == "ok"
    assert status.startup_check == Reconciliation() and status.startup_check is not parts.reconciliation
    assert [c["id"] for c in status.latest] == [row["id"] for row in reversed(rows)]


def test_a_collector_of_the_index_alone_leaves_the_parts_out(store, parts):
    take(store, parts)
    status = StatusCollector(IndexReader(store.data_dir), mode="simulation", started_monotonic=0).collect()
    assert status.level == "ok" and status.captures.total == 1 and len(status.latest) == 1
    assert (status.camera, status.triggers, status.system, status.clock, status.cleanup) == (None,) * 5
    as_json = status.to_json()
    assert as_json["startup_check"] is None and as_json["cleanup"] == {"last_run": None}
    assert not as_json.keys() & {"camera", "triggers", "system", "uv_light_on", "clock"}


def test_each_part_adds_its_problem_and_whether_it_stops_capturing(store, parts):
    collector = collector_of(store, parts)
    parts.wall.clock_synced = False
    parts.clock.now()
    assert collector.collect().problems == (Problem("clock", UNSYNCHRONISED_REASON, False),)
    assert collector.collect().level == "warning"
    parts.vcgencmd.write_text("#!/bin/sh\necho throttled=0x50005\n")
    parts.health.set("storage", "the last capture could not be stored: No space left on device")
    parts.free = 1 << 20  # below the floor of capture_min_free_bytes
    assert parts.cleanup.capture_pause()
    parts.simulated.inject_failure(CameraTimeout("no frame within 1 s"))
    with pytest.raises(CameraTimeout):
        parts.camera.capture(1.0)
    status = collector.collect()
    assert [(p.area, p.stops_capturing) for p in status.problems] == [
        ("storage", True), ("space", True), ("camera", True), ("power and temperature", False),
        ("clock", False),
    ]  # fmt: skip
    assert status.level == "error"
    reasons = status.problem_reasons()
    assert reasons["camera"] == "recovering after 1 failures: capture: no frame within 1 s"
    assert reasons["space"].startswith("capturing paused for space: 1.0 MB free")
    assert reasons["power and temperature"] == "under-voltage, throttled"


def test_the_main_loops_problem_of_an_area_is_replaced_by_the_parts_own_word(store, parts):
    parts.health.set("camera", "the last capture failed: no frame within 1 s")
    assert collector_of(store, parts).collect().problem_reasons() == {
        "camera": "the last capture failed: no frame within 1 s"
    }
    parts.simulated.inject_failure(CameraTimeout("no frame within 1 s"))
    with pytest.raises(CameraTimeout):
        parts.camera.capture(1.0)
    parts.health.set("storage", "the index is damaged")
    problems = collector_of(store, parts).collect().problems
    assert [p.area for p in problems] == ["camera", "storage"]  # where the main loop put it first
    assert problems[0].reason.startswith("recovering after 1 failures")


@pytest.mark.parametrize(
    ("stops", "level"), [((), "ok"), ((False,), "warning"), ((False, True), "error"), ((True,), "error")]
)
def test_the_level_is_error_only_for_a_problem_that_stops_capturing(stops, level):
    problems = tuple(Problem(f"area {i}", "why", stop) for i, stop in enumerate(stops))
    status = Status(
        version="1", mode="simulation", problems=problems, startup_check=None, cleanup=None,
        last_cleanup_run=None, uptime_s=0.0, captures=CaptureCounts(0, 0, 0, 0), disk=None,
    )  # fmt: skip
    assert status.level == level and status.to_json()["level"] == level


def test_a_clock_not_trusted_counts_the_captures_of_this_boot(store, parts):
    take(store, parts)  # stamped in boot "000...": not this boot
    assert collector_of(store, parts).collect().captures.last_hour == 1
    parts.wall.clock_synced = False
    parts.clock.now()
    counts = collector_of(store, parts).collect().captures
    assert counts.total == 1 and counts.last_hour == 0


def test_the_json_has_the_keys_of_the_api_before_the_contract(store, parts):
    parts.vcgencmd.write_text("#!/bin/sh\nexit 1\n")  # off a Pi, as the fixture was taken
    take(store, parts)
    status = collector_of(store, parts).collect()
    as_json = json.loads(json.dumps(status.to_json()))
    assert shape(as_json) == shape(json.loads(FIXTURE.read_text()))
    assert list(as_json) == list(json.loads(FIXTURE.read_text()))  # in the same order
    assert as_json["startup_check"]["repairs"] == 0 and as_json["system"]["problems"] == []


def test_the_systemd_line_keeps_its_wording(store, parts):
    take(store, parts)
    take(store, parts)
    assert collector_of(store, parts).collect().systemd_line() == (
        "2 captures in the last 24 h, 2 in all; 16.0 GB free; cleanup ok"
    )
    status = collector_of(store, parts, disk_usage=lambda path: None, cleanup=None).collect()
    assert status.systemd_line() == "2 captures in the last 24 h, 2 in all; free space unknown; cleanup ok"


def test_the_systemd_line_sent_from_the_main_loop_never_runs_the_probes(store, parts, tmp_path):
    runs = tmp_path / "vcgencmd-runs"
    parts.vcgencmd.write_text(f"#!/bin/sh\necho run >> {runs}\necho throttled=0x0\n")
    take(store, parts)
    collector = collector_of(store, parts)
    assert collector.systemd_line() == collector.collect().systemd_line()
    assert runs.read_text() == "run\n"  # collect() ran vcgencmd once; systemd_line() never did


# --- One collector behind the page, the API, /healthz and /metrics ---------------------------------


def test_page_api_healthz_and_metrics_read_the_same_collector(store, parts):
    app = webtest.TestApp(make_app(WebDeps(IndexReader(store.data_dir), collector_of(store, parts).collect)))

    def answers() -> dict:
        metrics = {
            (sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(app.get("/metrics").text)
            for sample in family.samples
        }
        return {
            "api": app.get("/api/status").json,
            "healthz": app.get("/healthz", expect_errors=True),
            "page": app.get("/").text,
            "metrics": metrics,
        }

    take(store, parts)
    before = answers()
    assert before["api"]["level"] == "ok" and before["healthz"].status_int == 200
    assert '<p class="banner ok">' in before["page"]
    assert before["metrics"][("appliance_captures", ())] == before["api"]["captures"]["total"] == 1
    # The parts change: each answer follows.
    take(store, parts)
    parts.gate.admit("motion", now=0)
    parts.gate.admit("motion", now=1)
    parts.simulated.inject_failure(CameraTimeout("no frame within 1 s"))
    with pytest.raises(CameraTimeout):
        parts.camera.capture(1.0)
    after = answers()
    api, healthz, page, metrics = after["api"], after["healthz"], after["page"], after["metrics"]
    reason = "recovering after 1 failures: capture: no frame within 1 s"
    assert api["level"] == "error" and api["problems"] == {"camera": reason}
    assert healthz.status_int == 503 and healthz.json == {"status": "error", "problems": api["problems"]}
    assert f'<p class="banner error"><strong>camera:</strong> {reason}</p>' in page
    assert "<dt>Camera</dt><dd>recovering</dd>" in page
    assert metrics[("appliance_captures", ())] == api["captures"]["total"] == 2
    assert "2 in all, 2 in the last hour" in page
    assert metrics[("appliance_camera_failures_total", ())] == api["camera"]["total_failures"] == 1
    suppressed = metrics[("appliance_triggers_suppressed_total", (("source", "motion"),))]
    assert suppressed == api["triggers"]["suppressed_total"] == 1
    assert "<dt>Suppressed triggers</dt><dd>1 " in page
