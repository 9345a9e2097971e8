import datetime
import hashlib
import io
import re
import socket
import time

import pytest
import requests
from PIL import Image

from appliance import thumbnails
from appliance.loop import Health
from appliance.store import IndexReader
from appliance.web import WebServer, make_app
from hw.camera import RecoveringCamera, SimulatedCamera
from hw.clock import ManualClock
from hw.exc import CameraTimeout
from hw.system import DiskUsage, Probes
from hw.triggers import TriggerGate


@pytest.fixture
def server(store, photo):
    clock = ManualClock(datetime.datetime.now(datetime.UTC) - datetime.timedelta(minutes=5))
    thumbnail = thumbnails.from_jpeg(photo, 320)
    rows = [store.add(photo, thumbnail, timestamp=clock.now(), trigger=t) for t in ("button", "motion")]
    store.add(photo, None, timestamp=clock.now(), trigger="manual")  # its thumbnail could not be made
    disk = DiskUsage(1000, 600, 400)
    app = make_app(
        IndexReader(store.data_dir), mode="simulation", started_monotonic=time.monotonic() - 3725,
        disk_usage=lambda path: disk,
    )  # fmt: skip
    server = WebServer(app, "127.0.0.1", 0)
    server.rows = rows
    yield server
    server.stop()


def get(server, path, **kwargs):
    return requests.get(f"{server.url.rstrip('/')}{path}", timeout=5, **kwargs)


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


def test_status_page_shows_thumbnails_counts_and_mode(server):
    response = get(server, "/")
    assert response.status_code == 200 and response.headers["Content-Type"].startswith("text/html")
    page = response.text
    for row in server.rows:
        assert f'src="/thumbnails/{row["id"]}.webp"' in page
    assert "3 in all, 3 in the last hour, 3 in the last 24 h" in page
    assert (
        "1 h 02 min" in page
        and "simulation" in page
        and '<meter min="0" max="100" high="90" value="60.0">' in page
    )


def test_thumbnail_and_media_are_served_from_the_index(server, photo):
    row = server.rows[0]
    thumb = get(server, f"/thumbnails/{row['id']}.webp")
    assert thumb.headers["Content-Type"] == "image/webp"
    assert max(Image.open(io.BytesIO(thumb.content)).size) == 320
    media = get(server, f"/media/{row['id']}.jpg")
    assert media.headers["Content-Type"] == "image/jpeg"
    assert hashlib.sha256(media.content).hexdigest() == hashlib.sha256(photo).hexdigest()


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/media/" + "0" * 32 + ".jpg", 404),
        ("/media/" + "A" * 32 + ".jpg", 400),
        ("/media/abc.jpg", 400),
        # waitress decodes %2f in PATH_INFO, as WSGI has it: no route (404), or a bad name (400).
        ("/media/%2e%2e%2f%2e%2e%2fcaptures.db", (400, 404)),
        ("/thumbnails/..%2fcaptures.db", (400, 404)),
        ("/nothing", 404),
    ],
)
def test_unknown_is_404_and_malformed_is_400_never_500(server, path, status):
    assert get(server, path).status_code in (status if isinstance(status, tuple) else (status,))


def test_extension_must_match_the_route(server):
    row_id = server.rows[0]["id"]
    assert get(server, f"/thumbnails/{row_id}.jpg").status_code == 400
    assert get(server, f"/media/{row_id}.webp").status_code == 400


def test_capture_without_thumbnail_is_404_for_its_thumbnail(server):
    manual = get(server, "/api/status").json()["latest"][0]
    assert get(server, f"/thumbnails/{manual['id']}.webp").status_code == 404


def test_malformed_http_request_gets_400_and_the_server_keeps_serving(server):
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nheader without a colon\r\n\r\n")
        # waitress answers a request it could not parse in HTTP/1.0.
        assert re.match(rb"HTTP/1\.[01] 400 ", sock.recv(100))
    assert get(server, "/api/status").status_code == 200


def test_busy_port_fails_at_start_up(server):
    with pytest.raises(OSError):
        WebServer(make_app(None, mode="simulation", started_monotonic=0), "127.0.0.1", server.port)


def test_problems_of_the_main_loop_show_as_a_banner_and_in_the_api(store):
    health = Health()
    app = make_app(IndexReader(store.data_dir), mode="hardware", started_monotonic=0, health=health)
    server = WebServer(app, "127.0.0.1", 0)
    try:
        assert 'class="problem"' not in get(server, "/").text
        health.set("storage", "the last capture could not be stored: No space left on device")
        assert get(server, "/api/status").json()["problems"] == {
            "storage": "the last capture could not be stored: No space left on device"
        }
        assert "<strong>storage:</strong> the last capture could not be stored" in get(server, "/").text
    finally:
        server.stop()


def test_camera_power_and_clock_problems_and_suppressed_triggers_are_shown(store, tmp_path):
    # Real parts behind the status: a camera recovering from a timeout, real probes reading a hot
    # thermal zone and a vcgencmd that reports under-voltage.
    simulated = SimulatedCamera(size_px=(64, 48))
    camera = RecoveringCamera(lambda: simulated)
    simulated.inject_failure(CameraTimeout("no frame within 5 s"))
    with pytest.raises(CameraTimeout):
        camera.capture(5)
    gate = TriggerGate(cooldown_s=10, max_captures_per_minute=0)
    gate.admit("motion", now=0)
    gate.admit("motion", now=1)
    (tmp_path / "temp").write_text("85500\n")
    vcgencmd = tmp_path / "vcgencmd"
    vcgencmd.write_text("#!/bin/sh\necho throttled=0x50005\n")
    vcgencmd.chmod(0o755)
    probes = Probes(store.data_dir, thermal_path=tmp_path / "temp", throttled_command=[str(vcgencmd)])

    def hardware_status():
        return {
            "camera": camera.status(),
            "triggers": gate.status(),
            "system": probes.snapshot(),
            "uv_light_on": False,
        }

    app = make_app(
        IndexReader(store.data_dir), mode="hardware", started_monotonic=0, hardware_status=hardware_status
    )
    server = WebServer(app, "127.0.0.1", 0)
    try:
        status = get(server, "/api/status").json()
        problems = status["problems"]
        assert problems["camera"] == "recovering after 1 failures: capture: no frame within 5 s"
        assert problems["power and temperature"] == "under-voltage, throttled, CPU temperature 86 °C"
        assert status["triggers"] == {"suppressed": {"motion": 1}, "suppressed_total": 1}
        assert status["system"]["cpu_temperature_c"] == 85.5
        assert status["camera"]["state"] == "recovering" and status["camera"]["retry_in_s"] <= 1
        page = get(server, "/").text
        assert "<strong>camera:</strong> recovering" in page
        assert "<dt>Suppressed triggers</dt><dd>1 " in page and "86 °C" in page
    finally:
        server.stop()
