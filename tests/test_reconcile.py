"""Start-up reconciliation on real files: what a crash, a failing card or a damaged index leaves
behind, and what ``open_store`` and ``appliance check`` make of it."""

import datetime
import errno
import hashlib
import io
import json
import os
import re
import shutil
import sqlite3

import pytest
import sqlite_utils
from PIL import Image

from appliance import exif, thumbnails
from appliance.cli import main
from appliance.exc import StoreError
from appliance.exif import Identity
from appliance.reconcile import FullCheck, open_store
from appliance.store import (
    CLEAN_MARKER,
    DB_NAME,
    CaptureStore,
    CorruptDatabaseError,
    IndexReader,
    NewerDatabaseError,
    _plausible,
    media_path,
    thumbnail_path,
)
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
    check = ["check", "--simulate", "--data-dir", str(tmp_path / "data")]
    # An unsynchronised clock (as in some containers) is only a note in simulation.
    assert main(check) == 0
    out = capsys.readouterr().out
    assert "ok       capture store  2 captures; full check in" in out
    assert re.search(r"^(ok|note)\s+clock\s+", out, re.M) and re.search(
        r"^ok\s+camera\s+simulated", out, re.M
    )

    (tmp_path / "data" / rows[0]["thumbnail_path"]).unlink()
    assert main(check) == 1
    assert "warning  capture store  2 captures; full check in" in capsys.readouterr().out

    with CaptureStoreOpen(tmp_path / "data"):
        assert main(check) == 2
        assert "fatal    capture store  " in capsys.readouterr().out

    (tmp_path / "file").write_text("")
    assert main(["check", "--simulate", "--data-dir", str(tmp_path / "file")]) == 2
    assert "data_dir: " in capsys.readouterr().err  # refused with the config (tests/test_cli_errors.py)

    assert main(["check", "--data-dir", str(tmp_path / "data")]) == 2  # hardware: no camera here
    assert re.search(r"^fatal\s+camera\s+picamera2 is not installed", capsys.readouterr().out, re.M)


class CaptureStoreOpen:
    """A running appliance, as far as the data directory's lock is concerned."""

    def __init__(self, data_dir):
        self.data_dir = data_dir

    def __enter__(self):
        self.store = CaptureStore(self.data_dir)

    def __exit__(self, *exc):
        self.store.close()


def test_a_marker_we_cannot_read_counts_as_an_unclean_shutdown(tmp_path):
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
    with pytest.raises(NewerDatabaseError, match="newer version"):
        open_store(tmp_path, thumbnail_max_px=160)
    assert not (tmp_path / "damaged").exists()  # newer is not damaged: nothing moved


class PowerCut(BaseException):
    """Raised at a file-system step, it unwinds like the process dying there: no handler of ours
    runs (they catch ``Exception``), so temporary files stay.  Unlike a real power cut, nothing
    already written is lost: that is SQLite's and the fsyncs' part, and the crash test's."""


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


@pytest.mark.parametrize(("crash_at", "unfinished"), [(1, 2), (2, 2), (3, 2), (4, 1)])
def test_a_crash_at_any_step_of_a_deletion_batch_is_finished_at_start_up(
    tmp_path, faulty_disk, crash_at, unfinished
):
    store, rows = populate(tmp_path, 4)
    with faulty_disk(("unlink", crash_at), PowerCut) as disk, pytest.raises(PowerCut):
        store.delete(store.oldest_unprotected(2))  # unlinks: photo, photo, thumbnail, thumbnail
    assert disk.steps.count("unlink") == crash_at
    store.close(clean=False)

    store, report = open_store(tmp_path, thumbnail_max_px=160)
    store.close()
    assert report.scope == "interrupted"
    assert (report.deletions_finished, report.recovered) == (unfinished, 0)
    assert [r["id"] for r in assert_index_matches_disk(tmp_path)] == [rows[3]["id"], rows[2]["id"]]


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


def test_an_unreadable_photo_of_an_interrupted_capture_does_not_block_start_up(tmp_path, faulty_disk):
    store, _ = populate(tmp_path, 1)
    [reserved] = [i for i, reason in store.in_flight().items() if reason == "capture"]
    store.close(clean=False)
    photo = tmp_path / media_path(reserved)
    photo.parent.mkdir(exist_ok=True)
    photo.write_bytes(own_photo(TAKEN))
    eio = lambda step: OSError(errno.EIO, os.strerror(errno.EIO), step)  # noqa: E731
    with faulty_disk(lambda name, path: name == "open" and path == str(photo), eio):  # a bad block
        for _ in range(2):  # and again at the next start, even after a clean stop, until it can be read
            store, report = open_store(tmp_path, thumbnail_max_px=160)
            assert report.scope == "interrupted" and report.unreadable == [reserved]
            assert reserved in store.in_flight()
            store.close()
        assert main(["check", "--simulate", "--data-dir", str(tmp_path)]) == 1  # a warning: unreadable
    store, report = open_store(tmp_path, thumbnail_max_px=160)  # the card reads it again
    store.close()
    assert report.recovered == 1 and not report.unreadable


def test_deletions_are_made_durable_before_their_ids_leave_in_flight(tmp_path, faulty_disk):
    store, rows = populate(tmp_path, 2)
    with faulty_disk() as disk:
        store.delete(store.oldest_unprotected(2))
    calls = list(zip(disk.steps, disk.paths, strict=True))
    unlinked = [path for step, path in calls if step == "unlink"]
    assert sorted(unlinked) == sorted(
        str(tmp_path / r[k]) for r in rows for k in ("media_path", "thumbnail_path")
    )
    for path in unlinked:  # each folder is fsynced after its last unlink
        last = max(i for i, call in enumerate(calls) if call == ("unlink", path))
        assert ("fsync", os.path.dirname(path)) in calls[last:]
    assert store.in_flight().keys() == {i for i, reason in store.in_flight().items() if reason == "capture"}
    store.close()


def damage_page(data_dir, needle: bytes, unless: bytes = b"\0no such bytes\0") -> None:
    """Overwrite with 0xff the first database page holding ``needle`` but not ``unless``, as a
    card's bad block would."""
    db_file = data_dir / DB_NAME
    with sqlite3.connect(db_file) as db:
        page_size = db.execute("PRAGMA page_size").fetchone()[0]
    db.close()
    data = bytearray(db_file.read_bytes())
    pages = (data[i : i + page_size] for i in range(0, len(data), page_size))
    start = next(i for i, page in enumerate(pages) if needle in page and unless not in page) * page_size
    data[start : start + page_size] = b"\xff" * page_size
    db_file.write_bytes(bytes(data))


def test_salvage_reads_around_a_damaged_table_page_and_keeps_seq_and_protection(tmp_path):
    store, rows = populate(tmp_path, 60)
    for row in rows[::7]:
        store.set_protected(row["id"], True)
    store.close(clean=False)  # a crash: the next start runs quick_check
    damage_page(tmp_path, media_path(rows[30]["id"]).encode())  # a leaf of the captures table

    store, report = open_store(tmp_path, thumbnail_max_px=160)
    store.close()
    assert report.database_set_aside and report.scope == "full"
    assert 40 <= report.rows_salvaged < 60  # all but the rows on that one page
    assert report.recovered == 60 - report.rows_salvaged
    indexed = {r["id"]: r for r in assert_index_matches_disk(tmp_path)}
    salvaged = [r for r in rows if not indexed[r["id"]]["recovered"]]
    assert all(indexed[r["id"]]["seq"] == r["seq"] for r in salvaged)
    assert all(indexed[r["id"]]["protected"] == (i % 7 == 0) for i, r in enumerate(rows) if r in salvaged)
    assert min(r["seq"] for r in indexed.values() if r["recovered"]) > 60  # after every salvaged one


def test_a_rebuilt_index_never_gives_a_seq_again_nor_revives_a_deletion(tmp_path, faulty_disk):
    store, rows = populate(tmp_path, 5)
    store.delete(store.oldest_unprotected(2))
    with faulty_disk(1, PowerCut), pytest.raises(PowerCut):  # the deletion of the third: interrupted
        store.delete(store.oldest_unprotected(1))
    store.close(clean=False)
    damage_page(tmp_path, media_path(rows[4]["id"]).encode())  # the leaf with the last rows

    store, report = open_store(tmp_path, thumbnail_max_px=160)
    assert report.database_set_aside and report.deletions_finished == 1
    jpeg = own_photo(TAKEN)
    stored = store.add(jpeg, thumbnails.from_jpeg(jpeg, 160), timestamp=ManualClock().now(), trigger="motion")
    store.close()
    indexed = assert_index_matches_disk(tmp_path)
    assert rows[2]["id"] not in {r["id"] for r in indexed}
    assert {r["id"] for r in indexed} == {rows[3]["id"], rows[4]["id"], stored["id"]}
    assert min(r["seq"] for r in indexed) > 5  # the recovered ones too: nothing below last_seq


def die_before_the_rebuilt_index_is_in_place(data_dir, faulty_disk):
    """Start, find the index damaged, rebuild it, and die at the last rename, which would have put
    the new index in place; a rehearsal on a copy counts the renames."""
    rehearsal = data_dir.with_name(data_dir.name + "-rehearsal")
    shutil.copytree(data_dir, rehearsal)
    with faulty_disk() as disk:
        store, _ = open_store(rehearsal, thumbnail_max_px=160)
    store.close()  # outside: the clean-shutdown marker's rename is not part of the rebuild
    with faulty_disk(("rename", disk.steps.count("rename")), PowerCut), pytest.raises(PowerCut):
        open_store(data_dir, thumbnail_max_px=160)


def test_a_crash_during_a_rebuild_leaves_the_rebuilt_index_to_be_put_in_place(tmp_path, faulty_disk):
    store, rows = populate(tmp_path, 3)
    store.set_protected(rows[1]["id"], True)
    store.close(clean=False)
    # A page of the index on captured_at: quick_check fails, every row can still be read.
    damage_page(tmp_path, rows[0]["captured_at"].encode(), unless=b"media/")
    die_before_the_rebuilt_index_is_in_place(tmp_path, faulty_disk)
    assert not (tmp_path / DB_NAME).exists() and (tmp_path / (DB_NAME + ".new")).exists()

    store, report = open_store(tmp_path, thumbnail_max_px=160)
    store.close()
    indexed = {r["id"]: r for r in assert_index_matches_disk(tmp_path)}
    assert [indexed[r["id"]]["protected"] for r in rows] == [0, 1, 0]
    assert not any(r["recovered"] for r in indexed.values())


def test_quick_check_that_cannot_run_is_not_taken_for_damage(tmp_path):
    store, _ = populate(tmp_path, 1)
    store.db.conn.set_progress_handler(lambda: 1, 1)  # every statement is interrupted
    with pytest.raises(StoreError, match="quick_check could not run") as raised:
        store.quick_check()
    assert not isinstance(raised.value, CorruptDatabaseError)
    store.db.conn.set_progress_handler(None, 1)
    store.close()
    assert not (tmp_path / "damaged").exists()


def test_a_thumbnail_made_before_a_crash_is_linked_to_its_row(tmp_path):
    store, rows = populate(tmp_path, 1)
    store.db.execute("UPDATE captures SET thumbnail_path = NULL")
    store.db.conn.commit()
    store.close()
    store, report = open_store(tmp_path, thumbnail_max_px=160, full=True)
    store.close()
    assert report.thumbnails_remade == 0
    assert IndexReader(tmp_path).get(rows[0]["id"])["thumbnail_path"] == rows[0]["thumbnail_path"]
    assert "recovered" not in sqlite_utils.Database(tmp_path / DB_NAME).table_names()


def test_damage_found_by_any_write_stops_and_leads_to_a_rebuild(tmp_path):
    store, rows = populate(tmp_path, 3)
    store.close()
    store = CaptureStore(tmp_path)  # a clean start: quick_check does not run
    [root] = store.db.execute("SELECT rootpage FROM sqlite_master WHERE name = 'in_flight'").fetchone()
    page_size = store.db.execute("PRAGMA page_size").fetchone()[0]
    store.db.execute("PRAGMA shrink_memory")
    with open(store.db_path, "r+b") as f:
        f.seek((root - 1) * page_size)
        f.write(b"\xff" * page_size)
    with pytest.raises(CorruptDatabaseError):  # reserving the next capture's id finds it
        store.add(own_photo(TAKEN), None, timestamp=ManualClock().now(), trigger="button")
    store.close()
    assert not (tmp_path / CLEAN_MARKER).exists()

    store, report = open_store(tmp_path, thumbnail_max_px=160)
    store.close()
    assert report.database_set_aside and report.scope == "full"
    assert {r["id"] for r in assert_index_matches_disk(tmp_path)} == {r["id"] for r in rows}


def test_a_file_too_large_to_be_a_photo_is_set_aside_unread(tmp_path):
    store, rows = populate(tmp_path, 2)
    store.close(clean=False)
    huge = tmp_path / media_path("ab" * 16)
    huge.parent.mkdir(exist_ok=True)
    with open(huge, "wb") as f:  # a sparse file: takes no room, would take 2 GiB of memory to read
        f.truncate(2 << 30)
    store, report = open_store(tmp_path, thumbnail_max_px=160, full=True)
    store.close()
    assert report.damaged == 1 and report.recovered == 0
    assert (tmp_path / "damaged" / huge.name).stat().st_size == 2 << 30
    assert {r["id"] for r in assert_index_matches_disk(tmp_path)} == {r["id"] for r in rows}


def test_a_crash_during_a_rebuild_after_a_clean_stop_still_checks_in_full(tmp_path, faulty_disk):
    store, rows = populate(tmp_path, 3)
    store.close()
    damage_page(tmp_path, b"SQLite format 3")  # the header: not a database any more
    die_before_the_rebuilt_index_is_in_place(tmp_path, faulty_disk)

    store, report = open_store(tmp_path, thumbnail_max_px=160)
    store.close()
    assert report.scope == "full" and report.recovered == 3
    assert {r["id"] for r in assert_index_matches_disk(tmp_path)} == {r["id"] for r in rows}


def test_an_index_emptied_behind_our_back_never_gives_a_seq_again(tmp_path):
    store, rows = populate(tmp_path, 3)
    store.close()
    (tmp_path / DB_NAME).write_bytes(b"")  # what some card failures and some tools leave

    store, report = open_store(tmp_path, thumbnail_max_px=160)
    assert report.full_check_due
    FullCheck(store, report, 160).run()
    new = store.add(own_photo(TAKEN), None, timestamp=ManualClock().now(), trigger="button")
    store.close()
    seqs = [r["seq"] for r in IndexReader(tmp_path).latest(10)]
    assert min(seqs) > 3 and new["seq"] == 7 and len(set(seqs)) == 4


@pytest.mark.parametrize(
    "damage",
    [{"captured_at": None}, {"seq": "7"}, {"id": "../../etc"}, {"media_path": "media/00/x.jpg"},
     {"trigger": None}, {"bytes": -1}, {"protected": 2}],
)  # fmt: skip
def test_salvaged_rows_that_are_not_whole_are_left_to_recovery(tmp_path, damage):
    store, rows = populate(tmp_path, 1)
    store.close()
    row = IndexReader(tmp_path).latest(1)[0]
    assert _plausible(row)
    assert not _plausible(row | damage)
