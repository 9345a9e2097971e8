"""One writer of the index: no code outside appliance/store/ writes the tables ``captures``,
``counters``, ``in_flight``, ``activity_hours``, ``disk_hours``, ``offloads`` or
``offload_targets``, and the writes reconciliation
asks of the store keep its rules."""

import ast
import re
from pathlib import Path

import pytest

from appliance.store import CaptureStore, capture_row

ROOT = Path(__file__).resolve().parent.parent
SCANNED = ("appliance", "hw", "boot")
STORE = ROOT / "appliance" / "store"
TABLES = r"[`\"\[]?(?:captures|counters|in_flight|activity_hours|disk_hours|offloads|offload_targets)\b"
WRITE_SQL = re.compile(
    rf"\b(?:INSERT\s+(?:OR\s+\w+\s+)?INTO\s+{TABLES}|REPLACE\s+INTO\s+{TABLES}"
    rf"|UPDATE\s+(?:OR\s+\w+\s+)?{TABLES}[`\"\]]?\s+SET\b|DELETE\s+FROM\s+{TABLES})",
    re.IGNORECASE,
)
# sqlite-utils Table methods that write.
WRITE_METHODS = {"insert", "insert_all", "update", "upsert", "upsert_all", "delete", "delete_where"}
WRITTEN = {"captures", "counters", "in_flight", "activity_hours", "disk_hours", "offloads", "offload_targets"}


def _table_named(node: ast.expr) -> str | None:
    """The table a sqlite-utils ``db["name"]`` or ``db.table("name")`` expression names."""
    if isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Constant):
        return node.slice.value if isinstance(node.slice.value, str) else None
    if (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == "table"
        and node.args
        and isinstance(node.args[0], ast.Constant)
    ):
        return node.args[0].value
    return None


def writes_outside_the_store(source: str) -> list[tuple[int, str]]:
    """``(line, what)`` of each write to the store's tables in ``source`` (Python): SQL in a
    string (f-strings by their constant parts) and sqlite-utils writes on such a table."""
    found = []
    for node in ast.walk(ast.parse(source)):
        text = None
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            text = node.value
        elif isinstance(node, ast.JoinedStr):
            text = "".join(v.value if isinstance(v, ast.Constant) else "?" for v in node.values)
        if text is not None and (match := WRITE_SQL.search(text)):
            found.append((node.lineno, " ".join(match[0].split())))
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr in WRITE_METHODS
            and _table_named(node.func.value) in WRITTEN
        ):
            found.append((node.lineno, f'["{_table_named(node.func.value)}"].{node.func.attr}()'))
    return sorted(set(found))


def test_only_the_store_package_writes_captures_counters_and_in_flight():
    offences = []
    for folder in SCANNED:
        for path in sorted((ROOT / folder).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            if path.is_relative_to(STORE):
                continue
            for line, what in writes_outside_the_store(path.read_text()):
                offences.append(f"{rel}:{line}: {what}")
    assert not offences, (
        "only appliance/store/ writes the tables captures, counters, in_flight, activity_hours, "
        "disk_hours, offloads and offload_targets; add a CaptureStore method and call it instead:\n"
        + "\n".join(offences)
    )


@pytest.mark.parametrize(
    "source",
    [
        'db.execute("DELETE FROM captures WHERE id = ?", [i])',
        "db.execute(f\"UPDATE counters SET value = {n} WHERE name = 'last_seq'\")",
        'db.conn.executemany("insert or replace into in_flight (id, reason) values (?, ?)", rows)',
        'db["counters"].update("last_seq", {"value": 1})',
        'db.table("captures").insert_all(rows)',
        'db["disk_hours"].insert(row)',
        'db.execute("INSERT INTO activity_hours VALUES (?, ?, 1)", [h, t])',
        'db.execute("INSERT OR IGNORE INTO offloads (capture_id, target) VALUES (?, ?)", [i, t])',
        'db["offloads"].delete_where("target = ?", ["usb"])',
        'db.execute("UPDATE offload_targets SET captures = 0")',
    ],
)
def test_the_scan_finds_each_kind_of_write(source):
    assert writes_outside_the_store(source)


@pytest.mark.parametrize(
    "source",
    [
        'db.execute("SELECT id FROM captures WHERE seq > ?", [1])',
        'db["recovery"].insert_all(rows)',
        '"""Photos whose deletion was interrupted are deleted from the card."""',
        "parts.insert(0, 'x')",
    ],
)
def test_the_scan_leaves_reads_and_other_tables_alone(source):
    assert not writes_outside_the_store(source)


def test_the_capture_id_is_defined_once():
    # As appliance.store.CAPTURE_ID (paths.py), which the web and reconciliation import.
    spelled = [
        f"{path.relative_to(ROOT).as_posix()}:{n}"
        for folder in SCANNED
        for path in sorted((ROOT / folder).rglob("*.py"))
        if path != STORE / "paths.py"
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if "[0-9a-f]{32}" in line
    ]
    assert not spelled, "import appliance.store.CAPTURE_ID rather than spell it again: " + ", ".join(spelled)


def test_repairs_cannot_move_the_seq_counter(store):
    with pytest.raises(ValueError, match="last_seq"):
        store.commit_repairs(full_check={"last_seq": 0})


def test_recovered_photos_are_indexed_after_every_seq_given(tmp_path, photo, clock):
    store = CaptureStore(tmp_path)
    for _ in range(3):
        store.add(photo, None, timestamp=clock.now(), trigger="motion")
    store.delete(store.oldest_unprotected(3))  # the seqs 1 to 3 are gone, never to be given again
    found = [
        capture_row(capture_id, photo, trigger="unknown", captured_at=clock.now().wall,
                    clock_synced=False, thumbnail=False, recovered=True)
        for capture_id in ("b" * 32, "a" * 32)
    ]  # fmt: skip
    store.commit_repairs(recovered=found)
    assert store.full_check_state()["queued"]
    assert store.index_recovered(10) == 2 and store.index_recovered(10) == 0
    rows = store.db.execute("SELECT id, seq FROM captures ORDER BY seq").fetchall()
    assert rows == [("b" * 32, 4), ("a" * 32, 5)]  # in the order they were taken
    assert store.last_seq == 5 and not store.full_check_state()["queued"]
    store.close()
