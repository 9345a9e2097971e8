"""The JSON API and the health check (``appliance.web.api``): ``/api/status``, ``/api/captures``,
``/api/captures/<id>`` and ``/healthz``."""

import dataclasses
import hashlib
import urllib.parse

import bottle
import pytest
import webtest
from web_client import (
    CAPTURE_FIELDS,
    DISK,
    HOST,
    METADATA,
    app_over,
    bind_request,
    get,
    metric_samples,
    shoot,
)

from appliance import __version__, web
from appliance.cleanup import Cleanup, Policy
from appliance.loop import Health
from appliance.reconcile import Reconciliation
from appliance.status import StatusCollector
from appliance.store import TRIGGERS, CaptureStore, IndexReader
from appliance.web.api import Api
from hw.camera import RecoveringCamera, SimulatedCamera
from hw.clock import ManualClock
from hw.exc import CameraError, CameraFailed, CameraTimeout

# --- GET /api/status ------------------------------------------------------------------------------


def test_api_status_gives_every_field(client, captures, hardware, store):
    store.record_cleanup_run(
        {"started_at": "2026-06-01T21:00:00Z", "finished_at": "2026-06-01T21:00:01Z", "reason": "space",
         "deleted": 3, "bytes_freed": 4500, "free_bytes_before": 10, "free_bytes_after": 4510,
         "total_bytes": DISK.total}
    )  # fmt: skip
    cleanup = Cleanup(store, Policy(), disk_usage=lambda path: DISK)
    app = client(**hardware.parts(), cleanup=cleanup, reconciliation=Reconciliation())
    status = app.get("/api/status", status=200).json
    assert status.keys() == {
        "version", "mode", "level", "problems", "startup_check", "cleanup", "uptime_s", "captures",
        "disk", "actions", "camera", "triggers", "system", "uv_light_on", "offload", "latest",
    }  # fmt: skip
    assert status["version"] == __version__ and status["mode"] == "simulation"
    assert status["level"] == "ok" and status["problems"] == {}
    assert status["startup_check"] == dataclasses.asdict(Reconciliation()) | {"repairs": 0}
    assert status["startup_check"]["repairs"] == 0 and status["startup_check"]["scope"] == "none"
    assert status["cleanup"].keys() == {
        "state", "reason", "start_free_bytes", "stop_free_bytes", "headroom_bytes",
        "capture_min_free_bytes", "last_run",
    }  # fmt: skip
    assert status["cleanup"]["state"] == "ok" and status["cleanup"]["reason"] == ""
    assert status["cleanup"]["capture_min_free_bytes"] == Policy().capture_min_free_bytes
    assert (
        status["cleanup"]["last_run"]["bytes_freed"] == 4500 and status["cleanup"]["last_run"]["deleted"] == 3
    )
    assert 3725 <= status["uptime_s"] < 3735
    rate = sum(row["bytes"] for row in captures[2:])
    assert status["captures"] == {"total": 5, "last_hour": 3, "last_24h": 3, "bytes_last_hour": rate}
    assert status["disk"] == {
        "total_bytes": DISK.total,
        "free_bytes": DISK.free,
        "free_percent": 25.0,
        "hours_left": round((DISK.free - Policy().capture_min_free_bytes) / rate, 1),
    }
    assert status["actions"] is False
    assert status["camera"] == {
        "state": "ok", "failures": 0, "total_failures": 0, "last_error": None, "retry_in_s": None
    }  # fmt: skip
    assert status["triggers"] == {"suppressed": {}, "suppressed_total": 0}
    assert status["system"].keys() == {"cpu_temperature_c", "throttled", "problems", "clock_synced"}
    assert status["system"]["cpu_temperature_c"] == 51.7 and status["system"]["clock_synced"] is True
    assert status["uv_light_on"] is False
    assert [c["seq"] for c in status["latest"]] == [5, 4, 3, 2, 1]
    for entry, row in zip(status["latest"], reversed(captures), strict=True):
        assert entry.keys() == CAPTURE_FIELDS
        assert (
            entry["page_url"] == f"/captures/{row['id']}" and entry["media_url"] == f"/media/{row['id']}.jpg"
        )
        assert entry["clock_synced"] is True and entry["protected"] is False and entry["recovered"] is False
    assert status["latest"][0]["thumbnail_url"] is None
    assert status["latest"][1]["thumbnail_url"] == f"/thumbnails/{captures[3]['id']}.webp"


def test_api_status_reports_counts_disk_uptime_mode_and_latest(server, photo):
    status = get(server, "/api/status").json()
    assert status["mode"] == "simulation"
    assert status["captures"] == {
        "total": 3,
        "last_hour": 3,
        "last_24h": 3,
        "bytes_last_hour": 3 * len(photo),
    }
    hours_left = round(400 / (3 * len(photo)), 1)
    assert status["disk"] == {
        "total_bytes": 1000,
        "free_bytes": 400,
        "free_percent": 40.0,
        "hours_left": hours_left,
    }
    assert 3725 <= status["uptime_s"] < 3735
    assert [c["seq"] for c in status["latest"]] == [3, 2, 1]
    assert status["latest"][0]["thumbnail_url"] is None
    assert status["latest"][1]["thumbnail_url"] == f"/thumbnails/{server.rows[1]['id']}.webp"


def test_api_status_without_the_optional_parts(client):
    status = client().get("/api/status", status=200).json
    assert status["startup_check"] is None and status["cleanup"] == {"last_run": None}
    assert "camera" not in status and "triggers" not in status and "system" not in status
    assert (
        status["captures"]["total"] == 0 and status["latest"] == [] and status["disk"]["hours_left"] is None
    )


def test_an_unreadable_filesystem_leaves_out_the_disk(client, captures):
    app = client(disk_usage=lambda path: None)
    status = app.get("/api/status", status=200).json
    assert status["disk"] is None and status["level"] == "ok"
    page = app.get("/", status=200).text
    assert "<dt>Disk</dt>" not in page and "<meter" not in page and '<p class="banner ok">' in page
    samples = metric_samples(app.get("/metrics", status=200).text)
    assert ("appliance_free_bytes", ()) not in samples and samples[("appliance_captures", ())] == 5
    assert app.get("/healthz", status=200).json["status"] == "ok"


def test_api_status_latest_holds_at_most_the_12_newest(client, many):
    latest = client().get("/api/status").json["latest"]
    assert [c["id"] for c in latest] == [row["id"] for row in reversed(many[-web.LATEST_COUNT :])]
    assert web.LATEST_COUNT == 12


# --- GET /api/captures and /api/captures/<id> -----------------------------------------------------


@pytest.fixture(scope="module")
def two_hundred_fifty(tmp_path_factory) -> webtest.TestApp:
    """The app over a store of 250 captures (made once: the tests using it only read)."""
    store = CaptureStore(tmp_path_factory.mktemp("two_hundred_fifty"))
    jpeg, _ = shoot(SimulatedCamera(size_px=(64, 48)))
    clock = ManualClock()
    for i in range(250):
        store.add(jpeg, None, timestamp=clock.now(), trigger=TRIGGERS[i % 4])
    app = app_over(IndexReader(store.data_dir), started_monotonic=0)
    yield webtest.TestApp(app, extra_environ={"HTTP_HOST": HOST})
    store.close()


@pytest.mark.parametrize("limit", [None, 1, 7, 50, 100, 1000])
def test_api_captures_walked_to_the_end_never_overlap_or_skip(two_hundred_fifty, limit):
    app, seqs, pages = two_hundred_fifty, [], 0
    url = "/api/captures" + (f"?limit={limit}" if limit else "")
    while url:
        page = app.get(url, status=200).json
        assert page.keys() == {"captures", "next"}
        # The first page has the limit asked for (later ones: see test_api_captures_next_keeps_the_limit).
        assert len(page["captures"]) <= (min(limit or web.PAGE_SIZE, web.MAX_PAGE_SIZE) if not pages else 100)
        seqs += [c["seq"] for c in page["captures"]]
        url, pages = page["next"], pages + 1
        assert pages <= 251
    assert seqs == list(range(250, 0, -1))


def test_api_captures_pages_do_not_shift_when_captures_arrive_during_the_walk(client, store, many):
    app, seqs, url = client(), [], "/api/captures?limit=10"
    jpeg, _ = shoot(SimulatedCamera(size_px=(64, 48)))
    while url:
        page = app.get(url, status=200).json
        seqs += [c["seq"] for c in page["captures"]]
        url = page["next"]
        store.add(jpeg, None, timestamp=ManualClock().now(), trigger="manual")
    assert seqs == list(range(63, 0, -1))


def test_api_captures_limit_is_capped_at_100(two_hundred_fifty):
    page = two_hundred_fifty.get("/api/captures?limit=1000", status=200).json
    assert [c["seq"] for c in page["captures"]] == list(range(250, 150, -1))
    assert page["next"] == "/api/captures?limit=100&before=151"


def test_api_captures_next_is_null_on_the_last_page(two_hundred_fifty):
    page = two_hundred_fifty.get("/api/captures?limit=100&before=51", status=200).json
    assert len(page["captures"]) == 50 and page["next"] is None
    assert two_hundred_fifty.get("/api/captures?before=1", status=200).json == {"captures": [], "next": None}


def test_api_captures_next_keeps_the_filters(client, many):
    page = client().get("/api/captures?trigger=motion&day=2024-03-10&limit=5", status=200).json
    assert [c["trigger"] for c in page["captures"]] == ["motion"] * 5
    link = urllib.parse.urlsplit(page["next"])
    assert link.path == "/api/captures"
    query = urllib.parse.parse_qs(link.query)
    assert query["trigger"] == ["motion"] and query["day"] == ["2024-03-10"]
    assert query["before"] == [str(page["captures"][-1]["seq"])]


def test_api_captures_next_keeps_the_limit(client, many):
    first = client().get("/api/captures?limit=5", status=200).json
    second = client().get(first["next"], status=200).json
    assert len(second["captures"]) == 5


def test_api_capture_gives_sha256_and_parsed_metadata(client, captures, store):
    row = captures[3]
    body = client().get(f"/api/captures/{row['id']}", status=200).json
    assert body.keys() == CAPTURE_FIELDS | {"sha256", "metadata"}
    assert body["sha256"] == hashlib.sha256((store.data_dir / row["media_path"]).read_bytes()).hexdigest()
    assert body["metadata"] == METADATA
    assert body["trigger"] == "motion" and body["capture_method"] == "activityDetection"
    assert body["event_id"] == row["id"] and body["seq"] == 4 and (body["width"], body["height"]) == (64, 48)
    assert body["captured_at"] == row["captured_at"] and body["bytes"] == row["bytes"]


# --- GET /healthz ---------------------------------------------------------------------------------


def test_healthz_is_200_when_healthy(client, hardware):
    response = client(**hardware.parts()).get("/healthz", status=200)
    assert response.json == {"status": "ok", "problems": {}}


def test_healthz_is_503_for_a_storage_problem(client):
    health = Health()
    health.set("storage", "the last capture could not be stored: No space left on device")
    response = client(health=health).get("/healthz", status=503)
    assert response.json == {
        "status": "error",
        "problems": {"storage": "the last capture could not be stored: No space left on device"},
    }


def test_healthz_is_503_for_a_recovering_camera(client, hardware):
    hardware.simulated.inject_failure(CameraTimeout("no frame within 1 s"))
    with pytest.raises(CameraTimeout):
        hardware.camera.capture(1.0)
    response = client(**hardware.parts()).get("/healthz", status=503)
    assert response.json["status"] == "error"
    assert response.json["problems"] == {
        "camera": "recovering after 1 failures: capture: no frame within 1 s"
    }


def test_healthz_is_503_for_a_failed_camera(client, hardware):
    hardware.camera = RecoveringCamera(lambda: hardware.simulated, max_failures=1)
    hardware.simulated.inject_failure(CameraError("Device or resource busy"))
    with pytest.raises(CameraFailed):
        hardware.camera.capture(1.0)
    response = client(**hardware.parts()).get("/healthz", status=503)
    assert response.json["problems"]["camera"].startswith(
        "failed after 1 failures: capture: Device or resource"
    )


def test_healthz_stays_200_for_a_clock_warning_alone(client, hardware):
    hardware.clock_synced = False
    response = client(**hardware.parts()).get("/healthz", status=200)
    assert response.json["status"] == "ok" and list(response.json["problems"]) == ["clock"]


def test_healthz_stays_200_for_a_power_warning_alone(client, hardware):
    hardware.vcgencmd.write_text("#!/bin/sh\necho throttled=0x50005\n")
    response = client(**hardware.parts()).get("/healthz", status=200)
    assert response.json["status"] == "ok"
    assert response.json["problems"] == {"power and temperature": "under-voltage, throttled"}


# --- Without HTTP ------------------------------------------------------------------------------------


def test_the_api_handlers_answer_without_http(store, captures):
    reader = IndexReader(store.data_dir)
    health = Health()
    # A fixed disk: the real one's free bytes change between the two readings compared below.
    collector = StatusCollector(
        reader, mode="simulation", started_monotonic=0, health=health, disk_usage=lambda path: DISK
    )
    api = Api(reader, collector.collect)
    bind_request()
    status = api.status()
    assert status == collector.collect().to_json() | {"uptime_s": status["uptime_s"]}
    assert api.healthz() == {"status": "ok", "problems": {}} and bottle.response.status_code == 200
    health.set("camera", "the last capture failed: no frame within 1 s")
    assert api.healthz()["status"] == "error" and bottle.response.status_code == 503
    assert api.capture(captures[3]["id"])["metadata"] == METADATA
    bind_request("/api/captures", query="limit=2&trigger=motion")
    page = api.captures()
    assert [c["id"] for c in page["captures"]] == [captures[3]["id"], captures[0]["id"]]
    assert page["next"] == f"/api/captures?trigger=motion&limit=2&before={captures[0]['seq']}"
