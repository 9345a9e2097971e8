"""``appliance fleet merge``: the packages three real traps offloaded (real stores of real photos,
copied by appliance.offload onto real filesystems) merged into one Camtrap DP package from a
folder of stick copies and from a real S3 server (moto), checked with the offline validator."""

import contextlib
import csv
import datetime
import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import types
from pathlib import Path

import pytest
from test_export import validate

from appliance import config as config_module
from appliance.cli import main
from appliance.exc import MergeRefused
from appliance.fleet import combine, merge, read_folder
from appliance.offload import copy_run, folder_name, target_name
from appliance.rclone import Rclone
from appliance.store import CaptureStore, IndexReader
from hw.clock import ManualClock
from hw.usb import UsbStick

DAY = datetime.datetime(2026, 6, 1, 21, 0, tzinfo=datetime.UTC)
# Three traps of one project, each in its own place, a day apart.
TRAPS = {
    "a": {"camera_id": "trap-a", "latitude": 51.496, "longitude": 4.774},
    "b": {"camera_id": "trap-b", "latitude": 51.512, "longitude": 4.801},
    "c": {"camera_id": "trap-c", "latitude": 51.470, "longitude": 4.760},
}


def trap_config(tmp_path: Path, name: str, **settings) -> config_module.Config:
    lines = [
        'project_title = "Ridge mammals"',
        'contributors = ["Ada Lovelace", "Field Station"]',
        'data_license = "CC0-1.0"',
        'media_license = "CC-BY-4.0"',
        'feature_type = "trailGame"',
    ]
    lines += [f"{key} = {json.dumps(value)}" for key, value in settings.items()]
    path = tmp_path / f"trap-{name}.toml"
    path.write_text("\n".join(lines) + "\n")
    return config_module.load(path)


def offload(mount: Path, store: CaptureStore, config) -> None:
    """A copy run of ``store`` onto the filesystem mounted at ``mount``, as the appliance does to a
    stick (tmpfs stands for the stick: appliance.offload needs a mount point)."""
    stick = UsbStick(mount, "TRAPDATA", "tmpfs", -1, f"test-{mount.name}", os.stat(mount).st_dev)
    result = copy_run(stick, IndexReader(store.data_dir), store.data_dir, target=target_name(stick),
                      deployment=config, record=lambda *recorded: None)  # fmt: skip
    assert (result.reason, result.errors) == (None, []), result


def shoot(store: CaptureStore, photos: list[Path], clock: ManualClock, name: str) -> list[dict]:
    """A motion burst of two photos, then a timelapse one an hour later."""
    rows = [
        store.add(photo.read_bytes(), None, timestamp=clock.now(), trigger="motion", event_id=f"burst-{name}")
        for photo in photos[:2]
    ]
    clock.wall += datetime.timedelta(hours=1)
    return rows + [store.add(photos[2].read_bytes(), None, timestamp=clock.now(), trigger="timelapse")]


@pytest.fixture
def fleet(tmp_path, tmpfs, burst_dir):
    """Three traps (TRAPS), three photos each, each offloaded to its own stick whose files are
    then copied to ``dumps/stick-<trap>/`` as one copies sticks at home.  ``fleet.traps[name]``:
    its ``store``, ``config``, ``rows`` and ``deployment`` (ID)."""
    photos = sorted(burst_dir.glob("*.JPG"))
    dumps = tmp_path / "dumps"
    traps = {}
    with contextlib.ExitStack() as stack:
        for n, (name, settings) in enumerate(TRAPS.items()):
            store = CaptureStore(tmp_path / f"trap-{name}")
            stack.callback(store.close)
            config = trap_config(tmp_path, name, **settings)
            clock = ManualClock(DAY + datetime.timedelta(days=n), step_s=0.5)
            rows = shoot(store, photos[3 * n : 3 * n + 3], clock, name)
            stick = tmpfs("16m", f"stick-{name}")
            offload(stick, store, config)
            shutil.copytree(stick, dumps / f"stick-{name}")
            (deployment,) = [p.name for p in stick.iterdir()]
            traps[name] = types.SimpleNamespace(store=store, config=config, rows=rows, deployment=deployment)
        yield types.SimpleNamespace(dumps=dumps, traps=traps, tmp_path=tmp_path)


def appliance_command(*args, timeout=120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "appliance", *map(str, args)], capture_output=True, text=True, timeout=timeout
    )


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as file:
        return list(csv.DictReader(file))


def valid(package: Path) -> None:
    result = validate(package)
    assert result.returncode == 0, result.stdout + result.stderr


def photo_bytes(trap, row) -> bytes:
    return (trap.store.data_dir / row["media_path"]).read_bytes()


def all_rows(fleet) -> dict[str, tuple]:
    """Every capture of the fleet by id: (trap, row)."""
    return {row["id"]: (trap, row) for trap in fleet.traps.values() for row in trap.rows}


def test_three_traps_merge_into_one_package_that_validates(fleet):
    out = fleet.tmp_path / "fleet-2026"
    result = appliance_command("fleet", "merge", fleet.dumps, out)
    seen = []
    assert merge(fleet.dumps, fleet.tmp_path / "again", progress=lambda *step: seen.append(step)).photos == 9
    assert seen[3:] == [("copying", n, 9) for n in range(1, 10)]
    size = sum(len(photo_bytes(trap, row)) for trap, row in all_rows(fleet).values())
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout == (
        f"{out}: 3 deployments from 3 folders, 9 photos (9 copied, {size} bytes), 6 observations\n"
    )
    valid(out)
    deployments = read_csv(out / "deployments.csv")
    assert sorted(row["cameraID"] for row in deployments) == ["trap-a", "trap-b", "trap-c"]
    assert sorted(row["deploymentID"] for row in deployments) == sorted(
        t.deployment for t in fleet.traps.values()
    )
    media = read_csv(out / "media.csv")
    assert len(media) == 9 and {row["mediaID"] for row in media} == set(all_rows(fleet))
    for row in media:  # each photo byte for byte, in its deployment's folder
        trap, capture = all_rows(fleet)[row["mediaID"]]
        assert row["filePath"] == f"media/{folder_name(row['deploymentID'])}/{row['mediaID']}.jpg"
        assert row["deploymentID"] == trap.deployment
        assert (out / row["filePath"]).read_bytes() == photo_bytes(trap, capture)
    observations = read_csv(out / "observations.csv")
    assert sorted(row["eventID"] for row in observations if row["eventID"].startswith("burst")) == [
        "burst-a", "burst-b", "burst-c",
    ]  # fmt: skip
    descriptor = json.loads((out / "datapackage.json").read_text())
    assert descriptor["spatial"]["type"] == "Polygon"
    assert descriptor["spatial"]["bbox"] == [4.76, 51.47, 4.801, 51.512]
    assert descriptor["temporal"] == {"start": "2026-06-01", "end": "2026-06-03"}
    assert descriptor["project"]["captureMethod"] == ["activityDetection", "timeLapse"]
    assert descriptor["contributors"][0] == {"title": "Ada Lovelace", "role": "contact"}
    assert [r["schema"] for r in descriptor["resources"]] == [
        f"https://raw.githubusercontent.com/tdwg/camtrap-dp/1.0.2/{name}-table-schema.json"
        for name in ("deployments", "media", "observations")
    ]
    assert sorted(p.name for p in out.parent.iterdir() if p.name.startswith(".")) == []  # no partial left


def test_link_makes_symbolic_links_to_the_photos_in_the_folder_merged_from(fleet):
    out = fleet.tmp_path / "linked"
    seen = []
    summary = merge(fleet.dumps, out, media="link", progress=lambda *step: seen.append(step))
    assert (summary.folders, summary.photos, summary.bytes) == (3, 9, 0)
    assert seen == [("reading", 1, 3), ("reading", 2, 3), ("reading", 3, 3)]
    valid(out)
    media = read_csv(out / "media.csv")
    assert len(media) == 9
    for row in media:
        link = out / row["filePath"]
        trap = all_rows(fleet)[row["mediaID"]][0]
        name = next(n for n, t in fleet.traps.items() if t is trap)
        assert link.is_symlink()
        assert (
            Path(os.readlink(link)) == fleet.dumps / f"stick-{name}" / trap.deployment / "media" / link.name
        )


def test_none_writes_no_photo_and_names_each_in_the_folder_merged_from(fleet):
    out = fleet.tmp_path / "tables-only"
    assert main(["fleet", "merge", str(fleet.dumps), str(out), "--media", "none"]) == 0
    valid(out)
    assert sorted(p.name for p in out.iterdir()) == [
        "datapackage.json", "deployments.csv", "media.csv", "observations.csv",
    ]  # fmt: skip
    for row in read_csv(out / "media.csv"):
        assert row["filePath"].endswith(f"/media/{row['mediaID']}.jpg")
        assert (fleet.dumps / row["filePath"]).is_file()


def test_since_and_until_keep_the_photos_in_range_and_drop_deployments_left_without(fleet, capsys):
    out = fleet.tmp_path / "second-day"
    # Trap b's three photos: 2026-06-02 21:00:00, 21:00:00.5 and 22:00:01; until excludes.
    assert main(["fleet", "merge", str(fleet.dumps), str(out), "--since", "2026-06-02",
                 "--until", "2026-06-02T22:00:00Z"]) == 0  # fmt: skip
    assert "1 deployments from 3 folders, 2 photos (2 copied" in capsys.readouterr().out
    valid(out)
    b = fleet.traps["b"]
    assert [row["deploymentID"] for row in read_csv(out / "deployments.csv")] == [b.deployment]
    assert sorted(row["mediaID"] for row in read_csv(out / "media.csv")) == sorted(
        r["id"] for r in b.rows[:2]
    )
    assert [row["eventID"] for row in read_csv(out / "observations.csv")] == ["burst-b"]  # not its timelapse
    assert sorted(p.name for p in (out / "media").iterdir()) == [folder_name(b.deployment)]
    # A range without photos: refused, nothing written.
    empty = fleet.tmp_path / "none-then"
    assert main(["fleet", "merge", str(fleet.dumps), str(empty), "--since", "2027-01-01"]) == 2
    assert "no photos in the range given" in capsys.readouterr().err
    assert not empty.exists()


def test_two_sticks_of_one_trap_make_one_deployment(tmp_path, tmpfs, burst_dir):
    photos = sorted(burst_dir.glob("*.JPG"))
    config = trap_config(tmp_path, "a", **TRAPS["a"])
    store = CaptureStore(tmp_path / "trap-a")
    try:
        clock = ManualClock(DAY, step_s=0.5)
        first = store.add(
            photos[0].read_bytes(), None, timestamp=clock.now(), trigger="motion", event_id="e1"
        )
        offload(tmpfs("16m", "stick-1"), store, config)
        # The burst goes on after the first stick was pulled: the next stick holds the whole event,
        # and the first photo, protected meanwhile, as a favourite.
        store.set_protected(first["id"], True)
        clock.wall += datetime.timedelta(seconds=2)
        second = store.add(
            photos[1].read_bytes(), None, timestamp=clock.now(), trigger="motion", event_id="e1"
        )
        offload(tmpfs("16m", "stick-2"), store, config)
    finally:
        store.close()
    dumps = tmp_path / "dumps"
    for name in ("stick-1", "stick-2"):
        shutil.copytree(tmp_path / name, dumps / name)
    out = tmp_path / "merged"
    assert main(["fleet", "merge", str(dumps), str(out)]) == 0
    valid(out)
    (deployment,) = read_csv(out / "deployments.csv")
    assert deployment["deploymentEnd"] == "2026-06-01T21:00:02+00:00"  # the later stick's
    media = {r["mediaID"]: r for r in read_csv(out / "media.csv")}
    assert sorted(media) == sorted([first["id"], second["id"]])
    assert (media[first["id"]]["favorite"], media[second["id"]]["favorite"]) == ("true", "false")
    (event,) = read_csv(out / "observations.csv")
    assert (event["eventStart"], event["eventEnd"]) == (
        "2026-06-01T21:00:00+00:00",
        "2026-06-01T21:00:02+00:00",
    )


def test_a_deployment_id_two_traps_share_is_refused_naming_both_folders(fleet, tmp_path, tmpfs, burst_dir):
    # Trap b's twin: given trap a's deployment ID by mistake, in another place.
    a = fleet.traps["a"]
    config = trap_config(tmp_path, "twin", deployment_id=a.deployment, camera_id="trap-d", latitude=52.0,
                         longitude=5.0)  # fmt: skip
    store = CaptureStore(tmp_path / "trap-d")
    try:
        shoot(store, sorted(burst_dir.glob("*.JPG"))[:3], ManualClock(DAY), "d")
        stick = tmpfs("16m", "stick-d")
        offload(stick, store, config)
    finally:
        store.close()
    shutil.copytree(stick, fleet.dumps / "stick-d")
    out = fleet.tmp_path / "refused"
    out.mkdir()
    result = appliance_command("fleet", "merge", fleet.dumps, out)
    assert result.returncode == 2
    assert result.stderr == (
        f"appliance: fleet merge: deployment {a.deployment!r} is in stick-a/{a.deployment} and "
        f"stick-d/{a.deployment} with a different latitude '51.496' / '52.0', longitude '4.774' / '5.0', "
        "cameraID 'trap-a' / 'trap-d': two traps share that deployment ID; give each its own "
        "deployment_id (or camera_id), or merge their folders separately\n"
    )
    assert list(out.iterdir()) == [] and result.stdout == ""


def rewrite_csv(path: Path, change) -> None:
    rows = read_csv(path)
    fields = list(rows[0])
    change(rows)
    with open(path, "w", newline="", encoding="utf-8") as file:
        writer = csv.DictWriter(file, fields)
        writer.writeheader()
        writer.writerows(rows)


def test_a_photo_two_folders_hold_differently_is_refused_naming_both(fleet, capsys):
    a = fleet.traps["a"]
    copy = fleet.dumps / "stick-a2" / a.deployment
    shutil.copytree(fleet.dumps / "stick-a" / a.deployment, copy)
    media_id = a.rows[0]["id"]

    def retime(rows):
        rows[0]["timestamp"] = "2026-06-01T20:59:00+00:00"

    rewrite_csv(copy / "media.csv", retime)
    out = fleet.tmp_path / "refused"
    assert main(["fleet", "merge", str(fleet.dumps), str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(
        f"appliance: fleet merge: media {media_id} is in stick-a/{a.deployment} and stick-a2/{a.deployment} "
        "with a different timestamp '2026-06-01T21:00:00+00:00' / '2026-06-01T20:59:00+00:00'"
    )
    assert not out.exists()
    # The same photo ID in two deployments: refused as well.
    shutil.rmtree(copy.parent)
    other = fleet.dumps / "stick-b" / fleet.traps["b"].deployment

    def steal(rows):
        rows[0]["mediaID"] = media_id

    rewrite_csv(other / "media.csv", steal)
    assert main(["fleet", "merge", str(fleet.dumps), str(out)]) == 2
    err = capsys.readouterr().err
    assert f"media {media_id} is in stick-a/{a.deployment} and stick-b/" in err
    assert f"deploymentID '{a.deployment}' / '{fleet.traps['b'].deployment}'" in err
    assert not out.exists()


def test_a_photo_that_differs_from_its_sha256sums_fails_the_copy_and_writes_nothing(fleet):
    a = fleet.traps["a"]
    rotten = fleet.dumps / "stick-a" / a.deployment / "media" / f"{a.rows[1]['id']}.jpg"
    data = bytearray(rotten.read_bytes())
    data[5000] ^= 0xFF
    rotten.write_bytes(bytes(data))
    out = fleet.tmp_path / "bad-copy"
    result = appliance_command("fleet", "merge", fleet.dumps, out)
    assert result.returncode == 1 and result.stdout == ""
    lines = result.stderr.splitlines()
    assert lines[0] == (
        f"appliance: fleet merge: {rotten}: its SHA-256 {hashlib.sha256(data).hexdigest()} is not the "
        f"{a.rows[1]['sha256']} SHA256SUMS lists"
    )
    assert lines[1].startswith("appliance: fleet merge: 1 photo(s) missing or not as their SHA256SUMS says: "
                               f"nothing written to {out}")  # fmt: skip
    assert not out.exists() and [p.name for p in fleet.tmp_path.iterdir() if p.name.startswith(".")] == []
    # Without the photos the package can still be had.
    assert appliance_command("fleet", "merge", fleet.dumps, out, "--media", "none").returncode == 0


def test_what_cannot_be_merged_is_refused_in_one_line(fleet, tmp_path):
    nothing = tmp_path / "empty-folder"
    nothing.mkdir()
    cases = [
        (["fleet", "merge", tmp_path / "missing", tmp_path / "o1"], "missing: no such folder: give the"),
        (["fleet", "merge", nothing, tmp_path / "o2"], f"{nothing}: no deployment folder (one holding"),
        (["fleet", "merge", fleet.dumps, fleet.dumps], "is not an empty folder; refusing to overwrite it"),
        (["fleet", "merge", "fleet:bucket/", tmp_path / "o3", "--media", "link"],
         "fleet:bucket/: --media link needs a local folder"),
        (["fleet", "merge", fleet.dumps, tmp_path / "o4", "--rclone-config", tmp_path / "no.conf"],
         "no.conf: no such file"),
    ]  # fmt: skip
    for args, words in cases:
        result = appliance_command(*args)
        assert result.returncode == 2, (args, result.stderr)
        assert result.stderr.count("\n") == 1 and result.stderr.startswith("appliance: fleet merge: ")
        assert words in result.stderr, result.stderr
    assert not any((tmp_path / f"o{n}").exists() for n in range(1, 5))


def test_combine_merges_an_event_cut_in_two_and_notes_a_project_that_differs(fleet):
    folders = []
    for name, trap in fleet.traps.items():
        path = fleet.dumps / f"stick-{name}" / trap.deployment
        files = {p.name: p.read_bytes() for p in path.iterdir() if p.is_file()}
        folders.append(read_folder(f"stick-{name}/{trap.deployment}", files, str(path)))
    folders[2].descriptor["project"]["title"] = "Valley mammals"
    merged = combine(folders)
    assert merged.notes == [
        f"project: stick-c/{fleet.traps['c'].deployment} differ from stick-a/{fleet.traps['a'].deployment}; "
        f"the package has stick-a/{fleet.traps['a'].deployment}'s"
    ]
    assert merged.descriptor["project"]["title"] == "Ridge mammals"
    # Rows that would lead outside the package, or outside their folder: refused.
    media = folders[0].media[0]
    kept = dict(media)
    media["mediaID"] = "../../outside"
    with pytest.raises(
        MergeRefused, match="mediaID '../../outside' cannot name a file: merge with --media none"
    ):
        combine(folders)
    assert combine(folders, media="none").media[0]["filePath"] == f"{folders[0].name}/{media['filePath']}"
    media["filePath"] = "../../../etc/passwd"
    with pytest.raises(MergeRefused, match="filePath '../../../etc/passwd', not a path inside its folder"):
        combine(folders, media="none")
    media.update(kept)
    folders[1].deployments[0]["deploymentID"] = "x"
    with pytest.raises(MergeRefused, match="names deployment"):
        combine(folders)


# --- From a real S3 server -----------------------------------------------------------------------


@pytest.fixture
def s3(s3_server, tmp_path):
    """The real S3 server of tests/s3_server.py with an rclone config naming it ``fleet``
    (``.rclone``: an :class:`~appliance.rclone.Rclone` of it; ``.config``: the file)."""
    config = s3_server.rclone_config(tmp_path / "rclone.conf")
    rclone = Rclone(str(config), io_timeout_s=10)
    return types.SimpleNamespace(server=s3_server, config=config, rclone=rclone)


def test_a_fleet_uploaded_to_s3_merges_as_from_the_sticks(fleet, s3, s3_bucket):
    bucket = f"fleet:{s3_bucket}"
    s3.rclone.run(["copy", str(fleet.dumps), f"{bucket}/2026"], timeout_s=120)
    remote, local = fleet.tmp_path / "from-s3", fleet.tmp_path / "from-sticks"
    result = appliance_command("fleet", "merge", f"{bucket}/2026/", remote, "--rclone-config", s3.config)
    assert (result.returncode, result.stderr) == (0, ""), result.stderr
    assert result.stdout.startswith(f"{remote}: 3 deployments from 3 folders, 9 photos (9 copied, ")
    valid(remote)
    assert main(["fleet", "merge", str(fleet.dumps), str(local)]) == 0
    for table in ("deployments.csv", "media.csv", "observations.csv"):
        assert read_csv(remote / table) == read_csv(local / table), table
    for row in read_csv(remote / "media.csv"):
        assert (remote / row["filePath"]).read_bytes() == (local / row["filePath"]).read_bytes()
    # A photo rotten on the remote is found by its SHA256SUMS.
    a = fleet.traps["a"]
    rotten = fleet.tmp_path / "rotten.jpg"
    rotten.write_bytes(b"not the photo")
    name = f"{a.rows[0]['id']}.jpg"
    shutil.copy(rotten, fleet.tmp_path / name)
    s3.rclone.copy(fleet.tmp_path, f"{bucket}/2026/stick-a/{a.deployment}/media", [name], timeout_s=60)
    out = fleet.tmp_path / "rotten-merge"
    result = appliance_command("fleet", "merge", f"{bucket}/2026", out, "--rclone-config", s3.config)
    assert result.returncode == 1 and not out.exists()
    assert f"{bucket}/2026/stick-a/{a.deployment}/media/{name}: its SHA-256 " in result.stderr
    # A photo gone from the remote is named too.
    s3.rclone.run(["deletefile", f"{bucket}/2026/stick-a/{a.deployment}/media/{name}"], timeout_s=30)
    result = appliance_command("fleet", "merge", f"{bucket}/2026", out, "--rclone-config", s3.config)
    assert result.returncode == 1 and not out.exists()
    assert f"{bucket}/2026/stick-a/{a.deployment}/media/{name}: missing (media.csv lists it)" in result.stderr


def test_a_remote_that_cannot_be_read_says_why_and_what_to_do(fleet, s3, tmp_path):
    out = tmp_path / "out"
    config = ["--rclone-config", s3.config]
    result = appliance_command("fleet", "merge", "fleet:no-such-bucket/", out, *config)
    assert result.returncode == 2 and "fleet:no-such-bucket/: no bucket: " in result.stderr
    assert "check the bucket and path" in result.stderr
    result = appliance_command("fleet", "merge", "elsewhere:bucket/", out, *config)
    assert (
        result.returncode == 2 and "not configured" in result.stderr and "rclone listremotes" in result.stderr
    )
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        closed = probe.getsockname()[1]
    down = tmp_path / "down.conf"
    down.write_text(s3.config.read_text().replace(s3.server.endpoint, f"http://127.0.0.1:{closed}"))
    result = appliance_command("fleet", "merge", "fleet:bucket/", out, "--rclone-config", down)
    assert result.returncode == 1, result.stderr
    assert "fleet:bucket/: unreachable: " in result.stderr and "check the address" in result.stderr
    assert s3.server.credentials.secret_access_key not in result.stderr
    assert result.stderr.count("\n") == 1 and not out.exists()
