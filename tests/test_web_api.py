"""The web app route by route in-process (webtest), its log-in and the actions it hands to a real
main loop, a fuzz of paths, queries and methods, and the real server's limits on loopback."""

import collections
import contextlib
import dataclasses
import datetime
import hashlib
import html
import inspect
import logging
import math
import os
import queue
import random
import re
import socket
import threading
import time
import types
import urllib.parse

import pytest
import requests
import schedule
import webtest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from appliance import __version__, thumbnails, web
from appliance.cleanup import Cleanup, Policy
from appliance.exif import Identity
from appliance.loop import Health, MainLoop
from appliance.reconcile import Reconciliation
from appliance.status import StatusCollector
from appliance.store import TRIGGERS, CaptureStore, IndexReader
from appliance.web import WebDeps, WebServer, auth, make_app
from hw import system
from hw.camera import RecoveringCamera, SimulatedCamera
from hw.clock import ManualClock
from hw.exc import CameraError, CameraFailed, CameraTimeout
from hw.lights import Lights
from hw.system import Probes
from hw.triggers import TriggerGate

TOKEN = "a-long-random-web-token-0123456789"
BEARER = {"Authorization": f"Bearer {TOKEN}"}
HOST = "trap.local"
ORIGIN = f"http://{HOST}"
FOREIGN = "http://evil.example"
DiskUsage = collections.namedtuple("DiskUsage", "total used free")
DISK = DiskUsage(total=64_000_000_000, used=48_000_000_000, free=16_000_000_000)  # 25.0 % free
OLD_DAY = datetime.date(2024, 3, 10)
METADATA = {"ExposureTime": 12000, "AnalogueGain": 2.5, "Lux": 310.0}
UNKNOWN_ID = "0123456789abcdef" * 2
CAPTURE_FIELDS = {
    "id", "seq", "captured_at", "clock_synced", "recovered", "trigger", "capture_method", "event_id",
    "bytes", "width", "height", "protected", "page_url", "media_url", "thumbnail_url",
}  # fmt: skip
SECURITY_HEADERS = ("Content-Security-Policy", "X-Content-Type-Options", "Referrer-Policy")


def shoot(camera: SimulatedCamera) -> tuple[bytes, bytes]:
    """A real JPEG from ``camera`` and its WebP thumbnail."""
    shot = camera.capture(1.0)
    return shot.jpeg, thumbnails.make(shot.jpeg, shot.frame, 32)


def capture_ids(page: str) -> list[str]:
    """The ids of the photo pages a page links to, in page order."""
    return re.findall(r'<a href="/captures/([0-9a-f]{32})">', page)


def older_link(page: str) -> str | None:
    match = re.search(r'<a href="([^"]*)">Older', page)
    return html.unescape(match[1]) if match else None


def metric_samples(text: str) -> dict:
    """``{(sample name, ((label, value), ...)): value}`` from Prometheus text."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def indexed_files(reader: IndexReader) -> set[bytes]:
    """The bytes of every photo and thumbnail the index has."""
    return {
        (reader.data_dir / row[column]).read_bytes()
        for row in reader.page(limit=100_000)
        for column in ("media_path", "thumbnail_path")
        if row[column]
    }


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


# The options of client() that go to the StatusCollector; the others go to WebDeps.
COLLECTOR_OPTIONS = set(inspect.signature(StatusCollector).parameters) - {"reader"}


def app_over(reader: IndexReader, **options):
    """The app over ``reader``: ``options`` as StatusCollector's (default: simulation, up 3725 s,
    disk DISK) and WebDeps's."""
    parts = {key: options.pop(key) for key in COLLECTOR_OPTIONS & options.keys()}
    defaults = {
        "mode": "simulation",
        "started_monotonic": time.monotonic() - 3725,
        "disk_usage": lambda path: DISK,
    }
    status = StatusCollector(reader, **defaults | parts)
    return make_app(WebDeps(reader, status.collect, **options))


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
    parts.gate = TriggerGate(cooldown_s=10, max_captures_per_minute=0)
    parts.thermal = tmp_path / "thermal_zone0_temp"
    parts.thermal.write_text("51700\n")
    parts.vcgencmd = tmp_path / "vcgencmd"
    parts.vcgencmd.write_text("#!/bin/sh\necho throttled=0x0\n")
    parts.vcgencmd.chmod(0o755)
    probes = Probes(
        store.data_dir, ttl_s=0, thermal_path=parts.thermal, throttled_command=[str(parts.vcgencmd)]
    )

    lights = Lights(flash_pin=None, uv_pin=None)

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
                capture_timeout_s=1.0,
                thumbnail_max_px=32,
                identity=Identity("Raspberry Pi", "simulated", "trap-07"),
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

    yield types.SimpleNamespace(app=app, reader=reader)
    loop.request_stop("test over")
    thread.join(timeout=10)
    assert not thread.is_alive() and loop.fatal is None


@pytest.fixture
def loop_app(main_loop):
    """The app over :func:`main_loop` (token TOKEN) as a webtest.TestApp whose requests come to
    Host HOST."""
    app = webtest.TestApp(main_loop.app(), extra_environ={"HTTP_HOST": HOST})
    return types.SimpleNamespace(app=app, reader=main_loop.reader)


def log_in(app: webtest.TestApp) -> webtest.TestResponse:
    return app.post("/login", {"token": TOKEN}, headers={"Origin": ORIGIN}, status=303)


def take(app: webtest.TestApp) -> str:
    """A test shot through the API; its id."""
    (capture_id,) = app.post("/api/capture", headers=BEARER, status=200).json["captured"]
    return capture_id


# --- GET /: the status page ---------------------------------------------------------------------


def test_status_page_shows_counts_suppressed_triggers_disk_meter_hours_left_and_latest(
    client, captures, hardware
):
    hardware.gate.admit("motion", now=0)
    hardware.gate.admit("motion", now=1)
    hardware.gate.admit("motion", now=2)
    response = client(**hardware.parts()).get("/", status=200)
    assert response.content_type == "text/html"
    page = response.text
    assert '<p class="banner ok">' in page
    assert "5 in all, 3 in the last hour, 3 in the last 24 h" in page
    assert "<dt>Suppressed triggers</dt><dd>2 (cooldown and rate limit)</dd>" in page
    assert "48.0 GB used, 16.0 GB free of 64.0 GB" in page
    assert '<meter min="0" max="100" high="90" value="75.0">' in page
    rate = sum(row["bytes"] for row in captures[2:])
    assert (
        f"about {round(DISK.free / rate, 1) / 24:.0f} days of capturing left at the last hour's rate" in page
    )
    assert "<dt>CPU temperature</dt><dd>52 °C</dd>" in page
    assert "1 h 02 min" in page and "simulation" in page
    assert capture_ids(page) == [row["id"] for row in reversed(captures)]
    for row in captures[:4]:
        assert f'<img src="/thumbnails/{row["id"]}.webp"' in page
    assert "no thumbnail" in page  # the manual capture


@pytest.mark.parametrize(
    ("hours", "shown"), [(10, "about 10 h"), (47.4, "about 47 h"), (24 * 30, "about 30 days")]
)
def test_status_page_gives_the_time_left_in_hours_or_days(client, captures, hours, shown):
    rate = sum(row["bytes"] for row in captures[2:])
    disk = DiskUsage(total=DISK.total, used=DISK.total - round(hours * rate), free=round(hours * rate))
    page = client(disk_usage=lambda path: disk).get("/", status=200).text
    assert f"{shown} of capturing left at the last hour's rate" in page


def test_status_page_without_captures_in_the_last_hour_gives_no_hours_left(client, many):
    page = client().get("/", status=200).text
    assert "63 in all, 0 in the last hour" in page and "of capturing left" not in page


@pytest.mark.parametrize("level", ["ok", "warning", "error"])
def test_status_banner_is_ok_warning_or_error(client, hardware, level):
    health = Health()
    if level == "warning":
        hardware.clock_synced = False
    elif level == "error":
        health.set("storage", "the last capture could not be stored: No space left on device")
    app = client(health=health, **hardware.parts())
    page = app.get("/", status=200).text
    assert re.findall(r'<p class="banner (\w+)">', page) == [level]
    assert app.get("/api/status").json["level"] == level
    if level == "warning":
        assert "<strong>clock:</strong> not synchronised" in page
    elif level == "error":
        assert "<strong>storage:</strong> the last capture could not be stored" in page


def test_favicon_is_an_empty_204(client):
    response = client().get("/favicon.ico", status=204)
    assert response.body == b""
    assert_security_headers(response)


def test_style_css_is_served_as_css(client):
    response = client().get("/style.css", status=200)
    assert response.content_type == "text/css" and response.body == (web.VIEWS / "style.css").read_bytes()


# --- GET /captures: the gallery -----------------------------------------------------------------


def test_gallery_shows_the_newest_first_and_an_older_link_that_keeps_the_filters(client, many):
    app = client()
    first = app.get("/captures", params={"day": "2024-03-10", "trigger": "motion"}, status=200).text
    wanted = [row["id"] for row in reversed(many[:60]) if row["trigger"] == "motion"]
    assert capture_ids(first) == wanted[:24]
    link = urllib.parse.urlsplit(older_link(first))
    assert link.path == "/captures"
    assert urllib.parse.parse_qs(link.query) == {
        "day": ["2024-03-10"], "trigger": ["motion"], "before": [str(many[12]["seq"])]
    }  # fmt: skip
    second = app.get(older_link(first), status=200).text
    assert capture_ids(second) == wanted[24:]
    assert older_link(second) is None


def test_gallery_without_filters_pages_through_everything(client, many):
    app, seen, url = client(), [], "/captures"
    while url:
        page = app.get(url, status=200).text
        seen += capture_ids(page)
        url = older_link(page)
    assert seen == [row["id"] for row in reversed(many)]


def test_gallery_day_filter_shows_only_that_days_captures(client, captures):
    page = client().get("/captures?day=2024-03-10", status=200).text
    assert capture_ids(page) == [captures[1]["id"], captures[0]["id"]]
    assert capture_ids(client().get("/captures?day=2024-03-11", status=200).text) == []


def test_gallery_trigger_filter_shows_only_that_trigger(client, captures):
    page = client().get("/captures?trigger=motion", status=200).text
    assert capture_ids(page) == [captures[3]["id"], captures[0]["id"]]
    assert "<option selected>motion</option>" in page


BAD_QUERIES = [
    ("before", "abc"),
    ("before", "0"),
    ("before", "-3"),
    ("before", str(2**63)),
    ("day", "2024-02-30"),
    ("day", "yesterday"),
    ("trigger", "sneeze"),
    ("trigger", "MOTION"),
]


@pytest.mark.parametrize(("name", "value"), BAD_QUERIES)
@pytest.mark.parametrize("path", ["/captures", "/api/captures"])
def test_bad_query_values_are_400_naming_the_parameter(client, path, name, value):
    response = client().get(path, params={name: value}, status=400)
    assert response.content_type == "text/plain"
    assert response.text.startswith(f"400 bad {name}: ")


@pytest.mark.parametrize("value", ["0", "-1", "ten", "1.5"])
def test_bad_limit_is_400_naming_it(client, value):
    assert client().get("/api/captures", params={"limit": value}, status=400).text.startswith("400 bad limit")


# --- GET /captures/<id>: one photo ---------------------------------------------------------------


def test_photo_page_shows_the_photo_and_its_metadata(client, captures):
    row = captures[3]
    page = client().get(f"/captures/{row['id']}", status=200).text
    assert f'<img class="photo" src="/media/{row["id"]}.jpg"' in page
    assert f'width="{row["width"]}" height="{row["height"]}"' in page and row["width"] == 64
    assert "<dt>Trigger</dt><dd>motion (activityDetection)</dd>" in page
    assert "<dt>Protected</dt><dd>no</dd>" in page
    assert f"<dt>SHA-256</dt><dd>{row['sha256']}</dd>" in page
    assert f"<dt>Event</dt><dd>{row['event_id']}</dd>" in page
    assert "<dt>ExposureTime</dt><dd>12000</dd>" in page and "<dt>AnalogueGain</dt><dd>2.5</dd>" in page
    assert f'<a href="/api/captures/{row["id"]}">JSON</a>' in page


@pytest.mark.parametrize(
    ("capture_id", "status"),
    [
        (UNKNOWN_ID, 404),
        (UNKNOWN_ID.upper(), 400),
        (UNKNOWN_ID[:31], 400),
        (UNKNOWN_ID + "0", 400),
        (UNKNOWN_ID + ".jpg", 400),
        # WSGI servers decode %2f in PATH_INFO (webtest and waitress do): no route, or a bad id.
        ("%2e%2e%2fcaptures.db", [400, 404]),
    ],
)
@pytest.mark.parametrize("prefix", ["/captures/", "/api/captures/"])
def test_malformed_capture_id_is_400_and_unknown_is_404(client, prefix, capture_id, status):
    response = client().get(prefix + capture_id, status=status)
    assert response.content_type == "text/plain"


# --- GET /api/status -----------------------------------------------------------------------------


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
        "disk", "actions", "camera", "triggers", "system", "uv_light_on", "latest",
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


# --- GET /api/captures and /api/captures/<id> ----------------------------------------------------


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


# --- GET /healthz ----------------------------------------------------------------------------------


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


# --- GET /metrics ----------------------------------------------------------------------------------


def test_metrics_are_prometheus_text_with_every_series(client, captures, hardware, store):
    for freed in (1000, 2500):
        store.record_cleanup_run(
            {"started_at": "2026-06-01T21:00:00Z", "reason": "space", "deleted": 1, "bytes_freed": freed,
             "free_bytes_before": 0, "total_bytes": DISK.total}
        )  # fmt: skip
    for now in (0, 1, 2):
        hardware.gate.admit("motion", now=now)
    hardware.gate.admit("button", now=0)
    hardware.gate.admit("button", now=1)
    hardware.simulated.inject_failure(CameraTimeout("no frame within 1 s"))
    with pytest.raises(CameraTimeout):
        hardware.camera.capture(1.0)
    response = client(**hardware.parts()).get("/metrics", status=200)
    assert response.headers["Content-Type"].startswith("text/plain; version=")
    types_ = {family.name: family.type for family in text_string_to_metric_families(response.text)}
    assert types_ == {
        "appliance_captures": "gauge",
        "appliance_captures_last_hour": "gauge",
        "appliance_triggers_suppressed": "counter",
        "appliance_cleanup_runs": "counter",
        "appliance_cleanup_freed_bytes": "counter",
        "appliance_free_bytes": "gauge",
        "appliance_camera_failures": "counter",
        "appliance_cpu_temperature_celsius": "gauge",
    }
    assert metric_samples(response.text) == {
        ("appliance_captures", ()): 5,
        ("appliance_captures_last_hour", ()): 3,
        ("appliance_triggers_suppressed_total", (("source", "motion"),)): 2,
        ("appliance_triggers_suppressed_total", (("source", "button"),)): 1,
        ("appliance_cleanup_runs_total", ()): 2,
        ("appliance_cleanup_freed_bytes_total", ()): 3500,
        ("appliance_free_bytes", ()): DISK.free,
        ("appliance_camera_failures_total", ()): 1,
        ("appliance_cpu_temperature_celsius", ()): 51.7,
    }


def test_metrics_leave_out_the_cpu_temperature_when_unknown(client, hardware):
    hardware.thermal.unlink()
    samples = metric_samples(client(**hardware.parts()).get("/metrics", status=200).text)
    assert not any(name == "appliance_cpu_temperature_celsius" for name, _ in samples)
    assert samples[("appliance_camera_failures_total", ())] == 0


# --- GET /thumbnails/<id>.webp and /media/<id>.jpg -----------------------------------------------


@pytest.mark.parametrize(
    ("prefix", "column", "extension", "content_type"),
    [
        ("/thumbnails/", "thumbnail_path", "webp", "image/webp"),
        ("/media/", "media_path", "jpg", "image/jpeg"),
    ],
)
def test_files_are_served_immutable_with_an_etag_and_304_when_unchanged(
    client, captures, store, prefix, column, extension, content_type
):
    row, app = captures[2], client()
    url = f"{prefix}{row['id']}.{extension}"
    response = app.get(url, status=200)
    assert response.content_type == content_type
    assert response.body == (store.data_dir / row[column]).read_bytes()
    etag = response.headers["ETag"]
    assert etag == f'"{row["sha256"] if extension == "jpg" else row["id"]}"'
    cache = response.headers["Cache-Control"]
    assert "immutable" in cache and "max-age=31536000" in cache
    not_modified = app.get(url, headers={"If-None-Match": etag}, status=304)
    assert not_modified.body == b"" and not_modified.headers["ETag"] == etag
    assert "immutable" in not_modified.headers["Cache-Control"]
    assert app.get(url, headers={"If-None-Match": '"something else"'}, status=200).body == response.body
    app.get(url, headers={"If-None-Match": f'"other", W/{etag}'}, status=304)
    app.get(url, headers={"If-None-Match": "*"}, status=304)


def test_media_etag_is_the_photos_sha256(client, captures, store):
    row = captures[0]
    response = client().get(f"/media/{row['id']}.jpg", status=200)
    assert response.headers["ETag"] == f'"{hashlib.sha256(response.body).hexdigest()}"'


@pytest.mark.parametrize(
    ("path", "status"),
    [
        (f"/media/{UNKNOWN_ID}.jpg", 404),
        (f"/thumbnails/{UNKNOWN_ID}.webp", 404),
        (f"/media/{UNKNOWN_ID}.webp", 400),
        (f"/thumbnails/{UNKNOWN_ID}.jpg", 400),
        (f"/media/{UNKNOWN_ID.upper()}.jpg", 400),
        ("/media/captures.db", 400),
        ("/media/..%2fcaptures.db", [400, 404]),  # as above
        ("/media/%2e%2e%2f%2e%2e%2fetc%2fpasswd", [400, 404]),
    ],
)
def test_files_unknown_are_404_and_malformed_are_400(client, path, status):
    client().get(path, status=status)


def test_a_capture_without_a_thumbnail_has_a_404_thumbnail(client, captures):
    client().get(f"/thumbnails/{captures[4]['id']}.webp", status=404)


# --- Security headers ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/", 200),
        ("GET", "/style.css", 200),
        ("GET", "/captures", 200),
        ("GET", "/login", 200),
        ("GET", "/api/status", 200),
        ("GET", "/api/captures", 200),
        ("GET", "/healthz", 200),
        ("GET", "/metrics", 200),
        ("GET", "/nothing/here", 404),
        ("GET", f"/captures/{UNKNOWN_ID}", 404),
        ("GET", "/captures/not-an-id", 400),
        ("GET", "/captures?before=x", 400),
        ("GET", f"/media/{UNKNOWN_ID}.jpg", 404),
        ("GET", "/media/bad.jpg", 400),
        ("POST", "/api/capture", 403),
        ("PUT", "/api/status", 405),
        ("DELETE", "/captures", 405),
        ("HEAD", "/api/status", 200),
    ],
)
def test_security_headers_are_on_every_response(client, method, path, status):
    response = client().request(path, method=method, status=status)
    assert_security_headers(response)


def test_security_headers_are_on_file_304_and_auth_401_and_303_responses(client, captures):
    app = client(token=TOKEN, submit=queue.Queue().put)
    url = f"/media/{captures[0]['id']}.jpg"
    assert_security_headers(app.get(url, status=200))
    assert_security_headers(app.get(url, headers={"If-None-Match": f'"{captures[0]["sha256"]}"'}, status=304))
    assert_security_headers(app.post("/api/capture", status=401))
    assert_security_headers(app.post("/login", {"token": "wrong"}, headers={"Origin": ORIGIN}, status=401))
    assert_security_headers(log_in(app))


def assert_security_headers(response: webtest.TestResponse) -> None:
    for name in SECURITY_HEADERS:
        assert len(response.headers.getall(name)) == 1, name
    csp = response.headers["Content-Security-Policy"]
    assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["Referrer-Policy"]


# --- Actions: off, refused, accepted ---------------------------------------------------------------

ACTIONS = [
    "/api/capture",
    f"/api/captures/{UNKNOWN_ID}/protect",
    f"/api/captures/{UNKNOWN_ID}/unprotect",
    f"/captures/{UNKNOWN_ID}/protect",
    f"/captures/{UNKNOWN_ID}/unprotect",
]


@pytest.mark.parametrize("path", [*ACTIONS, "/login"])
@pytest.mark.parametrize(
    "options",
    # A loop that never answers stands behind submit: nothing must reach it.
    [{}, {"submit": queue.Queue().put}, {"token": TOKEN}],
    ids=["no token, no loop", "no token", "no loop"],
)
def test_every_action_is_refused_when_actions_are_off(client, options, path):
    app = client(**options)
    for headers in ({}, BEARER, {**BEARER, "Origin": ORIGIN}):
        response = app.post(path, {"token": TOKEN}, headers=headers, status=403)
        assert "actions are off" in response.text
    assert app.get("/api/status").json["actions"] is False


WRONG_CREDENTIALS = [
    {},
    {"Origin": ORIGIN},
    {"Authorization": "Bearer wrong-token"},
    {"Authorization": f"Bearer {TOKEN}x"},
    {"Authorization": f"Bearer {TOKEN[:-1]}"},
    {"Authorization": "Bearer "},
    {"Authorization": TOKEN},
    {"Authorization": f"bearer {TOKEN}", "Origin": ORIGIN},
    {"Authorization": f"Basic {TOKEN}", "Origin": ORIGIN},
    {"Cookie": f"appliance_session={TOKEN}", "Origin": ORIGIN},
]


@pytest.mark.parametrize("action", [path.replace(UNKNOWN_ID, "{id}") for path in ACTIONS])
def test_actions_without_the_right_credentials_are_401(loop_app, action):
    app, reader = loop_app.app, loop_app.reader
    capture_id = take(app)
    # Each action, were it done, would show: a second capture, or protected flipped.
    protected = action.endswith("/unprotect")
    verb = "protect" if protected else "unprotect"
    app.post(f"/api/captures/{capture_id}/{verb}", headers=BEARER, status=200)
    for headers in WRONG_CREDENTIALS:
        app.post(action.format(id=capture_id), headers=headers, status=401)
    assert reader.counts(datetime.datetime.now(datetime.UTC))["total"] == 1
    assert reader.get(capture_id)["protected"] == protected


def test_actions_with_the_bearer_token_are_accepted(loop_app):
    app = loop_app.app
    assert app.get("/api/status").json["actions"] is True
    capture_id = take(app)
    app.post(f"/api/captures/{capture_id}/protect", headers=BEARER, status=200)
    response = app.post(f"/captures/{capture_id}/unprotect", headers=BEARER, status=303)
    assert response.location == f"/captures/{capture_id}"


def test_tokens_are_compared_in_constant_time():
    source = inspect.getsource(auth)
    # The bearer token, the session cookie and the log-in form: each through hmac.compare_digest.
    assert source.count("hmac.compare_digest(") >= 3
    assert len(re.findall(r"compare_digest\([^\n]*\btoken\.encode\(\)\)", source)) >= 2
    assert re.search(r"compare_digest\([^\n]*\bsession\.encode\(\)\)", source)
    assert not re.search(r"(==|!=|\bin)\s*(token|session)\b|\b(token|session)\s*(==|!=)", source)


# --- Log-in, session cookie and cross-site requests -----------------------------------------------


def test_login_with_the_right_token_sets_an_httponly_samesite_strict_cookie(loop_app):
    response = log_in(loop_app.app)
    assert response.location == "/"
    (cookie,) = response.headers.getall("Set-Cookie")
    name_value, *attributes = [part.strip() for part in cookie.split(";")]
    name, value = name_value.split("=", 1)
    assert name == "appliance_session" and re.fullmatch(r"[0-9a-f]{64}", value)
    assert TOKEN not in cookie  # the cookie is derived from the token, not the token itself
    attributes = {attribute.lower() for attribute in attributes}
    assert {"httponly", "samesite=strict", "path=/"} <= attributes


def test_login_with_a_wrong_token_is_401_without_a_cookie(loop_app):
    for token in ("wrong", TOKEN[:-1], TOKEN + " ", ""):
        response = loop_app.app.post("/login", {"token": token}, headers={"Origin": ORIGIN}, status=401)
        assert "Set-Cookie" not in response.headers
        assert "Wrong token." in response.text
    assert not loop_app.app.cookies


def test_login_from_another_site_is_403(loop_app):
    for headers in ({"Origin": FOREIGN}, {}, {"Referer": f"{FOREIGN}/login"}):
        response = loop_app.app.post("/login", {"token": TOKEN}, headers=headers, status=403)
        assert "Set-Cookie" not in response.headers


def test_the_photo_page_shows_the_protect_button_only_when_logged_in(loop_app):
    app = loop_app.app
    capture_id = take(app)
    form = f'<form method="post" action="/captures/{capture_id}/protect">'
    page = app.get(f"/captures/{capture_id}", status=200).text
    assert form not in page and 'href="/login"' in page
    log_in(app)
    page = app.get(f"/captures/{capture_id}", status=200).text
    assert form in page and '<form method="post" action="/logout">' in page


def test_a_logged_in_form_post_from_our_origin_protects_and_unprotects(loop_app):
    app, reader = loop_app.app, loop_app.reader
    capture_id = take(app)
    log_in(app)
    response = app.post(f"/captures/{capture_id}/protect", headers={"Origin": ORIGIN}, status=303)
    assert response.location == f"/captures/{capture_id}"
    assert reader.get(capture_id)["protected"] == 1
    page = response.follow(status=200).text
    assert f'<form method="post" action="/captures/{capture_id}/unprotect">' in page
    assert "<dt>Protected</dt><dd>yes</dd>" in page
    # Without Origin, a Referer from our own pages will do.
    referer = {"Referer": f"{ORIGIN}/captures/{capture_id}"}
    app.post(f"/captures/{capture_id}/unprotect", headers=referer, status=303)
    assert reader.get(capture_id)["protected"] == 0


@pytest.mark.parametrize(
    "headers",
    [
        {"Origin": FOREIGN},
        {"Origin": FOREIGN, "Referer": f"{ORIGIN}/"},
        {"Referer": f"{FOREIGN}/captures"},
        {"Origin": f"http://{HOST}.evil.example"},
        {"Origin": f"http://{HOST}:8080"},
        {"Origin": "null"},
        {},
    ],
    ids=["foreign origin", "foreign origin, our referer", "foreign referer", "lookalike", "other port",
         "null", "none"],
)  # fmt: skip
def test_a_logged_in_form_post_from_another_origin_or_none_is_403(loop_app, headers):
    app, reader = loop_app.app, loop_app.reader
    capture_id = take(app)
    log_in(app)
    response = app.post(f"/captures/{capture_id}/protect", headers=headers, status=403)
    assert "cross-site request refused" in response.text
    app.post(f"/api/captures/{capture_id}/protect", headers=headers, status=403)
    assert reader.get(capture_id)["protected"] == 0


def test_a_cookie_request_with_a_non_bearer_authorization_header_is_still_checked_for_origin(loop_app):
    app, reader = loop_app.app, loop_app.reader
    capture_id = take(app)
    log_in(app)
    headers = {"Origin": FOREIGN, "Authorization": "Basic dXNlcjpwYXNz"}
    app.post(f"/captures/{capture_id}/protect", headers=headers, expect_errors=True)
    assert reader.get(capture_id)["protected"] == 0


def test_logout_clears_the_cookie(loop_app):
    app = loop_app.app
    capture_id = take(app)
    log_in(app)
    response = app.post("/logout", headers={"Origin": ORIGIN}, status=303)
    (cookie,) = response.headers.getall("Set-Cookie")
    assert cookie.startswith('appliance_session="";') or cookie.startswith("appliance_session=;")
    assert "max-age=-1" in cookie.lower() or "max-age=0" in cookie.lower()
    assert not app.cookies
    assert "/protect" not in app.get(f"/captures/{capture_id}", status=200).text
    app.post(f"/captures/{capture_id}/protect", headers={"Origin": ORIGIN}, status=401)


def test_logout_from_another_site_is_403_and_keeps_the_cookie(loop_app):
    log_in(loop_app.app)
    response = loop_app.app.post("/logout", headers={"Origin": FOREIGN}, status=403)
    assert "Set-Cookie" not in response.headers and loop_app.app.cookies


def browser_form_headers(page: webtest.TestResponse) -> dict:
    """The headers a browser sends with a same-origin form POST from ``page``: the page's
    Referrer-Policy decides Origin and Referer (Fetch standard, "append a request `Origin` header":
    a non-CORS POST under ``no-referrer`` has ``Origin: null``; Referrer Policy spec for Referer)."""
    origin = f"{page.request.scheme}://{page.request.host}"
    policy = page.headers.get("Referrer-Policy", "strict-origin-when-cross-origin")
    headers = {"Sec-Fetch-Site": "same-origin", "Content-Type": "application/x-www-form-urlencoded"}
    if policy == "no-referrer":
        return headers | {"Origin": "null"}
    referer = f"{origin}/" if policy in ("origin", "strict-origin") else page.request.url
    return headers | {"Origin": origin, "Referer": referer}


@pytest.mark.parametrize("form", ["login", "protect", "logout"])
def test_our_forms_work_as_a_browser_sends_them(loop_app, form):
    app = loop_app.app
    capture_id = take(app)
    if form == "login":
        page = app.get("/login", status=200)
        app.post("/login", f"token={TOKEN}", headers=browser_form_headers(page), status=303)
    else:
        log_in(app)
        page = app.get(f"/captures/{capture_id}", status=200)
        action = f"/captures/{capture_id}/protect" if form == "protect" else "/logout"
        app.post(action, "", headers=browser_form_headers(page), status=303)


# --- Actions done by the real main loop ------------------------------------------------------------


def test_a_test_shot_is_captured_by_the_main_loop_with_trigger_manual(loop_app):
    app, reader = loop_app.app, loop_app.reader
    capture_id = take(app)
    row = reader.get(capture_id)
    assert row["trigger"] == "manual" and row["seq"] == 1 and (row["width"], row["height"]) == (64, 48)
    assert reader.counts(datetime.datetime.now(datetime.UTC))["total"] == 1
    media = app.get(f"/media/{capture_id}.jpg", status=200)
    assert hashlib.sha256(media.body).hexdigest() == row["sha256"]
    assert app.get(f"/api/captures/{capture_id}").json["trigger"] == "manual"
    assert take(app) != capture_id and reader.counts(datetime.datetime.now(datetime.UTC))["total"] == 2


def test_protect_and_unprotect_change_the_index(loop_app):
    app, reader = loop_app.app, loop_app.reader
    capture_id = take(app)
    assert reader.get(capture_id)["protected"] == 0
    response = app.post(f"/api/captures/{capture_id}/protect", headers=BEARER, status=200)
    assert response.json == {"id": capture_id, "protected": True}
    assert reader.get(capture_id)["protected"] == 1
    assert app.get(f"/api/captures/{capture_id}").json["protected"] is True
    response = app.post(f"/api/captures/{capture_id}/unprotect", headers=BEARER, status=200)
    assert response.json == {"id": capture_id, "protected": False}
    assert reader.get(capture_id)["protected"] == 0


@pytest.mark.parametrize("prefix", ["/api/captures/", "/captures/"])
@pytest.mark.parametrize("verb", ["protect", "unprotect"])
def test_protecting_an_unknown_capture_is_404_and_a_malformed_id_400(loop_app, prefix, verb):
    app = loop_app.app
    take(app)
    assert "no such capture" in app.post(f"{prefix}{UNKNOWN_ID}/{verb}", headers=BEARER, status=404).text
    app.post(f"{prefix}{UNKNOWN_ID.upper()}/{verb}", headers=BEARER, status=400)
    assert all(row["protected"] == 0 for row in loop_app.reader.page())


# --- Fuzz ------------------------------------------------------------------------------------------

NASTY_SEGMENTS = [
    "..", ".", "%2e%2e", "%2e%2e%2f", "..%2f..%2fcaptures.db", "%2e%2e%2f%2e%2e%2fcaptures.db",
    "..%5c..%5ccaptures.db", "captures.db", "captures.db-wal", ".lock", "%2fetc%2fpasswd", "%00",
    "a%00.jpg", "%C3%A9", "%FF%FE", "%F0%9F%A6%8A", "%", "%zz", "~", "media", "thumbnails",
]  # fmt: skip


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_fuzzed_requests_never_get_a_5xx_nor_a_file_outside_the_index(loop_app, data):
    app, reader = loop_app.app, loop_app.reader
    if not reader.page(limit=1):
        take(app)
        take(app)
    ids = [row["id"] for row in reader.page(limit=10)]
    segment = st.one_of(
        st.sampled_from(NASTY_SEGMENTS),
        st.text(max_size=20).map(lambda text: urllib.parse.quote(text, safe="")),
        st.sampled_from(ids),
        st.text(alphabet="0123456789abcdefABCDEF", min_size=30, max_size=34),
        st.integers(200, 5000).map(lambda n: "a" * n),
    )
    suffix = st.sampled_from(["", ".jpg", ".webp", ".db", ".jpg%00", "/", "/protect", "/unprotect"])
    prefix = st.sampled_from(["/", "/captures/", "/api/captures/", "/thumbnails/", "/media/"])
    made_up = st.tuples(prefix, st.lists(segment, max_size=3), suffix).map(
        lambda p: p[0] + "/".join(p[1]) + p[2]
    )
    real = st.sampled_from([f"/media/{i}.jpg" for i in ids] + [f"/thumbnails/{i}.webp" for i in ids])
    path = data.draw(st.one_of(made_up, real))
    value = st.one_of(
        st.integers(-5, 2**64).map(str),
        st.text(max_size=12),
        st.sampled_from(["", "2024-03-10", "2024-02-30", "20240310", *TRIGGERS]),
    )
    query = data.draw(st.dictionaries(st.sampled_from(["before", "day", "trigger", "limit"]), value))
    method = data.draw(st.sampled_from(["GET", "POST", "PUT", "DELETE", "HEAD"]))
    authorization = data.draw(st.sampled_from([None, "Bearer wrong", f"Bearer {TOKEN}"]))
    headers = {"Authorization": authorization} if authorization else {}
    url = path + ("?" + urllib.parse.urlencode(query) if query else "")
    response = app.request(url, method=method, headers=headers, expect_errors=True)
    assert response.status_int < 500, (method, url, response.status, response.text[:200])
    if response.status_int == 200 and path.startswith(("/media/", "/thumbnails/")) and method == "GET":
        assert response.body in indexed_files(reader), (method, url)


# --- The real server on loopback -------------------------------------------------------------------


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


def raw_request(server: WebServer, head: bytes, body: bytes = b"") -> int:
    """Send ``head`` and ``body`` on a new connection; the status code of the answer.  The server may
    answer and close before all is sent."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        try:
            sock.sendall(head)
            sock.sendall(body)
        except (BrokenPipeError, ConnectionResetError):
            pass
        answer = b""
        while b"\r\n" not in answer:
            chunk = sock.recv(4096)
            if not chunk:
                break
            answer += chunk
    match = re.match(rb"HTTP/1\.[01] (\d{3}) ", answer)
    assert match, answer[:100]
    return int(match[1])


def get_status(server: WebServer, timeout_s: float = 5) -> int:
    return requests.get(f"{server.url}api/status", timeout=timeout_s).status_code


def test_100_kb_of_headers_get_a_4xx_and_the_server_keeps_serving(live):
    head = b"GET /api/status HTTP/1.1\r\nHost: x\r\nX-Padding: " + b"a" * 100_000 + b"\r\n\r\n"
    assert raw_request(live, head) in (400, 413, 431)
    many_headers = b"".join(b"X-Padding-%d: %s\r\n" % (i, b"a" * 1000) for i in range(100))
    assert raw_request(live, b"GET /api/status HTTP/1.1\r\nHost: x\r\n" + many_headers + b"\r\n") in (
        400,
        413,
        431,
    )
    assert get_status(live) == 200


def test_a_1_mb_body_gets_a_4xx_and_the_server_keeps_serving(live):
    host = f"127.0.0.1:{live.port}".encode()
    for path in (b"/login", b"/api/capture"):
        head = (
            b"POST " + path + b" HTTP/1.1\r\nHost: " + host + b"\r\nOrigin: http://" + host + b"\r\n"
            b"Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 1048576\r\n\r\n"
        )
        assert raw_request(live, head, b"token=" + b"a" * (1048576 - 6)) in (400, 413)
    assert get_status(live) == 200


def test_a_1_mb_chunked_body_gets_a_4xx(live):
    host = f"127.0.0.1:{live.port}".encode()
    head = (
        b"POST /login HTTP/1.1\r\nHost: " + host + b"\r\nOrigin: http://" + host + b"\r\n"
        b"Content-Type: application/x-www-form-urlencoded\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    body = b"100000\r\ntoken=" + b"a" * (0x100000 - 6) + b"\r\n0\r\n\r\n"
    try:
        status = raw_request(live, head, body)
    finally:
        assert get_status(live) == 200
    assert 400 <= status < 500


def test_a_client_that_sends_nothing_does_not_block_the_others(live):
    with socket.create_connection(("127.0.0.1", live.port)):
        started = time.monotonic()
        assert get_status(live, timeout_s=1) == 200
        assert time.monotonic() - started < 1


def page_seconds(server: WebServer, count: int = 30) -> list[float]:
    """Seconds each of ``count`` requests for ``GET /`` took, one after the other, each on a new
    connection."""
    seconds = []
    for _ in range(count):
        started = time.monotonic()
        assert requests.get(server.url, timeout=5).status_code == 200
        seconds.append(time.monotonic() - started)
    return seconds


def p99(seconds: list[float]) -> float:
    ordered = sorted(seconds)
    return ordered[math.ceil(0.99 * len(ordered)) - 1]


@contextlib.contextmanager
def trickling(port: int, count: int):
    """``count`` connections to ``port``, each sending the start of a request and then one header
    byte a second, from a background thread; one the server closes is opened again.  Yields
    ``{"opened": n, "bytes": n}``."""
    done, sent = threading.Event(), {"opened": 0, "bytes": 0}

    def start() -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        sock.sendall(b"GET / HTTP/1.1\r\nHost: trap.local\r\nX-Slow: ")
        sent["opened"] += 1
        return sock

    socks = [start() for _ in range(count)]

    def trickle() -> None:
        while not done.wait(1):
            for i, sock in enumerate(socks):
                try:
                    sock.sendall(b"a")
                    sent["bytes"] += 1
                except OSError:  # closed by the server (REQUEST_TIMEOUT_S): another one
                    sock.close()
                    socks[i] = start()

    thread = threading.Thread(target=trickle, name="trickle")
    thread.start()
    try:
        yield sent
    finally:
        done.set()
        thread.join()
        for sock in socks:
            sock.close()


def test_100_clients_trickling_a_header_byte_a_second_leave_the_page_answering_within_1_s(live, capsys):
    with trickling(live.port, 100) as sent:
        time.sleep(2.5)  # every one is part-way through its headers
        seconds = page_seconds(live)
    with capsys.disabled():
        print(f"\nGET / with 100 trickling clients: p99 {p99(seconds) * 1000:.0f} ms over {len(seconds)}, "
              f"{sent['opened']} connections opened, {sent['bytes']} bytes trickled")  # fmt: skip
    assert sent["bytes"] >= 100  # each one has sent some
    assert p99(seconds) < 1


def test_100_silent_clients_leave_the_page_answering_within_1_s(live, capsys):
    silent = [socket.create_connection(("127.0.0.1", live.port)) for _ in range(100)]
    try:
        time.sleep(0.5)
        seconds = page_seconds(live)
    finally:
        for sock in silent:
            sock.close()
    with capsys.disabled():
        print(f"\nGET / with 100 silent clients: p99 {p99(seconds) * 1000:.0f} ms over {len(seconds)}")
    assert p99(seconds) < 1


def test_a_request_still_arriving_after_the_request_timeout_is_dropped(live, monkeypatch):
    monkeypatch.setattr("appliance.web.server.REQUEST_TIMEOUT_S", 1)
    with socket.create_connection(("127.0.0.1", live.port), timeout=0.2) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: trap.local\r\n")
        started = time.monotonic()
        while time.monotonic() - started < 5:
            try:
                sock.sendall(b"X-Slow: a\r\n")  # a header line every 0.2 s: never silent
                if sock.recv(100) == b"":
                    break
            except TimeoutError:
                continue
            except OSError:
                break
        dropped_after_s = time.monotonic() - started
    assert 1 <= dropped_after_s < 3


# --- The real server against slow, hostile and malformed clients -----------------------------------

Answer = collections.namedtuple("Answer", "status headers body")


def exchange(port: int, data: bytes, timeout_s: float = 10) -> Answer | None:
    """Send ``data`` on a new connection to 127.0.0.1:``port`` and read until the server closes.
    The answer (``headers``: ``{lower-case name: [values]}``), or None when the server closed
    without one.  The server may answer and close before all is sent."""
    chunks = []
    with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as sock:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(data)
        while True:
            try:
                chunk = sock.recv(1 << 16)
            except ConnectionResetError:
                break
            if not chunk:
                break
            chunks.append(chunk)
    if not chunks:
        return None
    head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    match = re.fullmatch(r"HTTP/1\.[01] (\d{3}) .*", status_line)
    assert match, head[:200]
    headers = collections.defaultdict(list)
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()].append(value.strip())
    return Answer(int(match[1]), dict(headers), body)


def assert_every_answer_headers(answer: Answer) -> None:
    """The security headers once each, and one Cache-Control."""
    for name in SECURITY_HEADERS:
        assert len(answer.headers.get(name.lower(), [])) == 1, (name, answer)
    assert len(answer.headers.get("cache-control", [])) == 1, answer


FUZZ_HEADERS = (
    "Authorization", "Cookie", "Origin", "Referer", "Sec-Fetch-Site", "Host", "If-None-Match",
    "Content-Type", "Range", "If-Modified-Since",
)  # fmt: skip
FIELD_BYTES = [9, *range(0x20, 0x7F), *range(0x80, 0x100)]
# Requests that are malformed before any header the app reads.
MALFORMED_HEADS = [
    b"GARBAGE\r\n\r\n",
    b"GET / HTTP/1.1\r\nheader without a colon\r\n\r\n",
    b"GET / HTTP/1.1\r\n folded: x\r\nConnection: close\r\n\r\n",
    b"GET / HTTP/1.1\r\nX: a\nb\r\nConnection: close\r\n\r\n",
    b"GET /\xff\xfe HTTP/1.1\r\nConnection: close\r\n\r\n",
    b"GET / HTTP/9.9\r\nConnection: close\r\n\r\n",
    b"GET  /  HTTP/1.1\r\nConnection: close\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\nConnection: close\r\n\r\n",
    b"GET / HTTP/1.1\r\nX: \x00\x01\x7f\r\nConnection: close\r\n\r\n",
    b"GET / HTTP/1.1\r\n: no name\r\nConnection: close\r\n\r\n",
]


class RawRequests:
    """Random raw HTTP/1.x requests aimed at the app's routes, queries, headers and bodies, drawn
    from ``rng``: request lines and values with any byte (non-UTF-8 ones included), but framed so
    that the server never waits for bytes that will not come (which would only time out)."""

    def __init__(self, rng, port: int, ids: list[str], etags: list[str], session: str):
        self.rng, self.port, self.ids, self.etags, self.session = rng, port, ids, etags, session
        self.origin = f"http://127.0.0.1:{port}"

    def bytes_(self, max_size: int = 40, *, line: bool = True) -> bytes:
        """Random bytes, half of them non-ASCII; none that ends a line when ``line``."""
        size = self.rng.randrange(max_size + 1)
        return bytes(b for b in self.rng.randbytes(size) if not (line and b in b"\r\n"))

    def field(self, max_size: int = 40) -> bytes:
        """Random bytes a header value may hold (RFC 9110 5.5: visible ASCII, space, tab and
        obs-text, the bytes 0x80 to 0xff, which are no UTF-8 on their own), so that most reach
        the app; bytes_ makes values the server refuses itself."""
        return bytes(self.rng.choices(FIELD_BYTES, k=self.rng.randrange(max_size + 1)))

    def pick(self, *choices):
        choice = self.rng.choice(choices)
        return choice() if callable(choice) else choice

    def segment(self) -> bytes:
        return self.pick(
            lambda: self.rng.choice(NASTY_SEGMENTS).encode(),
            lambda: urllib.parse.quote_from_bytes(self.bytes_(20), safe="").encode(),
            lambda: (
                bytes(b for b in self.bytes_(12) if b not in b" ?#")  # raw bytes: often a 400
                if self.rng.random() < 0.2
                else urllib.parse.quote_from_bytes(self.bytes_(12), safe="/%").encode()
            ),
            lambda: self.rng.choice(self.ids).encode(),
            lambda: "".join(
                self.rng.choices("0123456789abcdefABCDEF", k=self.rng.randrange(30, 35))
            ).encode(),
            lambda: b"a" * self.rng.randrange(200, 5000),
        )

    def path(self) -> bytes:
        some_id = self.rng.choice(self.ids)
        return self.pick(
            lambda: (
                self.rng.choice([b"/", b"/captures/", b"/api/captures/", b"/thumbnails/", b"/media/"])
                + b"/".join(self.segment() for _ in range(self.rng.randrange(4)))
                + self.rng.choice(
                    [b"", b".jpg", b".webp", b".db", b".jpg%00", b"/", b"/protect", b"/unprotect"]
                )
            ),
            lambda: self.rng.choice(
                [
                    f"/media/{some_id}.jpg",
                    f"/thumbnails/{some_id}.webp",
                    f"/captures/{some_id}",
                    f"/api/captures/{some_id}",
                    f"/captures/{some_id}/protect",
                    f"/api/captures/{some_id}/unprotect",
                ]
            ).encode(),  # fmt: skip
            lambda: self.rng.choice(
                [
                    "/",
                    "/captures",
                    "/api/status",
                    "/api/captures",
                    "/healthz",
                    "/metrics",
                    "/login",
                    "/logout",
                    "/api/capture",
                    "/style.css",
                    "/favicon.ico",
                    "/export/camtrap-dp.zip",
                ]
            ).encode(),  # fmt: skip
        )

    def query(self) -> bytes:
        values = [
            "9999-12-31", "0001-01-01", "2024-03-10", "2024-02-30", "20240310", "2024-W10-1",
            "9999-12-31T23:59:59-05:00", "0001-01-01T00:00+01:00", str(2**63), str(2**64), "-1", "0",
            "1e9", "1.5", "copy", "none", *TRIGGERS, "",
        ]  # fmt: skip
        names = ["before", "day", "trigger", "limit", "since", "until", "media"]
        pairs = []
        for _ in range(self.rng.randrange(4)):
            name = self.pick(
                lambda: self.rng.choice(names).encode(),
                lambda: urllib.parse.quote_from_bytes(self.bytes_(6), safe="").encode(),
            )
            value = self.pick(
                lambda: self.rng.choice(values).encode(),
                lambda: str(self.rng.randrange(-(10**30), 10**30)).encode(),
                lambda: b"9" * self.rng.randrange(1, 6000),
                lambda: urllib.parse.quote_from_bytes(self.bytes_(12), safe="").encode(),
                lambda: urllib.parse.quote_from_bytes(self.bytes_(12), safe="%&=+;").encode(),
            )
            pairs.append(name.replace(b" ", b"") + b"=" + value)
        return b"?" + b"&".join(pairs) if pairs else b""

    def header(self, name: str) -> bytes:
        raw = self.field
        values = {
            "Authorization": [f"Bearer {TOKEN}".encode(), b"Bearer wrong", lambda: b"Bearer " + raw(),
                              b"Basic dXNlcjpwYXNz"],
            "Cookie": [f"appliance_session={self.session}".encode(), lambda: b"appliance_session=" + raw(),
                       f"a{{=1; appliance_session={self.session}".encode(), b"appliance_session"],
            "Origin": [self.origin.encode(), b"http://evil.example", b"null", b"http://[", b"http://\xff"],
            "Referer": [f"{self.origin}/captures".encode(), b"http://evil.example/", b"http://[x/"],
            "Sec-Fetch-Site": [b"same-origin", b"cross-site", b"none", b"same-site"],
            "Host": [f"127.0.0.1:{self.port}".encode(), b"evil.example", b"", b"[::1"],
            "If-None-Match": [lambda: f'"{self.rng.choice(self.etags)}"'.encode(), b"*", b'W/"x", "y"', b","],
            "Content-Type": [b"application/x-www-form-urlencoded", b"multipart/form-data",
                             b"multipart/form-data; boundary=xyz", b"a; b", b"text/plain; charset=\xff",
                             b'multipart/form-data; boundary="'],
            "Range": [b"bytes=0-10", b"bytes=-5", b"bytes=10-0", b"bytes=99999999999999999999-",
                      b"bytes=0-0,5-"],
            "If-Modified-Since": [b"Sat, 29 Oct 1994 19:43:31 GMT", b"Fri, 31 Dec 9999 23:59:59 GMT", b"0"],
        }[name]  # fmt: skip
        return self.pick(*values, raw, raw) if self.rng.random() < 0.98 else self.bytes_()

    def body(self) -> tuple[list[bytes], bytes]:
        """Headers that frame a body, and the body."""
        body = self.pick(
            b"", f"token={TOKEN}".encode(), lambda: b"token=" + self.bytes_(30),
            lambda: b"token=" + urllib.parse.quote_from_bytes(self.bytes_(30)).encode(),
            lambda: self.bytes_(300, line=False),
            b'--xyz\r\nContent-Disposition: form-data; name="token"\r\n\r\n\xff\xfe\r\n--xyz--\r\n',
        )  # fmt: skip
        how = self.rng.choice(
            ["none", "length", "length", "short", "bad length", "huge", "chunked", "coding"]
        )
        if how == "length":
            return [b"Content-Length: %d" % len(body)], body
        if how == "short":  # the rest is read as the next request, or ignored
            return [b"Content-Length: %d" % self.rng.randrange(len(body) + 1)], body
        if how == "bad length":  # each refused before a body is awaited, or shorter than the one sent
            value = self.pick(
                b"-1", b"abc", b"1e3", b"0x10", b"+5", b" 5 ", b"5, 5", lambda: b"x" + self.bytes_(8)
            )
            return [b"Content-Length: " + value], body + b"." * 64
        if how == "huge":
            return [b"Content-Length: " + self.pick(b"1048576", b"%d" % 10**30)], body
        if how == "chunked":
            chunk = b"%x" % len(body) + self.pick(b"", b";a=b", b"zz") + b"\r\n" + body + b"\r\n"
            return [b"Transfer-Encoding: chunked"], chunk + b"0\r\n\r\n"
        if how == "coding":
            coding = self.pick(
                b"gzip", b"chunked, gzip", b"gzip, chunked", b"identity", lambda: self.bytes_(10)
            )
            return [b"Transfer-Encoding: " + coding], body
        return [], body

    def make(self) -> tuple[bytes, dict]:
        """A request, and what the checks need to know of it."""
        if self.rng.random() < 0.02:
            return self.rng.choice(MALFORMED_HEADS), {"method": b"", "path": b"", "coding": False}
        method = self.pick(b"GET", b"GET", b"GET", b"POST", b"POST", b"HEAD", b"PUT", b"DELETE", b"OPTIONS",
                           b"PATCH", lambda: self.bytes_(8).replace(b" ", b""))  # fmt: skip
        path = self.path()
        version = self.pick(b"HTTP/1.1", b"HTTP/1.1", b"HTTP/1.1", b"HTTP/1.0")
        headers = [
            name.encode() + b": " + self.header(name) for name in FUZZ_HEADERS if self.rng.random() < 0.35
        ]
        framing, body = self.body()
        headers = framing + headers + [b"Connection: close"]
        self.rng.shuffle(headers)
        head = method + b" " + path + self.query() + b" " + version + b"\r\n" + b"\r\n".join(headers)
        coding = any(h.lower().startswith(b"transfer-encoding") for h in headers)
        return head + b"\r\n\r\n" + body, {"method": method, "path": path, "coding": coding}


FUZZ_REQUESTS = 10_000
FUZZ_SENDERS = 4


def test_fuzzed_raw_requests_through_the_real_server_never_get_a_5xx(main_loop, capsys):
    """Raw requests through WebServer with actions on and a main loop that answers: no answer is a
    5xx but a 501 for a transfer coding other than chunked, every answer carries the security
    headers and a Cache-Control, and no file answered is one the index does not have.  Set
    FUZZ_SEED to replay the requests of a run (the seed is printed)."""
    app = main_loop.app()
    browser = webtest.TestApp(app, extra_environ={"HTTP_HOST": HOST})
    take(browser)
    take(browser)
    log_in(browser)
    session = browser.cookies["appliance_session"]
    rows = main_loop.reader.page(limit=10)
    ids, etags = [row["id"] for row in rows], [row["sha256"] for row in rows] + [row["id"] for row in rows]
    server = WebServer(app, "127.0.0.1", 0)
    seed = int(os.environ.get("FUZZ_SEED", random.randrange(2**32)))
    statuses, failures, files, lock = collections.Counter(), [], [], threading.Lock()

    def send(rng) -> None:
        requests_ = RawRequests(rng, server.port, ids, etags, session)
        for _ in range(FUZZ_REQUESTS // FUZZ_SENDERS):
            data, sent = requests_.make()
            try:
                answer = exchange(server.port, data)
            except OSError as exc:  # a timeout included
                answer, problems = None, [f"no answer: {exc!r}"]
            else:
                problems = [] if answer else ["closed without an answer"]
            if answer:
                if answer.status >= 500 and not (answer.status == 501 and sent["coding"]):
                    problems.append(f"{answer.status} {answer.body[:300]!r}")
                try:
                    assert_every_answer_headers(answer)
                except AssertionError as exc:
                    problems.append(f"headers: {exc}")
                file = sent["path"].startswith((b"/media/", b"/thumbnails/"))
                if answer.status == 200 and sent["method"] == b"GET" and file:
                    files.append((data[:200], answer.body))
            with lock:
                statuses[answer.status if answer else None] += 1
                failures.extend((problem, data[:300]) for problem in problems)

    started = time.monotonic()
    try:
        senders = [
            threading.Thread(target=send, args=(random.Random(seed + i),)) for i in range(FUZZ_SENDERS)
        ]
        for sender in senders:
            sender.start()
        for sender in senders:
            sender.join()
    finally:
        server.stop()
    elapsed = time.monotonic() - started
    indexed = indexed_files(main_loop.reader)
    with capsys.disabled():
        print(
            f"\nraw fuzz (seed {seed}): {sum(statuses.values())} requests in {elapsed:.1f} s; statuses "
            + ", ".join(f"{status}: {n}" for status, n in sorted(statuses.items(), key=str))
        )
    assert sum(statuses.values()) >= 10_000
    assert not failures, f"{len(failures)} failures (seed {seed}): {sorted(set(failures))[:10]}"
    strays = [request for request, body in files if body not in indexed]
    assert not strays, strays[:5]
    assert len(files) > 20  # the fuzz did fetch real files


def live_session(server: WebServer) -> str:
    """Log in to ``server`` (token TOKEN) as its own log-in form does; the session cookie's value."""
    origin = server.url.rstrip("/")
    response = requests.post(
        f"{origin}/login", data={"token": TOKEN}, headers={"Origin": origin}, allow_redirects=False, timeout=5
    )
    assert response.status_code == 303
    return response.cookies["appliance_session"]


@pytest.mark.parametrize("path", ["/captures", "/api/captures"])
def test_the_last_day_of_the_calendar_is_a_400_and_the_first_a_200(live, path):
    response = requests.get(f"{live.url.rstrip('/')}{path}?day=9999-12-31", timeout=5)
    assert response.status_code == 400 and response.text == "400 bad day: '9999-12-31'\n"
    assert requests.get(f"{live.url.rstrip('/')}{path}?day=0001-01-01", timeout=5).status_code == 200


NOT_UTF8 = {
    "Authorization": f"Bearer {TOKEN}".encode() + b"\xff",
    "Origin": b"http://127.0.0.1:%d\xff\xfe",
    "Referer": b"http://127.0.0.1:%d\xc3(/captures",
    "Sec-Fetch-Site": b"same-origin\x80",
}


@pytest.mark.parametrize("header", list(NOT_UTF8))
@pytest.mark.parametrize("path", ["/login", "/logout", "/api/capture", f"/captures/{UNKNOWN_ID}/protect"])
def test_a_header_byte_that_is_not_utf8_is_a_4xx_without_a_traceback(live, header, path, caplog):
    cookie = live_session(live).encode()
    value = NOT_UTF8[header].replace(b"%d", str(live.port).encode())
    request = (
        b"POST " + path.encode() + b" HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n" % live.port
        + b"Cookie: appliance_session=" + cookie + b"\r\n" + header.encode() + b": " + value + b"\r\n"
        b"Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )  # fmt: skip
    answer = exchange(live.port, request)
    assert answer.status in (401, 403), answer
    assert_every_answer_headers(answer)
    assert not [record for record in caplog.records if record.levelno >= logging.ERROR]


def test_a_cookie_post_over_http_1_0_without_host_origin_or_referer_is_403(live):
    cookie = b"Cookie: appliance_session=" + live_session(live).encode() + b"\r\n"
    for path in (b"/logout", b"/api/capture", b"/captures/%s/protect" % UNKNOWN_ID.encode()):
        answer = exchange(
            live.port, b"POST " + path + b" HTTP/1.0\r\n" + cookie + b"Content-Length: 0\r\n\r\n"
        )
        assert answer.status == 403 and answer.body == b"403 cross-site request refused\n", (path, answer)
    # The same cookie, from our own page, is taken.
    ours = b"Host: 127.0.0.1:%d\r\nOrigin: http://127.0.0.1:%d\r\n" % (live.port, live.port)
    answer = exchange(live.port, b"POST /logout HTTP/1.0\r\n" + ours + cookie + b"Content-Length: 0\r\n\r\n")
    assert answer.status == 303


@pytest.mark.parametrize(
    ("request_", "status"),
    [
        (b"GARBAGE\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nheader without a colon\r\n\r\n", 400),
        (b"POST /login HTTP/1.1\r\nHost: x\r\nContent-Length: 1048576\r\n\r\n", 413),
        (b"GET / HTTP/1.1\r\nHost: x\r\nX-Padding: " + b"a" * (20 << 10) + b"\r\n\r\n", 431),
        (b"POST /login HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n", 501),
    ],
    ids=["malformed request line", "header without a colon", "body over 16 KiB", "headers over 16 KiB",
         "unknown transfer coding"],
)  # fmt: skip
def test_the_servers_own_error_answers_carry_the_security_headers_and_no_store(live, request_, status):
    answer = exchange(live.port, request_)
    assert answer.status == status
    assert_every_answer_headers(answer)
    assert answer.headers["cache-control"] == ["no-store"]


@pytest.mark.parametrize(
    ("method", "path", "status", "cache_control"),
    [
        ("GET", "/", 200, "no-cache"),
        ("HEAD", "/", 200, "no-cache"),
        ("GET", "/captures", 200, "no-cache"),
        ("GET", "/captures/{id}", 200, "no-cache"),
        ("GET", "/style.css", 200, "no-cache"),
        ("GET", "/favicon.ico", 204, "no-cache"),
        ("GET", "/login", 200, "no-store"),
        ("GET", "/api/status", 200, "no-store"),
        ("GET", "/api/captures", 200, "no-store"),
        ("GET", "/api/captures/{id}", 200, "no-store"),
        ("GET", "/healthz", 200, "no-store"),
        ("GET", "/metrics", 200, "no-store"),
        ("GET", "/media/{id}.jpg", 200, "public, max-age=31536000, immutable"),
        ("GET", "/thumbnails/{id}.webp", 200, "public, max-age=31536000, immutable"),
        ("POST", "/login", 303, "no-store"),
        ("POST", "/logout", 303, "no-store"),
        ("POST", "/api/capture", 401, "no-store"),
        ("GET", f"/captures/{UNKNOWN_ID}", 404, "no-store"),
        ("GET", "/captures?day=yesterday", 400, "no-store"),
        ("PUT", "/api/status", 405, "no-store"),
    ],
)
def test_cache_control_is_set_by_the_kind_of_route(live, captures, method, path, status, cache_control):
    origin = live.url.rstrip("/")
    url, data = origin + path.format(id=captures[2]["id"]), {"token": TOKEN} if method == "POST" else None
    response = requests.request(
        method, url, data=data, headers={"Origin": origin}, allow_redirects=False, timeout=5
    )
    assert response.status_code == status
    assert response.headers["Cache-Control"] == cache_control


NON_ASCII_TOKEN = "çlé-secrète-ünïcødé-0123"


def test_a_non_ascii_token_logs_in_through_the_form_and_by_bearer(main_loop):
    server = WebServer(main_loop.app(token=NON_ASCII_TOKEN), "127.0.0.1", 0)
    origin = server.url.rstrip("/")
    try:
        with requests.Session() as browser:
            # As a browser sends the form of a UTF-8 page: the token's UTF-8 bytes, percent-encoded.
            body = "token=" + urllib.parse.quote(NON_ASCII_TOKEN, encoding="utf-8")
            form = {"Content-Type": "application/x-www-form-urlencoded", "Origin": origin,
                    "Sec-Fetch-Site": "same-origin"}  # fmt: skip
            response = browser.post(f"{origin}/login", data=body, headers=form, allow_redirects=False)
            assert response.status_code == 303 and browser.cookies["appliance_session"]
            response = browser.post(f"{origin}/api/capture", headers={"Origin": origin}, timeout=10)
            assert response.status_code == 200 and len(response.json()["captured"]) == 1
            latin1 = "token=" + urllib.parse.quote(NON_ASCII_TOKEN, encoding="latin-1")
            assert browser.post(f"{origin}/login", data=latin1, headers=form).status_code == 401
        # The header as sent: the token's UTF-8 bytes, which WSGI hands over as latin-1 characters.
        bearer = {"Authorization": b"Bearer " + NON_ASCII_TOKEN.encode()}
        response = requests.post(f"{origin}/api/capture", headers=bearer, timeout=10)
        assert response.status_code == 200 and len(response.json()["captured"]) == 1
        for wrong in (NON_ASCII_TOKEN.encode("latin-1"), NON_ASCII_TOKEN.encode()[:-1] + b"\xff"):
            response = requests.post(f"{origin}/api/capture", headers={"Authorization": b"Bearer " + wrong})
            assert response.status_code == 401
    finally:
        server.stop()
    assert main_loop.reader.counts(datetime.datetime.now(datetime.UTC))["total"] == 2


INDEX_ROUTES = [
    "/", "/api/status", "/healthz", "/captures", "/metrics", "/api/captures", "/captures/{id}",
    "/api/captures/{id}", "/media/{id}.jpg", "/thumbnails/{id}.webp",
]  # fmt: skip


@pytest.mark.parametrize("damage", ["removed", "not a database"])
def test_an_unreadable_index_is_a_503_with_the_reason_and_one_log_line(live, store, captures, damage, caplog):
    db = store.data_dir / "captures.db"
    if damage == "not a database":  # overwritten in place: damaged pages, as a failing card gives
        assert store.checkpoint()[0] == 0  # else the WAL's newer copy of the first page is read
        db.write_bytes(b"this is no SQLite file\n" * 500)
        reason = "the capture index cannot be read: file is not a database"
    else:
        db.unlink()
        reason = "the capture index cannot be read: unable to open database file"
    for route in INDEX_ROUTES:
        response = requests.get(live.url.rstrip("/") + route.format(id=captures[2]["id"]), timeout=5)
        assert (response.status_code, response.text) == (503, f"503 {reason}\n"), route
        assert response.headers["Cache-Control"] == "no-store"
    logged = [record for record in caplog.records if record.levelno >= logging.WARNING]
    assert [record.getMessage() for record in logged] == [f"web: {reason}"]
    assert logged[0].exc_info is None
