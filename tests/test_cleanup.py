import contextlib
import dataclasses
import datetime
import errno
import io
import logging
import os
import queue
import shutil
import time

import pytest
import schedule
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from appliance.cleanup import Cleanup, Policy, decide
from appliance.cli import main
from appliance.exif import Identity
from appliance.loop import LoopSettings, MainLoop
from appliance.status import StatusCollector
from appliance.store import CaptureStore, IndexReader
from hw.camera import SimulatedCamera
from hw.clock import ManualClock
from hw.system import DiskUsage
from hw.triggers import TriggerEvent

GB = 10**9
# Only what a test sets: no byte thresholds, no headroom, no floor.
BARE = Policy(start_free_bytes=0, stop_free_bytes=0, headroom_hours=0, capture_min_free_bytes=0)


class FakeDisk:
    """A filesystem of ``total`` bytes whose free space is ``base_free`` minus what the store's
    photos and thumbnails use: deleting captures really frees space."""

    def __init__(self, store, total, base_free):
        self.store, self.total, self.base_free = store, total, base_free

    def __call__(self, path):
        data = self.store.data_dir
        files = [*(data / "media").rglob("*.*"), *(data / "thumbnails").rglob("*.*")]
        free = self.base_free - sum(p.stat().st_size for p in files)
        return DiskUsage(self.total, self.total - free, free)


class CardDisk(FakeDisk):
    """A :class:`FakeDisk` whose free space goes as a card's does: by the blocks every file of the
    data directory takes (the index included), not by the photos' bytes alone."""

    def __call__(self, path):
        taken = sum(p.lstat().st_blocks * 512 for p in self.store.data_dir.rglob("*") if p.is_file())
        free = self.base_free - taken
        return DiskUsage(self.total, self.total - free, free)


class Ticker:
    """A monotonic clock that moves on by ``step_s`` each time it is read."""

    def __init__(self, step_s=0.0):
        self.now, self.step_s = 1000.0, step_s

    def __call__(self):
        self.now += self.step_s
        return self.now


def fill(store, photo, n, clock=None):
    clock = clock or ManualClock()
    return [store.add(photo, None, timestamp=clock.now(), trigger="motion") for _ in range(n)]


def remaining(store):
    return [r["id"] for r in IndexReader(store.data_dir).latest(10_000)][::-1]


# The decision: a pure function of usage, policy and rate.


def test_cleaning_starts_below_the_percentage_or_the_bytes_and_stops_above_both():
    policy = Policy(start_free_percent=10, start_free_bytes=2 * GB, stop_free_percent=20,
                    stop_free_bytes=3 * GB, headroom_hours=0)  # fmt: skip
    assert decide(100 * GB, 11 * GB, policy, 0, cleaning=False).bytes_to_free == 0
    below_percent = decide(100 * GB, 9 * GB, policy, 0, cleaning=False)
    assert (below_percent.bytes_to_free, below_percent.cause) == (11 * GB, "space")  # up to 20 %
    small_card = decide(8 * GB, 1.5 * GB, policy, 0, cleaning=False)  # 18.75 % free, < 2 GB
    assert small_card.bytes_to_free == 1.5 * GB  # up to 3 GB (20 % would be 1.6 GB)
    assert "below 2.00 GB" in small_card.reason


def test_hysteresis_goes_on_to_the_stop_threshold_but_does_not_start_above_the_start():
    policy = Policy(start_free_percent=10, start_free_bytes=0, stop_free_percent=20, stop_free_bytes=0,
                    headroom_hours=0)  # fmt: skip
    assert decide(100 * GB, 15 * GB, policy, 0, cleaning=False).bytes_to_free == 0
    assert decide(100 * GB, 15 * GB, policy, 0, cleaning=True).bytes_to_free == 5 * GB
    assert decide(100 * GB, 20 * GB, policy, 0, cleaning=True).bytes_to_free == 0


def test_cleaning_starts_before_capturing_would_pause():
    policy = Policy(start_free_percent=1, start_free_bytes=0, stop_free_percent=2, stop_free_bytes=0,
                    headroom_hours=0, capture_min_free_bytes=5 * GB)  # fmt: skip
    decision = decide(100 * GB, 5.5 * GB, policy, 0, cleaning=False, capture_bytes=1 * GB)
    assert decision.start_bytes == 6 * GB and decision.stop_bytes == 7 * GB
    assert decision.bytes_to_free == 1.5 * GB


def test_one_busy_hour_cannot_make_cleanup_empty_the_card():
    policy = Policy(start_free_percent=10, start_free_bytes=0, stop_free_percent=20, stop_free_bytes=0,
                    headroom_hours=24)  # fmt: skip
    decision = decide(30 * GB, 25 * GB, policy, 2.4 * GB, cleaning=False)  # 57.6 GB of headroom asked
    assert decision.headroom_bytes == 15 * GB and decision.bytes_to_free == 0


def test_headroom_starts_cleaning_early_enough_for_the_recent_rate():
    policy = Policy(start_free_percent=10, start_free_bytes=0, stop_free_percent=20, stop_free_bytes=0,
                    headroom_hours=24)  # fmt: skip
    # 1 GB an hour for 24 h needs 24 GB free: more than the 10 % start of a 100 GB card.
    decision = decide(100 * GB, 23 * GB, policy, 1 * GB, cleaning=False)
    assert (decision.start_bytes, decision.stop_bytes, decision.cause) == (24 * GB, 34 * GB, "headroom")
    assert decision.bytes_to_free == 11 * GB and "24 h of capturing" in decision.reason
    assert decide(100 * GB, 25 * GB, policy, 1 * GB, cleaning=False).bytes_to_free == 0


@given(
    total=st.integers(1, 10**13),
    free_fraction=st.floats(0, 1),
    start=st.floats(0, 100),
    gap=st.floats(0, 100),
    start_bytes=st.integers(0, 10**12),
    gap_bytes=st.integers(0, 10**12),
    rate=st.floats(0, 10**11),
    hours=st.floats(0, 1000),
    cleaning=st.booleans(),
)
def test_decision_properties(total, free_fraction, start, gap, start_bytes, gap_bytes, rate, hours, cleaning):
    policy = Policy(start_free_percent=start, start_free_bytes=start_bytes,
                    stop_free_percent=min(100, start + gap), stop_free_bytes=start_bytes + gap_bytes,
                    headroom_hours=hours)  # fmt: skip
    free = int(total * free_fraction)
    decision = decide(total, free, policy, rate, cleaning)
    assert decision.stop_bytes >= decision.start_bytes >= 0
    wanted = free < decision.start_bytes or (cleaning and free < decision.stop_bytes)
    assert (decision.bytes_to_free > 0) == wanted
    if wanted:
        assert free + decision.bytes_to_free == decision.stop_bytes


# The work: real store, real files, an injected disk.


def test_oldest_unprotected_go_first_until_the_stop_threshold_and_the_run_is_recorded(store, photo):
    rows = fill(store, photo, 20)
    store.set_protected(rows[0]["id"], True)
    # A disk of 100 photos with 25 free before these 20 captures: 5 % free now.
    disk = FakeDisk(store, total=100 * len(photo), base_free=25 * len(photo))
    policy = Policy(**vars(BARE) | {"start_free_percent": 10, "stop_free_percent": 20})
    cleanup = Cleanup(store, policy, disk_usage=disk)
    cleanup.tick()

    # 15 photos must go to reach 20 % free: the oldest unprotected ones, in seq order.
    assert remaining(store) == [rows[0]["id"]] + [r["id"] for r in rows[16:]]
    run = IndexReader(store.data_dir).last_cleanup_run()
    assert (run["reason"], run["deleted"], run["total_bytes"]) == ("space", 15, disk.total)
    assert run["bytes_freed"] == 15 * len(photo)
    assert run["free_bytes_after"] >= 0.2 * disk.total > run["free_bytes_before"] and run["finished_at"]
    assert cleanup.state == "ok"


def test_a_large_backlog_is_cleaned_a_slice_per_tick(store, photo, monkeypatch):
    monkeypatch.setattr("appliance.cleanup.BATCH_SIZE", 2)
    monkeypatch.setattr("appliance.cleanup.FIRST_BATCH_SIZE", 2)
    rows = fill(store, photo, 12)
    disk = FakeDisk(store, total=20 * len(photo), base_free=12 * len(photo))  # 0 % free
    ticker = Ticker(step_s=0.15)  # each look at the clock costs 0.15 s: a slow card
    policy = Policy(**vars(BARE) | {"start_free_percent": 10, "stop_free_percent": 50})
    cleanup = Cleanup(store, policy, disk_usage=disk, monotonic=ticker)
    ticks = 0
    while ticks == 0 or cleanup.state == "cleaning":
        cleanup.tick()
        ticks += 1
        assert ticks < 20
    assert ticks >= 3  # the 200 ms budget ended the first ticks early
    assert len(remaining(store)) == 2 and IndexReader(store.data_dir).last_cleanup_run()["deleted"] == 10
    assert [r for r in remaining(store)] == [r["id"] for r in rows[10:]]


def test_only_protected_left_pauses_capture_and_warns_once_then_resumes(store, photo, caplog):
    rows = fill(store, photo, 4)
    for row in rows:
        store.set_protected(row["id"], True)
    disk = FakeDisk(store, total=100 * len(photo), base_free=5 * len(photo))  # 1 photo free
    ticker = Ticker()
    policy = Policy(**vars(BARE) | {"start_free_percent": 10, "stop_free_percent": 20,
                                    "capture_min_free_bytes": 2 * len(photo)})  # fmt: skip
    cleanup = Cleanup(store, policy, disk_usage=disk, monotonic=ticker, interval_s=60)
    with caplog.at_level(logging.INFO):
        for _ in range(3):
            cleanup.tick()
            ticker.now += 61
            assert cleanup.capture_pause() is not None
        assert cleanup.state == "paused" and "capturing paused for space" in cleanup.status().reason
        assert caplog.text.count("only protected captures remain") == 1
        assert caplog.text.count("capturing paused") == 1
        assert IndexReader(store.data_dir).last_cleanup_run() is None  # no empty runs recorded
        assert len(remaining(store)) == 4

        disk.base_free += 10 * len(photo)  # the user made room
        assert cleanup.capture_pause() is None
        assert cleanup.state == "ok" and "capturing resumes" in caplog.text


def test_a_disk_that_shrinks_suddenly_is_cleaned_at_the_next_check(store, photo):
    fill(store, photo, 10)
    disk = FakeDisk(store, total=100 * len(photo), base_free=60 * len(photo))
    ticker = Ticker()
    policy = Policy(**vars(BARE) | {"start_free_percent": 10, "stop_free_percent": 12})
    cleanup = Cleanup(store, policy, disk_usage=disk, monotonic=ticker, interval_s=60)
    cleanup.tick()
    disk.base_free = 18 * len(photo)  # something else filled the card: 8 % free
    cleanup.tick()
    assert len(remaining(store)) == 10  # not before the interval
    ticker.now += 60
    cleanup.tick()
    assert len(remaining(store)) == 6  # 4 deleted: 12 % free


@pytest.mark.parametrize("error", [errno.EACCES, errno.EBUSY])
def test_a_file_that_cannot_be_deleted_is_skipped_and_retried_at_the_next_check(store, photo, faulty_disk,
                                                                                 error, caplog):  # fmt: skip
    rows = fill(store, photo, 4)
    stuck = store.data_dir / rows[0]["media_path"]
    disk = FakeDisk(store, total=100 * len(photo), base_free=12 * len(photo))  # 8 % free
    ticker = Ticker()
    policy = Policy(**vars(BARE) | {"start_free_percent": 10, "stop_free_percent": 11})
    cleanup = Cleanup(store, policy, disk_usage=disk, monotonic=ticker, interval_s=60)
    attempts = []
    refuse = lambda name, path: name == "unlink" and str(path) == str(stuck) and not attempts.append(1)  # noqa: E731
    with faulty_disk(refuse, lambda step: OSError(error, os.strerror(error), step)):
        cleanup.tick()
        cleanup.tick()  # before the interval: no new attempt on it
    assert len(attempts) == 1
    assert caplog.text.count("files of 1 captures cannot be deleted now") == 1
    assert rows[0]["id"] not in remaining(store) and stuck.exists()
    assert rows[0]["id"] in store.in_flight()
    ticker.now += 60
    cleanup.tick()  # the next check tries it again, and now it goes
    assert not stuck.exists() and rows[0]["id"] not in store.in_flight()


def test_age_limit_deletes_only_captures_whose_time_is_known(store, photo):
    now = datetime.datetime(2026, 11, 22, 12, tzinfo=datetime.UTC)
    old = ManualClock(now - datetime.timedelta(days=40), step_s=60)
    synced_old = fill(store, photo, 2, old)
    old.clock_synced = False
    unsynced_old = fill(store, photo, 1, old)
    recent = fill(store, photo, 1, ManualClock(now - datetime.timedelta(days=1)))
    store.set_protected(synced_old[1]["id"], True)
    disk = FakeDisk(store, total=100 * len(photo), base_free=90 * len(photo))
    policy = Policy(**vars(BARE) | {"max_capture_age_days": 30})
    clock = ManualClock(now, clock_synced=False)
    cleanup = Cleanup(store, policy, disk_usage=disk, clock=clock, monotonic=Ticker(), interval_s=0)
    cleanup.tick()
    assert len(remaining(store)) == 4  # the clock now is not synchronised: no age is known
    clock.clock_synced = True
    cleanup.tick()
    assert remaining(store) == [synced_old[1]["id"], unsynced_old[0]["id"], recent[0]["id"]]
    assert IndexReader(store.data_dir).last_cleanup_run()["reason"] == "age"


def test_age_expiry_deletes_only_from_the_oldest_end_of_the_capture_order(store, photo):
    now = datetime.datetime(2026, 11, 22, 12, tzinfo=datetime.UTC)
    unknown = fill(store, photo, 2, ManualClock(now - datetime.timedelta(days=50), clock_synced=False))
    old = fill(store, photo, 3, ManualClock(now - datetime.timedelta(days=40)))
    # A clock that was years ahead, then years behind: all "synchronised" as the kernel said.
    future = fill(store, photo, 2, ManualClock(now + datetime.timedelta(days=3650)))
    past = fill(store, photo, 3, ManualClock(now - datetime.timedelta(days=3650)))
    recent = fill(store, photo, 2, ManualClock(now - datetime.timedelta(hours=1)))
    disk = FakeDisk(store, total=100 * len(photo), base_free=90 * len(photo))
    policy = Policy(**vars(BARE) | {"max_capture_age_days": 30})
    cleanup = Cleanup(
        store, policy, disk_usage=disk, clock=ManualClock(now), monotonic=Ticker(), interval_s=0
    )
    assert cleanup.plan()["count"] == 5
    cleanup.tick()
    # The old ones go, and with them those of unknown time taken before them; the ones stamped
    # 10 years ago stay, because a capture taken before them (stamped in the future) is kept.
    assert remaining(store) == [r["id"] for r in future + past + recent]
    store.set_protected(future[0]["id"], True)
    store.set_protected(future[1]["id"], True)  # protected: never deleted, and not in the walk
    cleanup.tick()
    assert remaining(store) == [r["id"] for r in future + recent]
    assert {r["id"] for r in unknown + old}.isdisjoint(remaining(store))


def test_a_card_filled_by_something_else_is_not_fed_with_photos(store, photo, caplog):
    disk = CardDisk(store, total=1000 * len(photo), base_free=900 * len(photo))  # 90 % free
    ticker = Ticker()
    policy = Policy(**vars(BARE) | {"start_free_percent": 20, "stop_free_percent": 30})
    cleanup = Cleanup(store, policy, disk_usage=disk, monotonic=ticker, interval_s=60, clock=ManualClock())
    cleanup.tick()  # plenty free: the ledger starts here
    rows = fill(store, photo, 10)
    disk.base_free -= 790 * len(photo)  # another process writes 79 % of the card
    for _ in range(3):
        ticker.now += 60
        cleanup.tick()
    assert remaining(store) == [r["id"] for r in rows]  # not one photo for the other writer
    reason = cleanup.capture_pause()
    assert reason and "something else is filling the card" in reason and cleanup.state == "paused"
    assert cleanup.status().reason == reason
    assert caplog.text.count("something else is filling the card") == 1
    disk.base_free += 790 * len(photo)  # whoever it was took it away again
    ticker.now += 60
    cleanup.tick()
    assert cleanup.capture_pause() is None and cleanup.state == "ok"


def test_beside_another_writer_cleanup_frees_what_the_appliance_alone_would_have_needed(tmp_path, photo):
    def run(data_dir, others: int) -> tuple[int, str | None]:
        store = CaptureStore(data_dir)
        disk = CardDisk(store, total=4000 * len(photo), base_free=2000 * len(photo))  # 50 % free
        ticker = Ticker()
        policy = Policy(**vars(BARE) | {"start_free_percent": 20, "stop_free_percent": 30})
        cleanup = Cleanup(
            store, policy, disk_usage=disk, monotonic=ticker, interval_s=60, clock=ManualClock()
        )
        cleanup.tick()
        fill(store, photo, 1300)  # alone, these take it below the start (20 %)
        disk.base_free -= others * len(photo)
        ticker.now += 60
        cleanup.tick()
        while cleanup.state == "cleaning":
            cleanup.tick()
        deleted, pause = 1300 - len(remaining(store)), cleanup.capture_pause()
        store.close()
        return deleted, pause

    alone, _ = run(tmp_path / "alone", 0)
    beside, pause = run(tmp_path / "beside", 400)  # something else writes 10 % of the card too
    # What the appliance alone would have freed, and not a photo more for the other writer's 10 %.
    assert 400 < alone < 1300 and abs(beside - alone) <= 1
    assert "something else is filling the card" in pause


def test_the_interval_is_monotonic_whatever_the_wall_clock_does(store, photo):
    fill(store, photo, 3)
    disk = FakeDisk(store, total=100 * len(photo), base_free=60 * len(photo))
    clock, ticker = ManualClock(), Ticker()
    checks = []
    cleanup = Cleanup(store, BARE, disk_usage=disk, clock=clock, monotonic=ticker, interval_s=60)
    cleanup._decide = lambda original=cleanup._decide: (checks.append(1), original())[1]
    cleanup.tick()
    for jump in (10 * 365, -20 * 365):  # years ahead, years back
        clock.wall += datetime.timedelta(days=jump)
        cleanup.tick()
    assert len(checks) == 1
    ticker.now += 60
    cleanup.tick()
    assert len(checks) == 2


def test_orphan_temporary_files_older_than_an_hour_are_removed(store, photo):
    (store.data_dir / "media" / "00").mkdir()
    old = store.data_dir / "media" / "00" / f".{'00' * 16}.jpg.tmp"
    new = store.data_dir / "media" / "00" / f".{'01' * 16}.jpg.tmp"
    for path in (old, new):
        path.write_bytes(b"half")
    os.utime(old, (time.time() - 7200, time.time() - 7200))
    disk = FakeDisk(store, total=100, base_free=90)
    Cleanup(store, BARE, disk_usage=disk).tick()  # the first check looks at shard 00
    assert not old.exists() and new.exists()


def test_capture_pauses_on_a_real_full_card_and_cleanup_keeps_the_floor(tiny_fs, caplog):
    """The simulated appliance's loop on a real 2 MiB filesystem: cleanup keeps free space above
    the floor while capturing goes on; once only protected captures are left, capturing pauses,
    and it resumes when space comes back."""
    store = CaptureStore(tiny_fs)
    policy = Policy(start_free_percent=0, start_free_bytes=700_000, stop_free_percent=0,
                    stop_free_bytes=1_000_000, headroom_hours=0, capture_min_free_bytes=300_000)  # fmt: skip
    cleanup = Cleanup(store, policy, interval_s=0)
    loop = MainLoop(events=queue.Queue(), camera=SimulatedCamera(size_px=(640, 480)), store=store,
                    scheduler=schedule.Scheduler(), cleanup=cleanup,
                    settings=LoopSettings(1, 160, Identity("Raspberry Pi", "simulated")))  # fmt: skip
    free_after_each = []
    stored = []
    for _ in range(120):  # about 3 MB of photos through a 2 MiB card
        row = loop.capture(TriggerEvent("motion", time.monotonic()))
        stored += [row] if row else []
        free_after_each.append(shutil.disk_usage(tiny_fs).free)  # before cleanup makes room again
        cleanup.tick()
    assert min(free_after_each) >= policy.capture_min_free_bytes
    assert IndexReader(tiny_fs).last_cleanup_run()["deleted"] > 0
    assert len(stored) == 120  # capturing never stopped: cleanup made room in time

    for row in IndexReader(tiny_fs).latest(1000):
        store.set_protected(row["id"], True)
    kept = {r["id"] for r in IndexReader(tiny_fs).latest(1000)}
    paused_at = None
    for i in range(60):  # the user keeps every new capture too
        row = loop.capture(TriggerEvent("motion", time.monotonic()))
        if row is None:
            paused_at = i
            break
        store.set_protected(row["id"], True)
        kept.add(row["id"])
        cleanup.tick()
    assert paused_at is not None and cleanup.state == "paused"
    assert shutil.disk_usage(tiny_fs).free >= policy.capture_min_free_bytes
    assert kept <= {r["id"] for r in IndexReader(tiny_fs).latest(1000)}  # every protected one

    for capture_id in sorted(kept)[: len(kept) // 2]:  # the user lets half of them go
        store.set_protected(capture_id, False)
    cleanup.tick()
    assert cleanup.state != "paused"  # the check made room and lifted the pause by itself
    assert loop.capture(TriggerEvent("motion", time.monotonic())) is not None
    store.close()
    on_disk = sorted(p.name for p in (tiny_fs / "media").rglob("*.jpg"))
    assert on_disk == sorted(f"{r['id']}.jpg" for r in IndexReader(tiny_fs).latest(1000))


# The commands.


def test_cleanup_dry_run_prints_and_deletes_nothing_then_the_real_run_deletes(
    tmp_path, tiny_fs, photo, capsys
):
    store = CaptureStore(tiny_fs)
    rows = fill(store, photo, 4)  # 1.2 MB of photos: the 2 MiB filesystem is more than half full
    store.close()
    config = tmp_path / "appliance.toml"
    # Cleaning starts below 50 % free and stops at 90 %, which free space cannot reach while a
    # photo is left: everything unprotected must go.
    config.write_text(
        "cleanup_start_free_percent = 50\ncleanup_stop_free_percent = 90\nheadroom_hours = 0\n"
        "cleanup_start_free_bytes = 0\ncleanup_stop_free_bytes = 0\ncapture_min_free_bytes = 0\n"
    )
    args = ["cleanup", "--config", str(config), "--data-dir", str(tiny_fs)]
    assert main([*args, "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert f"would delete 4 captures, {4 * len(photo)} bytes" in out
    assert f"oldest: seq 1, {rows[0]['captured_at']}, {rows[0]['id']}" in out
    assert len(IndexReader(tiny_fs).latest(10)) == 4
    assert main(args) == 0
    assert "deleted 4 captures (space)" in capsys.readouterr().out
    assert IndexReader(tiny_fs).latest(10) == []


def test_protect_and_unprotect_by_id(tmp_path, photo, capsys):
    store = CaptureStore(tmp_path)
    rows = fill(store, photo, 2)
    store.close()
    assert main(["protect", rows[0]["id"], rows[1]["id"], "--data-dir", str(tmp_path)]) == 0
    assert [r["protected"] for r in IndexReader(tmp_path).latest(2)] == [1, 1]
    assert main(["unprotect", rows[1]["id"], "f" * 32, "--data-dir", str(tmp_path)]) == 1
    assert capsys.readouterr().out.splitlines()[-1] == f"{'f' * 32}: no such capture"
    assert IndexReader(tmp_path).get(rows[1]["id"])["protected"] == 0


def test_commands_refuse_while_a_writer_without_control_channel_holds_the_store(tmp_path, photo, capsys):
    store = CaptureStore(tmp_path)
    [row] = fill(store, photo, 1)
    assert main(["protect", row["id"], "--data-dir", str(tmp_path)]) == 1
    assert f"in use by process {os.getpid()}, which does not answer" in capsys.readouterr().err
    assert IndexReader(tmp_path).get(row["id"])["protected"] == 0
    store.close()


def test_stop_below_start_is_a_config_error(tmp_path):
    config = tmp_path / "appliance.toml"
    config.write_text("cleanup_start_free_bytes = 5\ncleanup_stop_free_bytes = 4\n")
    assert main(["cleanup", "--dry-run", "--config", str(config), "--data-dir", str(tmp_path)]) == 2


def test_files_that_cannot_be_deleted_stop_cleanup_instead_of_emptying_the_index(store, photo, faulty_disk,
                                                                                 caplog):  # fmt: skip
    rows = fill(store, photo, 30)
    disk = FakeDisk(store, total=100 * len(photo), base_free=32 * len(photo))  # 2 % free
    ticker = Ticker()
    policy = Policy(**vars(BARE) | {"start_free_percent": 10, "stop_free_percent": 20})
    cleanup = Cleanup(store, policy, disk_usage=disk, monotonic=ticker, interval_s=60)
    eperm = lambda step: OSError(errno.EPERM, os.strerror(errno.EPERM), step)  # noqa: E731
    with faulty_disk(lambda name, path: name == "unlink" and str(path).endswith(".jpg"), eperm):
        for _ in range(5):  # five checks, and ticks in between
            cleanup.tick()
            cleanup.tick()
            ticker.now += 60
    left = remaining(store)
    assert len(left) == 30 - 18  # one batch went (18 photos were asked for), then cleanup stopped
    assert "cannot be deleted" in cleanup.status().reason
    assert caplog.text.count("cannot be deleted now") == 1
    cleanup.tick()  # the card is writable again: the stuck files go, and cleanup goes on
    assert not store.in_flight().keys() - {i for i, r in store.in_flight().items() if r == "capture"}
    assert len(remaining(store)) < len(left) or disk(store.data_dir).free >= 0.2 * disk.total
    assert all(r["id"] in {x["id"] for x in rows} for r in IndexReader(store.data_dir).latest(20))


def test_an_age_backlog_over_several_ticks_is_one_run_and_not_a_space_run(store, photo, monkeypatch):
    monkeypatch.setattr("appliance.cleanup.FIRST_BATCH_SIZE", 2)
    monkeypatch.setattr("appliance.cleanup.TICK_BUDGET_S", 0.0)  # one batch per tick
    now = datetime.datetime(2026, 11, 22, 12, tzinfo=datetime.UTC)
    old = fill(store, photo, 6, ManualClock(now - datetime.timedelta(days=40)))
    recent = fill(store, photo, 4, ManualClock(now - datetime.timedelta(hours=1)))
    disk = FakeDisk(store, total=100 * len(photo), base_free=40 * len(photo))  # 30 % free
    policy = Policy(
        **vars(BARE) | {"start_free_percent": 20, "stop_free_percent": 60, "max_capture_age_days": 30}
    )
    cleanup = Cleanup(
        store, policy, disk_usage=disk, clock=ManualClock(now), monotonic=Ticker(), interval_s=60
    )
    for _ in range(5):
        cleanup.tick()
        assert cleanup.state == "ok"  # deleting old captures is not cleaning for space
    assert remaining(store) == [r["id"] for r in recent]
    runs = list(IndexReader(store.data_dir)._db()["cleanup_runs"].rows)
    assert [(r["reason"], r["deleted"]) for r in runs] == [("age", len(old))]


def test_a_pause_brings_the_next_check_forward_and_lifts_itself(store, photo):
    rows = fill(store, photo, 6)
    disk = FakeDisk(store, total=100 * len(photo), base_free=8 * len(photo))  # 2 photos free
    ticker = Ticker()
    policy = Policy(**vars(BARE) | {"start_free_percent": 1, "stop_free_percent": 10,
                                    "capture_min_free_bytes": 3 * len(photo)})  # fmt: skip
    cleanup = Cleanup(store, policy, disk_usage=disk, monotonic=ticker, interval_s=3600)
    store.set_protected(rows[0]["id"], True)
    cleanup._next_check = ticker.now + 3600  # the last check was just now
    assert cleanup.capture_pause() is not None and cleanup.state == "paused"
    cleanup.tick()  # not an hour later: now
    assert cleanup.state == "ok" and cleanup.capture_pause() is None
    assert rows[0]["id"] in remaining(store)


def test_a_card_filled_to_the_last_byte_by_something_else_is_cleaned(tiny_fs, monkeypatch):
    monkeypatch.setattr("appliance.store.writer.RESERVE_BYTES", 64 << 10)  # of a 2 MiB card
    store = CaptureStore(tiny_fs)
    clock = ManualClock()
    out = io.BytesIO()
    Image.new("RGB", (320, 240), (90, 140, 60)).save(out, "JPEG")
    for _ in range(10):
        store.add(out.getvalue(), None, timestamp=clock.now(), trigger="motion")
    policy = Policy(**vars(BARE) | {"start_free_percent": 10, "stop_free_percent": 20})
    cleanup = Cleanup(store, policy, monotonic=Ticker(), interval_s=0)
    cleanup.tick()  # plenty of room: the reserve is made
    store.checkpoint()  # so that the WAL has nothing to give back: only the reserve can help
    assert (tiny_fs / ".reserve").stat().st_size == 64 << 10
    with contextlib.suppress(OSError), open(tiny_fs / "other-program.bin", "wb", buffering=0) as f:
        while True:
            f.write(b"\0" * 4096)
            f.flush()
    assert shutil.disk_usage(tiny_fs).free < 8192
    cleanup.tick()
    assert len(IndexReader(tiny_fs).latest(20)) < 10  # it could delete: SQLite had room
    store.close()


@pytest.mark.parametrize(("since_boot_s", "hours_of_data"), [(7200.0, 1.0), (600.0, 1 / 6)])
def test_headroom_is_the_last_hour_of_this_boot_scaled_to_an_hour(store, photo, since_boot_s, hours_of_data):
    clock = ManualClock(boot_id="b" * 32, step_s=1.0)
    clock.since_boot_s = since_boot_s - 100  # ten captures in the last 100 s of this boot
    fill(store, photo, 10, clock)
    other_boot = ManualClock(boot_id="a" * 32)
    other_boot.since_boot_s = since_boot_s - 50
    fill(store, photo, 5, other_boot)  # captured in another boot: not in the rate
    clock.since_boot_s = since_boot_s
    disk = FakeDisk(store, total=1000 * len(photo), base_free=900 * len(photo))
    policy = Policy(**vars(BARE) | {"headroom_hours": 2})
    cleanup = Cleanup(store, policy, disk_usage=disk, clock=clock)
    cleanup.tick()
    # 10 photos in the window, scaled to an hour (a window of at least 10 minutes), times 2 h.
    assert cleanup.status().headroom_bytes == int(10 * len(photo) / hours_of_data * 2)


def test_one_busy_file_does_not_stop_cleanup(store, photo, faulty_disk):
    rows = fill(store, photo, 20)
    busy = store.data_dir / rows[0]["media_path"]
    disk = FakeDisk(store, total=100 * len(photo), base_free=28 * len(photo))  # 8 % free
    ticker = Ticker()
    policy = Policy(**vars(BARE) | {"start_free_percent": 10, "stop_free_percent": 12})
    cleanup = Cleanup(store, policy, disk_usage=disk, monotonic=ticker, interval_s=60)
    ebusy = lambda step: OSError(errno.EBUSY, os.strerror(errno.EBUSY), step)  # noqa: E731
    with faulty_disk(lambda name, path: name == "unlink" and str(path) == str(busy), ebusy):
        cleanup.tick()
        first = len(remaining(store))
        disk.base_free -= 4 * len(photo)  # the card fills on
        ticker.now += 60
        cleanup.tick()
    assert first < 20 and len(remaining(store)) < first  # the second check deleted more
    assert busy.exists() and rows[0]["id"] in store.in_flight()


# With an offload target: what is safe goes first.

OFFLOAD = Policy(**vars(BARE) | {"start_free_percent": 16, "stop_free_percent": 20, "offload_target": True})
ON_STICK = datetime.datetime(2026, 6, 1, 12, tzinfo=datetime.UTC)


def offloaded(store, rows, indexes):
    for i in indexes:
        store.record_offloaded(rows[i]["id"], "usb", rows[i]["sha256"], ON_STICK)


@pytest.mark.parametrize(
    ("policy", "deleted"),
    [
        (OFFLOAD, [2, 5, 7, 0, 1]),  # the offloaded ones first, oldest first, then the oldest others
        (dataclasses.replace(OFFLOAD, prefer_offloaded=False), [0, 1, 2, 3, 4]),
        (dataclasses.replace(OFFLOAD, offload_target=False), [0, 1, 2, 3, 4]),  # no target: as before
    ],
    ids=["prefer-offloaded", "oldest-first", "no-target"],
)
def test_under_pressure_offloaded_captures_go_first(store, photo, policy, deleted):
    rows = fill(store, photo, 12)
    store.set_protected(rows[9]["id"], True)
    offloaded(store, rows, (2, 5, 7, 9))  # 9 is protected: never deleted, offloaded or not
    # 100 photos' room with 27 free before these 12: 15 % free, 5 photos to go to reach 20 %.
    disk = FakeDisk(store, total=100 * len(photo), base_free=27 * len(photo))
    Cleanup(store, policy, disk_usage=disk).tick()
    assert remaining(store) == [r["id"] for i, r in enumerate(rows) if i not in deleted]


def test_keeping_what_exists_nowhere_else_pauses_capturing_with_a_banner_for_a_stick(store, photo, caplog):
    rows = fill(store, photo, 8)
    offloaded(store, rows, (1, 4))
    disk = FakeDisk(store, total=100 * len(photo), base_free=9 * len(photo))  # 1 photo free
    ticker = Ticker()
    policy = dataclasses.replace(
        OFFLOAD, keep_unoffloaded=True, capture_min_free_bytes=4 * len(photo), stick_label="FIELD01"
    )
    cleanup = Cleanup(store, policy, disk_usage=disk, monotonic=ticker, interval_s=60)
    with caplog.at_level(logging.INFO):
        for _ in range(3):
            cleanup.tick()
            ticker.now += 61
            assert cleanup.capture_pause() is not None
    # The two offloaded ones went; none of the others, though 3 % free is far below the floor.
    assert remaining(store) == [r["id"] for i, r in enumerate(rows) if i not in (1, 4)]
    assert caplog.text.count("cleanup_keep_unoffloaded keeps them") == 1
    assert "only protected captures remain" not in caplog.text
    problems = (
        StatusCollector(IndexReader(store.data_dir), mode="simulation", started_monotonic=0, cleanup=cleanup)
        .collect()
        .problem_reasons()
    )
    assert problems["space"].startswith("capturing paused for space")
    assert "plug in a USB stick labelled FIELD01" in problems["space"]

    # A stick came: the copies are verified, cleanup deletes them, and capturing resumes.
    offloaded(store, rows, (0, 2, 3, 5))
    ticker.now += 61
    cleanup.tick()
    assert cleanup.capture_pause() is None and cleanup.state == "ok"
    assert remaining(store) == [rows[6]["id"], rows[7]["id"]]


def test_keeping_what_exists_nowhere_else_spares_it_from_age_expiry_too(store, photo):
    old = ManualClock(datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC))
    rows = fill(store, photo, 4, old)
    offloaded(store, rows, (0, 2))
    policy = dataclasses.replace(OFFLOAD, keep_unoffloaded=True, max_capture_age_days=30)
    now = ManualClock(datetime.datetime(2026, 6, 1, tzinfo=datetime.UTC))
    disk = FakeDisk(store, total=100 * len(photo), base_free=100 * len(photo))  # no pressure
    Cleanup(store, policy, disk_usage=disk, clock=now).tick()
    assert remaining(store) == [rows[1]["id"], rows[3]["id"]]


def test_the_offload_settings_reach_the_policy(tmp_path):
    from appliance.config import Config

    config = Config(cleanup_prefer_offloaded=False, cleanup_keep_unoffloaded=True)
    policy = Policy.from_config(config)
    assert (policy.prefer_offloaded, policy.keep_unoffloaded) == (False, True)
    assert policy.offload_target is bool(getattr(config, "offload_usb_path", ""))
