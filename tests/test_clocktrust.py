"""The clock checked against the store's own history: trusted, distrusted, unsynchronised."""

import datetime
import io
import re
import signal
import subprocess
import sys
import time

import pytest
import requests
from PIL import Image

from appliance import clocktrust
from appliance.clocktrust import DISTRUSTED, MAX_GAP_S, TOLERANCE_S, TRUSTED, UNSYNCHRONISED, TrustedClock
from appliance.store import CaptureStore, IndexReader
from hw.clock import ManualClock, Timestamp

NOW = datetime.datetime(2026, 12, 3, 8, 0, tzinfo=datetime.UTC)
BOOT, OTHER_BOOT = "a" * 32, "b" * 32


def anchor(wall=NOW, boot=BOOT, since_boot_s=60.0) -> Timestamp:
    return Timestamp(wall, True, boot, since_boot_s)


def test_a_clock_that_moves_with_the_boot_clock_is_trusted_and_moves_the_anchor():
    machine = ManualClock(NOW, boot_id=BOOT, step_s=30)
    clock = TrustedClock(machine, anchor())
    for _ in range(5):
        assert clock.now().clock_synced
    status = clock.status()
    assert status.state == TRUSTED and status.reason == "" and status.anchor == status.now


@pytest.mark.parametrize("jump_s", [TOLERANCE_S + 1, -(TOLERANCE_S + 1), 3650 * 86400, -3650 * 86400])
def test_a_jump_within_a_boot_is_distrusted_until_the_clock_agrees_again(jump_s):
    machine = ManualClock(NOW, boot_id=BOOT, step_s=1)
    clock = TrustedClock(machine, None)
    assert clock.now().clock_synced  # a new store: the first reading is the anchor
    machine.wall += datetime.timedelta(seconds=jump_s)
    stamp = clock.now()
    assert not stamp.clock_synced and clock.status().state == DISTRUSTED
    assert ("forward" if jump_s > 0 else "back") in clock.status().reason
    assert "appliance clock --trust" in clock.status().reason
    for _ in range(3):  # the anchor does not move while distrusted
        assert not clock.now().clock_synced
    machine.wall -= datetime.timedelta(seconds=jump_s)  # its source fixed
    assert clock.now().clock_synced and clock.status().state == TRUSTED


def test_a_small_step_within_a_boot_is_trusted():
    machine = ManualClock(NOW, boot_id=BOOT, step_s=1)
    clock = TrustedClock(machine, anchor(NOW - datetime.timedelta(seconds=1), since_boot_s=59.0))
    machine.wall += datetime.timedelta(seconds=TOLERANCE_S - 5)  # NTP after weeks offline
    assert clock.now().clock_synced


@pytest.mark.parametrize(
    ("gap_s", "trusted"),
    [(0, True), (-TOLERANCE_S + 10, True), (30 * 86400, True), (MAX_GAP_S - 10, True),
     (-TOLERANCE_S - 10, False), (MAX_GAP_S + 10, False), (10 * 365 * 86400, False),
     (-10 * 365 * 86400, False)],
)  # fmt: skip
def test_after_a_restart_the_clock_may_be_ahead_by_a_season_but_never_behind(gap_s, trusted):
    machine = ManualClock(NOW + datetime.timedelta(seconds=gap_s), boot_id=OTHER_BOOT)
    clock = TrustedClock(machine, anchor())
    assert clock.now().clock_synced is trusted
    assert clock.status().state == (TRUSTED if trusted else DISTRUSTED)


def test_an_unsynchronised_clock_is_just_that():
    machine = ManualClock(NOW - datetime.timedelta(days=20000), clock_synced=False, boot_id=OTHER_BOOT)
    clock = TrustedClock(machine, anchor())
    assert not clock.now().clock_synced
    assert clock.status().state == UNSYNCHRONISED and clock.status().reason == ""
    machine.clock_synced, machine.wall = True, NOW + datetime.timedelta(days=2)  # NTP at last
    assert clock.now().clock_synced


def test_tick_records_the_anchor_while_trusted_every_interval(monkeypatch):
    monkeypatch.setattr(clocktrust, "ANCHOR_INTERVAL_S", 10.0)
    recorded, now = [], [0.0]
    machine = ManualClock(NOW, boot_id=BOOT, step_s=1)
    clock = TrustedClock(machine, anchor(), record_anchor=recorded.append, monotonic=lambda: now[0])
    clock.tick()
    assert recorded == []
    now[0] = 10.0
    clock.tick()
    assert len(recorded) == 1 and recorded[0].clock_synced
    machine.wall += datetime.timedelta(days=3650)
    now[0] = 20.0
    clock.tick()  # distrusted: the anchor stays where it was
    assert len(recorded) == 1


def test_the_store_keeps_the_anchor_across_restarts(tmp_path, photo):
    store = CaptureStore(tmp_path)
    assert store.clock_anchor() is None
    machine = ManualClock(NOW, boot_id=BOOT)
    row = store.add(photo, None, timestamp=machine.now(), trigger="motion")  # a trusted capture
    store.close()
    store = CaptureStore(tmp_path)
    kept = store.clock_anchor()
    assert kept.wall == datetime.datetime.fromisoformat(row["captured_at"]) and kept.boot_id == BOOT
    doubtful = ManualClock(NOW + datetime.timedelta(days=3650), clock_synced=False, boot_id=OTHER_BOOT)
    store.add(photo, None, timestamp=doubtful.now(), trigger="motion")  # not trusted: no move
    assert store.clock_anchor() == kept
    store.set_clock_anchor(anchor(NOW + datetime.timedelta(days=1), OTHER_BOOT, 5.0))
    assert store.clock_anchor().boot_id == OTHER_BOOT
    store.close()


# --- The real command with a wall clock shifted for its process (tests/clockshift) ----------------

YEARS_10 = 3652 * 86400
EXPIRY = "max_capture_age_days = 1\ncleanup_interval_s = 1\n"


def history(data_dir, *periods) -> list[dict]:
    """Captures as earlier runs left them: for each ``(wall, count, boot)``, ``count`` captures
    from ``wall`` on, with a clock the kernel called synchronised."""
    store = CaptureStore(data_dir)
    rows = []
    for wall, count, boot in periods:
        clock = ManualClock(wall, boot_id=boot, step_s=10)
        rows += [
            store.add(jpeg, None, timestamp=clock.now(), trigger="motion") for jpeg in [own_jpeg()] * count
        ]
    store.close()
    return rows


def own_jpeg() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (64, 48), (90, 140, 60)).save(out, "JPEG")
    return out.getvalue()


def run_shifted(data_dir, config, shifted, *args, until=None, timeout_s=60):
    """``appliance run --simulate`` with the shifted clock; ``until(url, process)`` is called
    once the page is up, then the process is stopped with SIGTERM (without ``until``, it runs for
    its ``--duration-s``).  Returns ``(status, log)``."""
    process = subprocess.Popen(
        [sys.executable, "-m", "appliance", "run", "--simulate", "--host", "127.0.0.1", "--port", "0",
         "--data-dir", str(data_dir), "--config", str(config), "--trigger-interval-s", "0.2", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=shifted.env(),
    )  # fmt: skip
    try:
        line = process.stdout.readline()
        url = re.search(r"(http://127\.0\.0\.1:\d+/)", line)[1]
        if until is not None:
            until(url, process)
    finally:
        if until is not None:
            process.send_signal(signal.SIGTERM)
        _, log = process.communicate(timeout=timeout_s)
    return process.returncode, log


def api_status(url) -> dict:
    return requests.get(url + "api/status", timeout=5).json()


def wait_for(predicate, timeout_s=20):
    deadline = time.monotonic() + timeout_s
    while not (value := predicate()):
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)
    return value


def rows_of(data_dir) -> list[dict]:
    return IndexReader(data_dir).latest(100_000)[::-1]


@pytest.fixture
def expiry_config(tmp_path, run_config):
    config = tmp_path / "expiry.toml"
    config.write_text(run_config.read_text() + EXPIRY)
    return config


def test_a_clock_ten_years_ahead_at_start_deletes_nothing_and_says_so(tmp_path, shifted_clock, expiry_config):
    now = datetime.datetime.now(datetime.UTC)
    kept = history(tmp_path / "data", (now - datetime.timedelta(hours=2), 15, OTHER_BOOT))
    shifted_clock.set(YEARS_10)  # an RTC that says 2036, and the kernel believes it

    seen = {}

    def watch(url, process):
        seen["status"] = wait_for(lambda: (s := api_status(url))["captures"]["total"] >= 18 and s)
        time.sleep(1.5)  # cleanup checks every second

    status, log = run_shifted(tmp_path / "data", expiry_config, shifted_clock, until=watch)
    assert status == 0, log
    rows = rows_of(tmp_path / "data")
    assert [r["id"] for r in rows[:15]] == [r["id"] for r in kept]  # not one deleted
    assert all(not r["clock_synced"] for r in rows[15:])  # new ones: a doubtful time
    problem = seen["status"]["problems"]["clock"]
    assert (
        "ahead of the last time the appliance trusted it" in problem and "appliance clock --trust" in problem
    )
    assert seen["status"]["level"] == "warning"
    this_boot = sum(
        1 for r in rows if r["boot_id"] != OTHER_BOOT and r["seq"] <= seen["status"]["captures"]["total"]
    )
    assert seen["status"]["captures"]["last_hour"] == this_boot  # by time since boot, not 2036's


def test_after_a_clock_that_was_years_behind_nothing_newer_goes_before_older_ones(
    tmp_path, shifted_clock, expiry_config
):
    now = datetime.datetime.now(datetime.UTC)
    data = tmp_path / "data"
    rows = history(
        data,
        (now - datetime.timedelta(hours=2), 15, OTHER_BOOT),  # the true time
        (now - datetime.timedelta(seconds=YEARS_10), 15, "c" * 32),  # a clock 10 years behind
    )
    status, log = run_shifted(data, expiry_config, shifted_clock, "--duration-s", "3")
    assert status == 0, log
    assert "clock: the clock says" in log and "ahead of the last time" in log  # the history is wrong now
    assert {r["id"] for r in rows} <= {r["id"] for r in rows_of(data)}

    trust = subprocess.run(
        [sys.executable, "-m", "appliance", "clock", "--trust", "--data-dir", str(data)],
        capture_output=True, text=True, env=shifted_clock.env(), timeout=30,
    )  # fmt: skip
    assert trust.returncode == 0, trust.stderr
    assert "0 captures stamped after now marked" in trust.stdout
    status, log = run_shifted(data, expiry_config, shifted_clock, "--duration-s", "3")
    assert status == 0, log
    # Trusted now, expiry runs: the 15 stamped 10 years ago are newer (by seq) than the 15 of two
    # hours ago, which are not expired: none goes.
    assert "appliance: clock: " not in log
    assert {r["id"] for r in rows} <= {r["id"] for r in rows_of(data)}


def test_jumps_of_the_clock_while_running_delete_nothing_and_show_on_the_page(
    tmp_path, shifted_clock, expiry_config
):
    data = tmp_path / "data"
    problems = []

    def jump_around(url, process):
        for shift in (0, YEARS_10, 0, -YEARS_10, 0):
            shifted_clock.set(shift)
            before = api_status(url)["captures"]["total"]
            wait_for(lambda b=before: api_status(url)["captures"]["total"] >= b + 8)
            time.sleep(1.2)  # a cleanup check at this time
            problems.append(api_status(url)["problems"].get("clock"))

    status, log = run_shifted(data, expiry_config, shifted_clock, until=jump_around)
    assert status == 0, log
    acknowledged = set(re.findall(r"capture \d+ \(([0-9a-f]{32}),", log))
    assert acknowledged <= {r["id"] for r in rows_of(data)}  # not one deleted
    assert "deleting captures older than" not in log
    assert problems[0] is None and problems[2] is None and problems[4] is None
    assert "jumped forward" in problems[1] and "jumped back" in problems[3]
    rows = rows_of(data)
    wrong = [
        r
        for r in rows
        if not datetime.timedelta(days=-1)
        < datetime.datetime.fromisoformat(r["captured_at"]) - datetime.datetime.now(datetime.UTC)
        < datetime.timedelta(days=1)
    ]
    assert wrong and all(not r["clock_synced"] for r in wrong)  # stamped while distrusted: doubtful


def test_steps_too_small_to_notice_one_by_one_cannot_walk_the_clock_away():
    machine = ManualClock(NOW, boot_id=BOOT, step_s=1)
    clock = TrustedClock(machine, None)
    assert clock.now().clock_synced
    for _ in range(10):  # a rogue time source: +250 s every second or so
        machine.wall += datetime.timedelta(seconds=250)
        stamp = clock.now()
    assert not stamp.clock_synced and "jumped forward" in clock.status().reason
    # Real drift, a few parts per million over weeks, stays trusted.
    machine = ManualClock(NOW, boot_id=BOOT, step_s=86400)
    clock = TrustedClock(machine, None)
    for _ in range(30):
        machine.wall += datetime.timedelta(seconds=2)  # 23 ppm
        assert clock.now().clock_synced


def test_a_gap_accepted_after_a_restart_is_reported_once():
    gaps = []
    machine = ManualClock(NOW + datetime.timedelta(days=100), boot_id=OTHER_BOOT)
    clock = TrustedClock(machine, anchor(), gap_accepted=gaps.append)
    assert clock.now().clock_synced and clock.now().clock_synced
    assert len(gaps) == 1 and 99 * 86400 < gaps[0] < 101 * 86400


def test_after_a_long_gap_across_a_restart_the_older_captures_wait_for_newer_ones(
    tmp_path, shifted_clock, expiry_config
):
    now = datetime.datetime.now(datetime.UTC)
    data = tmp_path / "data"
    kept = history(data, (now - datetime.timedelta(hours=2), 15, OTHER_BOOT))
    # After a restart the clock says 100 days later: a trap off for a season, or a clock that was
    # 100 days behind before; either way the captures from before go only once newer ones do.
    shifted_clock.set(100 * 86400)
    status, log = run_shifted(data, expiry_config, shifted_clock, "--duration-s", "3")
    assert status == 0, log
    assert "100 days ahead of the last time the appliance ran" in log
    assert {r["id"] for r in kept} <= {r["id"] for r in rows_of(data)}


def test_trusting_a_clock_that_was_behind_keeps_the_photos_it_timed(tmp_path, shifted_clock, expiry_config):
    data = tmp_path / "data"
    shifted_clock.set(-100 * 86400)  # a new unit whose synchronised clock is 100 days behind
    status, log = run_shifted(data, expiry_config, shifted_clock, "--duration-s", "2")
    assert status == 0, log
    taken = rows_of(data)
    assert taken and all(r["clock_synced"] for r in taken)
    shifted_clock.set(0)  # set right: the page says so, and tells to trust it if it is right
    trust = subprocess.run(
        [sys.executable, "-m", "appliance", "clock", "--trust", "--data-dir", str(data)],
        capture_output=True, text=True, env=shifted_clock.env(), timeout=30,
    )  # fmt: skip
    assert trust.returncode == 0, trust.stderr
    status, log = run_shifted(data, expiry_config, shifted_clock, "--duration-s", "3")
    assert status == 0, log
    assert {r["id"] for r in taken} <= {r["id"] for r in rows_of(data)}  # none deleted by age
