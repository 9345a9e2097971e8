"""The crash test: the real ``appliance run`` killed with SIGKILL at random moments, over and over.

Each cycle starts the appliance in simulation with fast button presses, kills it at a random moment
(during imports, start-up reconciliation, a capture, a thumbnail, a commit), and checks what the next
start-up will find.  Every other cycle the start-up reconciliation runs at once (the same
``open_store`` as ``appliance run``: after a crash it looks only at the writes in flight), and then
the test walks every file to prove that was enough; otherwise the next ``appliance run`` reconciles
by itself before capturing.  At the end a full check must find nothing left to repair.

CRASH_TEST_KILLS sets the number of kills (default 30, about half a minute; the deletion test kills
half as often); CRASH_TEST_SEED replays a run.  Each test prints a line every PROGRESS_EVERY kills.
"""

import contextlib
import hashlib
import os
import random
import re
import sqlite3
import subprocess
import sys
import time

from appliance.reconcile import open_store
from appliance.store import DB_NAME

# The short form (the README's command, CI) stays well under a minute per test; a longer run, such as
# CRASH_TEST_KILLS=1000, before a release.
KILLS = int(os.environ.get("CRASH_TEST_KILLS", "30"))
PROGRESS_EVERY = 10
# Start-up (imports, reconciliation) takes about 0.6 s here: kill over it and a second of captures.
KILL_AFTER_S = (0.2, 1.6)
ACKNOWLEDGED = re.compile(r"capture \d+ \(([0-9a-f]{32}), ")
STARTUP_REPAIRS = re.compile(r"capture store: check after an unclean shutdown in [\d.]+ s: (?!index matches)")
CONFIG = """\
simulate = true
simulate_trigger_interval_s = 0.02
motion_pin = ""
button_bounce_time_s = 0
camera_size_px = [640, 480]
thumbnail_max_px = 160
"""


def progress(capsys, line: str) -> None:
    """Print ``line`` on the terminal now, on a line of its own, even while pytest captures output."""
    with capsys.disabled():
        print(f"\n{line}", flush=True)


def rows_of(data_dir) -> dict[str, sqlite3.Row]:
    """The index as the next start-up will find it (read-only, so that the WAL a kill left stays
    for the appliance to recover); integrity checked first."""
    db = sqlite3.connect(f"{(data_dir / DB_NAME).as_uri()}?mode=ro", uri=True)
    with contextlib.closing(db):
        db.row_factory = sqlite3.Row
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        rows = {row["id"]: row for row in db.execute("SELECT * FROM captures")}
    assert len({row["seq"] for row in rows.values()}) == len(rows)
    return rows


def assert_rows_have_their_photos(data_dir, rows):
    for row in rows.values():
        photo = (data_dir / row["media_path"]).read_bytes()
        assert hashlib.sha256(photo).hexdigest() == row["sha256"], row["id"]


def assert_disk_matches_index(data_dir, rows):
    photos = {p.relative_to(data_dir).as_posix() for p in (data_dir / "media").rglob("*.jpg")}
    assert photos == {row["media_path"] for row in rows.values()}
    thumbs = {p.relative_to(data_dir).as_posix() for p in (data_dir / "thumbnails").rglob("*.webp")}
    assert thumbs == {row["thumbnail_path"] for row in rows.values()}
    assert not list(data_dir.rglob(".*.tmp"))


def test_sigkill_at_random_moments_never_loses_an_acknowledged_capture(tmp_path, capsys, run_config):
    seed = int(os.environ.get("CRASH_TEST_SEED", random.randrange(2**32)))
    rng = random.Random(seed)
    data_dir = tmp_path / "data"
    config = tmp_path / "appliance.toml"
    config.write_text(CONFIG + run_config.read_text() + f'data_dir = "{data_dir}"\n')
    acknowledged: set[str] = set()
    counts = {"kills": 0, "kills before the first capture": 0, "start-ups that repaired": 0}
    counts |= {"checks": 0, "repairs": 0}
    repairs = {"temp_removed": 0, "recovered": 0, "deletions_finished": 0, "thumbnails_remade": 0}
    started = time.monotonic()

    for cycle in range(KILLS):
        if cycle and cycle % PROGRESS_EVERY == 0:
            progress(capsys, f"crash test (seed {seed}): {cycle}/{KILLS} kills, {len(acknowledged)} "
                             f"acknowledged captures, {time.monotonic() - started:.0f} s")  # fmt: skip
        process = subprocess.Popen(
            [sys.executable, "-m", "appliance", "run", "--config", str(config),
             "--host", "127.0.0.1", "--port", "0"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        time.sleep(rng.uniform(*KILL_AFTER_S))
        process.kill()
        log = process.communicate()[1]
        assert process.returncode == -9, f"seed {seed}, cycle {cycle}: exited by itself:\n{log}"
        counts["kills"] += 1
        stored = set(ACKNOWLEDGED.findall(log))
        counts["kills before the first capture"] += not stored
        counts["start-ups that repaired"] += bool(STARTUP_REPAIRS.search(log))
        acknowledged |= stored
        if not (data_dir / DB_NAME).exists():
            assert not acknowledged
            continue

        rows = rows_of(data_dir)
        context = f"seed {seed}, cycle {cycle}"
        assert acknowledged <= rows.keys(), f"{context}: acknowledged captures lost"
        assert_rows_have_their_photos(data_dir, rows)
        if cycle % 2:
            store, report = open_store(data_dir, thumbnail_max_px=160)
            store.close()
            counts["checks"] += 1
            counts["repairs"] += report.repairs
            for key in repairs:
                repairs[key] += getattr(report, key)
            assert report.damaged == 0 and report.database_set_aside is None, f"{context}: {report}"
            assert report.rows_dropped == 0, f"{context}: a row without its photo: {report}"
            rows = rows_of(data_dir)
            assert acknowledged <= rows.keys()
            assert_rows_have_their_photos(data_dir, rows)
            assert_disk_matches_index(data_dir, rows)

    store, _ = open_store(data_dir, thumbnail_max_px=160)
    store.close()
    store, report = open_store(data_dir, thumbnail_max_px=160, full=True)
    store.close()
    assert report.repairs == 0 and report.stray == [], f"seed {seed}: left for a full check: {report}"
    rows = rows_of(data_dir)
    assert acknowledged <= rows.keys()
    assert_rows_have_their_photos(data_dir, rows)
    assert_disk_matches_index(data_dir, rows)
    assert len(acknowledged) > KILLS, "too few captures between kills for the test to mean much"
    figures = counts | repairs | {"acknowledged captures": len(acknowledged), "rows": len(rows)}
    figures["s"] = round(time.monotonic() - started)
    progress(capsys, f"crash test (seed {seed}): " + ", ".join(f"{k} {v}" for k, v in figures.items()))


WRITER = """\
import io, sys
from PIL import Image
from appliance import thumbnails
from appliance.reconcile import open_store
from hw.clock import ManualClock

store, _ = open_store(sys.argv[1], thumbnail_max_px=64)
out = io.BytesIO()
Image.new("RGB", (128, 96), (90, 140, 60)).save(out, "JPEG")
jpeg = out.getvalue()
thumbnail = thumbnails.from_jpeg(jpeg, 64)
clock = ManualClock()
while True:
    for _ in range(3):
        row = store.add(jpeg, thumbnail, timestamp=clock.now(), trigger="motion")
        print("stored", row["id"], flush=True)
    batch = store.oldest_unprotected(2)
    print("deleting", *[row["id"] for row in batch], flush=True)
    store.delete(batch)
    print("deleted", flush=True)
"""


def test_sigkill_while_deleting_never_revives_a_deleted_capture(tmp_path, capsys):
    """Captures and deletions as fast as the store goes, killed at random: a deleted capture never
    comes back (not even as "recovered"), and every stored one not deleted is there."""
    seed = int(os.environ.get("CRASH_TEST_SEED", random.randrange(2**32)))
    rng = random.Random(seed)
    data_dir, script = tmp_path / "data", tmp_path / "writer.py"
    script.write_text(WRITER)
    stored, deleted, deleting = set(), set(), set()
    kills, kills_mid_deletion = max(1, KILLS // 2), 0
    started = time.monotonic()
    for cycle in range(kills):
        if cycle and cycle % PROGRESS_EVERY == 0:
            figures = f"{cycle}/{kills} kills, stored {len(stored)}, deleted {len(deleted)}"
            progress(
                capsys, f"deletion crash test (seed {seed}): {figures}, {time.monotonic() - started:.0f} s"
            )
        process = subprocess.Popen(
            [sys.executable, str(script), str(data_dir)], stdout=subprocess.PIPE, text=True
        )
        time.sleep(rng.uniform(0.3, 0.8))
        process.kill()
        for line in process.communicate()[0].splitlines():
            word, *ids = line.split()
            if word == "stored":
                stored.update(ids)
            elif word == "deleting":
                deleting = set(ids)
            elif word == "deleted":
                deleted |= deleting
                deleting = set()
        kills_mid_deletion += bool(deleting)
        store, report = open_store(data_dir, thumbnail_max_px=64)
        store.close()
        rows = rows_of(data_dir)
        context = f"seed {seed}, cycle {cycle}"
        assert not deleted & rows.keys(), f"{context}: deleted captures came back"
        assert stored - deleted - deleting <= rows.keys(), f"{context}: stored captures lost"
        assert not any(rows[i]["recovered"] for i in deleting & rows.keys()), context
        assert_rows_have_their_photos(data_dir, rows)
        assert_disk_matches_index(data_dir, rows)
        deleted |= deleting - rows.keys()  # a batch whose commit made it before the kill
        deleting = set()
    figures = f"kills {kills} ({kills_mid_deletion} during a deletion), stored {len(stored)}"
    elapsed = f"{time.monotonic() - started:.0f} s"
    progress(capsys, f"deletion crash test (seed {seed}): {figures}, deleted {len(deleted)}, {elapsed}")
