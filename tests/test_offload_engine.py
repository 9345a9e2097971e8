"""appliance.offload: copy runs to real FAT32, exFAT and ext4 sticks (tests/usb_sticks.py) from a
real store of real photos, checked with ``sha256sum -c`` and the Camtrap DP validator."""

import csv
import dataclasses
import datetime
import hashlib
import subprocess

import pytest
from test_export import DEPLOYMENT, validate

from appliance import config as config_module
from appliance.offload import copy_run, folder_name, target_name
from appliance.store import IndexReader
from hw.clock import ManualClock
from hw.usb import find_stick, why_not

FOLDER = folder_name("ridge-2026")


@pytest.fixture
def deployment(tmp_path):
    path = tmp_path / "appliance.toml"
    path.write_text(DEPLOYMENT)
    return config_module.load(path)


def offload(stick, store, deployment, *, record_into_store=True, **options):
    """A copy run to ``stick`` (a tests/usb_sticks.Stick) as the wiring does it: the stick found,
    its target named, each ``record`` then written to the store as the main loop would.  Returns
    (result, recorded ids)."""
    found = find_stick(stick.mount_point, "TRAPDATA", store.data_dir)
    assert found is not None, why_not(stick.mount_point, "TRAPDATA", store.data_dir)
    recorded = []
    result = copy_run(found, IndexReader(store.data_dir), store.data_dir, target=target_name(found),
                      deployment=deployment, record=lambda i, sha: recorded.append((i, sha)),
                      **options)  # fmt: skip
    if record_into_store:
        now = datetime.datetime.now(datetime.UTC)
        for capture_id, sha in recorded:
            store.record_offloaded(capture_id, target_name(found), sha, now)
    return result, [capture_id for capture_id, _ in recorded]


def card_bytes(store, row) -> bytes:
    return (store.data_dir / row["media_path"]).read_bytes()


def check_package(stick, store, rows):
    """The deployment's folder on ``stick`` holds exactly ``rows``' photos, byte for byte, listed
    by media.csv and SHA256SUMS, which ``sha256sum -c`` verifies; the package validates."""
    folder = stick.mount_point / FOLDER
    photos = sorted(p.name for p in (folder / "media").iterdir())
    assert photos == sorted(f"{row['id']}.jpg" for row in rows)  # no temporary file left either
    for row in rows:
        assert (folder / "media" / f"{row['id']}.jpg").read_bytes() == card_bytes(store, row)
    sums = subprocess.run(["sha256sum", "-c", "--strict", "SHA256SUMS"], cwd=folder, capture_output=True,
                          text=True, timeout=60)  # fmt: skip
    assert sums.returncode == 0, sums.stdout + sums.stderr
    assert sums.stdout.count(": OK") == len(rows)
    with open(folder / "media.csv", newline="") as f:
        assert sorted(r["mediaID"] for r in csv.DictReader(f)) == sorted(row["id"] for row in rows)
    result = validate(folder)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_capture_lands_verified_on_each_filesystem(usb_sticks, stick_fstype, store, filled, deployment):
    stick = usb_sticks(stick_fstype, size_bytes=40 << 20)
    (stick.mount_point / FOLDER / "media").mkdir(parents=True)
    (stick.mount_point / FOLDER / "media" / ".deadbeef.jpg.tmp").write_bytes(b"torn by a kill")
    seen = []
    result, recorded = offload(stick, store, deployment, progress=lambda *p: seen.append(p))
    assert (result.copied, result.skipped, result.errors, result.reason) == (6, 0, [], None)
    assert result.bytes == sum(row["bytes"] for row in filled) and result.safe_to_remove
    assert sorted(recorded) == sorted(row["id"] for row in filled)
    assert seen[-1] == (6, 6, result.bytes)
    check_package(stick, store, filled)
    # The same stick again: nothing left to copy.
    again, recorded = offload(stick, store, deployment)
    assert (again.copied, again.reason, recorded) == (0, None, [])


def test_a_second_stick_gets_all_it_lacks_and_the_first_only_what_is_new(usb_sticks, store, filled, photo,
                                                                         deployment):  # fmt: skip
    first = usb_sticks("vfat", size_bytes=40 << 20)
    assert offload(first, store, deployment)[0].copied == 6
    moment = ManualClock(datetime.datetime(2026, 6, 3, tzinfo=datetime.UTC)).now()
    later = store.add(photo, None, timestamp=moment, trigger="motion")
    second = usb_sticks("exfat", size_bytes=16 << 20)
    assert offload(second, store, deployment)[0].copied == 7
    result, recorded = offload(first, store, deployment)
    assert (result.copied, recorded) == (1, [later["id"]])
    check_package(first, store, [*filled, later])  # the tables keep the rows already there
    check_package(second, store, [*filled, later])


def test_copies_a_cut_run_left_unrecorded_are_verified_not_rewritten(usb_sticks, store, filled, deployment):
    stick = usb_sticks("ext4", size_bytes=16 << 20)
    offload(stick, store, deployment, record_into_store=False)  # as if the appliance died before recording
    result, recorded = offload(stick, store, deployment)
    assert (result.copied, result.skipped, result.reason, len(recorded)) == (0, 6, None, 6)
    check_package(stick, store, filled)


def test_a_stick_pulled_mid_copy_ends_the_run_and_the_next_stick_completes(usb_sticks, stick_fstype, store,
                                                                           filled, deployment):  # fmt: skip
    stick = usb_sticks(stick_fstype, size_bytes=40 << 20)

    def pull_after_two(done, total, written):
        if done == 2:
            stick.pull()

    result, recorded = offload(stick, store, deployment, progress=pull_after_two)
    assert "removed" in result.reason and not result.safe_to_remove
    assert recorded == []  # nothing is recorded before the stick's tables list it
    # Put back: no torn photo under a final name, and the sums (if any were written) verify.
    stick.mount()
    media = stick.mount_point / FOLDER / "media"
    by_name = {f"{row['id']}.jpg": card_bytes(store, row) for row in filled}
    for path in media.iterdir() if media.is_dir() else ():
        if not path.name.startswith("."):
            assert path.read_bytes() == by_name[path.name], path.name
    stick.unmount()
    nxt = usb_sticks(stick_fstype, size_bytes=40 << 20)
    result, recorded = offload(nxt, store, deployment)
    assert (result.copied, result.reason, len(recorded)) == (6, None, 6)
    check_package(nxt, store, filled)


@pytest.mark.parametrize("fstype", ["exfat", "ext4"])
def test_a_full_stick_ends_the_run_recording_only_what_it_has(usb_sticks, fstype, store, filled, deployment):
    small = usb_sticks(fstype, size_bytes=1536 << 10)  # room for a few of the 290 kB photos
    result, recorded = offload(small, store, deployment)
    assert "full" in result.reason, result.reason
    assert 0 < result.copied < 6 and result.safe_to_remove
    by_id = {row["id"]: row for row in filled}
    for capture_id in recorded:  # each recorded one is on the stick, byte for byte
        path = small.mount_point / FOLDER / "media" / f"{capture_id}.jpg"
        assert path.read_bytes() == card_bytes(store, by_id[capture_id])
    nxt = usb_sticks(fstype, size_bytes=16 << 20)
    result, _ = offload(nxt, store, deployment)
    assert (result.copied, result.reason) == (6, None)
    check_package(nxt, store, filled)


def test_a_read_only_stick_ends_the_run_with_nothing_recorded(usb_sticks, store, filled, deployment):
    stick = usb_sticks("vfat", size_bytes=40 << 20).remount_read_only()
    result, recorded = offload(stick, store, deployment)
    assert (result.reason, result.copied, recorded) == (
        "the stick is read-only (its write-protect switch, or mounted read-only)", 0, [],
    )  # fmt: skip
    # A stick that turns read-only after it was found: the failed write says so.
    ext4 = usb_sticks("ext4", size_bytes=16 << 20)
    found = find_stick(ext4.mount_point, "TRAPDATA", store.data_dir)
    ext4.remount_read_only()
    found = dataclasses.replace(found, dev=find_stick(ext4.mount_point, "TRAPDATA", store.data_dir).dev)
    recorded = []
    result = copy_run(found, IndexReader(store.data_dir), store.data_dir, target=target_name(found),
                      deployment=deployment, record=lambda *r: recorded.append(r))  # fmt: skip
    assert "read-only" in result.reason and recorded == []
    result, _ = offload(usb_sticks("exfat", size_bytes=16 << 20), store, deployment)
    assert (result.copied, result.reason) == (6, None)


def test_a_stick_without_the_label_is_never_written(usb_sticks, store, filled):
    stick = usb_sticks("vfat", size_bytes=40 << 20, label="HOLIDAY")
    assert find_stick(stick.mount_point, "TRAPDATA", store.data_dir) is None
    assert "'HOLIDAY', not 'TRAPDATA'" in why_not(stick.mount_point, "TRAPDATA", store.data_dir)
    assert stick.files() == {}


def test_a_same_named_file_with_other_bytes_is_left_alone_and_reported(usb_sticks, store, filled, deployment):
    stick = usb_sticks("exfat", size_bytes=16 << 20)
    media = stick.mount_point / FOLDER / "media"
    media.mkdir(parents=True)
    theirs = media / f"{filled[2]['id']}.jpg"
    theirs.write_bytes(b"someone else's photo")
    result, recorded = offload(stick, store, deployment)
    assert result.reason == "1 conflicting file(s) on the stick left as they are"
    assert result.errors == [
        f"media/{theirs.name}: a different file of that name is on the stick; left as it is, "
        "capture not copied"
    ]
    assert theirs.read_bytes() == b"someone else's photo"
    assert result.copied == 5 and filled[2]["id"] not in recorded and len(recorded) == 5
    sums = (stick.mount_point / FOLDER / "SHA256SUMS").read_text()
    assert theirs.name not in sums and hashlib.sha256(b"someone else's photo").hexdigest() not in sums
    nxt = usb_sticks("ext4", size_bytes=16 << 20)
    assert offload(nxt, store, deployment)[0].copied == 6
    check_package(nxt, store, filled)
