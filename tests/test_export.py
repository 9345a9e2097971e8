"""``appliance export camtrap-dp``: a Camtrap DP package of the store's captures, checked with the
offline validator of ../shared/camtrap-dp and read back."""

import csv
import datetime
import hashlib
import hmac
import io
import json
import os
import signal
import subprocess
import sys
import tracemalloc
import zipfile
from pathlib import Path

import pytest
import requests
from test_end_to_end import start, status_url, wait_for_captures

from appliance import config as config_module
from appliance.cli import main
from appliance.exc import ExportError
from appliance.export import MACHINE_ID_APP, Package, trap_name, zip_stream
from appliance.store import CaptureStore, IndexReader
from hw.clock import ManualClock

VALIDATOR = Path(__file__).resolve().parents[2] / "shared" / "camtrap-dp" / "validate_offline.py"
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


def deployment(tmp_path, text=DEPLOYMENT):
    path = tmp_path / "deployment.toml"
    path.write_text(text)
    return config_module.load(path)


def download(url, path, **kwargs) -> requests.Response:
    with requests.get(url, stream=True, timeout=30, **kwargs) as response:
        if response.ok:
            with open(path, "wb") as out:
                for chunk in response.iter_content(1 << 16):
                    out.write(chunk)
        return response


def test_the_zip_streams_one_photo_at_a_time(tmp_path, store, samples, clock):
    """20 photos of 2.9 MB (58 MB) go through in less than one photo of memory: no photo is read
    whole, and the archive is never built."""
    photo = (samples / "full-res" / "olympus_e-p3_12mp.jpg").read_bytes()
    for _ in range(20):
        store.add(photo, None, timestamp=clock.now(), trigger="motion")
    size = 0
    tracemalloc.start()
    try:
        with Package(deployment(tmp_path), IndexReader(store.data_dir)) as package:
            for chunk in zip_stream(package):
                size += len(chunk)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert size > 20 * len(photo)
    assert peak < len(photo) // 2, f"peak {peak} bytes while streaming {size} bytes"


def test_a_photo_deleted_while_streaming_is_left_out_and_the_rest_agrees(tmp_path, store, filled):
    """Cleanup may delete captures while a download runs: the snapshot still lists them, but the
    package leaves out those whose photo is gone before it is reached, rows and events included."""
    with Package(deployment(tmp_path), IndexReader(store.data_dir)) as package:
        stream = zip_stream(package)
        head = next(stream)
        gone = filled[4]  # a timelapse capture, its own event
        assert store.delete([gone]) == (gone["bytes"], [])
        assert not (store.data_dir / gone["media_path"]).exists()
        archive = tmp_path / "package.zip"
        archive.write_bytes(head + b"".join(stream))
        assert package.summary()["skipped"] == 1
    with zipfile.ZipFile(archive) as zf:
        zf.extractall(tmp_path / "unzipped")
    media = read_csv(tmp_path / "unzipped" / "media.csv")
    assert [m["mediaID"] for m in media] == [r["id"] for r in filled if r is not gone]
    assert gone["id"] not in {o["eventID"] for o in read_csv(tmp_path / "unzipped" / "observations.csv")}
    assert not (tmp_path / "unzipped" / "media" / f"{gone['id']}.jpg").exists()
    result = validate(tmp_path / "unzipped")
    assert result.returncode == 0, result.stdout + result.stderr


def test_an_unreadable_photo_is_left_out_and_logged(tmp_path, store, filled, caplog):
    broken = filled[2]
    path = store.data_dir / broken["media_path"]
    path.unlink()
    path.mkdir()  # opening it fails, as a photo on a failing card would (EIO)
    with Package(deployment(tmp_path), IndexReader(store.data_dir)) as package:
        archive = tmp_path / "package.zip"
        archive.write_bytes(b"".join(zip_stream(package)))
        assert package.summary()["skipped"] == 1
    assert f"capture {broken['id']} left out of the export" in caplog.text
    with zipfile.ZipFile(archive) as zf:
        assert zf.testzip() is None
        media = list(csv.DictReader(io.TextIOWrapper(zf.open("media.csv"), "utf-8")))
    assert [m["mediaID"] for m in media] == [r["id"] for r in filled if r is not broken]


def test_a_package_never_read_closes_its_snapshot_when_dropped(tmp_path, store, filled, photo, clock):
    closed = []
    package = Package(deployment(tmp_path), IndexReader(store.data_dir), on_close=lambda: closed.append(1))
    stream = zip_stream(package)  # never started: its finally never runs
    store.add(photo, None, timestamp=clock.now(), trigger="motion")
    assert store.checkpoint()[0] == 1
    del package, stream
    assert closed == [1] and store.checkpoint()[0] == 0
    with pytest.raises(ExportError):
        Package(deployment(tmp_path, 'deployment_id = "x"\n'), IndexReader(store.data_dir),
                on_close=lambda: closed.append(2))  # fmt: skip
    assert closed == [1, 2]  # called when the construction fails, too


def test_a_simulated_run_downloads_and_exports_packages_that_validate(tmp_path, burst_dir, run_config):
    """The whole pipeline: a real `appliance run --simulate` taking bursts of replayed photos, its
    ZIP downloaded over HTTP while it runs, then the folder export after it stopped."""
    config = tmp_path / "config.toml"
    config.write_text(run_config.read_text() + DEPLOYMENT + "burst_count = 3\nburst_interval_s = 0.1\n")
    data_dir = tmp_path / "data"
    process = start(data_dir, config, "--replay", str(burst_dir), "--trigger-interval-s", "0.3")
    try:
        url = status_url(process)
        wait_for_captures(url, 9)
        assert "Download all as Camtrap DP" in requests.get(url, timeout=10).text
        assert download(url + "export/camtrap-dp.zip", tmp_path / "live.zip").status_code == 200
    finally:
        process.send_signal(signal.SIGTERM)
        process.communicate(timeout=30)
    assert process.returncode == 0
    with zipfile.ZipFile(tmp_path / "live.zip") as zf:
        assert zf.testzip() is None
        zf.extractall(tmp_path / "live")
    result = validate(tmp_path / "live")
    assert result.returncode == 0, result.stdout + result.stderr

    assert main(["export", "camtrap-dp", str(tmp_path / "after"), "--config", str(config),
                 "--data-dir", str(data_dir)]) == 0  # fmt: skip
    result = validate(tmp_path / "after")
    assert result.returncode == 0, result.stdout + result.stderr
    media = read_csv(tmp_path / "after" / "media.csv")
    assert len(media) == len(IndexReader(data_dir).latest(10_000)) >= 9
    assert {m["captureMethod"] for m in media} == {"activityDetection"}
    events = read_csv(tmp_path / "after" / "observations.csv")
    rows = {r["id"]: r for r in IndexReader(data_dir).latest(10_000)}
    sizes = sorted({sum(1 for r in rows.values() if r["event_id"] == e["eventID"]) for e in events})
    assert sizes[-1] == 3  # bursts of 3 share one event (the last may be cut short by the stop)
    assert len(events) == len({r["event_id"] for r in rows.values()})


# --- The default deployment ID ----------------------------------------------------------------------

POSITION = "latitude = 51.496\nlongitude = 4.774\n"
DAY = datetime.datetime(2026, 6, 1, tzinfo=datetime.UTC)


def trap(tmp_path, name: str, photo: bytes, first: datetime.datetime) -> Path:
    """The data directory of a trap whose captures (2, from ``first``) are its only ones."""
    store = CaptureStore(tmp_path / name)
    clock = ManualClock(first)
    for _ in range(2):
        store.add(photo, None, timestamp=clock.now(), trigger="motion")
    store.close()
    return tmp_path / name


def default_id(tmp_path, data_dir: Path, config: str = "") -> str:
    with Package(deployment(tmp_path, POSITION + config), IndexReader(data_dir)) as package:
        return package.deployment_id


@pytest.fixture
def machine(tmp_path, monkeypatch):
    """``machine(host, machine_id)``: the host name and /etc/machine-id the export reads from now on
    (``machine_id`` None: no machine id readable)."""

    def set_to(host: str, machine_id: str | None) -> None:
        path = tmp_path / f"machine-id-{machine_id}"
        if machine_id is not None:
            path.write_text(f"{machine_id}\n")
        monkeypatch.setattr("appliance.export.MACHINE_ID_PATHS", (path,))
        monkeypatch.setattr("socket.gethostname", lambda: host)

    return set_to


def test_two_traps_with_their_own_camera_ids_get_different_deployment_ids_on_the_same_day(tmp_path, photo):
    morning = DAY.replace(hour=6)
    first, second = trap(tmp_path, "a", photo, morning), trap(tmp_path, "b", photo, morning)
    assert default_id(tmp_path, first, 'camera_id = "trap-07"\n') == "trap-07-20260601T060000Z"
    assert default_id(tmp_path, second, 'camera_id = "trap-08"\n') == "trap-08-20260601T060000Z"


def test_traps_without_camera_ids_are_told_apart_by_their_machine_id(tmp_path, photo, machine):
    """Every Raspberry Pi OS image is called ``raspberrypi``: the machine id tells them apart."""
    morning = DAY.replace(hour=6)
    first, second = trap(tmp_path, "a", photo, morning), trap(tmp_path, "b", photo, morning)
    machine("raspberrypi", "3f9a1c0d5e6b7a8c9d0e1f2a3b4c5d6e")
    first_id = default_id(tmp_path, first)
    machine("raspberrypi", "b04e77aa5e6b7a8c9d0e1f2a3b4c5d6e")
    assert (first_id, default_id(tmp_path, second)) == (
        "raspberrypi-a5f23d-20260601T060000Z", "raspberrypi-fbe46d-20260601T060000Z"
    )  # fmt: skip


def test_two_deployments_of_one_trap_on_the_same_day_get_different_ids(tmp_path, photo, machine):
    machine("raspberrypi", "3f9a1c0d5e6b7a8c9d0e1f2a3b4c5d6e")
    morning, evening = (
        trap(tmp_path, "a", photo, DAY.replace(hour=6)),
        trap(tmp_path, "b", photo, DAY.replace(hour=18)),
    )
    assert (
        default_id(tmp_path, morning)
        != default_id(tmp_path, evening)
        == "raspberrypi-a5f23d-20260601T180000Z"
    )
    # The configured start counts, in UTC whatever its offset.
    start = 'deployment_start = "2026-06-01T20:15:30+02:00"\n'
    assert default_id(tmp_path, morning, start) == "raspberrypi-a5f23d-20260601T181530Z"


def test_the_machine_id_itself_is_never_published(machine):
    # machine-id(5): "must not be exposed ... the ID or any part of it must not be used directly";
    # a package goes to GBIF.  Its application-specific hash (HMAC-SHA256 keyed by it, as
    # sd_id128_get_machine_app_specific) tells traps apart as well.
    machine_id = "3f9a1c0d5e6b7a8c9d0e1f2a3b4c5d6e"
    machine("raspberrypi", machine_id)
    key = hmac.new(bytes.fromhex(machine_id), MACHINE_ID_APP, hashlib.sha256).hexdigest()
    assert trap_name() == f"raspberrypi-{key[:6]}"
    assert not any(machine_id[i : i + 4] in trap_name() for i in range(29))


@pytest.mark.parametrize("machine_id", [None, "", "not-a-machine-id"])
def test_without_a_readable_machine_id_the_host_name_alone_names_the_trap(tmp_path, machine, machine_id):
    machine("trap-host", machine_id)
    assert trap_name() == "trap-host"


def test_a_package_with_the_default_deployment_id_validates(tmp_path, store, filled, machine):
    machine("raspberrypi", "3f9a1c0d5e6b7a8c9d0e1f2a3b4c5d6e")
    out = tmp_path / "package"
    assert export(tmp_path, store, out, config=POSITION) == 0
    result = validate(out)
    assert result.returncode == 0, result.stdout + result.stderr
    [row] = read_csv(out / "deployments.csv")
    assert row["deploymentID"] == "raspberrypi-a5f23d-20260601T210000Z"  # the first capture
    assert {m["deploymentID"] for m in read_csv(out / "media.csv")} == {row["deploymentID"]}
    descriptor = json.loads((out / "datapackage.json").read_text())
    assert descriptor["name"] == "raspberrypi-a5f23d-20260601t210000z"
