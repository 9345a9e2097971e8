"""The store's offload records (migration m012): what each capture has been copied to and
verified on, the captures a target still lacks, and cleanup's choice by it."""

import datetime
import hashlib

import pytest
import sqlite_utils

from appliance.exc import OffloadMismatch, UnknownCapture
from appliance.store import DB_NAME, CaptureStore, IndexReader, capture_row, migrations, new_id
from appliance.store.reader import NOT_OFFLOADED, OFFLOADED_ELSEWHERE, PENDING_SQL
from appliance.store.writer import OLDEST_BY_OFFLOAD
from hw.clock import ManualClock

AT = datetime.datetime(2026, 6, 1, 12, tzinfo=datetime.UTC)


def take(store: CaptureStore, n: int, clock: ManualClock) -> list[dict]:
    # Each photo different, so that each has its own SHA-256 and size.
    return [
        store.add(b"\xff\xd8" + bytes([i % 251]) * (100 + i), None, timestamp=clock.now(), trigger="motion")
        for i in range(n)
    ]


def offload(store: CaptureStore, row: dict, target: str = "usb") -> None:
    store.record_offloaded(row["id"], target, row["sha256"], AT)


def pending_ids(reader: IndexReader, target: str, **kwargs) -> list[str]:
    return [row["id"] for row in reader.pending_offload(target, **kwargs)]


def test_a_verified_copy_is_recorded_with_its_target_hash_and_time(store, clock):
    [row] = take(store, 1, clock)
    store.record_offloaded(row["id"], "usb", row["sha256"].upper(), AT)
    assert store.db.execute("SELECT * FROM offloads").fetchall() == [
        (row["id"], "usb", row["sha256"], "2026-06-01T12:00:00.000+00:00")
    ]
    assert IndexReader(store.data_dir).get(row["id"])["offloaded"] == 1


def test_a_copy_that_differs_is_refused_and_nothing_is_recorded(store, clock):
    [row] = take(store, 1, clock)
    wrong = hashlib.sha256(b"torn").hexdigest()
    with pytest.raises(OffloadMismatch, match=row["id"]) as raised:
        store.record_offloaded(row["id"], "usb", wrong, AT)
    assert isinstance(raised.value, ValueError)
    assert (raised.value.expected, raised.value.found) == (row["sha256"], wrong)
    assert store.db.execute("SELECT COUNT(*) FROM offloads").fetchone()[0] == 0
    assert IndexReader(store.data_dir).get(row["id"])["offloaded"] == 0
    assert IndexReader(store.data_dir).offload_pending("usb") == (1, row["bytes"])


def test_an_unknown_capture_cannot_be_recorded(store, clock):
    take(store, 1, clock)
    with pytest.raises(UnknownCapture):
        store.record_offloaded("ab" * 16, "usb", "0" * 64, AT)
    assert store.db.execute("SELECT COUNT(*) FROM offloads").fetchone()[0] == 0


def test_recording_twice_changes_nothing(store, clock):
    rows = take(store, 3, clock)
    offload(store, rows[0])
    store.record_offloaded(rows[0]["id"], "usb", rows[0]["sha256"], AT + datetime.timedelta(days=1))
    first = ("2026-06-01T12:00:00.000+00:00",)
    assert store.db.execute("SELECT offloaded_at FROM offloads").fetchall() == [first]
    reader = IndexReader(store.data_dir)
    assert reader.offload_pending("usb") == (2, rows[1]["bytes"] + rows[2]["bytes"])
    assert store.db.execute("SELECT value FROM counters WHERE name = 'offloaded'").fetchone()[0] == 1


def test_deleting_a_capture_deletes_its_offload_records(store, clock):
    rows = take(store, 3, clock)
    for row in rows[:2]:
        offload(store, row, "usb")
        offload(store, row, "nas")
    store.delete(store.oldest_unprotected(1))  # what cleanup deletes with
    assert {r[0] for r in store.db.execute("SELECT capture_id FROM offloads")} == {rows[1]["id"]}
    reader = IndexReader(store.data_dir)
    assert reader.offload_pending("usb") == reader.offload_pending("nas") == (1, rows[2]["bytes"])
    assert reader.offload_pending("elsewhere") == (2, rows[1]["bytes"] + rows[2]["bytes"])
    # And a row dropped by reconciliation (its photo gone) goes the same way.
    store.commit_repairs(dropped=[rows[1]["id"]])
    assert store.db.execute("SELECT COUNT(*) FROM offloads").fetchone()[0] == 0
    assert reader.offload_pending("usb") == (1, rows[2]["bytes"])


def test_pending_lists_what_the_target_lacks_oldest_first_with_a_cursor(store, clock):
    rows = take(store, 10, clock)
    store.set_protected(rows[4]["id"], True)  # protected or not, it must reach the stick
    store.set_protected(rows[7]["id"], True)
    for i in (0, 2, 5):
        offload(store, rows[i], "usb")
    offload(store, rows[3], "nas")  # elsewhere only: still pending for usb
    reader = IndexReader(store.data_dir)
    lacking = [rows[i]["id"] for i in (1, 3, 4, 6, 7, 8, 9)]
    assert pending_ids(reader, "usb") == lacking
    first = reader.pending_offload("usb", limit=3)
    assert [row["id"] for row in first] == lacking[:3]
    assert set(first[0]) == set(reader.page(limit=1)[0])  # whole rows, as the gallery reads them
    assert pending_ids(reader, "usb", after_seq=first[-1]["seq"], limit=3) == lacking[3:6]
    assert pending_ids(reader, "usb", after_seq=rows[8]["seq"]) == lacking[6:]
    assert pending_ids(reader, "usb", after_seq=rows[9]["seq"]) == []
    assert pending_ids(reader, "nas") == [r["id"] for i, r in enumerate(rows) if i != 3]
    assert reader.offload_pending("usb") == (7, sum(rows[i]["bytes"] for i in (1, 3, 4, 6, 7, 8, 9)))


def test_cleanup_picks_the_oldest_unprotected_by_whether_they_are_offloaded(store, clock):
    rows = take(store, 6, clock)
    store.set_protected(rows[1]["id"], True)
    for i in (1, 3, 4):
        offload(store, rows[i])
    assert [r["id"] for r in store.oldest_unprotected(10, offloaded=True)] == [rows[3]["id"], rows[4]["id"]]
    assert [r["id"] for r in store.oldest_unprotected(10, offloaded=False)] == [
        rows[i]["id"] for i in (0, 2, 5)
    ]
    assert [r["id"] for r in store.oldest_unprotected(10, offloaded=True, up_to_seq=rows[3]["seq"])] == [
        rows[3]["id"]
    ]


def test_the_migration_upgrades_an_index_from_before(tmp_path, clock, monkeypatch):
    real_apply = migrations.apply
    with monkeypatch.context() as patch:
        patch.setattr(migrations, "apply", lambda db: real_apply(db, stop_before="m012_offloads"))
        old = CaptureStore(tmp_path / "data")
        # Rows as the previous version wrote them (no offloaded column), through the store's insert.
        rows = [
            capture_row(new_id(), b"\xff\xd8" * (50 + i), trigger="motion", captured_at=AT,
                        clock_synced=True, thumbnail=False) | {"seq": i + 1}
            for i in range(4)
        ]  # fmt: skip
        old.insert(rows)
        old.delete(old.oldest_unprotected(1))
        old.close()
    db = sqlite_utils.Database(tmp_path / "data" / DB_NAME)
    assert not db["offloads"].exists() and "offloaded" not in db["captures"].columns_dict
    db.close()
    reader = IndexReader(tmp_path / "data")
    kept = rows[1:]
    # Read by a reader before the writer upgrades it: everything is pending.
    assert reader.offload_pending("usb") == (3, sum(r["bytes"] for r in kept))
    assert pending_ids(reader, "usb") == [r["id"] for r in kept]

    store = CaptureStore(tmp_path / "data")
    try:
        assert reader.offload_pending("usb") == (3, sum(r["bytes"] for r in kept))
        assert all(reader.get(r["id"])["offloaded"] == 0 for r in kept)
        offload(store, kept[0])
        assert reader.offload_pending("usb") == (2, kept[1]["bytes"] + kept[2]["bytes"])
        assert pending_ids(reader, "usb") == [kept[1]["id"], kept[2]["id"]]
    finally:
        store.close()


def plan(store: CaptureStore, sql: str, args: list) -> str:
    return " | ".join(row[3] for row in store.db.execute(f"EXPLAIN QUERY PLAN {sql}", args).fetchall())


@pytest.mark.parametrize(
    ("offloaded", "index"),
    [(1, "idx_captures_unprotected_offloaded_seq"), (0, "idx_captures_unoffloaded_seq")],
)
def test_cleanups_choice_by_offload_is_an_index_search(store, offloaded, index):
    sql = f"SELECT id FROM {OLDEST_BY_OFFLOAD[offloaded]} ORDER BY seq LIMIT 50"
    found = plan(store, sql, [9])
    assert f"USING INDEX {index}" in found
    assert "SCAN" not in found and "TEMP B-TREE" not in found


@pytest.mark.parametrize(
    ("where", "args", "index"),
    [
        (NOT_OFFLOADED, [], "idx_captures_unoffloaded_seq"),
        (OFFLOADED_ELSEWHERE, ["usb"], "idx_captures_offloaded_seq"),
    ],
)
def test_the_pending_search_is_an_index_search(store, where, args, index):
    found = plan(store, PENDING_SQL.format(where), [*args, 0, 50])
    assert f"USING INDEX {index}" in found
    assert "SCAN" not in found and "TEMP B-TREE" not in found
    if args:  # the target's record of each capture: one lookup by primary key
        assert "USING PRIMARY KEY" in found or "sqlite_autoindex_offloads_1" in found


def test_protecting_a_capture_that_is_not_offloaded_touches_no_offload_index(store):
    """On a full card the user protects and unprotects photos: m012 must not make that write more
    (its indexes are partial, on offloaded, and the cleanup one leaves out what is not offloaded)."""
    names = [row[0] for row in store.db.execute(
        "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'captures' "
        "AND sql LIKE '%offloaded%'"
    )]  # fmt: skip
    assert sorted(names) == [
        "idx_captures_offloaded_seq", "idx_captures_unoffloaded_seq", "idx_captures_unprotected_offloaded_seq"
    ]  # fmt: skip
    for (sql,) in store.db.execute(
        f"SELECT sql FROM sqlite_master WHERE type = 'index' AND name IN ({','.join('?' * len(names))})",
        names,
    ):
        assert "protected" not in sql.split("ON")[1].split("WHERE")[0]  # protected is no key column
        assert "offloaded = 1" in sql or "offloaded = 0" in sql and "protected" not in sql
