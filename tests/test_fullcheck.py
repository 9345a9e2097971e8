"""The full check (appliance/fullcheck.py): every photo compared with the index, in short steps
between captures, resuming after a restart and skipping what keeps failing."""

import errno
import os
import shutil

import pytest
import schedule

from appliance import thumbnails
from appliance.reconcile import FullCheck, Reconciliation, open_store
from appliance.store import (
    IndexReader,
)
from hw.clock import ManualClock
from tests.test_reconcile import TAKEN, PowerCut, assert_index_matches_disk, own_photo, plant, populate


def test_an_interrupted_full_check_is_due_again_at_the_next_start(tmp_path, faulty_disk):
    store, rows = populate(tmp_path, 3)
    store.close()
    (tmp_path / rows[0]["thumbnail_path"]).unlink()
    with faulty_disk("rename", PowerCut), pytest.raises(PowerCut):  # publishing that thumbnail
        open_store(tmp_path, thumbnail_max_px=160, full=True)

    store, report = open_store(tmp_path, thumbnail_max_px=160)
    assert report.scope == "interrupted" and report.full_check_due
    FullCheck(store, report, 160).run()
    store.close()
    assert report.thumbnails_remade == 1 and report.full_check_progress == 1
    assert report.summary().startswith("full check in")
    assert_index_matches_disk(tmp_path)
    store, report = open_store(tmp_path, thumbnail_max_px=160)
    store.close()
    assert report.scope == "none" and not report.full_check_due


def test_a_full_check_in_steps_between_captures_repairs_without_disturbing_them(tmp_path):
    clock = ManualClock(TAKEN)
    store, rows = populate(tmp_path, 20, clock)
    store.close(clean=False)
    for row in rows[:3]:  # what a failing card can do to captures taken long before the crash
        (tmp_path / row["thumbnail_path"]).unlink()
    (tmp_path / rows[3]["media_path"]).unlink()
    truncated = tmp_path / rows[4]["media_path"]
    truncated.write_bytes(truncated.read_bytes()[:300])

    store, report = open_store(tmp_path, thumbnail_max_px=160)
    assert report.scope == "interrupted" and report.full_check_due
    check, steps, added = FullCheck(store, report, 160), 0, []
    while check.step(budget_s=0) is not schedule.CancelJob:  # one finding (or shard) per step
        steps += 1
        if steps % 16 == 0:  # captures go on meanwhile, into shards checked or not yet
            jpeg = own_photo(TAKEN)
            added.append(
                store.add(jpeg, thumbnails.from_jpeg(jpeg, 160), timestamp=clock.now(), trigger="motion")
            )
    store.close()

    assert steps >= 256 and report.full_check_progress == 1  # 256 shards, then the finish
    assert (report.thumbnails_remade, report.rows_dropped, report.damaged, report.recovered) == (3, 1, 1, 0)
    indexed = {r["id"] for r in assert_index_matches_disk(tmp_path)}
    assert indexed == {r["id"] for r in rows[:3] + rows[5:] + added}
    assert (tmp_path / "damaged" / f"{rows[4]['id']}.jpg").stat().st_size == 300


def test_a_failing_finish_of_a_full_check_is_tried_again(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr("appliance.fullcheck.MAX_BACKOFF_S", 0.0)
    store, rows = populate(tmp_path, 2)
    plant(tmp_path, "ab" * 16, own_photo(TAKEN))
    check = FullCheck(store, report := Reconciliation(), 160)
    while check._next < 256:  # every shard looked at; the finish is next
        check.step(budget_s=0)
    store.db.conn.set_progress_handler(lambda: 1, 1)  # the finish is interrupted once
    assert check.step() is None
    assert "full check: interrupted; trying again in 0 s" in caplog.text
    store.db.conn.set_progress_handler(None, 1)
    while check.step() is not schedule.CancelJob:
        pass
    assert report.recovered == 1 and not store.full_check_pending
    store.close()
    assert len(assert_index_matches_disk(tmp_path)) == 3


def test_a_step_that_fails_loses_nothing_it_had_found(tmp_path, monkeypatch, faulty_disk, caplog):
    monkeypatch.setattr("appliance.fullcheck.MAX_BACKOFF_S", 0.0)
    store, rows = populate(tmp_path, 3)
    lost = {f"{i:02x}" + "c" * 30: own_photo(TAKEN) for i in range(0, 256, 8)}  # rows lost, no thumbnails
    for capture_id, jpeg in lost.items():
        plant(tmp_path, capture_id, jpeg)
    enospc = lambda step: OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), step)  # noqa: E731
    failed = []

    def fails(name, path):  # the card is full for a while, as the thumbnails of shard 40 are made
        if name == "rename" and f"/thumbnails/40/.40{'c' * 30}.webp.tmp" in path and len(failed) < 3:
            failed.append(path)
            return True
        return False

    check = FullCheck(store, report := Reconciliation(), 160)
    with faulty_disk(fails, enospc):
        with pytest.raises(OSError):  # appliance check: one step, from shard 00 on, fails at 40
            check.run()
        while check.step(budget_s=1.0) is not schedule.CancelJob:  # beside capturing: backs off
            pass
    store.close()
    assert len(failed) == 3 and "full check: [Errno 28] No space left on device" in caplog.text
    assert report.recovered == len(lost) and not report.unreadable
    indexed = {r["id"] for r in assert_index_matches_disk(tmp_path)}
    assert indexed == {r["id"] for r in rows} | lost.keys()


def test_a_folder_swapped_for_a_symlink_during_a_full_check_keeps_every_row(tmp_path):
    data = tmp_path / "data"
    store, rows = populate(data, 20)
    store.set_protected(rows[0]["id"], True)
    thumbnails_before = sorted(p.name for p in (data / "thumbnails").rglob("*.webp"))
    # After the layout was checked: the photos are moved to another disk, a symlink in their place.
    shutil.move(data / "media", tmp_path / "elsewhere")
    (data / "media").symlink_to(tmp_path / "elsewhere")
    with FullCheck(store, report := Reconciliation(), 160, restart=True) as check:
        check.run()
    assert store.full_check_pending and len(report.shards_skipped) == 256  # for the next start
    store.close()
    assert report.rows_dropped == 0 and report.thumbnails_removed == 0
    assert len(IndexReader(data).latest(100)) == 20
    assert sorted(p.name for p in (data / "thumbnails").rglob("*.webp")) == thumbnails_before


def test_a_folder_that_keeps_failing_is_skipped_alone_and_left_for_the_next_start(tmp_path, faulty_disk):
    store, rows = populate(tmp_path, 12)
    bad = rows[0]["id"][:2]
    other = next(r for r in rows if r["id"][:2] != bad)
    (tmp_path / other["thumbnail_path"]).unlink()
    eio = lambda step: OSError(errno.EIO, os.strerror(errno.EIO), step)  # noqa: E731
    fails = lambda name, path: name == "list" and str(path).endswith(f"media/{bad}")  # noqa: E731
    report = Reconciliation()
    with faulty_disk(fails, eio) as disk:
        check = FullCheck(store, report, 160)
        while not check.done:
            check.step(budget_s=0)  # the worker tries the shard again; the steps go on
    failed = [path for step, path in zip(disk.steps, disk.paths, strict=True) if fails(step, path)]
    assert len(failed) == 3  # the third failure gives up on the shard
    assert report.shards_skipped == [bad] and report.thumbnails_remade == 1  # the others went on
    assert report.summary().startswith("incomplete full check")
    assert store.full_check_pending
    store.close()
    store, report = open_store(tmp_path, thumbnail_max_px=160)
    assert report.full_check_due
    FullCheck(store, report, 160).run()
    store.close()
    assert not report.shards_skipped
    assert_index_matches_disk(tmp_path)
