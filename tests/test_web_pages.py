"""The pages (``appliance.web.pages``): the status page, the gallery and a capture's page, in-process
(webtest) and from the real server."""

import re
import socket
import urllib.parse

import bottle
import pytest
from web_client import (
    BEARER,
    DISK,
    TOKEN,
    DiskUsage,
    assert_security_headers,
    bind_request,
    capture_ids,
    get,
    log_in,
    older_link,
    shoot,
    take,
)

from appliance import config, web
from appliance.loop import Health
from appliance.status import StatusCollector
from appliance.store import IndexReader
from appliance.web import WebDeps, WebServer, make_app
from appliance.web.auth import Auth
from appliance.web.pages import Pages
from hw.camera import RecoveringCamera, SimulatedCamera
from hw.clock import ManualClock
from hw.exc import CameraTimeout
from hw.system import Probes
from hw.triggers import GateSettings, TriggerGate


def configured(**settings):
    """The ``config`` of WebDeps: the config of ``settings`` (checked as a file's are)."""
    loaded = config.load(**settings)
    return lambda: loaded


# --- GET /: the status page -----------------------------------------------------------------------


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
    if level == "warning":  # in words a naturalist understands, with what to do
        assert (
            "<strong>clock:</strong> not set (no network time or GPS yet): photo times may be wrong. "
            "Connect the trap to a network once, or fit a real-time clock module." in page
        )
        assert "clock_synced" not in page
    elif level == "error":
        assert "<strong>storage:</strong> the last capture could not be stored" in page


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


def test_problems_of_the_main_loop_show_as_a_banner_and_in_the_api(store):
    health = Health()
    reader = IndexReader(store.data_dir)
    status = StatusCollector(reader, mode="hardware", started_monotonic=0, health=health)
    server = WebServer(make_app(WebDeps(reader, status.collect)), "127.0.0.1", 0)
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
    gate = TriggerGate(GateSettings(cooldown_s=10))
    gate.admit("motion", now=0)
    gate.admit("motion", now=1)
    (tmp_path / "temp").write_text("85500\n")
    vcgencmd = tmp_path / "vcgencmd"
    vcgencmd.write_text("#!/bin/sh\necho throttled=0x50005\n")
    vcgencmd.chmod(0o755)
    probes = Probes(store.data_dir, thermal_path=tmp_path / "temp", throttled_command=[str(vcgencmd)])

    reader = IndexReader(store.data_dir)
    status = StatusCollector(
        reader, mode="hardware", started_monotonic=0, camera=camera, gate=gate, probes=probes
    )
    server = WebServer(make_app(WebDeps(reader, status.collect)), "127.0.0.1", 0)
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


def test_favicon_is_an_empty_204(client):
    response = client().get("/favicon.ico", status=204)
    assert response.body == b""
    assert_security_headers(response)


def test_style_css_is_served_as_css(client):
    response = client().get("/style.css", status=200)
    assert response.content_type == "text/css" and response.body == (web.VIEWS / "style.css").read_bytes()


# --- GET /captures: the gallery -------------------------------------------------------------------


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


# --- GET /captures/<id>: one photo ----------------------------------------------------------------


def test_photo_page_shows_the_photo_and_its_metadata(client, captures):
    row = captures[3]
    page = client().get(f"/captures/{row['id']}", status=200).text
    assert f'<img class="photo" src="/media/{row["id"]}.jpg"' in page
    assert f'width="{row["width"]}" height="{row["height"]}"' in page and row["width"] == 64
    assert "<dt>Trigger</dt><dd>motion (activityDetection)</dd>" in page
    assert "<dt>Protected from cleanup</dt><dd>No</dd>" in page
    assert f"<dt>SHA-256</dt><dd>{row['sha256']}</dd>" in page
    assert f"<dt>Event</dt><dd>{row['event_id']}</dd>" in page
    # METADATA: ExposureTime 12000 µs, AnalogueGain 2.5, Lux 310.0 (picamera2's names and units).
    assert "<h2>Camera</h2>" in page
    assert "<dt>Exposure</dt><dd>1/83 s</dd>" in page and "<dt>Analogue gain</dt><dd>2.5×</dd>" in page
    assert "<dt>Light level</dt><dd>310 lux</dd>" in page
    assert f'<a href="/api/captures/{row["id"]}">JSON</a>' in page


def test_the_photo_page_shows_the_protect_button_only_when_logged_in_and_how_to_get_it(loop_app):
    app = loop_app.app
    capture_id = take(app)
    form = f'<form method="post" action="/captures/{capture_id}/protect">'
    page = app.get(f"/captures/{capture_id}", status=200).text
    assert form not in page
    assert '<p><a href="/login">Log in to protect photos from cleanup</a></p>' in page
    log_in(app)
    page = app.get(f"/captures/{capture_id}", status=200).text
    assert form in page and '<form method="post" action="/logout">' in page
    assert "Log in to protect" not in page and "web_token" not in page


def test_without_a_token_the_photo_page_says_how_to_turn_protecting_on(client, captures):
    page = client().get(f"/captures/{captures[0]['id']}", status=200).text
    assert (
        "To protect photos from cleanup here, set <code>web_token</code> in the config "
        "(see “Keep captures” in docs/operating.md)." in page
    )
    assert "/protect" not in page and 'href="/login"' not in page


def test_the_photo_page_of_a_simulated_capture_shows_exif_and_metadata_as_labelled_rows(loop_app):
    app = loop_app.app
    capture_id = take(app)
    metadata = app.get(f"/api/captures/{capture_id}", headers=BEARER).json["metadata"]
    assert metadata["Simulated"] is True and metadata["exif"]["Make"] == "Raspberry Pi"  # what it shows
    page = app.get(f"/captures/{capture_id}", status=200).text
    assert "<dt>Simulated camera</dt><dd>Yes</dd>" in page
    assert "<h2>EXIF (in the photo file)</h2>" in page
    assert "<dt>Camera make</dt><dd>Raspberry Pi</dd>" in page
    assert "<dt>Camera serial number</dt><dd>trap-07</dd>" in page
    taken = metadata["exif"]["DateTimeOriginal"].replace(":", "-", 2)
    assert f"<dt>Taken, by the camera&#039;s clock</dt><dd>{taken}</dd>" in page
    assert "{&#039;" not in page and "{'" not in page and "True" not in page and "Simulated:" not in page


def test_unknown_and_odd_metadata_gets_humanised_labels_and_plain_values(client, store, captures):
    jpeg, thumbnail = shoot(SimulatedCamera(size_px=(64, 48)))
    metadata = {
        "ColourCorrectionMatrix": [1.5, -0.25, 0.1],
        "AfState": 2,
        "exif": {"FNumber": "abc", "Orientation": 42, "ISOSpeedRatings": [100, 200], "Flash": 1},
        "tuning": {"nested_key": {"a_b": True, "c": None}},
    }
    row = store.add(jpeg, thumbnail, timestamp=ManualClock().now(), trigger="manual", metadata=metadata)
    page = client().get(f"/captures/{row['id']}", status=200).text
    assert "<dt>Colour correction matrix</dt><dd>1.5, -0.25, 0.1</dd>" in page
    assert "<dt>Af state</dt><dd>2</dd>" in page
    # A value of another type than the appliance writes (an imported photo's EXIF): shown plain.
    assert "<dt>Aperture</dt><dd>abc</dd>" in page and "<dt>Orientation</dt><dd>42</dd>" in page
    assert "<dt>Sensitivity</dt><dd>ISO 100, 200</dd>" in page and "<dt>Flash</dt><dd>fired</dd>" in page
    assert "<h2>Tuning</h2>" in page and "<dt>Nested key</dt><dd>A b: Yes; C: none</dd>" in page
    assert "{" not in page.split("<h2>Camera</h2>")[1] and "True" not in page


# --- Times, title and navigation ----------------------------------------------------------------------


def test_times_are_shown_in_the_configured_zone_and_the_api_keeps_iso_utc(client, captures):
    app = client(config=configured(timezone="Pacific/Auckland"))
    old = captures[0]  # OLD_DAY 08:00 UTC: 21:00 in Auckland (NZDT, UTC+13)
    assert old["captured_at"] == "2024-03-10T08:00:00.000+00:00"
    shown = '<time datetime="2024-03-10T21:00:00+13:00">2024-03-10 21:00 NZDT</time>'
    assert shown in app.get("/captures?day=2024-03-10", status=200).text
    page = app.get(f"/captures/{old['id']}", status=200).text
    assert '<time datetime="2024-03-10T21:00:00+13:00">2024-03-10 21:00:00 NZDT</time>' in page
    assert "UTC" not in page
    assert app.get(f"/api/captures/{old['id']}").json["captured_at"] == old["captured_at"]


def test_the_system_zone_is_used_when_none_is_configured(client, captures, monkeypatch):
    monkeypatch.setenv("TZ", "America/Anchorage")
    page = client(config=configured()).get(f"/captures/{captures[0]['id']}", status=200).text
    assert '<time datetime="2024-03-09T23:00:00-09:00">2024-03-09 23:00:00 AKST</time>' in page


def test_the_gallery_day_is_a_day_of_the_configured_zone_and_the_api_day_stays_utc(client, captures):
    app = client(config=configured(timezone="America/Anchorage"))
    old = [captures[1]["id"], captures[0]["id"]]  # OLD_DAY 08:00 UTC: the day before, 23:00, there
    page = app.get("/captures?day=2024-03-09", status=200).text
    assert capture_ids(page) == old and "Day (America/Anchorage)" in page
    assert capture_ids(app.get("/captures?day=2024-03-10", status=200).text) == []
    api = app.get("/api/captures?day=2024-03-10", status=200).json["captures"]
    assert [c["id"] for c in api] == old


def test_a_gallery_day_out_of_range_in_the_zone_is_a_400(client, captures):
    app = client(config=configured(timezone="Pacific/Auckland"))
    response = app.get("/captures?day=0001-01-01", status=400)
    assert response.text == "400 bad day: 0001-01-01 is out of range in Pacific/Auckland\n"


@pytest.mark.parametrize(
    ("path", "page", "current"),
    [("/", "Status", "/"), ("/captures", "Captures", "/captures"), ("/login", "Log in", "/login")],
)
def test_the_title_names_the_page_and_the_trap_and_the_nav_marks_the_page(client, path, page, current):
    app = client(config=configured(camera_id="trap-07"), token=TOKEN, submit=lambda request: None)
    text = app.get(path, status=200).text
    assert f"<title>{page} · trap-07</title>" in text and f"<h1>{page}</h1>" in text
    assert re.findall(r'<a href="([^"]*)" aria-current="page">', text) == [current]
    assert "Camera trap" not in text


def test_without_a_camera_id_the_trap_is_named_by_the_host(client, captures):
    text = client().get(f"/captures/{captures[0]['id']}", status=200).text
    assert f"<title>Capture #{captures[0]['seq']} · {socket.gethostname()}</title>" in text


# --- Marks in the captions ------------------------------------------------------------------------------


def test_captions_mark_doubtful_times_and_protected_captures_and_explain_the_marks_once(client, store):
    jpeg, thumbnail = shoot(SimulatedCamera(size_px=(64, 48)))
    clock = ManualClock(clock_synced=False)
    store.add(jpeg, thumbnail, timestamp=clock.now(), trigger="motion")
    clock.clock_synced = True
    kept = store.add(jpeg, thumbnail, timestamp=clock.now(), trigger="button")
    store.set_protected(kept["id"], True)
    page = client().get("/", status=200).text
    captions = re.findall(r"<figcaption>(#.*?)</figcaption>", page)  # the grid's, not the plots'
    assert len(captions) == 2 and "(clock not set)" not in page
    assert '<span class="mark" title="protected from cleanup">★</span>' in captions[0]
    assert "⚠" not in captions[0] and "★" not in captions[1]
    assert '<span class="mark" title="the clock was not set: the time may be wrong">⚠</span>' in captions[1]
    assert page.count("taken before the clock was set: the time may be wrong.") == 1
    assert page.count("protected from cleanup.") == 1
    store.set_protected(kept["id"], False)
    only_doubtful = client().get(f"/captures?before={kept['seq']}", status=200).text
    assert "the time may be wrong." in only_doubtful and "protected from cleanup." not in only_doubtful
    assert 'class="legend"' not in client().get("/captures?trigger=button", status=200).text


# --- Without HTTP ------------------------------------------------------------------------------------


def test_the_page_handlers_render_without_http(store, captures):
    reader = IndexReader(store.data_dir)
    health = Health()
    status = StatusCollector(reader, mode="hardware", started_monotonic=0, health=health)
    pages = Pages(reader, status.collect, Auth("", actions_on=False))
    bind_request()
    health.set("storage", "the last capture could not be stored: No space left on device")
    page = pages.status()
    assert '<p class="banner error"><strong>storage:</strong> the last capture could not be stored' in page
    assert "5 in all" in page and "Log in" not in page and "Camtrap DP" not in page
    bind_request("/captures", query="trigger=motion")
    assert capture_ids(pages.gallery()) == [captures[3]["id"], captures[0]["id"]]
    assert f'src="/media/{captures[1]["id"]}.jpg"' in pages.capture(captures[1]["id"])
    with pytest.raises(bottle.HTTPError) as answer:
        pages.capture("0" * 32)
    assert answer.value.status_code == 404


def test_the_status_page_offers_the_export_to_those_who_may_download_it(store):
    reader = IndexReader(store.data_dir)
    collect = StatusCollector(reader, mode="simulation", started_monotonic=0).collect
    auth = Auth(TOKEN, actions_on=True)
    pages = Pages(reader, collect, auth, config=configured(latitude=51.496, longitude=4.774))
    bind_request()
    page = pages.status()
    assert "Download all as Camtrap DP" not in page
    assert '<a href="/login">Log in</a> to download the photos as a Camtrap DP package.' in page
    bind_request(headers={"Cookie": f"appliance_session={auth.session}"})
    assert "Download all as Camtrap DP" in pages.status()
    open_to_all = Pages(reader, collect, Auth("", actions_on=False), config=pages.config)
    assert "Download all as Camtrap DP" in open_to_all.status()
    no_export = Pages(reader, collect, Auth("", actions_on=False))
    assert "Camtrap DP" not in no_export.status()


@pytest.mark.parametrize(
    ("settings", "missing"),
    [({}, "latitude and longitude"), ({"latitude": 51.496}, "longitude"), ({"longitude": 4.774}, "latitude")],
)
def test_without_the_position_the_zip_is_not_offered_and_the_page_says_what_to_set(
    client, captures, settings, missing
):
    app = client(config=configured(**settings))
    page = app.get("/", status=200).text
    assert "/export/camtrap-dp.zip" not in page
    assert (
        f"To download the photos as a Camtrap DP package, set {missing} (decimal degrees) in the config."
        in page
    )
    # The page's word and the export's come from the same check.
    refused = app.get("/export/camtrap-dp.zip", status=409).text
    assert refused.startswith(f"409 {missing.replace(' and ', ', ')}: not set in the config")
    with_position = client(config=configured(latitude=51.496, longitude=4.774)).get("/", status=200).text
    assert (
        '<a href="/export/camtrap-dp.zip" download>' in with_position and "To download" not in with_position
    )
