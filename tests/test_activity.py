"""Activity at a glance (appliance/activity.py): the captures per hour and by hour of day and the
free space over the week, kept by the store beside each insert, read by indexed ranges, drawn as
SVG on the status page and served as JSON by /api/activity."""

import datetime
import html
import os
import re
import sqlite3
import zoneinfo

import pytest
import sqlite_utils
from web_client import app_over, get, shoot

from appliance import activity
from appliance.activity import DISK_SAMPLE_INTERVAL_S, plots, read_activity, sample_disk
from appliance.config import Config
from appliance.importer import import_photos
from appliance.runtime import Appliance
from appliance.store import CaptureStore, IndexReader, migrations, writer
from appliance.store.synthetic import grow
from appliance.web import WebServer
from boot.systemd import Notifier
from hw.camera import SimulatedCamera
from hw.clock import ManualClock
from hw.system import DiskUsage

UTC = datetime.UTC
PLUS_0530 = datetime.timezone(datetime.timedelta(hours=5, minutes=30))
PLUS_13 = datetime.timezone(datetime.timedelta(hours=13))
# The noon of a day the tests' captures are taken around.
NOON = datetime.datetime(2026, 6, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
def jpeg() -> bytes:
    return shoot(SimulatedCamera(size_px=(64, 48)))[0]


def take(store: CaptureStore, jpeg: bytes, at: datetime.datetime, trigger: str) -> dict:
    """A capture taken at ``at`` (a trusted clock) by ``trigger``, through the store."""
    return store.add(jpeg, None, timestamp=ManualClock(at).now(), trigger=trigger)


def import_one(store: CaptureStore, folder, jpeg: bytes, at: datetime.datetime) -> None:
    """``appliance import`` of one photo without EXIF, taken (its mtime) at ``at``."""
    folder.mkdir()
    (folder / "photo.jpg").write_bytes(jpeg[:-2] + b"imported" + jpeg[-2:])  # another SHA-256
    os.utime(folder / "photo.jpg", (at.timestamp(), at.timestamp()))
    summary = import_photos(folder, IndexReader(store.data_dir), store, assume=UTC)
    assert summary.imported == 1, summary


def by_hour(found: activity.Activity) -> dict[str, dict[str, int]]:
    """The hourly counts with captures, ``{"HH:MM" UTC: {trigger: n}}``."""
    return {f"{h.hour:%H:%M}": h.by_trigger for h in found.hourly if h.captures}


def test_the_hourly_counts_are_those_of_captures_at_known_times_by_trigger_imports_included(
    store, jpeg, tmp_path
):
    take(store, jpeg, NOON - datetime.timedelta(hours=3, minutes=50), "motion")  # 08:10
    take(store, jpeg, NOON - datetime.timedelta(hours=3, minutes=1), "motion")  # 08:59
    take(store, jpeg, NOON - datetime.timedelta(hours=3), "button")  # 09:00: the next hour
    import_one(store, tmp_path / "import", jpeg, NOON - datetime.timedelta(hours=2, minutes=30))  # 09:30
    take(store, jpeg, NOON + datetime.timedelta(minutes=20), "motion")  # 12:20, the hour now is in
    take(store, jpeg, NOON - datetime.timedelta(hours=24, minutes=1), "motion")  # 11:59 yesterday: out

    found = read_activity(IndexReader(store.data_dir), NOON + datetime.timedelta(minutes=30), UTC)

    assert len(found.hourly) == 24
    assert found.hourly[0].hour == NOON - datetime.timedelta(hours=23)
    assert found.hourly[-1].hour == NOON
    assert by_hour(found) == {
        "08:00": {"motion": 2},
        "09:00": {"button": 1, "import": 1},
        "12:00": {"motion": 1},
    }
    assert found.any_captures
    assert sum(h.captures for h in found.diel) == 6  # the week holds yesterday's too


@pytest.mark.parametrize(
    ("zone", "hour_of_day"),
    [(UTC, 8), (PLUS_0530, 13), (PLUS_13, 21), (datetime.timezone(datetime.timedelta(hours=-3)), 5)],
)
def test_the_diel_buckets_are_hours_of_day_in_the_zone(store, jpeg, zone, hour_of_day):
    # 08:10 and 08:50 UTC on two days: one UTC hour, 13:30 to 14:29 at +05:30, which starts in 13.
    for day in (0, 3):
        for minute in (10, 50):
            at = NOON - datetime.timedelta(days=day, hours=4) + datetime.timedelta(minutes=minute)
            take(store, jpeg, at, "timelapse")

    found = read_activity(IndexReader(store.data_dir), NOON, zone)

    assert [(h.hour, h.by_trigger) for h in found.diel if h.captures] == [(hour_of_day, {"timelapse": 4})]
    assert [h.hour for h in found.diel] == list(range(24))
    # The hourly plot stays in UTC hours; its labels are in the zone.
    assert by_hour(found) == {"08:00": {"timelapse": 2}}
    hourly_plot = plots(found)[0]
    [bar] = [bar for bar in hourly_plot.bars if bar.rects]
    expected = (NOON - datetime.timedelta(hours=4)).astimezone(zone)
    assert bar.title == f"{expected:%a %H:%M}: 2 captures (timelapse 2)"


def test_the_diel_plot_covers_seven_days_and_no_more(store, jpeg):
    take(store, jpeg, NOON - datetime.timedelta(days=7) + datetime.timedelta(minutes=5), "motion")  # out
    take(store, jpeg, NOON - datetime.timedelta(days=7) + datetime.timedelta(hours=1), "motion")  # first
    found = read_activity(IndexReader(store.data_dir), NOON + datetime.timedelta(minutes=1), UTC)
    assert [(h.hour, h.captures) for h in found.diel if h.captures] == [(13, 1)]


def test_the_counts_are_of_captures_taken_and_survive_their_deletion_by_cleanup(store, jpeg):
    for minute in range(5):
        take(store, jpeg, NOON - datetime.timedelta(minutes=50 - minute), "motion")
    reader = IndexReader(store.data_dir)
    before = read_activity(reader, NOON, UTC)

    freed, failed = store.delete(store.oldest_unprotected(3))  # what cleanup deletes with
    assert freed > 0 and not failed and len(reader.latest(10)) == 2

    after = read_activity(reader, NOON, UTC)
    assert after == before
    assert by_hour(after) == {"11:00": {"motion": 5}}


def test_the_migration_counts_the_captures_of_an_index_from_before(tmp_path, jpeg, monkeypatch):
    # A store as the previous version left it: every migration but m011, rows added through it.
    real_apply = migrations.apply
    with monkeypatch.context() as patch:
        patch.setattr(migrations, "apply", lambda db: real_apply(db, stop_before="m011_activity_at_a_glance"))
        patch.setattr(writer, "m013_columns", lambda jpeg: {})  # nor did it store an MD5
        old = CaptureStore(tmp_path / "data")
        for at, trigger in [(NOON - datetime.timedelta(minutes=40), "motion"),
                            (NOON - datetime.timedelta(minutes=30), "motion"),
                            (NOON - datetime.timedelta(hours=5), "button")]:  # fmt: skip
            take(old, jpeg, at, trigger)
        old.delete(old.oldest_unprotected(1))  # gone before the upgrade: not counted
        old.close()
    db = sqlite_utils.Database(tmp_path / "data" / "captures.db")
    assert not db["activity_hours"].exists()
    db.close()
    assert read_activity(IndexReader(tmp_path / "data"), NOON, UTC).any_captures is False

    store = CaptureStore(tmp_path / "data")
    try:
        take(store, jpeg, NOON - datetime.timedelta(minutes=20), "manual")  # counted as it is taken
    finally:
        store.close()

    found = read_activity(IndexReader(tmp_path / "data"), NOON, UTC)
    assert by_hour(found) == {"07:00": {"button": 1}, "11:00": {"motion": 1, "manual": 1}}


def test_a_capture_whose_time_sqlite_cannot_read_is_stored_and_counted_in_no_hour(store, jpeg):
    take(store, jpeg, NOON - datetime.timedelta(minutes=10), "motion")
    row = take(store, jpeg, NOON - datetime.timedelta(minutes=5), "motion") | {"seq": 99, "id": "ab" * 16}
    store.insert([row | {"captured_at": "not a time"}])
    assert store.db["captures"].count == 3
    assert by_hour(read_activity(IndexReader(store.data_dir), NOON, UTC)) == {"11:00": {"motion": 2}}


def test_the_synthetic_index_of_the_bench_is_counted_by_the_stores_own_trigger(store):
    grow(store, 2_000, total=2_000, now=NOON)
    (counted,) = store.db.execute("SELECT SUM(captures) FROM activity_hours").fetchone()
    assert counted == 2_000
    found = read_activity(IndexReader(store.data_dir), NOON, UTC)
    # One capture every 2 minutes over the synthetic last day: the 23 whole hours before noon.
    assert [h.captures for h in found.hourly] == [30] * 23 + [0]


def test_the_disk_samples_are_written_by_the_runtimes_job(tmp_path, monkeypatch):
    monkeypatch.setattr("hw.clock.clock_synced", lambda: True)
    config = Config(data_dir=str(tmp_path / "data"), simulate=True, simulate_trigger_interval_s=3600,
                    web_host="127.0.0.1", web_port=0)  # fmt: skip
    with Appliance(config, notifier=Notifier({})) as appliance:
        [job] = [job for job in appliance.jobs() if job.name == "disk sample"]
        assert job.interval_s == DISK_SAMPLE_INTERVAL_S
        job.run()
        hours = appliance.store.db.execute(
            "SELECT hour_start_s, free_bytes, total_bytes, samples FROM disk_hours"
        )
        hours = hours.fetchall()
        assert sum(row[3] for row in hours) == 2  # one at start-up, one by the job
        now = datetime.datetime.now(UTC)
        assert all(0 <= now.timestamp() - row[0] < 3600 + 60 for row in hours)
        assert all(0 < free <= total for _, free, total, _ in hours)
        shown = read_activity(appliance.reader, now, UTC).disk
        assert [(int(d.hour.timestamp()), d.free_bytes, d.total_bytes) for d in shown] == [
            r[:3] for r in hours
        ]


def test_old_disk_hours_are_pruned_as_new_samples_are_written(store, monkeypatch):
    usage = DiskUsage(total=64_000_000_000, used=0, free=16_000_000_000)
    clock = ManualClock(NOON - datetime.timedelta(days=9), step_s=0)
    assert sample_disk(store, clock.now, lambda path: usage)
    clock.wall = NOON - datetime.timedelta(days=7, hours=23, minutes=30)
    assert sample_disk(store, clock.now, lambda path: usage)
    clock.wall = NOON
    assert sample_disk(store, clock.now, lambda path: usage)

    def kept() -> list[str]:
        rows = store.db.execute("SELECT hour_start_s FROM disk_hours ORDER BY id").fetchall()
        return [f"{datetime.datetime.fromtimestamp(hour, UTC):%m-%d %H:%M}" for (hour,) in rows]

    assert kept() == ["05-24 12:00", "06-01 12:00"]  # 8 days before the newest hour, and it
    # A clock set back: the hours "from the future" go too, once there are too many.
    monkeypatch.setattr("appliance.store.writer.DISK_HOURS_MAX_ROWS", 3)
    clock.wall = datetime.datetime(2020, 1, 1, tzinfo=UTC)
    for _ in range(3):
        sample_disk(store, clock.now, lambda path: usage)
        clock.wall += datetime.timedelta(hours=1)
    assert kept() == ["01-01 00:00", "01-01 01:00", "01-01 02:00"]


def test_the_disk_plot_shows_the_least_free_space_of_each_hour_and_breaks_where_one_has_none(store):
    clock = ManualClock(NOON - datetime.timedelta(hours=4), step_s=0)
    for minutes, free in [(5, 10), (20, 8), (35, 9), (130, 7), (190, 6)]:  # 08:05 ... 11:10
        clock.wall = NOON - datetime.timedelta(hours=4) + datetime.timedelta(minutes=minutes)
        sample_disk(store, clock.now, lambda path, free=free: DiskUsage(20_000_000_000, 0, free * 10**9))
    found = read_activity(IndexReader(store.data_dir), NOON, UTC)
    assert [(f"{d.hour:%H:%M}", d.free_bytes // 10**9) for d in found.disk] == [
        ("08:00", 8), ("10:00", 7), ("11:00", 6)
    ]  # fmt: skip
    disk_plot = plots(found)[2]
    assert len(disk_plot.lines) == 2  # 09:00 had no sample
    assert disk_plot.summary == (
        "Free space in GB, last 7 days: 6.0 GB free of 20.0 GB at Mon 11:00; the least, 6.0 GB, at Mon 11:00."
    )


def test_no_disk_sample_is_taken_with_an_untrusted_clock_or_an_unreadable_disk(store):
    usage = DiskUsage(total=64_000_000_000, used=0, free=16_000_000_000)
    assert not sample_disk(store, ManualClock(NOON, clock_synced=False).now, lambda path: usage)
    assert not sample_disk(store, ManualClock(NOON).now, lambda path: None)
    assert store.db["disk_hours"].count == 0


def test_the_status_page_over_http_draws_the_three_plots_with_a_title_per_bar(store, jpeg, tmp_path):
    now = datetime.datetime.now(UTC)
    two_hours_ago = now - datetime.timedelta(hours=2)
    take(store, jpeg, two_hours_ago, "motion")
    take(store, jpeg, two_hours_ago + datetime.timedelta(seconds=1), "motion")
    import_one(store, tmp_path / "import", jpeg, two_hours_ago)
    usage = DiskUsage(total=64_000_000_000, used=0, free=16_000_000_000)
    for hours in (30, 2):
        sample_disk(store, ManualClock(now - datetime.timedelta(hours=hours)).now, lambda path: usage)
    reader = IndexReader(store.data_dir)
    server = WebServer(
        app_over(reader, config=lambda: Config(timezone="Asia/Kolkata")), "127.0.0.1", 0
    )  # +05:30
    try:
        page = get(server, "/")
        api = get(server, "/api/activity")
    finally:
        server.stop()
    assert page.status_code == 200 and api.status_code == 200
    body = page.text
    svgs = re.findall(r"<svg class=\"plot\"[^>]*>.*?</svg>", body, re.S)
    assert len(svgs) == 3
    assert " style=" not in "".join(svgs)  # the Content-Security-Policy refuses inline styles
    hour = two_hours_ago.replace(minute=0, second=0, microsecond=0)
    local = hour.astimezone(PLUS_0530)
    titles = [html.unescape(t) for t in re.findall(r"<g><title>(.*?)</title>", svgs[0])]
    assert len(titles) == 24
    assert f"{local:%a %H:%M}: 3 captures (motion 2, import 1)" in titles
    assert sum(t.endswith(": 0 captures") for t in titles) == 23 - (hour.hour != two_hours_ago.hour)
    diel = [html.unescape(t) for t in re.findall(r"<g><title>(.*?)</title>", svgs[1])]
    assert f"{local.hour:02d}:00 to {(local.hour + 1) % 24:02d}:00: 3 captures (motion 2, import 1)" in diel
    assert "(IST)" in body
    assert "Free space in GB, last 7 days: 16.0 GB free of 64.0 GB" in html.unescape(svgs[2])
    assert svgs[2].count("<polyline") == 2  # a gap of 28 hours is not drawn across

    # /api/activity: the same numbers, from the same computation.
    served = api.json()
    at = datetime.datetime.fromisoformat(served["now"])
    assert served == read_activity(reader, at, zoneinfo.ZoneInfo("Asia/Kolkata")).to_json()
    [busy] = [h for h in served["hourly"]["hours"] if h["captures"]]
    assert (busy["start"], busy["by_trigger"]) == (hour.isoformat(), {"motion": 2, "import": 1})
    assert [h["hour"] for h in served["diel"]["hours"] if h["captures"]] == [local.hour]
    assert [d["free_bytes"] for d in served["disk"]["hours"]] == [16_000_000_000, 16_000_000_000]
    assert served["zone"] == "IST" and served["any_captures"] is True


def test_an_empty_store_says_no_captures_yet(store, client):
    page = client()
    body = page.get("/").text
    assert body.count('<svg class="plot"') == 3
    assert body.count(">No captures yet</text>") == 2
    assert ">No samples yet</text>" in body
    served = page.get("/api/activity").json
    assert served["any_captures"] is False
    assert all(h["captures"] == 0 for h in served["hourly"]["hours"] + served["diel"]["hours"])


def test_a_quiet_day_after_captures_says_none_in_the_last_24_hours(store, jpeg):
    take(store, jpeg, NOON - datetime.timedelta(days=3), "motion")
    hourly, diel, _ = plots(read_activity(IndexReader(store.data_dir), NOON, UTC))
    assert (hourly.empty, diel.empty) == ("No captures in the last 24 hours", "")


def test_the_readers_queries_use_indexes_never_a_scan(store, jpeg):
    for hours in range(0, 200, 7):
        take(store, jpeg, NOON - datetime.timedelta(hours=hours), ("motion", "button")[hours % 2])
    sample_disk(store, ManualClock(NOON).now, lambda path: DiskUsage(10, 5, 5))
    statements = []

    class Traced(IndexReader):
        def _db(self):
            db = super()._db()
            db.conn.set_trace_callback(statements.append)
            return db

    read_activity(Traced(store.data_dir), NOON, UTC)
    # Every query but sqlite-utils' look at the catalogue (does the table exist yet?).
    selects = [s for s in statements if s.lstrip().upper().startswith("SELECT") and "sqlite_master" not in s]
    assert len(selects) == 3
    assert not [sql for sql in selects if re.search(r"FROM\s+captures\b", sql, re.I)]
    plans = {}
    for sql in selects:
        plans[sql] = [row[3] for row in store.db.execute(f"EXPLAIN QUERY PLAN {sql}").fetchall()]
    assert not [(sql, plan) for sql, plan in plans.items() if any(d.startswith("SCAN") for d in plan)], plans
    assert any("activity_hours USING PRIMARY KEY" in d for plan in plans.values() for d in plan)
    assert any("disk_hours USING INDEX" in d for plan in plans.values() for d in plan)


def test_an_index_that_cannot_be_read_is_an_error_not_an_empty_plot(tmp_path):
    with pytest.raises(sqlite3.OperationalError):
        read_activity(IndexReader(tmp_path / "nothing"), NOON, UTC)
