"""The USB offload in a real ``appliance run --simulate`` process, with real sticks (tests/usb_sticks.py):
a stick there from the start and one mounted mid-run, the page and the API while it copies, and
SIGKILL at random moments of a copy.

``OFFLOAD_TEST_KILLS`` sets the number of kills (default 30, short enough for CI; e.g. 300 for the
long form, as ``CRASH_TEST_KILLS`` does for tests/test_crash.py).
"""

import hashlib
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import requests

from appliance.reconcile import open_store
from appliance.store import IndexReader
from hw.camera import SimulatedCamera
from hw.clock import ManualClock
from tests.test_end_to_end import start, status_url

KILLS = int(os.environ.get("OFFLOAD_TEST_KILLS", "30"))


def offload_config(tmp_path, run_config, mount_point: Path, *extra: str) -> Path:
    config = tmp_path / "offload.toml"
    lines = [
        f'offload_usb_path = "{mount_point}"',
        "offload_check_interval_s = 1",
        "latitude = 52.1",
        "longitude = 5.2",
        *extra,
    ]
    config.write_text(run_config.read_text() + "\n".join(lines) + "\n")
    return config


def usb(url: str) -> dict:
    (target,) = [
        t for t in requests.get(url + "api/status", timeout=5).json()["offload"] if t["target"] == "usb"
    ]
    return target


def wait_for(url: str, test, what: str, timeout_s: float = 30) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        target = usb(url)
        if test(target):
            return target
        time.sleep(0.1)
    raise AssertionError(f"not {what} after {timeout_s} s: {target}")


def offloaded(data_dir: Path) -> dict[str, str]:
    """``{capture id: sha256}`` of the captures recorded as offloaded to a USB stick (any)."""
    db = sqlite3.connect(f"file:{data_dir / 'captures.db'}?mode=ro", uri=True)
    try:
        return dict(db.execute("SELECT capture_id, sha256 FROM offloads WHERE target LIKE 'usb-%'"))
    finally:
        db.close()


def stick_media(mount_point: Path) -> dict[str, str]:
    """``{path: sha256}`` of every photo under a final name on the stick (temporary names, which
    begin with a dot or end in .tmp or .part, left out)."""
    found = {}
    for path in mount_point.rglob("*"):
        name = path.name
        if path.is_file() and path.suffix.lower() == ".jpg" and not name.startswith("."):
            found[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest()
    return found


def sha256sum_check(mount_point: Path) -> list[Path]:
    sums = sorted(mount_point.rglob("SHA256SUMS"))
    for path in sums:
        result = subprocess.run(["sha256sum", "--quiet", "-c", "SHA256SUMS"], cwd=path.parent,
                                capture_output=True, text=True)  # fmt: skip
        assert result.returncode == 0, result.stdout + result.stderr
    return sums


def fill(data_dir: Path, count: int) -> None:
    """``count`` real captures in the store at ``data_dir`` (its one writer while no appliance runs)."""
    camera, clock = SimulatedCamera(size_px=(640, 480)), ManualClock()
    store, _ = open_store(data_dir, thumbnail_max_px=64)
    try:
        for _ in range(count):
            store.add(camera.capture(1.0).jpeg, None, timestamp=clock.now(), trigger="motion")
    finally:
        store.close()


def stop(process) -> str:
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=30)
    assert process.returncode == 0, err
    return err


def test_every_capture_ends_on_the_sticks_there_from_the_start_and_mounted_mid_run(
    tmp_path, run_config, usb_sticks
):
    mount_point, data_dir = tmp_path / "usb", tmp_path / "data"
    first = usb_sticks("vfat", mount_point=mount_point)
    config = offload_config(tmp_path, run_config, mount_point)
    process = start(data_dir, config, "--trigger-interval-s", "0.3")
    try:
        url = status_url(process)
        wait_for(url, lambda t: t["state"] in ("copying", "done"), "copying")
        done = wait_for(url, lambda t: t["safe_to_remove"], "safe to remove")
        assert done["state"] == "done" and done["last_run"]["reason"] is None
        page = requests.get(url, timeout=5).text
        assert "safe to remove" in page
        first.unmount()  # pulled out when the page said so
        gone = wait_for(url, lambda t: t["state"] == "no stick", "no stick")
        assert not gone["safe_to_remove"]
        second = usb_sticks("vfat", mount_point=mount_point)  # plugged in mid-run
        first_run = done["last_run"]["started_at"]
        wait_for(url, lambda t: t["state"] != "no stick" and t["last_run"]["started_at"] != first_run,
                 "copying to the second stick")  # fmt: skip
        wait_for(url, lambda t: t["safe_to_remove"], "safe to remove (second stick)")
    finally:
        stop(process)
    # What was captured after the last run: copied by the command, on the store as its one writer.
    result = subprocess.run([sys.executable, "-m", "appliance", "offload", "--data-dir", str(data_dir),
                             "--config", str(config)], capture_output=True, text=True)  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "safe to remove" in result.stdout
    rows = {row["id"]: row["sha256"] for row in IndexReader(data_dir).latest(100_000)}
    assert rows and offloaded(data_dir) == rows  # every capture, verified, recorded
    on_sticks = set(stick_media(mount_point).values())
    assert sha256sum_check(mount_point)
    second.unmount()
    first.mount()  # the first stick again (the same mount point): what it holds is intact
    on_sticks |= set(stick_media(mount_point).values())
    assert sha256sum_check(mount_point)
    assert set(rows.values()) <= on_sticks


def test_sigkill_during_offload_never_records_a_copy_that_differs_and_the_next_run_copies_the_rest(
    tmp_path, run_config, usb_sticks
):
    mount_point, data_dir = tmp_path / "usb", tmp_path / "data"
    stick = usb_sticks("ext4", mount_point=mount_point, size_bytes=256 << 20)
    fill(data_dir, 300)
    config = offload_config(tmp_path, run_config, mount_point)
    rng = random.Random(int(os.environ.get("OFFLOAD_TEST_SEED", "18")))
    cut = 0  # kills that came in the middle of a copy run
    for kill in range(KILLS):
        before = len(offloaded(data_dir))
        # Capturing goes on beside the copy, so each run has something to copy.
        process = start(data_dir, config, "--trigger-interval-s", "0.1", stderr=subprocess.DEVNULL)
        status_url(process)
        time.sleep(rng.uniform(0.0, 1.5))
        process.kill()
        process.wait(timeout=10)
        captures = {row["id"]: row["sha256"] for row in IndexReader(data_dir).latest(1_000_000)}
        recorded = offloaded(data_dir)
        on_stick = set(stick_media(mount_point).values())
        assert set(recorded.values()) <= on_stick, f"kill {kill}: a copy recorded that is not on the stick"
        assert on_stick <= set(captures.values()), f"kill {kill}: a torn photo under a final name"
        assert all(captures[cid] == sha for cid, sha in recorded.items())
        cut += before < len(recorded) < len(captures)
    print(f"{KILLS} kills, {cut} in the middle of a copy run")
    assert cut >= 3  # or the test proves nothing about kills during a copy
    captures = {row["id"]: row["sha256"] for row in IndexReader(data_dir).latest(1_000_000)}
    pending = len(captures) - len(offloaded(data_dir))
    result = subprocess.run([sys.executable, "-m", "appliance", "offload", "--data-dir", str(data_dir),
                             "--config", str(config)], capture_output=True, text=True)  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert f": {pending} captures" in result.stdout.splitlines()[0]  # only what was missing
    assert offloaded(data_dir) == captures
    sha256sum_check(stick.mount_point)
