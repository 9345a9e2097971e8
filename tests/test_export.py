"""``appliance export camtrap-dp``: a Camtrap DP package of the store's captures, checked with the
offline validator of ../shared/camtrap-dp and read back."""

import csv
import datetime
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from appliance.cli import main
from appliance.store import IndexReader
from hw.clock import ManualClock

VALIDATOR = Path(__file__).resolve().parents[2] / "shared" / "camtrap-dp" / "validate_offline.py"
START = datetime.datetime(2026, 6, 1, 21, 0, tzinfo=datetime.UTC)
DEPLOYMENT = """\
deployment_id = "ridge-2026"
latitude = 51.496
longitude = 4.774
coordinate_uncertainty_m = 30
camera_height_m = 0.8
camera_tilt_deg = -10
camera_heading_deg = 285
camera_id = "unit-7"
feature_type = "trailGame"
habitat = "Mixed woodland edge"
deployment_start = "2026-06-01T20:00:00+02:00"
project_title = "Ridge mammals"
contributors = ["Ada Lovelace", "Field Station"]
data_license = "CC0-1.0"
media_license = "CC-BY-4.0"
"""


@pytest.fixture
def filled(store, burst_dir):
    """The store with real photos: a button burst of 3, a motion capture taken with an unsynced
    clock, and 2 timelapse captures a day later.  Returns the rows in capture order."""
    photos = sorted(burst_dir.glob("*.JPG"))
    clock = ManualClock(START, step_s=0.5)
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


def export(tmp_path, store, *args, config=DEPLOYMENT):
    path = tmp_path / "appliance.toml"
    path.write_text(config)
    return main(
        ["export", "camtrap-dp", *map(str, args), "--config", str(path), "--data-dir", str(store.data_dir)]
    )


def read_csv(path):
    with open(path, newline="", encoding="utf-8") as file:
        return list(csv.DictReader(file))


def validate(package: Path) -> subprocess.CompletedProcess:
    if not VALIDATOR.is_file():
        if os.environ.get("CI") == "true":
            pytest.fail(f"{VALIDATOR} not found: CI must check the export against it")
        pytest.skip(f"{VALIDATOR} not found")
    return subprocess.run([sys.executable, VALIDATOR, package], capture_output=True, text=True, timeout=120)


def test_the_export_of_real_photos_validates_against_camtrap_dp(tmp_path, store, filled, capsys):
    out = tmp_path / "package"
    assert export(tmp_path, store, out) == 0
    summary = capsys.readouterr().out
    assert f"{out}: 6 captures, 4 events, {sum(r['bytes'] for r in filled)} bytes" in summary
    result = validate(out)
    assert result.returncode == 0, result.stdout + result.stderr
    descriptor = json.loads((out / "datapackage.json").read_text())
    assert descriptor["contributors"][0] == {"title": "Ada Lovelace", "role": "contact"}
    assert descriptor["project"]["captureMethod"] == ["activityDetection", "timeLapse"]
    assert descriptor["spatial"] == {"type": "Point", "coordinates": [4.774, 51.496]}
    assert descriptor["temporal"] == {"start": "2026-06-01", "end": "2026-06-02"}
    [deployment] = read_csv(out / "deployments.csv")
    assert deployment["deploymentStart"] == "2026-06-01T20:00:00+02:00"  # the configured one
    assert deployment["deploymentEnd"] == "2026-06-02T21:00:02+00:00"  # the last capture
    assert (deployment["timestampIssues"], deployment["featureType"]) == ("true", "trailGame")


def test_round_trip_every_capture_once_with_identical_bytes_and_shared_events(tmp_path, store, filled):
    out = tmp_path / "package"
    assert export(tmp_path, store, out) == 0
    media = read_csv(out / "media.csv")
    assert [m["mediaID"] for m in media] == [r["id"] for r in filled]
    for row, m in zip(filled, media, strict=True):
        assert (out / m["filePath"]).read_bytes() == (store.data_dir / row["media_path"]).read_bytes()
        assert m["timestamp"] == row["captured_at"][:19] + "+00:00"
        assert m["deploymentID"] == "ridge-2026"
    assert [m["captureMethod"] for m in media] == ["activityDetection"] * 4 + ["timeLapse"] * 2
    assert [m["favorite"] for m in media] == ["false", "true"] + ["false"] * 4
    assert json.loads(media[0]["exifData"]) == {"Make": "Raspberry Pi", "ExposureTime": 0.01}
    observations = read_csv(out / "observations.csv")
    assert len(observations) == 4
    burst = [o for o in observations if o["eventID"] == "burst1"]
    assert [(o["eventStart"], o["eventEnd"], o["observationLevel"], o["observationType"]) for o in burst] == [
        (media[0]["timestamp"], media[2]["timestamp"], "event", "unclassified")
    ]
    assert sorted(os.listdir(out / "media")) == sorted(f"{r['id']}.jpg" for r in filled)


def test_media_link_makes_hard_links_and_none_writes_no_media(tmp_path, store, filled):
    assert export(tmp_path, store, tmp_path / "linked", "--media", "link") == 0
    for row in filled:
        source = store.data_dir / row["media_path"]
        assert (tmp_path / "linked" / "media" / f"{row['id']}.jpg").stat().st_ino == source.stat().st_ino
    assert export(tmp_path, store, tmp_path / "bare", "--media", "none") == 0
    assert not (tmp_path / "bare" / "media").exists()
    assert len(read_csv(tmp_path / "bare" / "media.csv")) == len(filled)
    result = validate(tmp_path / "bare")
    assert result.returncode == 0, result.stdout


def test_a_non_empty_outdir_is_refused_and_left_untouched(tmp_path, store, filled, capsys):
    out = tmp_path / "package"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert export(tmp_path, store, out) == 2
    assert "is not an empty folder" in capsys.readouterr().err
    assert os.listdir(out) == ["notes.txt"] and (out / "notes.txt").read_text() == "mine"
    assert [p.name for p in tmp_path.iterdir() if ".partial" in p.name] == []
    (out / "notes.txt").unlink()
    assert export(tmp_path, store, out) == 0  # an empty folder is fine


def test_since_and_until_select_the_captures_in_range(tmp_path, store, filled):
    out = tmp_path / "package"
    assert export(tmp_path, store, out, "--since", "2026-06-01T21:00:01Z", "--until", "2026-06-02") == 0
    assert [m["mediaID"] for m in read_csv(out / "media.csv")] == [r["id"] for r in filled[2:4]]
    assert {o["eventID"] for o in read_csv(out / "observations.csv")} == {"burst1", filled[3]["event_id"]}
    assert export(tmp_path, store, tmp_path / "later", "--since", "2026-06-02T00:00:00+00:00") == 0
    assert [m["mediaID"] for m in read_csv(tmp_path / "later" / "media.csv")] == [r["id"] for r in filled[4:]]


def test_missing_latitude_and_longitude_are_named_and_nothing_is_written(tmp_path, store, filled, capsys):
    out = tmp_path / "package"
    assert export(tmp_path, store, out, config='deployment_id = "x"\n') == 2
    err = capsys.readouterr().err
    assert "latitude, longitude: not set" in err and "Camtrap DP requires" in err
    assert not out.exists()


def test_the_export_only_reads_the_index_beside_the_running_store(tmp_path, store, filled, photo):
    """The store stays open (as in the running appliance); a capture added after the export is
    not in it, and the store keeps working."""
    assert export(tmp_path, store, tmp_path / "package") == 0
    store.add(photo, None, timestamp=ManualClock().now(), trigger="manual")
    assert len(IndexReader(store.data_dir).latest(100)) == len(filled) + 1
    assert len(read_csv(tmp_path / "package" / "media.csv")) == len(filled)
