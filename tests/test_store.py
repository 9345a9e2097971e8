import datetime
import hashlib
import sqlite3

import pytest
from hypothesis import given
from hypothesis import strategies as st

from appliance.exc import StoreError
from appliance.store import DB_NAME, CaptureStore, IndexReader, new_id, publish, shard_of


def test_add_writes_photo_thumbnail_and_row(store, photo):
    row = store.add(photo, b"RIFFwebp", trigger="button", metadata={"ExposureTime": 1000})

    media = store.data_dir / row["media_path"]
    assert row["media_path"] == f"media/{row['id'][:2]}/{row['id']}.jpg"
    assert row["thumbnail_path"] == f"thumbnails/{row['id'][:2]}/{row['id']}.webp"
    assert media.read_bytes() == photo
    assert (store.data_dir / row["thumbnail_path"]).read_bytes() == b"RIFFwebp"
    stored = IndexReader(store.data_dir).get(row["id"])
    assert stored["sha256"] == hashlib.sha256(photo).hexdigest()
    assert (stored["width"], stored["height"], stored["bytes"]) == (2048, 1440, len(photo))
    assert stored["trigger"] == "button" and stored["clock_synced"] == 1 and stored["protected"] == 0
    assert datetime.datetime.fromisoformat(stored["captured_at"]).utcoffset() == datetime.timedelta(0)


def test_seq_increases_and_survives_reopening(tmp_path, photo):
    first = CaptureStore(tmp_path, clock_synced=lambda: False)
    seqs = [first.add(photo, None, trigger="motion")["seq"] for _ in range(3)]
    first.close()
    second = CaptureStore(tmp_path, clock_synced=lambda: False)
    seqs.append(second.add(photo, None, trigger="motion")["seq"])
    second.close()
    assert seqs == [1, 2, 3, 4]


def test_seq_orders_captures_even_when_the_clock_jumps_back(tmp_path, photo):
    times = iter(
        [
            datetime.datetime(2026, 6, 1, tzinfo=datetime.UTC),
            datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC),  # RTC-less Pi before NTP
        ]
    )
    store = CaptureStore(tmp_path, clock_synced=lambda: False, now=lambda: next(times))
    a = store.add(photo, None, trigger="button")
    b = store.add(photo, None, trigger="button")
    store.close()
    latest = IndexReader(tmp_path).latest(10)
    assert [r["id"] for r in latest] == [b["id"], a["id"]]
    assert a["media_path"] != b["media_path"]


def test_schema_is_created_by_migrations(store):
    applied = store.db.execute("SELECT name FROM _sqlite_migrations").fetchall()
    assert ("m001_captures",) in applied
    assert store.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    columns = set(store.db["captures"].columns_dict)
    assert {
        "id", "seq", "captured_at", "clock_synced", "trigger", "media_path", "thumbnail_path",
        "bytes", "width", "height", "sha256", "protected",
    } <= columns  # fmt: skip


def test_unknown_trigger_is_rejected(store, photo):
    with pytest.raises(ValueError, match="unknown trigger"):
        store.add(photo, None, trigger="laser")


def test_full_disk_raises_store_error_and_leaves_nothing_behind(tiny_fs, photo):
    store = CaptureStore(tiny_fs, clock_synced=lambda: True)
    stored = 0
    with pytest.raises(StoreError, match="capture not stored"):
        for _ in range(100):
            store.add(photo, b"webp", trigger="button")
            stored += 1
    store.close()
    assert 0 < stored < 100
    # Every photo on disk is indexed and every row has its photo: the failed one left nothing.
    on_disk = sorted(p.relative_to(tiny_fs).as_posix() for p in (tiny_fs / "media").rglob("*.jpg"))
    indexed = sorted(row["media_path"] for row in IndexReader(tiny_fs).latest(100))
    assert on_disk == indexed and len(indexed) == stored
    assert not list(tiny_fs.rglob(".*.tmp"))


def test_publish_replaces_atomically_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "x.jpg"
    publish(path, b"one")
    publish(path, b"two")
    assert path.read_bytes() == b"two"
    assert [p.name for p in tmp_path.iterdir()] == ["x.jpg"]


def test_delete_removes_rows_then_files_and_tolerates_missing_files(store, photo):
    rows = [store.add(photo, b"webp", trigger="button") for _ in range(3)]
    (store.data_dir / rows[0]["media_path"]).unlink()
    store.set_protected(rows[2]["id"], True)

    oldest = store.oldest_unprotected(10)
    assert [r["id"] for r in oldest] == [rows[0]["id"], rows[1]["id"]]
    freed = store.delete(oldest)

    assert freed == len(photo) + 2 * len(b"webp")
    assert [r["id"] for r in IndexReader(store.data_dir).latest(10)] == [rows[2]["id"]]
    assert not (store.data_dir / rows[1]["media_path"]).exists()


def test_set_protected_unknown_id_raises_key_error(store):
    with pytest.raises(KeyError):
        store.set_protected("0" * 32, True)


def test_reader_is_read_only(store, photo):
    store.add(photo, None, trigger="button")
    reader = IndexReader(store.data_dir)
    with reader._db() as db, pytest.raises(sqlite3.OperationalError, match="readonly"):
        db.execute("DELETE FROM captures")


def test_counts_last_24h_uses_captured_at(tmp_path, photo):
    now = datetime.datetime(2026, 11, 22, 12, tzinfo=datetime.UTC)
    times = iter([now - datetime.timedelta(hours=30), now - datetime.timedelta(hours=1)])
    store = CaptureStore(tmp_path, clock_synced=lambda: True, now=lambda: next(times))
    store.add(photo, None, trigger="button")
    store.add(photo, None, trigger="button")
    store.close()
    assert IndexReader(tmp_path).counts(now) == {"total": 2, "last_24h": 1}


def test_unopenable_data_dir_raises_store_error(tmp_path):
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(StoreError, match="cannot open"):
        CaptureStore(tmp_path / "file", clock_synced=lambda: True)


def test_database_lives_in_data_dir(store):
    assert (store.data_dir / DB_NAME).is_file()


@given(st.lists(st.just(None), min_size=1, max_size=50))
def test_ids_are_unique_hex_and_shard_is_their_prefix(items):
    ids = [new_id() for _ in items]
    assert len(set(ids)) == len(ids)
    for capture_id in ids:
        assert len(capture_id) == 32 and int(capture_id, 16) >= 0
        assert shard_of(capture_id) == capture_id[:2]


def test_seq_never_repeats_even_after_every_capture_was_deleted(tmp_path, photo):
    store = CaptureStore(tmp_path, clock_synced=lambda: True)
    rows = [store.add(photo, None, trigger="motion") for _ in range(3)]
    store.delete(store.oldest_unprotected(10))
    store.close()
    reopened = CaptureStore(tmp_path, clock_synced=lambda: True)
    assert reopened.add(photo, None, trigger="motion")["seq"] == rows[-1]["seq"] + 1
    reopened.close()
