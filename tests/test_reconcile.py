"""Start-up reconciliation on real files: what a crash, a failing card or a damaged index leaves
behind, and what ``open_store`` and ``appliance check`` make of it."""

import datetime
import hashlib
import io
import json
import sqlite3

import pytest
import schedule
from PIL import Image

from appliance import exif, thumbnails
from appliance.cli import main
from appliance.exif import Identity
from appliance.reconcile import FullCheck, open_store
from appliance.store import CLEAN_MARKER, DB_NAME, CaptureStore, IndexReader, media_path, thumbnail_path
from hw.clock import ManualClock

TAKEN = datetime.datetime(2026, 6, 1, 21, 0, 5, 250000, tzinfo=datetime.UTC)


def own_photo(wall: datetime.datetime, size=(320, 240)) -> bytes:
    """A JPEG as the appliance writes it: rendered, then tagged with our EXIF."""
    out = io.BytesIO()
    Image.new("RGB", size, (90, 140, 60)).save(out, "JPEG")
    return exif.embed(out.getvalue(), exif.describe(wall, Identity("Raspberry Pi", "simulated")))


def populate(data_dir, n, clock=None):
    clock = clock or ManualClock()
    store = CaptureStore(data_dir)
    rows = []
    for _ in range(n):
        stamp = clock.now()
        jpeg = own_photo(stamp.wall)
        rows.append(store.add(jpeg, thumbnails.from_jpeg(jpeg, 160), timestamp=stamp, trigger="motion"))
    return store, rows


def plant(data_dir, capture_id, jpeg, thumbnail=None):
    """Files as a crash between their rename and the index commit leaves them."""
    (data_dir / media_path(capture_id)).parent.mkdir(exist_ok=True)
    (data_dir / media_path(capture_id)).write_bytes(jpeg)
    if thumbnail is not None:
        (data_dir / thumbnail_path(capture_id)).parent.mkdir(exist_ok=True)
        (data_dir / thumbnail_path(capture_id)).write_bytes(thumbnail)


def assert_index_matches_disk(data_dir):
    rows = IndexReader(data_dir).latest(10_000)
    with sqlite3.connect(data_dir / DB_NAME) as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    assert sorted(p.relative_to(data_dir).as_posix() for p in (data_dir / "media").rglob("*.jpg")) == sorted(
        r["media_path"] for r in rows
    )
    for row in rows:
        assert hashlib.sha256((data_dir / row["media_path"]).read_bytes()).hexdigest() == row["sha256"]
        with Image.open(data_dir / row["thumbnail_path"]) as thumb:
            thumb.load()
            assert thumb.format == "WEBP"
    assert sorted(p.relative_to(data_dir).as_posix() for p in (data_dir / "thumbnails").rglob("*")
                  if p.is_file()) == sorted(r["thumbnail_path"] for r in rows)  # fmt: skip
    assert not list(data_dir.rglob(".*.tmp"))
    assert [r["seq"] for r in rows] == sorted((r["seq"] for r in rows), reverse=True)
    return rows


def test_after_a_clean_shutdown_nothing_is_walked(tmp_path):
    store, _ = populate(tmp_path, 3)
    store.close()
    plant(tmp_path, "ab" * 16, own_photo(TAKEN))  # unknown to the index, as if copied in by hand

    store, report = open_store(tmp_path, thumbnail_max_px=160)
    store.close()
    assert report.scope == "none" and report.summary() == "last shutdown was clean; nothing to check"
    assert IndexReader(tmp_path).get("ab" * 16) is None

    store, report = open_store(tmp_path, thumbnail_max_px=160, full=True)
    store.close()
    assert report.scope == "full" and report.recovered == 1
    assert len(assert_index_matches_disk(tmp_path)) == 4


def test_a_full_check_repairs_every_disagreement_and_loses_nothing_indexed(tmp_path):
    """What a failing card, files copied by hand and crashes of older versions can leave."""
    store, rows = populate(tmp_path, 6)
    store.close()
    d = tmp_path
    shard = d / "media" / rows[0]["id"][:2]
    (shard / f".{rows[0]['id']}.jpg.tmp").write_bytes(b"half a photo")
    (d / "thumbnails" / "7f").mkdir(exist_ok=True)
    (d / "thumbnails" / "7f" / f".{'7f' * 16}.webp.tmp").write_bytes(b"")
    # Crashes between rename and commit: a photo with its thumbnail, and one without.
    with_thumb, without_thumb = "c0" * 16, "c1" * 16
    plant(d, with_thumb, own_photo(TAKEN), thumbnails.from_jpeg(own_photo(TAKEN), 160))
    plant(d, without_thumb, own_photo(TAKEN - datetime.timedelta(hours=1)))
    # A failing card: a photo gone, a photo truncated, a thumbnail gone, a thumbnail zeroed.
    (d / rows[1]["media_path"]).unlink()
    truncated = (d / rows[2]["media_path"]).read_bytes()[:500]
    (d / rows[2]["media_path"]).write_bytes(truncated)
    (d / rows[3]["thumbnail_path"]).unlink()
    zeroed = d / rows[4]["thumbnail_path"]
    zeroed.write_bytes(bytes(zeroed.stat().st_size))
    plant(d, "d0" * 16, b"", thumbnails.from_jpeg(own_photo(TAKEN), 160))
    (d / media_path("d0" * 16)).unlink()  # a thumbnail of nothing
    (shard / "notes.txt").write_text("the user's own file")

    store, report = open_store(d, thumbnail_max_px=160, full=True)
    store.close()

    assert report.scope == "full"
    assert (report.temp_removed, report.recovered, report.rows_dropped, report.damaged) == (2, 2, 1, 1)
    # Re-made: the deleted and the zeroed one, and the recovered photo's that had none.  Removed: the
    # one of no photo, and those of the two dropped rows.
    assert (report.thumbnails_remade, report.thumbnails_removed) == (3, 3)
    assert report.stray == [f"media/{rows[0]['id'][:2]}/notes.txt"]
    assert (shard / "notes.txt").exists()
    assert (d / "damaged" / f"{rows[2]['id']}.jpg").read_bytes() == truncated

    indexed = {r["id"]: r for r in assert_index_matches_disk(d)}
    assert set(indexed) == {rows[i]["id"] for i in (0, 3, 4, 5)} | {with_thumb, without_thumb}
    for capture_id in (with_thumb, without_thumb):
        row = indexed[capture_id]
        assert (row["recovered"], row["trigger"], row["clock_synced"]) == (1, "unknown", 0)
    # Recovered after every indexed capture, in the order their EXIF says they were taken.
    assert [indexed[without_thumb]["seq"], indexed[with_thumb]["seq"]] == [7, 8]
    assert datetime.datetime.fromisoformat(indexed[with_thumb]["captured_at"]) == TAKEN

    store, report = open_store(d, thumbnail_max_px=160)  # closed cleanly this time
    store.close()
    assert report.scope == "none"


def test_a_database_that_is_not_a_database_is_set_aside_and_rebuilt_from_the_photos(tmp_path):
    store, rows = populate(tmp_path, 4)
    store.close()
    db_file = tmp_path / DB_NAME
    garbage = b"\xde\xad" * 50 + db_file.read_bytes()[100:]
    db_file.write_bytes(garbage)

    store, report = open_store(tmp_path, thumbnail_max_px=160)
    store.close()

    assert report.database_set_aside == str(tmp_path / "damaged" / DB_NAME)
    assert (tmp_path / "damaged" / DB_NAME).read_bytes() == garbage  # kept exactly as found
    assert (report.rows_salvaged, report.recovered) == (0, 4)
    assert {r["id"] for r in assert_index_matches_disk(tmp_path)} == {r["id"] for r in rows}


def test_a_damaged_index_page_keeps_every_readable_row_with_its_protection(tmp_path):
    store, rows = populate(tmp_path, 6)
    store.set_protected(rows[1]["id"], True)
    page_size = store.db.execute("PRAGMA page_size").fetchone()[0]
    [root] = store.db.execute(
        "SELECT rootpage FROM sqlite_master WHERE name = 'idx_captures_captured_at'"
    ).fetchone()
    store.close()
    with open(tmp_path / DB_NAME, "r+b") as f:  # as a card's bad block would
        f.seek((root - 1) * page_size)
        f.write(b"\xff" * page_size)

    # After a clean shutdown only a full check (appliance check) reads every page.
    store, report = open_store(tmp_path, thumbnail_max_px=160, full=True)
    store.close()

    assert report.database_set_aside and (report.rows_salvaged, report.recovered) == (6, 0)
    indexed = {r["id"]: r for r in assert_index_matches_disk(tmp_path)}
    assert [indexed[r["id"]]["seq"] for r in rows] == [1, 2, 3, 4, 5, 6]
    assert [indexed[r["id"]]["protected"] for r in rows] == [0, 1, 0, 0, 0, 0]
    # The next capture continues the sequence.
    store = CaptureStore(tmp_path)
    jpeg = own_photo(TAKEN)
    assert store.add(jpeg, None, timestamp=ManualClock().now(), trigger="button")["seq"] == 7
    store.close()


def test_appliance_check_prints_a_table_and_exits_0_1_or_2(tmp_path, capsys):
    store, rows = populate(tmp_path / "data", 2)
    store.close()
    assert main(["check", "--data-dir", str(tmp_path / "data")]) == 0
    assert "ok       capture store  2 captures; full check in" in capsys.readouterr().out

    (tmp_path / "data" / rows[0]["thumbnail_path"]).unlink()
    assert main(["check", "--data-dir", str(tmp_path / "data")]) == 1
    assert "warning  capture store  2 captures; full check in" in capsys.readouterr().out

    with CaptureStoreOpen(tmp_path / "data"):
        assert main(["check", "--data-dir", str(tmp_path / "data")]) == 2
        assert "fatal    capture store  " in capsys.readouterr().out

    (tmp_path / "file").write_text("")
    assert main(["check", "--data-dir", str(tmp_path / "file")]) == 2
    assert "fatal    data_dir" in capsys.readouterr().out


class CaptureStoreOpen:
    """A running appliance, as far as the data directory's lock is concerned."""

    def __init__(self, data_dir):
        self.data_dir = data_dir

    def __enter__(self):
        self.store = CaptureStore(self.data_dir)

    def __exit__(self, *exc):
        self.store.close()


def test_a_marker_we_cannot_read_means_a_full_check(tmp_path):
    store, _ = populate(tmp_path, 1)
    store.close()
    (tmp_path / CLEAN_MARKER).write_text("{not json")
    store, report = open_store(tmp_path, thumbnail_max_px=160)
    store.close()
    assert report.scope == "interrupted"
    assert json.loads((tmp_path / CLEAN_MARKER).read_text()) == {"last_seq": 1}


def test_open_store_refuses_a_newer_database(tmp_path):
    store, _ = populate(tmp_path, 1)
    store.db["_sqlite_migrations"].insert(
        {"migration_set": "appliance", "name": "m099_from_the_future", "applied_at": "2027-01-01"}
    )
    store.close(clean=False)
    with pytest.raises(Exception, match="newer version"):
        open_store(tmp_path, thumbnail_max_px=160)
    assert not (tmp_path / "damaged").exists()  # newer is not damaged: nothing moved


class PowerCut(BaseException):
    """Raised at a write step, it unwinds like the process dying there: no handler of ours runs."""


def test_a_crash_at_any_step_of_a_capture_is_repaired_without_walking_the_photos(tmp_path, faulty_disk):
    clock = ManualClock(TAKEN)
    store, rows = populate(tmp_path, 2, clock)
    jpeg = own_photo(TAKEN)
    thumbnail = thumbnails.from_jpeg(jpeg, 160)
    with faulty_disk() as disk:
        store.add(jpeg, thumbnail, timestamp=clock.now(), trigger="button")
    steps = len(disk.steps)
    store.close()
    for crash_at in range(1, steps + 1):
        store = CaptureStore(tmp_path)
        with faulty_disk(crash_at, PowerCut), pytest.raises(PowerCut):
            store.add(jpeg, thumbnail, timestamp=clock.now(), trigger="button")
        store.close(clean=False)  # what the crash leaves: no clean-shutdown marker

        store, report = open_store(tmp_path, thumbnail_max_px=160)
        store.close()
        assert report.scope == "interrupted"
        assert report.stray == [] and report.damaged == report.rows_dropped == 0
        rows_now = assert_index_matches_disk(tmp_path)
        assert {r["id"] for r in rows} <= {r["id"] for r in rows_now}
    # Every crash after the photo's rename left a photo that is now indexed as recovered.
    recovered = [r for r in IndexReader(tmp_path).latest(100) if r["recovered"]]
    assert 0 < len(recovered) < steps


@pytest.mark.parametrize(("crash_at", "unfinished"), [(1, 2), (2, 2), (3, 1), (4, 1)])
def test_a_crash_at_any_step_of_a_deletion_batch_is_finished_at_start_up(
    tmp_path, faulty_disk, crash_at, unfinished
):
    store, rows = populate(tmp_path, 4)
    with faulty_disk(crash_at, PowerCut) as disk, pytest.raises(PowerCut):
        store.delete(store.oldest_unprotected(2))  # unlinks: photo, thumbnail, photo, thumbnail
    assert disk.steps == ["unlink"] * crash_at
    store.close(clean=False)

    store, report = open_store(tmp_path, thumbnail_max_px=160)
    store.close()
    assert report.scope == "interrupted"
    assert (report.deletions_finished, report.recovered) == (unfinished, 0)
    assert [r["id"] for r in assert_index_matches_disk(tmp_path)] == [rows[3]["id"], rows[2]["id"]]


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

    store, report = open_store(tmp_path, thumbnail_max_px=160)
    assert report.scope == "interrupted" and report.full_check_due
    check, steps, added = FullCheck(store, report, 160), 0, []
    while check.step(budget_s=0) is not schedule.CancelJob:  # one shard per step
        steps += 1
        if steps % 16 == 0:  # captures go on meanwhile, into shards checked or not yet
            jpeg = own_photo(TAKEN)
            added.append(
                store.add(jpeg, thumbnails.from_jpeg(jpeg, 160), timestamp=clock.now(), trigger="motion")
            )
    store.close()

    assert steps == 255 and report.full_check_progress == 1
    assert (report.thumbnails_remade, report.rows_dropped, report.recovered) == (3, 1, 0)
    indexed = {r["id"] for r in assert_index_matches_disk(tmp_path)}
    assert indexed == {r["id"] for r in rows[:3] + rows[4:] + added}


def test_a_new_data_dir_needs_no_check_but_photos_without_an_index_are_indexed_first(tmp_path):
    store, report = open_store(tmp_path / "new", thumbnail_max_px=160)
    store.close()
    assert report.scope == "none" and not report.full_check_due

    store, rows = populate(tmp_path / "lost", 3)
    store.close()
    for name in (DB_NAME, CLEAN_MARKER):
        (tmp_path / "lost" / name).unlink()  # the index deleted by hand, the photos kept
    store, report = open_store(tmp_path / "lost", thumbnail_max_px=160)
    store.close()
    assert report.scope == "full" and report.recovered == 3
    assert {r["id"] for r in assert_index_matches_disk(tmp_path / "lost")} == {r["id"] for r in rows}
