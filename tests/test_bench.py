import datetime
import json

import pytest

from appliance import bench
from appliance.cli import main
from appliance.store import CAPTURE_METHODS, TRIGGERS, iso_utc, media_path, thumbnail_path

ROUTES = ["/", "/api/status", "/api/captures?before=<middle>&limit=24", "/api/captures?before=<oldest>"]


@pytest.fixture
def small_bench(monkeypatch):
    monkeypatch.setattr("appliance.bench.INDEX_SIZES", (1_000, 3_000))
    monkeypatch.setattr("appliance.bench.DELETED", 200)
    monkeypatch.setattr("appliance.bench.WEB_REQUESTS", 20)
    monkeypatch.setattr("appliance.bench.WEB_WARMUP", 2)


def test_the_web_benchmark_measures_each_route_at_both_sizes_with_the_same_last_day(
    tmp_path, small_bench, capsys
):
    assert main(["bench", "--data-dir", str(tmp_path), "--json"]) == 0
    figures = json.loads(capsys.readouterr().out)
    assert list(figures["web_ms"]) == ROUTES
    for route in ROUTES:
        by_size = figures["web_ms"][route]
        assert set(by_size) == {"1000", "3000"}
        assert all(0 < ms["p50"] <= ms["p99"] for ms in by_size.values())
        ratio = figures["web_ratio_1m_vs_1k"][route]
        assert ratio == round(by_size["3000"]["p50"] / by_size["1000"]["p50"], 2)
        assert figures["web_verdict"][route] == ("PASS" if ratio <= figures["web_ratio_target"] else "MISS")
    # The status counts did the same work at both sizes: only the history behind differs.
    small, large = figures["web_captures"]["1000"], figures["web_captures"]["3000"]
    assert (small["total"], large["total"]) == (1_000, 3_000)
    assert small["last_hour"] == large["last_hour"] == 30
    assert small["last_24h"] == large["last_24h"] == 720
    assert list(tmp_path.iterdir()) == []  # its scratch folders are gone


def test_the_bench_table_gives_each_route_its_ratio_and_verdict(tmp_path, small_bench, capsys):
    assert main(["bench", "--data-dir", str(tmp_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "30 / 720 of 1,000, 30 / 720 of 3,000" in "\n".join(lines)
    for route in ROUTES:
        [line] = [line for line in lines if line.split()[:1] == [route]]
        assert line.split()[-1] in ("PASS", "MISS")


def test_the_bench_index_rows_look_like_captures_and_grow_in_time_order(store):
    now = datetime.datetime.now(datetime.UTC)
    for rows in (1_000, 2_500, 3_000):  # in stages, as the cleanup figures grow it
        bench._grow_index(store, rows, total=3_000, now=now)
    rows = list(store.db.query("SELECT * FROM captures ORDER BY seq"))
    assert [row["seq"] for row in rows] == list(range(1, 3_001)) and store.last_seq == 3_000
    assert store.db["counters"].get("last_seq")["value"] == 3_000
    assert store.db["counters"].get("captures")["value"] == 3_000
    assert len({row["id"] for row in rows}) == 3_000
    times = [datetime.datetime.fromisoformat(row["captured_at"]) for row in rows]
    assert times == sorted(times)
    assert datetime.timedelta(0) < now - times[-1] < datetime.timedelta(minutes=1)
    assert abs(now - times[0] - datetime.timedelta(days=90)) < datetime.timedelta(seconds=1)
    assert sum(now - t <= datetime.timedelta(hours=24) for t in times) == bench.RECENT_CAPTURES
    for row in rows:
        assert row["media_path"] == media_path(row["id"]) and row["thumbnail_path"] == thumbnail_path(
            row["id"]
        )
        assert row["trigger"] in TRIGGERS and row["capture_method"] == CAPTURE_METHODS[row["trigger"]]
        assert row["captured_at"] == iso_utc(datetime.datetime.fromisoformat(row["captured_at"]))
    assert {row["trigger"] for row in rows} == {"motion", "timelapse", "button", "manual"}
    assert sum(row["protected"] for row in rows) == 3
