"""The data directory as a closed world: every symlink trick inside it (a shard folder, a photo, a
temporary name linked elsewhere) leads nowhere: nothing outside is written, moved, deleted or
served, through the store, the checks, cleanup and the real command."""

import hashlib
import io
import os
import re
import subprocess
import sys

import pytest
import requests
from PIL import Image

from appliance import thumbnails
from appliance.cleanup import Cleanup, Policy
from appliance.cli import main
from appliance.datadir import DataDir, UnsafePath
from appliance.exc import StoreError
from appliance.reconcile import open_store
from appliance.status import StatusCollector
from appliance.store import (
    SHARDS,
    CaptureStore,
    IndexReader,
    durable,
    media_path,
    salvage,
    thumbnail_path,
    unsafe_layout,
)
from appliance.web import WebDeps, WebServer, make_app
from hw.clock import ManualClock


def a_jpeg(colour=(90, 140, 60)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (96, 64), colour).save(out, "JPEG")
    return out.getvalue()


def snapshot(folder) -> dict:
    """Everything under ``folder``: each entry's type, size, mtime and content hash (symlinks not
    followed), to compare before and after."""
    found = {}
    for top, dirs, files in os.walk(folder):
        for name in dirs + files:
            path = os.path.join(top, name)
            st = os.lstat(path)
            digest = None
            if os.path.isfile(path) and not os.path.islink(path):
                with open(path, "rb") as f:
                    digest = hashlib.sha256(f.read()).hexdigest()
            found[os.path.relpath(path, folder)] = (st.st_mode, st.st_size, st.st_mtime_ns, digest)
    return found


@pytest.fixture
def outside(tmp_path):
    """A folder outside the data directory, holding what a trick would reach: a JPEG named like a
    capture, a WebP named like a thumbnail, a temporary file of ours and a secret."""
    folder = tmp_path / "outside"
    folder.mkdir()
    (folder / ("ab" * 16 + ".jpg")).write_bytes(a_jpeg((200, 10, 10)))
    (folder / ("ab" * 16 + ".webp")).write_bytes(thumbnails.from_jpeg(a_jpeg(), 64))
    (folder / (".%s.jpg.tmp" % ("ab" * 16))).write_bytes(b"half a photo")
    (folder / "secret").write_bytes(b"not for the web")
    os.utime(folder / (".%s.jpg.tmp" % ("ab" * 16)), (0, 0))  # old: cleanup's orphan-temp age
    return folder


def stored(data_dir, n=3):
    store = CaptureStore(data_dir)
    clock = ManualClock()
    rows = [
        store.add(
            jpeg := a_jpeg((i, 100, 100)),
            thumbnails.from_jpeg(jpeg, 64),
            timestamp=clock.now(),
            trigger="motion",
        )
        for i in range(n)
    ]
    return store, rows


# --- DataDir itself --------------------------------------------------------------------------------


def test_a_symlinked_folder_on_the_way_is_refused_not_followed(tmp_path, outside):
    (tmp_path / "data" / "media").mkdir(parents=True)
    (tmp_path / "data" / "media" / "ab").symlink_to(outside)
    files = DataDir(tmp_path / "data")
    with pytest.raises(UnsafePath, match="not followed"), files.folder("media/ab"):
        pass
    with pytest.raises(UnsafePath):
        files.read_bytes(f"media/ab/{'ab' * 16}.jpg")
    with pytest.raises(UnsafePath):
        files.publish("media/ab/new.jpg", b"x")
    assert not (outside / "new.jpg").exists()


def test_a_symlinked_or_special_file_is_neither_read_nor_removed(tmp_path, outside):
    data = tmp_path / "data"
    data.mkdir()
    (data / "link.jpg").symlink_to(outside / "secret")
    os.mkfifo(data / "fifo.jpg")
    files = DataDir(data)
    with files.folder() as root:
        for name in ("link.jpg", "fifo.jpg"):
            with pytest.raises(UnsafePath):
                root.read_bytes(name)  # a FIFO would block a plain open
            with pytest.raises(UnsafePath):
                root.unlink(name)
        assert root.regular_size("missing") is None
    assert (data / "link.jpg").is_symlink() and (outside / "secret").read_bytes() == b"not for the web"


def test_publish_replaces_a_symlink_at_its_temporary_or_final_name_never_its_target(tmp_path, outside):
    data = tmp_path / "data"
    data.mkdir()
    before = snapshot(outside)
    (data / ".photo.jpg.tmp").symlink_to(outside / "secret")
    (data / "photo.jpg").symlink_to(outside / "secret")
    with DataDir(data).folder() as root:
        root.publish("photo.jpg", b"ours")
    assert not (data / "photo.jpg").is_symlink() and (data / "photo.jpg").read_bytes() == b"ours"
    assert not (data / ".photo.jpg.tmp").exists()
    assert snapshot(outside) == before


# --- The layout, refused at start ------------------------------------------------------------------


@pytest.mark.parametrize(
    "trick",
    ["media/ab", "thumbnails/ab", "media", "damaged", "captures.db-wal", ".lock", "clean-shutdown"],
)
def test_a_symlink_in_the_layout_is_named_and_refused_by_the_store(tmp_path, outside, trick):
    data = tmp_path / "data"
    store, _ = stored(data)
    store.close()
    target = data / trick
    if target.is_dir():
        for path in sorted(target.rglob("*"), reverse=True):
            path.rmdir() if path.is_dir() else path.unlink()
        target.rmdir()
    elif target.exists():
        target.unlink()
    target.symlink_to(
        outside if trick in ("media/ab", "thumbnails/ab", "media", "damaged") else outside / "secret"
    )
    before = snapshot(outside)
    assert unsafe_layout(data) == [trick]
    with pytest.raises(StoreError, match=re.escape(trick)):
        CaptureStore(data)
    assert snapshot(outside) == before


def test_a_file_in_place_of_a_shard_folder_is_refused(tmp_path):
    data = tmp_path / "data"
    stored(data)[0].close()
    shard = unused_shard(data)
    (data / "thumbnails" / "zz").write_bytes(b"not a shard: left alone")  # not a shard name
    (data / "thumbnails" / shard).write_bytes(b"a file where a shard folder belongs")
    assert unsafe_layout(data) == [f"thumbnails/{shard}"]


def unused_shard(data) -> str:
    """A shard name no capture in ``data`` uses (their ids are random)."""
    return next(
        s for s in SHARDS if not (data / "media" / s).exists() and not (data / "thumbnails" / s).exists()
    )


def run_command(*args) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "appliance", *args], capture_output=True, text=True, timeout=60
    )


def test_run_and_check_refuse_a_shard_folder_linked_elsewhere_and_touch_nothing_there(
    tmp_path, outside, run_config
):
    data = tmp_path / "data"
    stored(data)[0].close()
    shard = unused_shard(data)
    (data / "media" / shard).symlink_to(outside)
    (data / "thumbnails" / shard).symlink_to(outside)
    before = snapshot(outside)
    run = run_command(
        "run",
        "--simulate",
        "--data-dir",
        str(data),
        "--config",
        str(run_config),
        "--port",
        "0",
        "--duration-s",
        "2",
    )
    assert run.returncode == 1
    assert f"preflight data layout: media/{shard}, thumbnails/{shard}" in run.stderr
    assert "would lead out of it" in run.stderr
    check = run_command("check", "--simulate", "--data-dir", str(data))
    assert check.returncode == 2 and f"media/{shard}, thumbnails/{shard}" in check.stdout
    assert snapshot(outside) == before
    assert IndexReader(data).get("ab" * 16) is None  # the foreign JPEG there was not indexed


# --- Files linked elsewhere, under the names of our files -------------------------------------------


def test_a_full_check_leaves_photos_and_thumbnails_linked_elsewhere_alone(tmp_path, outside):
    data = tmp_path / "data"
    store, rows = stored(data, 4)
    store.close(clean=False)
    before = snapshot(outside)
    victim = rows[0]
    (data / victim["media_path"]).unlink()
    (data / victim["media_path"]).symlink_to(outside / ("ab" * 16 + ".jpg"))  # a photo: elsewhere
    (data / rows[1]["thumbnail_path"]).unlink()
    (data / rows[1]["thumbnail_path"]).symlink_to(outside / ("ab" * 16 + ".webp"))
    shard = data / "media" / rows[2]["id"][:2]
    temp = shard / (".%s.jpg.tmp" % ("cd" * 16))
    temp.symlink_to(outside / (".%s.jpg.tmp" % ("ab" * 16)))  # a temporary name: elsewhere
    orphan = shard / ("ef" * 15 + rows[2]["id"][:2] + ".jpg")
    orphan.symlink_to(outside / ("ab" * 16 + ".jpg"))  # a photo without a row: elsewhere

    store, report = open_store(data, thumbnail_max_px=64, full=True)
    store.close()
    assert snapshot(outside) == before
    assert temp.is_symlink() and orphan.is_symlink() and (data / victim["media_path"]).is_symlink()
    assert report.recovered == 0 and report.temp_removed == 0 and report.damaged == 0
    assert set(report.stray) >= {
        victim["media_path"], rows[1]["thumbnail_path"], temp.relative_to(data).as_posix(),
        orphan.relative_to(data).as_posix(),
    }  # fmt: skip
    reader = IndexReader(data)
    assert reader.get(victim["id"]) is None  # its photo is not in the data directory: no row
    assert reader.get(rows[1]["id"])["thumbnail_path"] == rows[1]["thumbnail_path"]  # remade in place
    assert not (data / rows[1]["thumbnail_path"]).is_symlink()


def test_cleanup_deletes_its_captures_but_never_a_file_reached_through_a_symlink(tmp_path, outside):
    data = tmp_path / "data"
    store, rows = stored(data, 3)
    (data / rows[0]["media_path"]).unlink()
    (data / rows[0]["media_path"]).symlink_to(outside / "secret")
    shard = data / "media" / rows[1]["id"][:2]
    (shard / ".old.jpg.tmp").symlink_to(outside / (".%s.jpg.tmp" % ("ab" * 16)))  # an old temp: elsewhere
    before = snapshot(outside)
    cleanup = Cleanup(store, Policy(max_capture_age_days=0), interval_s=0)
    cleanup._next_shard = int(rows[1]["id"][:2], 16)  # this shard's orphan temporary files now
    cleanup.tick()
    freed, failed = store.delete(store.oldest_unprotected(3))
    store.close()
    assert snapshot(outside) == before
    assert (data / rows[0]["media_path"]).is_symlink() and failed == []
    assert (shard / ".old.jpg.tmp").is_symlink()


def test_a_capture_whose_temporary_name_is_linked_elsewhere_is_stored_in_the_data_directory(
    tmp_path, outside
):
    data = tmp_path / "data"
    store, _ = stored(data, 1)
    [reserved] = [i for i, reason in store.in_flight().items() if reason == "capture"]
    for rel in (media_path(reserved), thumbnail_path(reserved)):
        (data / rel).parent.mkdir(exist_ok=True)
        (data / rel).with_name(f".{(data / rel).name}.tmp").symlink_to(outside / "secret")
    before = snapshot(outside)
    jpeg = a_jpeg((1, 2, 3))
    row = store.add(jpeg, thumbnails.from_jpeg(jpeg, 64), timestamp=ManualClock().now(), trigger="button")
    store.close()
    assert row["id"] == reserved and (data / row["media_path"]).read_bytes() == jpeg
    assert snapshot(outside) == before


def test_the_export_leaves_out_a_photo_linked_elsewhere(tmp_path, outside):
    data = tmp_path / "data"
    store, rows = stored(data, 2)
    store.close()
    (data / rows[0]["media_path"]).unlink()
    (data / rows[0]["media_path"]).symlink_to(outside / "secret")
    config = tmp_path / "deployment.toml"
    config.write_text("latitude = 51.0\nlongitude = 4.0\n")
    out = tmp_path / "package"
    assert main(["export", "camtrap-dp", str(out), "--data-dir", str(data), "--config", str(config)]) == 0
    exported = {p.name for p in (out / "media").iterdir()}
    assert exported == {f"{rows[1]['id']}.jpg"}
    assert b"not for the web" not in b"".join(p.read_bytes() for p in (out / "media").iterdir())


def test_the_web_serves_no_file_reached_through_a_symlink(tmp_path, outside):
    data = tmp_path / "data"
    store, rows = stored(data, 2)
    store.close()
    (data / rows[0]["media_path"]).unlink()
    (data / rows[0]["media_path"]).symlink_to(outside / "secret")  # a photo: elsewhere
    (data / rows[0]["thumbnail_path"]).unlink()
    (data / rows[0]["thumbnail_path"]).symlink_to(outside / ("ab" * 16 + ".webp"))
    reader = IndexReader(data)
    status = StatusCollector(reader, mode="simulation", started_monotonic=0)
    server = WebServer(make_app(WebDeps(reader, status.collect)), "127.0.0.1", 0)
    try:
        for path in (f"media/{rows[0]['id']}.jpg", f"thumbnails/{rows[0]['id']}.webp"):
            answer = requests.get(server.url + path, timeout=5)
            assert answer.status_code == 404 and b"not for the web" not in answer.content
            assert "immutable" not in answer.headers["Cache-Control"]  # an error is not cached
        answer = requests.get(server.url + f"media/{rows[1]['id']}.jpg", timeout=5)
        assert answer.status_code == 200 and answer.content == (data / rows[1]["media_path"]).read_bytes()
        assert (
            answer.headers["Content-Type"] == "image/jpeg" and "immutable" in answer.headers["Cache-Control"]
        )
        assert requests.head(server.url + f"media/{rows[1]['id']}.jpg", timeout=5).status_code == 200
    finally:
        server.stop()


def test_after_a_crash_a_temporary_name_linked_elsewhere_is_left_alone_and_start_up_goes_on(
    tmp_path, outside
):
    data = tmp_path / "data"
    store, _ = stored(data, 1)
    [reserved] = [i for i, reason in store.in_flight().items() if reason == "capture"]
    store.close(clean=False)
    temp = data / media_path(reserved)
    temp.parent.mkdir(exist_ok=True)
    temp = temp.with_name(f".{temp.name}.tmp")
    temp.symlink_to(outside / (".%s.jpg.tmp" % ("ab" * 16)))
    before = snapshot(outside)
    store, report = open_store(data, thumbnail_max_px=64)
    store.close()
    assert report.scope == "interrupted" and report.temp_removed == 0
    assert temp.relative_to(data).as_posix() in report.stray and temp.is_symlink()
    assert snapshot(outside) == before


def test_a_rebuild_never_writes_the_new_index_through_a_symlink(tmp_path, outside, monkeypatch):
    data = tmp_path / "data"
    store, rows = stored(data, 3)
    store.close()
    with open(data / "captures.db", "r+b") as f:  # a damaged index, to be rebuilt at the next start
        f.write(b"\xff" * 100)
    real_salvage = salvage._salvage

    def planted_meanwhile(db_path):  # a symlink at the rebuilt index's name, after the layout check
        (data / "captures.db.new").symlink_to(outside / "rebuilt.db")
        return real_salvage(db_path)

    monkeypatch.setattr(salvage, "_salvage", planted_meanwhile)
    with pytest.raises(StoreError, match="captures.db.new is not a regular file"):
        CaptureStore(data)
    assert not (outside / "rebuilt.db").exists() and (data / "captures.db.new").is_symlink()


def test_a_new_database_replaced_while_sqlite_opens_it_is_not_written(tmp_path, outside, monkeypatch):
    folder = tmp_path / "data"
    folder.mkdir()
    real_connect = durable.sqlite3.connect

    def swapped(path, *args, **kwargs):  # between our O_EXCL file and SQLite's open by path
        os.unlink(path)
        os.symlink(outside / "elsewhere.db", path)
        return real_connect(path, *args, **kwargs)

    monkeypatch.setattr(durable.sqlite3, "connect", swapped)
    with DataDir(folder).folder() as root, pytest.raises(UnsafePath, match="was replaced"):
        durable.new_database(root, "captures.db.new")
    assert (outside / "elsewhere.db").stat().st_size == 0  # SQLite made it; nothing was written
