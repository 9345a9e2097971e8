"""The ways to start a USB offload, in the real appliance with real sticks (tests/usb_sticks.py):
``POST /api/offload`` and the page's "Copy to USB now" over real HTTP, ``appliance offload``
(with ``--dry-run``) through the running appliance's control channel, the button hold action
``offload`` on gpiozero's MockFactory pin; and what a copy leaves: the ``/metrics`` offload series,
and with ``offload_delete_after`` the card without the verified unprotected captures.

Every run here has ``offload_usb_auto = false`` unless it says otherwise, so that a copy that
happens was started by the action under test and not by the stick's arrival.
"""

import subprocess
import sys
import threading
import time
import tomllib
from pathlib import Path

import requests
from web_client import BEARER, FOREIGN, TOKEN, metric_samples, shoot

from appliance.config import Config
from appliance.reconcile import open_store
from appliance.runtime import Appliance
from appliance.store import IndexReader
from appliance.store.paths import media_path, thumbnail_path
from boot.systemd import Notifier
from hw.camera import SimulatedCamera
from hw.clock import ManualClock
from tests.test_end_to_end import start, status_url
from tests.test_offload_run import fill, offload_config, offloaded, stick_media, stop, usb, wait_for

MANUAL = ("offload_usb_auto = false", f'web_token = "{TOKEN}"')


def captures(data_dir: Path) -> dict[str, str]:
    """``{capture id: sha256}`` of every capture in the index."""
    return {row["id"]: row["sha256"] for row in IndexReader(data_dir).latest(100_000)}


def appliance_command(data_dir: Path, config: Path, *args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "appliance", "offload", "--data-dir", str(data_dir)]
    command += ["--config", str(config)]
    return subprocess.run([*command, *args], capture_output=True, text=True, timeout=60)


def wait(test, state, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while not test():
        assert time.monotonic() < deadline, state()
        time.sleep(0.1)


def offload_metrics(url: str) -> dict:
    """``{(name, state or None): value}`` of the ``appliance_offload_*`` series of target usb."""
    samples = metric_samples(requests.get(url + "metrics", timeout=5).text)
    found = {}
    for (name, labels), value in samples.items():
        labels = dict(labels)
        if name.startswith("appliance_offload_") and labels["target"] == "usb":
            found[name, labels.get("state")] = value
    return found


def test_copy_to_usb_now_is_token_guarded_409_without_a_stick_and_copies_with_one(
    tmp_path, run_config, usb_sticks
):
    mount_point, data_dir = tmp_path / "usb", tmp_path / "data"
    fill(data_dir, 5)
    stick = usb_sticks("vfat", mount_point=mount_point, mount=False)
    config = offload_config(tmp_path, run_config, mount_point, *MANUAL)
    process = start(data_dir, config, "--trigger-interval-s", "3600")
    try:
        url = status_url(process)
        origin = url.rstrip("/")
        # Not logged in, or a wrong token: 401, and nothing asked of the loop (it would say 409).
        for path in ("api/offload", "offload"):
            for headers in ({}, {"Authorization": "Bearer wrong-token"}, {"Origin": origin}):
                answer = requests.post(url + path, headers=headers, allow_redirects=False, timeout=5)
                assert answer.status_code == 401, (path, headers, answer.text)
        session = requests.Session()
        login = session.post(url + "login", data={"token": TOKEN}, headers={"Origin": origin},
                             allow_redirects=False, timeout=5)  # fmt: skip
        assert login.status_code == 303
        # The session cookie sent from another site's page: 403.
        answer = session.post(url + "offload", headers={"Origin": FOREIGN}, allow_redirects=False, timeout=5)
        assert answer.status_code == 403 and "cross-site" in answer.text
        # No stick: 409 with the reason, from the API and from the page's form alike.
        answer = requests.post(url + "api/offload", headers=BEARER, timeout=5)
        assert answer.status_code == 409 and f"nothing is mounted at {mount_point}" in answer.text
        answer = session.post(url + "offload", headers={"Origin": origin}, allow_redirects=False, timeout=5)
        assert answer.status_code == 409 and f"nothing is mounted at {mount_point}" in answer.text
        assert usb(url)["state"] == "no stick" and offloaded(data_dir) == {}

        stick.mount()
        ready = wait_for(url, lambda t: t["state"] == "ready", "ready (auto is off)")
        rows = captures(data_dir)
        assert ready["pending_captures"] == len(rows) >= 5 and ready["last_run"] is None
        before = offload_metrics(url)
        assert before["appliance_offload_state", "ready"] == 1
        assert before["appliance_offload_state", "done"] == 0
        assert before["appliance_offload_pending", None] == len(rows)
        assert before["appliance_offload_pending_bytes", None] == ready["pending_bytes"] > 0
        assert before["appliance_offload_safe_to_remove", None] == 0

        answer = requests.post(url + "api/offload", headers=BEARER, timeout=5)
        assert answer.status_code == 200 and answer.json() == {"offload": "started"}
        done = wait_for(url, lambda t: t["safe_to_remove"], "safe to remove")
        assert done["state"] == "done" and done["last_run"]["copied"] == len(rows)
        assert offloaded(data_dir) == rows == captures(data_dir)  # verified, recorded by the loop
        assert set(stick_media(mount_point).values()) == set(rows.values())

        after = offload_metrics(url)
        assert after["appliance_offload_state", "done"] == 1
        assert sum(value for (name, _), value in after.items() if name == "appliance_offload_state") == 1
        assert after["appliance_offload_pending", None] == 0
        assert after["appliance_offload_pending_bytes", None] == 0
        assert after["appliance_offload_rate_bytes_per_second", None] == 0  # no run under way
        assert after["appliance_offload_safe_to_remove", None] == 1

        # The page's form: a second run, with nothing left to copy (every capture recorded).
        answer = session.post(url + "offload", headers={"Origin": origin}, allow_redirects=False, timeout=5)
        assert answer.status_code == 303 and answer.headers["Location"].endswith("/")
        again = wait_for(url, lambda t: t["safe_to_remove"] and t["last_run"]["copied"] == 0,
                         "the form's run done")  # fmt: skip
        assert again["state"] == "done" and again["last_run"]["errors"] == []
    finally:
        stop(process)


def test_appliance_offload_goes_through_the_running_appliance_and_dry_run_copies_nothing(
    tmp_path, run_config, usb_sticks
):
    mount_point, data_dir = tmp_path / "usb", tmp_path / "data"
    fill(data_dir, 4)
    stick = usb_sticks("vfat", mount_point=mount_point)
    config = offload_config(tmp_path, run_config, mount_point, *MANUAL)
    process = start(data_dir, config, "--trigger-interval-s", "3600")
    try:
        url = status_url(process)
        wait_for(url, lambda t: t["state"] == "ready", "ready (auto is off)")
        rows = captures(data_dir)

        dry = appliance_command(data_dir, config, "--dry-run")
        assert dry.returncode == 0, dry.stdout + dry.stderr
        (line,) = dry.stdout.splitlines()
        assert line.startswith(f"{mount_point} (TRAPDATA, ") and f": {len(rows)} captures, " in line
        assert stick.files() == {} and offloaded(data_dir) == {}
        assert usb(url)["last_run"] is None  # nor was the running appliance asked

        # The store is the running appliance's: this copy can only have gone through it.
        result = appliance_command(data_dir, config)
        assert result.returncode == 0, result.stdout + result.stderr
        assert result.stdout.splitlines()[0] == line
        assert f"{mount_point}: {len(rows)} captures copied (" in result.stdout
        assert result.stdout.rstrip().endswith("already there; safe to remove")
        assert usb(url)["last_run"]["copied"] == len(rows)  # the appliance's own run
        assert offloaded(data_dir) == rows
        assert set(stick_media(mount_point).values()) == set(rows.values())

        stick.unmount()
        gone = appliance_command(data_dir, config)
        assert gone.returncode == 2 and gone.stdout == ""
        why = f"appliance: offload: no stick to write: nothing is mounted at {mount_point}"
        assert gone.stderr.strip() == why
    finally:
        log = stop(process)
    assert f"USB offload to {mount_point}: {len(rows)} copied" in log


def test_holding_the_button_with_hold_action_offload_starts_a_copy(tmp_path, run_config, usb_sticks):
    mount_point, data_dir = tmp_path / "usb", tmp_path / "data"
    fill(data_dir, 3)
    filled = captures(data_dir)
    usb_sticks("vfat", mount_point=mount_point)
    config = Config(
        **tomllib.loads(run_config.read_text()),
        data_dir=str(data_dir),
        simulate=True,
        simulate_trigger_interval_s=3600,
        web_host="127.0.0.1",
        web_port=0,
        button_hold_action="offload",
        button_hold_time_s=0.5,
        offload_usb_path=str(mount_point),
        offload_usb_auto=False,
        offload_check_interval_s=0.5,
        latitude=52.1,
        longitude=5.2,
    )
    seen, failed = [], []

    def hold_then_stop(appliance: Appliance) -> None:
        # The main loop runs on this test's thread, as in `appliance run`; the hand is elsewhere.
        try:
            wait(lambda: appliance.offloader.status().state == "ready", appliance.offloader.status)
            pin = appliance.triggers.button.pin
            pin.drive_low()  # held past button_hold_time_s
            time.sleep(config.button_hold_time_s + 0.3)
            pin.drive_high()
            wait(lambda: appliance.offloader.status().safe_to_remove, appliance.offloader.status)
            seen.append(appliance.offloader.status())
        except AssertionError as exc:
            failed.append(exc)
        finally:
            appliance.loop.request_stop("test over")

    with Appliance(config, notifier=Notifier({})) as appliance:
        hand = threading.Thread(target=hold_then_stop, args=(appliance,), daemon=True)
        hand.start()
        appliance.run(60)
        hand.join(5)
    assert not failed, f"no copy started by the hold: {failed[0]}"
    (status,) = seen
    assert status.state == "done" and status.last_run.copied >= len(filled) and not status.last_run.errors
    recorded = offloaded(data_dir)
    assert {cid: recorded.get(cid) for cid in filled} == filled


def test_offload_delete_after_deletes_verified_unprotected_captures_and_never_protected_ones(
    tmp_path, run_config, usb_sticks
):
    mount_point, data_dir = tmp_path / "usb", tmp_path / "data"
    camera, clock = SimulatedCamera(size_px=(640, 480)), ManualClock()
    store, _ = open_store(data_dir, thumbnail_max_px=64)  # its one writer while no appliance runs
    try:
        added = [store.add(*shoot(camera), timestamp=clock.now(), trigger="motion") for _ in range(6)]
        protected = [row["id"] for row in added[:2]]
        for capture_id in protected:
            store.set_protected(capture_id, True)
    finally:
        store.close()
    rows = captures(data_dir)
    assert all((data_dir / thumbnail_path(capture_id)).exists() for capture_id in rows)
    usb_sticks("vfat", mount_point=mount_point)
    # offload_usb_auto on (the default): the stick there from the start is copied to at once.
    config = offload_config(tmp_path, run_config, mount_point, "offload_delete_after = true")
    process = start(data_dir, config, "--trigger-interval-s", "3600")
    try:
        url = status_url(process)
        done = wait_for(url, lambda t: t["safe_to_remove"], "safe to remove")
        assert done["last_run"]["copied"] >= len(rows)
    finally:
        stop(process)
    on_stick = set(stick_media(mount_point).values())
    assert set(rows.values()) <= on_stick  # every one copied and verified first
    left = captures(data_dir)
    for capture_id in rows:
        kept = capture_id in protected
        assert (capture_id in left) == kept, capture_id
        assert (data_dir / media_path(capture_id)).exists() == kept, capture_id
        assert (data_dir / thumbnail_path(capture_id)).exists() == kept, capture_id
    assert IndexReader(data_dir).get(protected[0])["protected"] == 1
