"""The real command in a subprocess: simulated triggers through gpiozero MockFactory pins, replayed
real photos, real HTTP on 127.0.0.1, real signals, and the index read back from disk."""

import contextlib
import hashlib
import io
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
from PIL import Image

from appliance.reconcile import open_store
from appliance.store import CaptureStore, IndexReader, media_path
from hw.clock import ManualClock


def start(data_dir, config, *args, stderr=subprocess.PIPE):
    """``appliance run --simulate`` on ``data_dir``; ``stderr``: where its log goes (a file for a
    run that logs more than a pipe holds before it is read)."""
    return subprocess.Popen(
        [sys.executable, "-m", "appliance", "run", "--simulate", "--host", "127.0.0.1", "--port", "0",
         "--data-dir", str(data_dir), "--config", str(config), *args],
        stdout=subprocess.PIPE, stderr=stderr, text=True,
    )  # fmt: skip


def status_url(process) -> str:
    line = process.stdout.readline()
    match = re.search(r"(http://127\.0\.0\.1:\d+/)", line)
    assert match, f"no status page URL on stdout: {line!r} {process.stderr.read()}"
    return match[1]


def wait_for_captures(url, count, timeout_s=20):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status = requests.get(url + "api/status", timeout=5).json()
        if status["captures"]["total"] >= count:
            return status
        time.sleep(0.2)
    raise AssertionError(f"fewer than {count} captures after {timeout_s} s: {status}")


def assert_index_matches_disk(data_dir, replayed: set[str], *, contiguous: bool = True):
    db = sqlite3.connect(data_dir / "captures.db")
    assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    db.close()
    rows = IndexReader(data_dir).latest(10_000)
    assert rows, "no captures"
    if contiguous:
        assert [r["seq"] for r in rows] == list(range(len(rows), 0, -1))
    for row in rows:
        jpeg = (data_dir / row["media_path"]).read_bytes()
        assert hashlib.sha256(jpeg).hexdigest() == row["sha256"]
        assert row["sha256"] in replayed
        with Image.open(data_dir / row["thumbnail_path"]) as thumb:
            assert thumb.format == "WEBP" and max(thumb.size) <= 320
    on_disk = {p.relative_to(data_dir).as_posix() for p in (data_dir / "media").rglob("*.jpg")}
    assert on_disk == {r["media_path"] for r in rows}
    assert not list(data_dir.rglob(".*.tmp"))
    return rows


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_run_serves_status_and_stops_cleanly_on_signal(tmp_path, burst_dir, signum, run_config):
    replayed = {hashlib.sha256(p.read_bytes()).hexdigest() for p in burst_dir.iterdir()}
    data_dir = tmp_path / "data"
    process = start(data_dir, run_config, "--replay", str(burst_dir), "--trigger-interval-s", "0.2")
    try:
        url = status_url(process)
        status = wait_for_captures(url, 3)
        assert status["mode"] == "simulation"
        assert {c["trigger"] for c in status["latest"]} == {"button", "motion"}
        page = requests.get(url, timeout=5).text
        latest = status["latest"][0]
        assert latest["thumbnail_url"] in page
        thumb = requests.get(url + latest["thumbnail_url"][1:], timeout=5)
        assert max(Image.open(io.BytesIO(thumb.content)).size) <= 320
        media = requests.get(url + latest["media_url"][1:], timeout=5)
        assert hashlib.sha256(media.content).hexdigest() in replayed
    finally:
        process.send_signal(signum)
        _, stderr = process.communicate(timeout=15)
    assert process.returncode == 0, stderr
    assert "stopped cleanly" in stderr
    assert (data_dir / "clean-shutdown").is_file()
    wal = data_dir / "captures.db-wal"
    assert not wal.exists() or wal.stat().st_size == 0  # checkpointed
    assert_index_matches_disk(data_dir, replayed)


def test_sighup_reloads_what_can_change_live_and_names_what_cannot(tmp_path, burst_dir, run_config):
    config = tmp_path / "appliance.toml"
    config.write_text(run_config.read_text())
    data_dir = tmp_path / "data"
    process = start(data_dir, config, "--replay", str(burst_dir), "--trigger-interval-s", "0.3")
    try:
        url = status_url(process)
        before = wait_for_captures(url, 2)["captures"]["total"]
        config.write_text(
            run_config.read_text() + "burst_count = 3\nburst_interval_s = 0.05\njpeg_quality = 50\n"
        )
        process.send_signal(signal.SIGHUP)
        wait_for_captures(url, before + 9)
        config.write_text("burst_count = many\n")  # a bad edit: logged, the running config kept
        process.send_signal(signal.SIGHUP)
        time.sleep(1)
        assert process.poll() is None
    finally:
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=15)
    assert process.returncode == 0, stderr
    assert "config reloaded: burst_count, burst_interval_s" in stderr
    assert "config: jpeg_quality changed, which takes a restart" in stderr
    assert f"config not reloaded, keeping the running one: {config}: " in stderr
    rows = IndexReader(data_dir).latest(1000)[::-1]
    bursts = [sum(1 for r in rows if r["event_id"] == e) for e in dict.fromkeys(r["event_id"] for r in rows)]
    assert bursts[:before] == [1] * before and 3 in bursts[before:]


def test_under_systemd_log_lines_carry_journal_priorities_and_no_timestamps(tmp_path, run_config):
    log_file = tmp_path / "stderr"
    with open(log_file, "w") as stderr:
        stat = os.fstat(stderr.fileno())
        env = os.environ | {"JOURNAL_STREAM": f"{stat.st_dev}:{stat.st_ino}"}
        result = subprocess.run(
            [sys.executable, "-m", "appliance", "run", "--simulate", "--duration-s", "1", "--port", "0",
             "--host", "127.0.0.1", "--data-dir", str(tmp_path / "d"), "--config", str(run_config)],
            stdout=subprocess.DEVNULL, stderr=stderr, timeout=30, env=env,
        )  # fmt: skip
    lines = log_file.read_text().splitlines()
    assert result.returncode == 0, lines
    assert lines and all(re.match(r"<[2-7]>[a-z.]+: ", line) for line in lines), lines
    assert f"<6>appliance: config: {run_config}" in lines
    assert "<6>appliance: stopped cleanly" in lines


def test_duration_run_of_the_readme_exits_0_with_a_consistent_index(tmp_path, burst_dir, run_config):
    replayed = {hashlib.sha256(p.read_bytes()).hexdigest() for p in burst_dir.iterdir()}
    result = subprocess.run(
        [sys.executable, "-m", "appliance", "run", "--simulate", "--replay", str(burst_dir),
         "--trigger-interval-s", "0.5", "--duration-s", "3", "--data-dir", str(tmp_path / "d"),
         "--host", "127.0.0.1", "--port", "0", "--config", str(run_config)],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    rows = assert_index_matches_disk(tmp_path / "d", replayed)
    assert 4 <= len(rows) <= 7


def test_bad_replay_file_is_skipped_and_named(tmp_path, photo, run_config):
    (tmp_path / "replay").mkdir()
    (tmp_path / "replay" / "broken.jpg").write_bytes(photo[:1000])
    (tmp_path / "replay" / "good.jpg").write_bytes(photo)
    result = subprocess.run(
        [sys.executable, "-m", "appliance", "run", "--simulate", "--replay", str(tmp_path / "replay"),
         "--trigger-interval-s", "0.2", "--duration-s", "1.5", "--data-dir", str(tmp_path / "d"),
         "--host", "127.0.0.1", "--port", "0", "--config", str(run_config)],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "broken.jpg" in result.stderr
    assert_index_matches_disk(tmp_path / "d", {hashlib.sha256(photo).hexdigest()})


def test_a_camera_that_keeps_failing_exits_1_for_systemd_to_restart_it(tmp_path, photo, run_config):
    (tmp_path / "replay").mkdir()
    (tmp_path / "replay" / "a.jpg").write_bytes(photo)  # a folder without a photo is refused at start
    config = tmp_path / "appliance.toml"
    config.write_text(run_config.read_text() + 'camera_max_failures = 2\nflash_pin = "GPIO27"\n')
    process = start(tmp_path / "d", config, "--replay", str(tmp_path / "replay"),
                    "--trigger-interval-s", "0.2", "--duration-s", "20")  # fmt: skip
    status_url(process)  # up, with its camera open: from now on every capture fails
    (tmp_path / "replay" / "a.jpg").write_text("no photo here")
    started = time.monotonic()
    _, stderr = process.communicate(timeout=30)
    assert process.returncode == 1, stderr
    assert time.monotonic() - started < 15  # one back-off of 1 s, not the whole --duration-s
    assert "camera failure 1 of 2" in stderr
    assert "stopped on error: camera failed 2 times in a row" in stderr


def test_bad_config_exits_2_naming_file_and_key(tmp_path):
    config = tmp_path / "appliance.toml"
    config.write_text('motion_pin = "GPIO99"\n')
    result = subprocess.run(
        [sys.executable, "-m", "appliance", "run", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert result.stderr.strip() == (
        f"appliance: config error: {config}: motion_pin: 'GPIO99' must be a BCM pin name from "
        '"GPIO0" to "GPIO27", or "" when not fitted'
    )


def test_hardware_mode_without_a_pi_fails_start_up_with_a_reason(tmp_path):
    env = os.environ | {"GPIOZERO_PIN_FACTORY": "mock"}  # GPIO is there, the camera is not
    result = subprocess.run(
        [sys.executable, "-m", "appliance", "run", "--data-dir", str(tmp_path), "--port", "0",
         "--host", "127.0.0.1", "--duration-s", "1"],
        capture_output=True, text=True, timeout=30, env=env,
    )  # fmt: skip
    assert result.returncode == 1
    assert "picamera2 is not installed" in result.stderr


def test_after_sigkill_the_next_run_captures_at_once_and_checks_in_full_beside(
    tmp_path, burst_dir, run_config
):
    replayed = {hashlib.sha256(p.read_bytes()).hexdigest() for p in burst_dir.iterdir()}
    data_dir = tmp_path / "data"
    first = start(data_dir, run_config, "--replay", str(burst_dir), "--trigger-interval-s", "0.2")
    wait_for_captures(status_url(first), 2)
    first.kill()
    first.communicate(timeout=15)

    second = start(data_dir, run_config, "--replay", str(burst_dir), "--trigger-interval-s", "0.2")
    try:
        url = status_url(second)
        check = requests.get(url + "api/status", timeout=5).json()["startup_check"]
        assert check["scope"] == "interrupted" and check["full_check_due"]
        deadline = time.monotonic() + 10
        while check["full_check_progress"] != 1 and time.monotonic() < deadline:
            time.sleep(0.2)
            check = requests.get(url + "api/status", timeout=5).json()["startup_check"]
        assert check["full_check_progress"] == 1
    finally:
        second.send_signal(signal.SIGTERM)
        _, stderr = second.communicate(timeout=15)
    assert second.returncode == 0, stderr
    assert "capture store: check after an unclean shutdown in" in stderr
    assert "capture store: full check in" in stderr
    assert_index_matches_disk(data_dir, replayed)


ACKNOWLEDGED = re.compile(r"capture \d+ \(([0-9a-f]{32}), (\w+), ")


def test_an_index_removed_under_the_running_appliance_stops_it_and_every_row_survives(
    tmp_path, burst_dir, run_config
):
    data_dir = tmp_path / "data"
    process = start(data_dir, run_config, "--replay", str(burst_dir), "--trigger-interval-s", "0.2")
    try:
        wait_for_captures(status_url(process), 3)
        (data_dir / "captures.db").unlink()
        _, stderr = process.communicate(timeout=15)
    finally:
        process.kill()
    assert process.returncode == 1, stderr  # for systemd to restart it
    assert "captures.db was removed while the appliance ran; it was written back" in stderr
    acknowledged = dict(ACKNOWLEDGED.findall(stderr))
    assert len(acknowledged) >= 3

    store, report = open_store(data_dir, thumbnail_max_px=320)
    store.close()
    assert report.scope == "interrupted"
    rows = {row["id"]: row for row in IndexReader(data_dir).latest(1000)}
    for capture_id, trigger in acknowledged.items():  # every row, with what only the index knew
        assert rows[capture_id]["trigger"] == trigger and not rows[capture_id]["recovered"]
    replayed = {hashlib.sha256(p.read_bytes()).hexdigest() for p in burst_dir.iterdir()}
    assert_index_matches_disk(data_dir, replayed)


def recovery_state(data_dir) -> tuple[int, int, int]:
    """``(next shard of the full check, photos waiting in recovery, recovered rows)``."""
    with sqlite3.connect(f"{(data_dir / 'captures.db').as_uri()}?mode=ro", uri=True) as db:
        shard = db.execute("SELECT value FROM counters WHERE name = 'full_check_shard'").fetchone()[0]
        waiting = db.execute("SELECT COUNT(*) FROM recovery").fetchone()[0]
        recovered = db.execute("SELECT COUNT(*) FROM captures WHERE recovered = 1").fetchone()[0]
    return shard, waiting, recovered


def test_a_large_recovery_runs_beside_capturing_in_durable_steps_and_resumes_after_a_kill(
    tmp_path, burst_dir, run_config
):
    data_dir = tmp_path / "data"
    store = CaptureStore(data_dir)
    planted = set()
    for i in range(1500):  # photos whose rows were lost: each must be recovered, none twice
        capture_id = f"{i % 256:02x}{os.urandom(15).hex()}"
        (data_dir / media_path(capture_id)).parent.mkdir(exist_ok=True)
        out = io.BytesIO()
        Image.new("RGB", (64, 48), (i % 256, 90, 40)).save(out, "JPEG")
        (data_dir / media_path(capture_id)).write_bytes(out.getvalue())
        planted.add(capture_id)
    store.close(clean=False)  # as after a crash: the next start checks in full, beside capturing

    log = tmp_path / "log"
    first = start(data_dir, run_config, "--replay", str(burst_dir), "--trigger-interval-s", "0.1",
                  stderr=log.open("w"))  # fmt: skip
    try:
        url = status_url(first)
        before = requests.get(url + "api/status", timeout=5).json()["captures"]["total"]
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            status = requests.get(url + "api/status", timeout=5).json()
            if status["startup_check"]["full_check_progress"] >= 0.3:
                break
            time.sleep(0.05)
        assert status["captures"]["total"] > before  # capturing goes on meanwhile
    finally:
        first.kill()
        first.communicate(timeout=15)
    shard, waiting, recovered = recovery_state(data_dir)
    assert shard > 0 and waiting + recovered > 0  # committed as it went: kept across the kill

    second = start(data_dir, run_config, "--replay", str(burst_dir), "--trigger-interval-s", "0.1",
                   stderr=log.open("w"))  # fmt: skip
    try:
        url = status_url(second)
        deadline = time.monotonic() + 120
        while requests.get(url + "api/status", timeout=5).json()["startup_check"]["full_check_progress"] != 1:
            assert time.monotonic() < deadline, "the full check did not end"
            time.sleep(0.2)
    finally:
        second.send_signal(signal.SIGTERM)
        second.communicate(timeout=15)
    stderr = log.read_text()
    assert second.returncode == 0, stderr
    assert re.search(r"full check: going on at shard (\d+) of 256", stderr)
    rows = IndexReader(data_dir).latest(100_000)
    replayed = {hashlib.sha256(p.read_bytes()).hexdigest() for p in burst_dir.iterdir()}
    # Every planted photo, once; and at most the one capture the kill caught between its photo's
    # rename and its row's commit, recovered as such a photo is (a replayed photo, not a planted one).
    extra = [r for r in rows if r["recovered"] and r["id"] not in planted]
    assert {r["id"] for r in rows if r["recovered"]} >= planted
    assert len(extra) <= 1 and all(r["sha256"] in replayed for r in extra), extra
    assert len({r["seq"] for r in rows}) == len(rows)
    replayed |= {r["sha256"] for r in rows if r["recovered"]}
    assert_index_matches_disk(data_dir, replayed, contiguous=False)


def test_pages_damaged_after_a_clean_stop_are_found_at_start_and_never_answered_with_a_500(
    tmp_path, burst_dir, run_config
):
    data_dir = tmp_path / "data"
    first = start(data_dir, run_config, "--replay", str(burst_dir), "--trigger-interval-s", "0.1")
    wait_for_captures(status_url(first), 5)
    first.send_signal(signal.SIGTERM)
    first.communicate(timeout=15)
    assert first.returncode == 0 and (data_dir / "clean-shutdown").exists()
    with sqlite3.connect(data_dir / "captures.db") as db:
        page_size = db.execute("PRAGMA page_size").fetchone()[0]
        [root] = db.execute("SELECT rootpage FROM sqlite_master WHERE name = 'captures'").fetchone()
    with open(data_dir / "captures.db", "r+b") as f:  # a bad block where the captures table begins
        f.seek((root - 1) * page_size)
        f.write(b"\xff" * page_size)

    second = start(data_dir, run_config, "--replay", str(burst_dir), "--trigger-interval-s", "0.1")
    try:
        url = status_url(second)
        for path in ("", "api/status", "captures", "healthz", "metrics"):
            assert requests.get(url + path, timeout=5).status_code in (200, 503), path
        check = requests.get(url + "api/status", timeout=5).json()["startup_check"]
        assert check["database_set_aside"] and check["scope"] == "full"
    finally:
        second.send_signal(signal.SIGTERM)
        _, stderr = second.communicate(timeout=15)
    assert second.returncode == 0, stderr
    assert "fails quick_check" in stderr


@pytest.mark.parametrize("after_s", [0.2, 0.4, 0.6, 0.9, 1.2, 2.0])
def test_sigterm_at_any_moment_of_start_up_exits_0_and_the_next_start_is_sound(
    tmp_path, burst_dir, run_config, after_s
):
    # From 0.2 s: the interpreter itself takes 25 ms or more to start, before any of our code runs.
    data_dir = tmp_path / "data"
    store = CaptureStore(data_dir)  # an index big enough that its check at start takes a moment
    store.db.execute("CREATE TEMP TABLE n AS WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c "
                     "WHERE i < 100000) SELECT i FROM c")  # fmt: skip
    with store.db.atomic():
        store.db.execute(
            "INSERT INTO cleanup_runs "
            "(started_at, reason, deleted, bytes_freed, free_bytes_before, total_bytes) "
            "SELECT '2026-01-01', 'space', i, 0, 0, 0 FROM n"
        )
    store.close(clean=False)
    process = subprocess.Popen(
        [sys.executable, "-m", "appliance", "run", "--simulate", "--host", "127.0.0.1", "--port", "0",
         "--data-dir", str(data_dir), "--config", str(run_config), "--replay", str(burst_dir)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    time.sleep(after_s)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=30)
    assert process.returncode == 0, stderr
    assert re.search(r"stopped by Terminated while starting|stopped during start-up|stopped cleanly", stderr)
    store, report = open_store(data_dir, thumbnail_max_px=320)
    store.close()
    assert report.damaged == report.rows_dropped == 0 and report.database_set_aside is None


def test_sigterm_during_the_store_check_at_start_exits_0_having_closed_the_store(tmp_path, run_config):
    data_dir = tmp_path / "data"
    store = CaptureStore(data_dir)  # an index whose quick_check at start takes a second or so
    with store.db.atomic():
        store.db.execute(
            "INSERT INTO cleanup_runs "
            "(started_at, reason, deleted, bytes_freed, free_bytes_before, total_bytes) "
            "WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < 1500000) "
            "SELECT '2026-01-01T00:00:00.000+00:00', 'space', i, i, i, i FROM c"
        )
    store.close()
    process = subprocess.Popen(
        [sys.executable, "-m", "appliance", "run", "--simulate", "--host", "127.0.0.1", "--port", "0",
         "--data-dir", str(data_dir), "--config", str(run_config)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    log = ""
    while "preflight data layout" not in log:  # the last line before the store is opened
        line = process.stderr.readline()
        assert line, log
        log += line
    process.send_signal(signal.SIGTERM)
    log += process.communicate(timeout=30)[1]
    assert process.returncode == 0, log
    assert "stopped during start-up (Terminated); the next start goes on from there" in log
    assert "Status page" not in log
    reopened = CaptureStore(data_dir)  # the lock was released, the index is whole
    assert reopened.db["cleanup_runs"].count == 1500000
    reopened.close()


def test_a_store_that_cannot_be_closed_cleanly_makes_the_stop_exit_1(tmpfs, run_config):
    card = tmpfs("16m", "card")
    process = start(card / "data", run_config, "--trigger-interval-s", "60")
    status_url(process)
    # Something else fills the card to the last byte.
    # Unbuffered: a write cut short by ENOSPC leaves nothing for close() to flush (and fail on).
    with open(card / "filler", "wb", buffering=0) as filler, contextlib.suppress(OSError):
        while True:
            filler.write(b"\0" * 65536)
            filler.flush()
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=15)
    assert process.returncode == 1, stderr
    assert "capture store not closed cleanly" in stderr and "stopped cleanly" not in stderr


def test_a_card_filled_by_another_process_pauses_capturing_and_deletes_no_photo(
    tmp_path, tmpfs, burst_dir, run_config
):
    card = tmpfs("128m", "card")
    config = tmp_path / "card.toml"
    config.write_text(
        "trigger_cooldown_s = 0\nmax_captures_per_minute = 0\nheadroom_hours = 0\n"
        "cleanup_start_free_percent = 0\ncleanup_stop_free_percent = 0\n"
        f"cleanup_start_free_bytes = {24 << 20}\ncleanup_stop_free_bytes = {40 << 20}\n"
        f"capture_min_free_bytes = {4 << 20}\ncleanup_interval_s = 1\n"
    )
    log = tmp_path / "log"
    process = start(card / "data", config, "--replay", str(burst_dir), "--trigger-interval-s", "0.1",
                    stderr=log.open("w"))  # fmt: skip
    try:
        url = status_url(process)
        wait_for_captures(url, 10)
        with open(card / "copied-videos", "wb") as filler:  # another process fills the card
            while os.statvfs(card).f_bavail * os.statvfs(card).f_frsize > 12 << 20:
                filler.write(b"\0" * (1 << 20))
                filler.flush()
        deadline = time.monotonic() + 15
        while "something else" not in (status := requests.get(url + "api/status", timeout=5).json())[
            "problems"
        ].get("space", ""):
            assert time.monotonic() < deadline, status
            time.sleep(0.2)
        assert status["level"] == "error" and "Free space on the card" in status["problems"]["space"]
        paused_at = status["captures"]["total"]
        time.sleep(1.5)
        assert requests.get(url + "api/status", timeout=5).json()["captures"]["total"] <= paused_at + 1
        (card / "copied-videos").unlink()  # whoever it was took it away again
        wait_for_captures(url, paused_at + 5)  # capturing resumes by itself
        assert "space" not in requests.get(url + "api/status", timeout=5).json()["problems"]
    finally:
        process.send_signal(signal.SIGTERM)
        process.communicate(timeout=15)
    text = log.read_text()
    assert process.returncode == 0, text
    acknowledged = set(ACKNOWLEDGED.findall(text))
    assert {i for i, _ in acknowledged} <= {r["id"] for r in IndexReader(card / "data").latest(10_000)}
    assert "cleanup: deleted" not in text and "could not be stored" not in text  # no photo lost
    assert text.count("cleanup: something else is filling the card") == 1


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_while_the_config_is_read_exits_0(tmp_path, signum):
    os.mkfifo(tmp_path / "slow.toml")  # nobody writes it: the start-up waits there, reading it
    process = subprocess.Popen(
        [sys.executable, "-m", "appliance", "run", "--simulate", "--port", "0",
         "--data-dir", str(tmp_path / "data"), "--config", str(tmp_path / "slow.toml")],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    time.sleep(2)  # the modules are loaded by now
    process.send_signal(signum)
    _, stderr = process.communicate(timeout=30)
    assert process.returncode == 0, stderr
    assert f"appliance: stopped by {signal.strsignal(signum)} while starting" in stderr
    assert "Traceback" not in stderr


MB = 1 << 20
SLOW_FILL_CONFIG = f"""\
trigger_cooldown_s = 0
max_captures_per_minute = 0
cleanup_start_free_percent = 0
cleanup_stop_free_percent = 0
cleanup_start_free_bytes = {100 * MB}
cleanup_stop_free_bytes = {150 * MB}
headroom_hours = 0
capture_min_free_bytes = {20 * MB}
cleanup_interval_s = 1
"""


def card_with_photos(tmpfs, samples, name) -> Path:
    """A 400 MB card holding 240 MB of photos taken earlier: 160 MB free, above the start."""
    card = tmpfs("400m", name)
    jpeg = (samples / "full-res" / "olympus_e-p3_12mp.jpg").read_bytes()  # 2.9 MB
    store, clock = CaptureStore(card / "data"), ManualClock()
    for _ in range(85):
        store.add(jpeg, None, timestamp=clock.now(), trigger="motion")
    store.close()
    return card


def other_writer(path, mb):
    with open(path, "ab") as f:
        for _ in range(mb // 4):
            f.write(b"\x01" * (4 * MB))


def run_while(card, config, during) -> tuple[int, str, dict]:
    """``appliance run`` on the card (no triggers), ``during()`` once it is up; then SIGTERM.
    Returns ``(exit status, log, the last /api/status)``."""
    process = start(card / "data", config, "--trigger-interval-s", "3600")
    try:
        url = status_url(process)
        time.sleep(1.5)
        during()
        time.sleep(3)  # three cleanup checks
        status = requests.get(url + "api/status", timeout=5).json()
    finally:
        process.send_signal(signal.SIGTERM)
        _, log = process.communicate(timeout=30)
    return process.returncode, log, status


def photos_left(card) -> int:
    return len(IndexReader(card / "data").latest(1000))


def test_another_writer_that_fills_the_card_a_little_at_a_time_is_fed_once_at_most(tmp_path, tmpfs, samples):
    config = tmp_path / "card.toml"
    config.write_text(SLOW_FILL_CONFIG)
    card = card_with_photos(tmpfs, samples, "card")

    def in_two_goes():  # each less than the 64 MiB that give it away
        other_writer(card / "other.bin", 60)
        time.sleep(3)
        other_writer(card / "other.bin", 60)

    status, log, api = run_while(card, config, in_two_goes)
    assert status == 0, log
    assert photos_left(card) >= 85 - 22  # at most the first go's 60 MB of 2.9 MB photos
    assert "something else is filling the card" in api["problems"]["space"]


def test_a_card_filled_by_another_writer_stays_unfed_across_a_restart(tmp_path, tmpfs, samples):
    config = tmp_path / "card.toml"
    config.write_text(SLOW_FILL_CONFIG)
    card = card_with_photos(tmpfs, samples, "card")
    status, log, api = run_while(card, config, lambda: other_writer(card / "other.bin", 120))
    assert status == 0 and photos_left(card) == 85, log
    status, log, api = run_while(card, config, lambda: None)  # a restart: the other file is still there
    assert status == 0 and photos_left(card) == 85, log
    assert "something else is filling the card" in api["problems"]["space"]
