import datetime
import errno
import hashlib
import os
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import sqlite_utils
from hypothesis import given
from hypothesis import strategies as st

from appliance.exc import StoreError
from appliance.store import (
    CLEAN_MARKER,
    DB_NAME,
    RECOVERED_COLUMNS,
    CaptureStore,
    IndexGoneError,
    IndexReader,
    NewerDatabaseError,
    capture_row,
    media_path,
    migrations,
    new_id,
    publish,
    shard_of,
    thumbnail_path,
)
from hw.clock import ManualClock

YEAR = datetime.timedelta(days=365)
# The columns a photo found without its row gets only once indexed, and those that differ.
# md5 (m013): hashed for a capture; NULL for a recovered photo, whose upload hashes it then.
NOT_RECOVERED = ("seq", "boot_id", "since_boot_s", "offloaded", "md5")
DIFFERENT = ("id", "media_path", "captured_at", "clock_synced", "trigger", "recovered",
             "capture_method", "event_id")  # fmt: skip


def test_add_writes_photo_thumbnail_and_row(store, photo, clock):
    stamp = clock.now()
    row = store.add(photo, b"RIFFwebp", timestamp=stamp, trigger="button", metadata={"ExposureTime": 1000})

    media = store.data_dir / row["media_path"]
    assert row["media_path"] == f"media/{row['id'][:2]}/{row['id']}.jpg"
    assert row["thumbnail_path"] == f"thumbnails/{row['id'][:2]}/{row['id']}.webp"
    assert media.read_bytes() == photo
    assert (store.data_dir / row["thumbnail_path"]).read_bytes() == b"RIFFwebp"
    stored = IndexReader(store.data_dir).get(row["id"])
    assert stored["sha256"] == hashlib.sha256(photo).hexdigest()
    assert (stored["width"], stored["height"], stored["bytes"]) == (2048, 1440, len(photo))
    assert stored["trigger"] == "button" and stored["clock_synced"] == 1 and stored["protected"] == 0
    assert stored["recovered"] == 0
    assert datetime.datetime.fromisoformat(stored["captured_at"]) == stamp.wall
    assert datetime.datetime.fromisoformat(stored["captured_at"]).utcoffset() == datetime.timedelta(0)
    assert (stored["boot_id"], stored["since_boot_s"]) == (stamp.boot_id, stamp.since_boot_s)


def test_seq_increases_and_survives_reopening(tmp_path, photo, clock):
    first = CaptureStore(tmp_path)
    seqs = [first.add(photo, None, timestamp=clock.now(), trigger="motion")["seq"] for _ in range(3)]
    first.close()
    second = CaptureStore(tmp_path)
    seqs.append(second.add(photo, None, timestamp=clock.now(), trigger="motion")["seq"])
    second.close()
    assert seqs == [1, 2, 3, 4]


def test_clock_jumps_of_ten_years_keep_order_ids_and_names_apart(tmp_path, photo):
    """The wall clock of a Pi without a real-time clock: off by years, then set by NTP, then
    set back by hand.  seq keeps capture order; ids and file names never collide."""
    clock = ManualClock(clock_synced=False, step_s=0)  # every capture at the same instant, too
    store = CaptureStore(tmp_path)
    rows = []
    for jump in (0 * YEAR, -10 * YEAR, 0 * YEAR, +20 * YEAR, 0 * YEAR, -10 * YEAR):
        clock.wall += jump
        clock.clock_synced = jump > datetime.timedelta(0)
        rows.append(store.add(photo, b"RIFFwebp", timestamp=clock.now(), trigger="button"))
    store.close()
    latest = IndexReader(tmp_path).latest(10)[::-1]
    assert [r["id"] for r in latest] == [r["id"] for r in rows]
    assert [r["seq"] for r in latest] == [1, 2, 3, 4, 5, 6]
    assert len({r["id"] for r in rows}) == len({r["media_path"] for r in rows}) == 6
    years = [datetime.datetime.fromisoformat(r["captured_at"]).year for r in latest]
    assert years == [2026, 2016, 2016, 2036, 2036, 2026]  # stored as the clock said, flagged
    assert [r["clock_synced"] for r in latest] == [0, 0, 0, 1, 0, 0]
    assert len(list((tmp_path / "media").rglob("*.jpg"))) == 6


def test_schema_is_created_by_migrations(store):
    applied = [row[0] for row in store.db.execute("SELECT name FROM _sqlite_migrations")]
    assert applied == [
        "m001_captures", "m002_time_honesty_and_recovery", "m003_in_flight", "m004_cleanup",
        "m005_capture_method_and_event", "m006_counts_for_the_status_page",
        "m007_content_hash_lookup", "m008_resumable_full_check", "m009_time_you_can_trust",
        "m010_free_space_ledger", "m011_activity_at_a_glance", "m012_offloads",
        "m013_md5",
    ]  # fmt: skip
    assert store.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert store.db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    columns = set(store.db["captures"].columns_dict)
    assert {
        "id", "seq", "captured_at", "clock_synced", "boot_id", "since_boot_s", "trigger",
        "media_path", "thumbnail_path", "bytes", "width", "height", "sha256", "protected",
        "recovered", "metadata", "capture_method", "event_id", "offloaded", "md5",
    } == columns  # fmt: skip


def test_an_older_database_is_upgraded_in_place(tmp_path):
    db = sqlite_utils.Database(tmp_path / DB_NAME)
    migrations.apply(db, stop_before="m002_time_honesty_and_recovery")
    db["captures"].insert(
        {"id": "ab" * 16, "seq": 1, "captured_at": "2026-01-01T00:00:00.000+00:00", "clock_synced": 1,
         "trigger": "button", "media_path": media_path("ab" * 16), "bytes": 10, "protected": 1}
    )  # fmt: skip
    db["counters"].update("last_seq", {"value": 1})
    db.close()

    store = CaptureStore(tmp_path)
    store.close()
    [row] = IndexReader(tmp_path).latest(10)
    assert (row["seq"], row["protected"], row["recovered"], row["boot_id"]) == (1, 1, 0, None)
    assert (row["capture_method"], row["event_id"]) == ("activityDetection", "ab" * 16)


def test_a_capture_and_a_recovered_photo_get_their_rows_from_one_builder(store, photo, clock):
    row = store.add(photo, None, timestamp=clock.now(), trigger="motion")
    assert set(row) == set(store.db["captures"].columns_dict)
    recovered = capture_row(
        "ab" * 16, photo, trigger="unknown", captured_at=clock.now().wall, clock_synced=False,
        thumbnail=False, recovered=True,
    )  # fmt: skip
    assert list(recovered) == list(RECOVERED_COLUMNS) == [c for c in row if c not in NOT_RECOVERED]
    assert (recovered["recovered"], recovered["capture_method"], recovered["metadata"]) == (1, None, "{}")
    assert row["md5"] == hashlib.md5(photo).hexdigest()
    assert {k: v for k, v in row.items() if k in RECOVERED_COLUMNS and k not in DIFFERENT} == {
        k: v for k, v in recovered.items() if k not in DIFFERENT
    }


def test_capture_method_follows_the_trigger_and_a_burst_shares_its_event(store, photo, clock):
    burst = [
        store.add(photo, None, timestamp=clock.now(), trigger="motion", event_id="e" * 32) for _ in range(3)
    ]
    timelapse = store.add(photo, None, timestamp=clock.now(), trigger="timelapse")
    assert {row["event_id"] for row in burst} == {"e" * 32}
    assert {row["capture_method"] for row in burst} == {"activityDetection"}
    assert (timelapse["capture_method"], timelapse["event_id"]) == ("timeLapse", timelapse["id"])


def test_a_newer_database_is_refused_and_left_untouched(store, photo, clock):
    store.add(photo, None, timestamp=clock.now(), trigger="button")
    store.db["_sqlite_migrations"].insert(
        {"migration_set": "appliance", "name": "m099_from_the_future", "applied_at": "2027-01-01"}
    )
    store.close()
    db_file = store.data_dir / DB_NAME
    before = hashlib.sha256(db_file.read_bytes()).hexdigest()
    with pytest.raises(NewerDatabaseError, match="m099_from_the_future are unknown to version"):
        CaptureStore(store.data_dir)
    assert hashlib.sha256(db_file.read_bytes()).hexdigest() == before
    assert (store.data_dir / CLEAN_MARKER).exists()  # nothing consumed either


def test_a_second_writer_is_refused_with_the_holders_pid(store):
    with pytest.raises(StoreError, match=f"in use by process {os.getpid()}"):
        CaptureStore(store.data_dir)
    # Another process too: the lock is an flock, held across processes.
    probe = "from appliance.store import CaptureStore; import sys; CaptureStore(sys.argv[1])"
    other = subprocess.run([sys.executable, "-c", probe, str(store.data_dir)], capture_output=True, text=True)
    assert other.returncode != 0 and f"in use by process {os.getpid()}" in other.stderr


def test_close_leaves_a_clean_marker_that_the_next_open_consumes(tmp_path, photo, clock):
    store = CaptureStore(tmp_path)
    assert not store.shutdown_was_clean  # new: nothing says it was clean
    store.add(photo, None, timestamp=clock.now(), trigger="button")
    store.close()
    assert (tmp_path / CLEAN_MARKER).exists()

    reopened = CaptureStore(tmp_path)
    assert reopened.shutdown_was_clean
    assert not (tmp_path / CLEAN_MARKER).exists()  # a crash from now on is seen as one
    reopened.close(clean=False)
    assert not CaptureStore(tmp_path).shutdown_was_clean


def test_a_marker_from_before_later_writes_does_not_count_as_clean(tmp_path, photo, clock):
    store = CaptureStore(tmp_path)
    store.close()
    marker = (tmp_path / CLEAN_MARKER).read_bytes()
    store = CaptureStore(tmp_path)
    store.add(photo, None, timestamp=clock.now(), trigger="button")
    store.close(clean=False)
    (tmp_path / CLEAN_MARKER).write_bytes(marker)  # e.g. restored from a backup
    assert not CaptureStore(tmp_path).shutdown_was_clean


def test_checkpoint_truncates_the_wal(store, photo, clock):
    for _ in range(5):
        store.add(photo, None, timestamp=clock.now(), trigger="button")
    wal = store.data_dir / (DB_NAME + "-wal")
    assert wal.stat().st_size > 0
    busy, _, _ = store.checkpoint()
    assert busy == 0 and wal.stat().st_size == 0
    assert IndexReader(store.data_dir).counts(clock.wall)["total"] == 5


def test_checkpoint_does_not_wait_for_a_long_reader(store, photo, clock):
    store.add(photo, None, timestamp=clock.now(), trigger="button")
    reader = sqlite3.connect((store.data_dir / DB_NAME).as_uri() + "?mode=ro", uri=True)
    reader.execute("BEGIN")  # an open read transaction, as an export holds
    reader.execute("SELECT COUNT(*) FROM captures").fetchone()
    store.add(photo, None, timestamp=clock.now(), trigger="button")
    timeout_ms = store.db.execute("PRAGMA busy_timeout").fetchone()[0]
    assert timeout_ms >= 1000
    started = time.monotonic()
    busy, _, _ = store.checkpoint()
    waited = time.monotonic() - started
    reader.close()
    # With the busy handler it would wait the whole timeout (5 s) for the reader.
    assert busy == 1 and waited < 1.0
    assert store.db.execute("PRAGMA busy_timeout").fetchone()[0] == timeout_ms  # restored
    assert store.checkpoint()[0] == 0


def test_unknown_trigger_is_rejected(store, photo, clock):
    with pytest.raises(ValueError, match="unknown trigger"):
        store.add(photo, None, timestamp=clock.now(), trigger="laser")


def assert_index_matches_disk(data_dir):
    on_disk = sorted(p.relative_to(data_dir).as_posix() for p in (data_dir / "media").rglob("*.jpg"))
    indexed = sorted(row["media_path"] for row in IndexReader(data_dir).latest(1000))
    assert on_disk == indexed
    thumbs = sorted(p.relative_to(data_dir).as_posix() for p in (data_dir / "thumbnails").rglob("*.webp"))
    assert thumbs == sorted(r["thumbnail_path"] for r in IndexReader(data_dir).latest(1000))
    assert not list(data_dir.rglob(".*.tmp"))
    return indexed


@pytest.mark.parametrize("error", [errno.ENOSPC, errno.EIO])
def test_a_failure_at_every_write_step_leaves_no_file_and_no_row(tmp_path, photo, clock, faulty_disk, error):
    reference = CaptureStore(tmp_path / "reference")
    with faulty_disk() as disk:  # the steps of a first capture into a new store
        reference.add(photo, b"RIFFwebp", timestamp=clock.now(), trigger="button")
    reference.close()
    steps = [(name, disk.steps[: i + 1].count(name)) for i, name in enumerate(disk.steps)]
    for i, step in enumerate(steps):  # each failing in a store of its own, as the first capture
        store = CaptureStore(tmp_path / f"store-{i}")
        failing = faulty_disk(step, lambda name: OSError(error, os.strerror(error), name))
        with failing, pytest.raises(StoreError, match=os.strerror(error)):
            store.add(photo, b"RIFFwebp", timestamp=clock.now(), trigger="button")
        assert assert_index_matches_disk(store.data_dir) == [], step
        row = store.add(photo, b"RIFFwebp", timestamp=clock.now(), trigger="button")  # space is back
        assert row["seq"] == 1
        store.close()
        assert assert_index_matches_disk(store.data_dir) == [row["media_path"]]
    assert {name for name, _ in steps} == {"open", "write", "fsync", "rename", "open folder"}
    assert len(steps) >= 12  # each step of two files, and the shard folders' first use


def test_full_disk_raises_store_error_and_leaves_nothing_behind(tiny_fs, photo, clock):
    store = CaptureStore(tiny_fs)
    stored = 0
    with pytest.raises(StoreError, match="capture not stored"):
        for _ in range(100):
            store.add(photo, b"RIFFwebp", timestamp=clock.now(), trigger="button")
            stored += 1
    store.close()
    assert 0 < stored < 100
    # Every photo on disk is indexed and every row has its photo: the failed one left nothing.
    assert len(assert_index_matches_disk(tiny_fs)) == stored


def test_publish_replaces_atomically_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "x.jpg"
    publish(path, b"one")
    publish(path, b"two")
    assert path.read_bytes() == b"two"
    assert [p.name for p in tmp_path.iterdir()] == ["x.jpg"]


def test_delete_removes_rows_then_files_and_tolerates_missing_files(store, photo, clock):
    rows = [store.add(photo, b"webp", timestamp=clock.now(), trigger="button") for _ in range(3)]
    (store.data_dir / rows[0]["media_path"]).unlink()
    store.set_protected(rows[2]["id"], True)

    oldest = store.oldest_unprotected(10)
    assert [r["id"] for r in oldest] == [rows[0]["id"], rows[1]["id"]]
    freed, failed = store.delete(oldest)

    assert (freed, failed) == (len(photo) + 2 * len(b"webp"), [])
    assert [r["id"] for r in IndexReader(store.data_dir).latest(10)] == [rows[2]["id"]]
    assert not (store.data_dir / rows[1]["media_path"]).exists()


def test_set_protected_unknown_id_raises_key_error(store):
    with pytest.raises(KeyError):
        store.set_protected("0" * 32, True)


def test_reader_is_read_only(store, photo, clock):
    store.add(photo, None, timestamp=clock.now(), trigger="button")
    reader = IndexReader(store.data_dir)
    with reader._db() as db, pytest.raises(sqlite3.OperationalError, match="readonly"):
        db.execute("DELETE FROM captures")


def test_counts_last_24h_uses_captured_at(tmp_path, photo):
    now = datetime.datetime(2026, 11, 22, 12, tzinfo=datetime.UTC)
    clock = ManualClock(now - datetime.timedelta(hours=30), step_s=29 * 3600)
    store = CaptureStore(tmp_path)
    store.add(photo, None, timestamp=clock.now(), trigger="button")
    store.add(photo, None, timestamp=clock.now(), trigger="button")
    store.close()
    assert IndexReader(tmp_path).counts(now) == {
        "total": 2, "last_hour": 1, "last_24h": 1, "bytes_last_hour": len(photo)
    }  # fmt: skip


def test_unopenable_data_dir_raises_store_error(tmp_path):
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(StoreError, match="cannot open"):
        CaptureStore(tmp_path / "file")


def test_database_lives_in_data_dir(store):
    assert (store.data_dir / DB_NAME).is_file()


@given(st.lists(st.just(None), min_size=1, max_size=50))
def test_ids_are_unique_hex_and_shard_is_their_prefix(items):
    ids = [new_id() for _ in items]
    assert len(set(ids)) == len(ids)
    for capture_id in ids:
        assert len(capture_id) == 32 and int(capture_id, 16) >= 0 and capture_id == capture_id.lower()
        assert shard_of(capture_id) == capture_id[:2]


def test_ids_spread_uniformly_over_the_256_shards():
    counts = Counter(shard_of(new_id()) for _ in range(256 * 100))
    assert len(counts) == 256
    # Pearson's chi-squared, 255 degrees of freedom: above 400 has a probability below 1e-8 for
    # uniform ids, so this fails only for a real bias.
    chi2 = sum((n - 100) ** 2 / 100 for n in counts.values())
    assert chi2 < 400


@given(st.binary(min_size=16, max_size=16), st.binary(min_size=16, max_size=16))
def test_paths_stay_in_their_shard_folder_and_differ_for_different_ids(a, b):
    root = Path("/data")
    for raw in (a, b):
        capture_id = raw.hex()
        for rel, kind in ((media_path(capture_id), "media"), (thumbnail_path(capture_id), "thumbnails")):
            path = (root / rel).resolve()
            assert path.parent == root / kind / capture_id[:2]
            assert path.stem == capture_id
    assert (media_path(a.hex()) == media_path(b.hex())) == (a == b)


def test_seq_never_repeats_even_after_every_capture_was_deleted(tmp_path, photo, clock):
    store = CaptureStore(tmp_path)
    rows = [store.add(photo, None, timestamp=clock.now(), trigger="motion") for _ in range(3)]
    store.delete(store.oldest_unprotected(10))
    store.close()
    reopened = CaptureStore(tmp_path)
    assert reopened.add(photo, None, timestamp=clock.now(), trigger="motion")["seq"] == rows[-1]["seq"] + 1
    reopened.close()


def test_the_capture_count_is_kept_by_every_insert_and_delete(store, photo, clock):
    rows = [store.add(photo, None, timestamp=clock.now(), trigger="button") for _ in range(5)]
    store.delete(rows[:2])
    reader = IndexReader(store.data_dir)
    assert reader.counts(clock.now().wall)["total"] == 3 == store.db["captures"].count
    store.db.execute("DELETE FROM captures WHERE id = ?", [rows[2]["id"]])  # as reconciliation drops one
    store.db.conn.commit()
    assert reader.counts(clock.now().wall)["total"] == 2


def test_pages_follow_seq_newest_first_with_filters(store, photo, clock):
    triggers = ["button", "motion", "timelapse"] * 4
    rows = [store.add(photo, None, timestamp=clock.now(), trigger=t) for t in triggers]
    reader = IndexReader(store.data_dir)
    first = reader.page(limit=5)
    second = reader.page(before=first[-1]["seq"], limit=5)
    assert [r["seq"] for r in first + second] == list(range(12, 2, -1))
    assert [r["seq"] for r in reader.page(trigger="motion", limit=10)] == [11, 8, 5, 2]
    day = datetime.datetime.fromisoformat(rows[0]["captured_at"]).date()
    assert len(reader.page(day=day, limit=100)) == 12
    assert reader.page(day=day + datetime.timedelta(days=1)) == []


# --- An index file removed or replaced under the running store -----------------------------------


def test_an_index_removed_while_open_is_written_back_and_nothing_more_is_committed(tmp_path, photo, clock):
    store = CaptureStore(tmp_path)
    rows = [store.add(photo, b"RIFFwebp", timestamp=clock.now(), trigger="motion") for _ in range(3)]
    store.set_protected(rows[1]["id"], True)
    (tmp_path / DB_NAME).unlink()  # by hand, or a script gone wrong
    with pytest.raises(IndexGoneError, match="was removed while the appliance ran; it was written back"):
        store.add(photo, b"RIFFwebp", timestamp=clock.now(), trigger="button")
    store.close()
    assert not (tmp_path / CLEAN_MARKER).exists()  # the next start checks

    reopened = CaptureStore(tmp_path)
    kept = {row["id"]: row for row in reopened.db["captures"].rows}
    assert kept.keys() == {row["id"] for row in rows}  # every row, with what only the index knew
    assert [kept[row["id"]]["seq"] for row in rows] == [1, 2, 3] and kept[rows[1]["id"]]["protected"] == 1
    assert {kept[row["id"]]["trigger"] for row in rows} == {"motion"}
    assert not reopened.shutdown_was_clean  # the next start checks what the last capture left
    assert len(reopened.in_flight()) == 1  # that capture's id, whose photo is on disk
    reopened.close()


def test_an_index_replaced_while_open_is_left_alone_and_the_open_one_kept_in_damaged(tmp_path, photo, clock):
    store = CaptureStore(tmp_path)
    row = store.add(photo, b"RIFFwebp", timestamp=clock.now(), trigger="motion")
    other = tmp_path / "other.db"
    sqlite3.connect(other).execute("CREATE TABLE mine (x)").connection.close()
    os.replace(other, tmp_path / DB_NAME)
    with pytest.raises(
        IndexGoneError, match="was replaced while the appliance ran; the index this process had"
    ):
        store.set_protected(row["id"], True)
    store.close()
    with sqlite3.connect(tmp_path / DB_NAME) as db:  # the replacement, untouched
        assert db.execute("SELECT name FROM sqlite_master").fetchall() == [("mine",)]
    with sqlite3.connect(tmp_path / "damaged" / DB_NAME) as db:
        assert db.execute("SELECT id FROM captures").fetchall() == [(row["id"],)]
