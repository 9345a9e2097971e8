"""``appliance import``: real folders of real photos, and of the broken files found in the field,
through the real command into a real store."""

import csv
import datetime
import io
import json
import os
import signal
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import pytest
from PIL import Image, ImageChops, ImageStat
from test_export import DEPLOYMENT, read_csv, validate

from appliance.cli import main
from appliance.reconcile import open_store
from appliance.store import DB_NAME, CaptureStore, IndexReader

EXAMPLE = Path(__file__).resolve().parents[2] / "shared" / "camtrap-dp" / "example"


def run_import(tmp_path, folder, *args, config=""):
    path = tmp_path / "appliance.toml"
    path.write_text(config)
    data_dir = tmp_path / "data"
    return main(["import", str(folder), *args, "--config", str(path), "--data-dir", str(data_dir)])


def summary_line(out: str) -> str:
    return out.strip().splitlines()[-1]


def rows(tmp_path) -> list[dict]:
    return IndexReader(tmp_path / "data").latest(1000)


def assert_whole(tmp_path):
    """Every row has its photo and thumbnail, and no file is without its row: a full check of the
    store finds nothing to repair."""
    data_dir = tmp_path / "data"
    for row in rows(tmp_path):
        assert (data_dir / row["media_path"]).is_file() and (data_dir / row["thumbnail_path"]).is_file()
    assert len(list((data_dir / "media").rglob("*.jpg"))) == len(rows(tmp_path))
    store, report = open_store(data_dir, thumbnail_max_px=320, full=True)
    store.close()
    assert report.repairs == 0 and not report.stray, report.summary()


def test_the_samples_are_imported_exactly_once(tmp_path, samples, capsys):
    photos = sorted(p for p in samples.rglob("*") if p.suffix.lower() == ".jpg")
    assert run_import(tmp_path, samples) == 0
    out = capsys.readouterr().out
    assert summary_line(out) == (
        f"{samples}: imported {len(photos)} photos, 0 duplicates, 1 skipped, of {len(photos) + 1} files"
    )
    assert f"skipped  {samples / 'LICENSES.txt'}: not an image Pillow can read" in out
    imported = rows(tmp_path)
    assert sorted(json.loads(r["metadata"])["import"]["path"] for r in imported) == sorted(
        str(p.relative_to(samples)) for p in photos
    )
    by_name = {json.loads(r["metadata"])["import"]["name"]: r for r in imported}
    for path in photos:
        row = by_name[path.name]
        assert (tmp_path / "data" / row["media_path"]).read_bytes() == path.read_bytes()  # byte for byte
        assert (row["trigger"], row["clock_synced"], row["capture_method"]) == ("import", 0, None)
    assert_whole(tmp_path)

    assert run_import(tmp_path, samples) == 0
    assert summary_line(capsys.readouterr().out) == (
        f"{samples}: imported 0 photos, {len(photos)} duplicates, 1 skipped, of {len(photos) + 1} files"
    )
    assert len(rows(tmp_path)) == len(photos)


def test_capture_times_come_from_exif_with_its_offset_else_the_given_one_else_mtime(
    tmp_path, samples, capsys
):
    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("full-res/nokia_8.3_9mp.jpg", "camtrap-dp-burst/20210531082538-RCNX0031.JPG",
                 "camera-traps/megadetector_pheasant_web.jpg"):  # fmt: skip
        (folder / Path(name).name).write_bytes((samples / name).read_bytes())
    os.utime(folder / "megadetector_pheasant_web.jpg", (0, 1_700_000_000))
    assert run_import(tmp_path, folder, "--utc-offset=-05:30") == 0
    times = {json.loads(r["metadata"])["import"]["name"]: r for r in rows(tmp_path)}
    # 2022:08:14 14:12:31 with OffsetTimeOriginal +03:00: the offset given does not apply.
    assert times["nokia_8.3_9mp.jpg"]["captured_at"] == "2022-08-14T11:12:31.000+00:00"
    # 2021:04:11 20:43:09, no offset: the one given.
    assert times["20210531082538-RCNX0031.JPG"]["captured_at"] == "2021-04-12T02:13:09.000+00:00"
    assert json.loads(times["20210531082538-RCNX0031.JPG"]["metadata"])["import"]["time_source"] == (
        "EXIF DateTimeOriginal, offset assumed -05:30"
    )
    # No EXIF time at all: the file's modification time.
    assert times["megadetector_pheasant_web.jpg"]["captured_at"] == "2023-11-14T22:13:20.000+00:00"
    assert run_import(tmp_path, folder, "--utc-offset", "CET") == 2
    assert "not a UTC offset" in capsys.readouterr().err


def _mean_difference(a: Image.Image, b: Image.Image) -> float:
    return sum(ImageStat.Stat(ImageChops.difference(a.convert("L"), b.convert("L"))).mean)


def test_thumbnails_are_upright_by_the_exif_orientation(tmp_path, photo):
    folder = tmp_path / "in"
    folder.mkdir()
    original = Image.open(io.BytesIO(photo))
    exif = original.getexif()
    exif[0x0112] = 6  # Orientation: the camera was turned; display rotated 90° clockwise
    out = io.BytesIO()
    original.save(out, "JPEG", quality=92, exif=exif.tobytes())
    (folder / "turned.jpg").write_bytes(out.getvalue())
    assert run_import(tmp_path, folder) == 0
    [row] = rows(tmp_path)
    thumbnail = Image.open(tmp_path / "data" / row["thumbnail_path"])
    assert thumbnail.width < thumbnail.height == 320  # portrait, from a 2048x1440 landscape photo
    expected = original.transpose(Image.Transpose.ROTATE_270).resize(thumbnail.size)
    unturned = original.resize(thumbnail.size[::-1]).resize(thumbnail.size)
    assert _mean_difference(thumbnail, expected) < 10 < _mean_difference(thumbnail, unturned)
    assert json.loads(row["metadata"])["exif"]["Orientation"] == 6


def _with_exif(jpeg: bytes, tiff: bytes) -> bytes:
    """``jpeg`` with an APP1 Exif segment holding ``tiff`` right after SOI (read before its own)."""
    segment = b"Exif\x00\x00" + tiff
    return b"\xff\xd8\xff\xe1" + struct.pack(">H", len(segment) + 2) + segment + jpeg[2:]


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


@pytest.fixture
def messy(tmp_path, samples, photo) -> dict[str, str]:
    """A folder of the files found on real cards, made from real photos: ``{name: "imported" or
    the start of the reason it is skipped}``."""
    folder = tmp_path / "messy"
    (folder / "sub").mkdir(parents=True)
    made = {}

    def put(name, data, outcome):
        (folder / name).write_bytes(data)
        made[name] = outcome

    put("truncated.jpg", photo[: len(photo) // 2], "damaged: OSError: image file is truncated")
    put("header-only.jpg", photo[:600], "damaged:")
    cmyk = io.BytesIO()
    Image.open(io.BytesIO(photo)).convert("CMYK").save(cmyk, "JPEG")
    put("cmyk.jpg", cmyk.getvalue(), "imported")
    put(
        "sub/mpo.jpg",
        (samples / "camera-traps" / "megadetector_sage-grouse-raw.jpg").read_bytes(),
        "imported",
    )
    # EXIF whose first IFD entry points past the end, and whose IFD links back to itself.
    loop = b"II*\x00" + struct.pack("<IH", 8, 1) + struct.pack("<HHII", 0x010F, 2, 4, 0x41414141)
    put("exif-loop.jpg", _with_exif(photo, loop + struct.pack("<I", 8)), "imported")
    put("exif-huge-count.jpg", _with_exif(photo, b"II*\x00" + struct.pack("<IH", 8, 0xFFFF)), "imported")
    put("exif-garbage.jpg", _with_exif(photo, os.urandom(64)), "imported")
    padded = Image.open(io.BytesIO(photo))
    exif = padded.getexif()
    exif[0x010F], exif[0x0110] = "Canon\x00\x00\x00\x00", "EOS 5D\x00\x00   "
    out = io.BytesIO()
    padded.save(out, "JPEG", exif=exif.tobytes())
    put("nul-padded.jpg", out.getvalue(), "imported")
    grey16 = Image.new("I;16", (64, 48), 40000)
    out = io.BytesIO()
    grey16.save(out, "PNG")
    put("grey16.png", out.getvalue(), "imported")
    # A PNG header claiming 40000 x 40000 pixels: Pillow's decompression-bomb limit.
    ihdr = _png_chunk(b"IHDR", struct.pack(">IIBBBBB", 40000, 40000, 8, 2, 0, 0, 0))
    put("bomb.png", b"\x89PNG\r\n\x1a\n" + ihdr + _png_chunk(b"IEND", b""), "too many pixels")
    # 100 MP: past Image.MAX_IMAGE_PIXELS, where Pillow only warns.
    ihdr = _png_chunk(b"IHDR", struct.pack(">IIBBBBB", 10000, 10000, 8, 2, 0, 0, 0))
    put("warned.png", b"\x89PNG\r\n\x1a\n" + ihdr + _png_chunk(b"IEND", b""), "too many pixels")
    # 30 MP: a legal size, but more than a Pi Zero can decode whole to convert.
    ihdr = _png_chunk(b"IHDR", struct.pack(">IIBBBBB", 6000, 5000, 8, 6, 0, 0, 0))
    put("large.png", b"\x89PNG\r\n\x1a\n" + ihdr + _png_chunk(b"IEND", b""), "PNG of 6000x5000 is too large")
    put("notes.txt", b"deployment notes\n", "not an image")
    put("random.jpg", os.urandom(4096), "not an image")
    put("empty.jpg", b"", "empty file")
    put("sub/.DS_Store", b"\x00\x00\x00\x01Bud1" + bytes(100), "not an image")
    os.mkfifo(folder / "sub" / "fifo.jpg")  # reading it would wait for ever
    made["sub/fifo.jpg"] = "not a regular file"
    os.symlink(folder / "gone.jpg", folder / "dangling.jpg")
    made["dangling.jpg"] = "cannot read: No such file or directory"
    os.symlink(folder, folder / "sub" / "loop")  # a folder link back up: never followed
    made["sub/loop"] = "not a regular file"
    return made


def test_a_folder_of_broken_files_is_skipped_file_by_file_with_reasons(tmp_path, messy, capsys):
    folder = tmp_path / "messy"
    assert run_import(tmp_path, folder) == 0
    out = capsys.readouterr().out
    expected_skipped = {name: reason for name, reason in messy.items() if reason != "imported"}
    for name, reason in expected_skipped.items():
        line = next((line for line in out.splitlines() if line.startswith(f"skipped  {folder / name}: ")), "")
        assert line.startswith(f"skipped  {folder / name}: {reason}"), (name, out)
    imported = [name for name, outcome in messy.items() if outcome == "imported"]
    assert summary_line(out) == (
        f"{folder}: imported {len(imported)} photos, 0 duplicates, {len(expected_skipped)} skipped, "
        f"of {len(messy)} files"
    )
    by_name = {json.loads(r["metadata"])["import"]["path"]: r for r in rows(tmp_path)}
    assert sorted(by_name) == sorted(imported)
    assert json.loads(by_name["nul-padded.jpg"]["metadata"])["exif"]["Make"] == "Canon"
    assert json.loads(by_name["nul-padded.jpg"]["metadata"])["exif"]["Model"] == "EOS 5D"
    assert json.loads(by_name["exif-loop.jpg"]["metadata"])["exif"] == {"Make": "AAAA"}
    assert f"note     {folder / 'exif-huge-count.jpg'}: EXIF partly damaged" in out
    # The 16-bit grey is scaled to 8 bits (40000 of 65535 is 155 of 255), not clipped to white.
    grey = Image.open(tmp_path / "data" / by_name["grey16.png"]["media_path"])
    assert grey.format == "JPEG" and abs(grey.convert("L").getpixel((10, 10)) - 155) <= 2
    assert json.loads(by_name["grey16.png"]["metadata"])["import"]["converted_from"] == "PNG"
    cmyk = Image.open(tmp_path / "data" / by_name["cmyk.jpg"]["thumbnail_path"])
    assert cmyk.mode == "RGB" and max(cmyk.size) == 320
    assert_whole(tmp_path)


def test_with_import_convert_off_other_formats_are_skipped(tmp_path, messy, capsys):
    assert run_import(tmp_path, tmp_path / "messy", config="import_convert = false\n") == 0
    assert f"skipped  {tmp_path / 'messy' / 'grey16.png'}: PNG is not JPEG (import_convert = false)" in (
        capsys.readouterr().out
    )


def test_a_dry_run_writes_nothing_and_reports_the_same(tmp_path, samples, capsys):
    assert run_import(tmp_path, samples / "camtrap-dp-burst", "--dry-run") == 0
    assert summary_line(capsys.readouterr().out).endswith(
        "would import 10 photos, 0 duplicates, 0 skipped, of 10 files"
    )
    assert not (tmp_path / "data").exists()
    assert run_import(tmp_path, samples / "camtrap-dp-burst") == 0
    assert run_import(tmp_path, samples, "--dry-run") == 0
    assert ": would import 11 photos, 10 duplicates, 1 skipped" in summary_line(capsys.readouterr().out)


def test_the_import_is_refused_while_the_appliance_runs(tmp_path, samples, capsys):
    store = CaptureStore(tmp_path / "data")
    try:
        assert run_import(tmp_path, samples / "camtrap-dp-burst") == 1
        assert f"is in use by process {os.getpid()}: stop it first" in capsys.readouterr().err
        assert store.db["captures"].count == 0
        assert run_import(tmp_path, samples / "camtrap-dp-burst", "--dry-run") == 0  # only reads
    finally:
        store.close()


def test_the_import_stops_before_the_free_space_falls_below_the_floor(tmp_path, samples, capsys):
    free = os.statvfs(tmp_path).f_bavail * os.statvfs(tmp_path).f_frsize
    config = f"capture_min_free_bytes = {free - 1_000_000}\n"  # room for about two photos
    assert run_import(tmp_path, samples / "camtrap-dp-burst", config=config) == 1
    captured = capsys.readouterr()
    assert "would fall below capture_min_free_bytes" in captured.err
    assert 1 <= len(rows(tmp_path)) < 10
    assert_whole(tmp_path)


def test_an_interrupt_ends_the_import_between_photos(tmp_path, photo, run_config):
    """SIGINT to the real command: it stops after the photo being stored, exits 1, and what it
    imported is whole; run again, it imports the rest."""
    folder = tmp_path / "many"
    folder.mkdir()
    for n in range(200):  # distinct photos: bytes after the JPEG's end differ
        (folder / f"{n:03d}.jpg").write_bytes(photo + n.to_bytes(2, "big"))
    command = [sys.executable, "-m", "appliance", "import", str(folder), "--config", str(run_config),
               "--data-dir", str(tmp_path / "data")]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not (tmp_path / "data" / DB_NAME).exists() or len(rows(tmp_path)) < 5:
        assert time.monotonic() < deadline and process.poll() is None
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 1, err
    assert "appliance: import: interrupted before" in err
    done = len(rows(tmp_path))
    assert 5 <= done < 200 and f"imported {done} photos" in out
    assert_whole(tmp_path)
    assert main([*command[3:]]) == 0
    assert len(rows(tmp_path)) == 200


def test_an_imported_camtrap_dp_burst_exports_as_the_official_example_has_it(tmp_path, burst_dir):
    """The example package's own photos, imported with its UTC offset, export with the same
    timestamps and file names, and the package validates."""
    assert run_import(tmp_path, burst_dir, "--utc-offset", "+01:00", "--trigger", "motion") == 0
    out = tmp_path / "package"
    config = tmp_path / "deployment.toml"
    config.write_text(DEPLOYMENT)
    assert (
        main(
            ["export", "camtrap-dp", str(out), "--config", str(config), "--data-dir", str(tmp_path / "data")]
        )
        == 0
    )
    result = validate(out)
    assert result.returncode == 0, result.stdout + result.stderr
    media = read_csv(out / "media.csv")
    ours = {m["fileName"]: (m["timestamp"], m["captureMethod"]) for m in media}
    with open(EXAMPLE / "media.csv", newline="", encoding="utf-8") as file:
        example = {
            m["fileName"]: (m["timestamp"], m["captureMethod"])
            for m in csv.DictReader(file)
            if m["fileName"] in ours
        }
    assert len(example) == 10
    for name, (stamp, method) in example.items():
        assert datetime.datetime.fromisoformat(ours[name][0]) == datetime.datetime.fromisoformat(stamp), name
        assert ours[name][1] == method == "activityDetection"
    [deployment] = read_csv(out / "deployments.csv")
    assert deployment["timestampIssues"] == "true"  # another camera's clock is not vouched for


def test_times_without_offset_take_this_machines_zone_with_its_summer_time(tmp_path, burst_dir, monkeypatch):
    monkeypatch.setenv("TZ", "Europe/Brussels")
    time.tzset()
    try:
        assert run_import(tmp_path, burst_dir) == 0
    finally:
        monkeypatch.undo()
        time.tzset()
    first = min(rows(tmp_path), key=lambda row: row["captured_at"])
    # 2021:04:11 20:43:09 in Brussels is summer time, +02:00 (in winter it would be +01:00).
    assert first["captured_at"] == "2021-04-11T18:43:09.000+00:00"
    assert (
        json.loads(first["metadata"])["import"]["time_source"]
        == "EXIF DateTimeOriginal, offset assumed +02:00"
    )


def test_a_store_that_fails_ends_the_import_with_what_was_done(tmp_path, burst_dir, faulty_disk, capsys):
    photos_renamed = []

    def third_photo(step, path):
        if step == "rename" and str(path).endswith(".jpg.tmp"):
            photos_renamed.append(path)
            return len(photos_renamed) == 3
        return False

    with faulty_disk(third_photo):
        assert run_import(tmp_path, burst_dir) == 1
    captured = capsys.readouterr()
    assert "appliance: import: stopped at " in captured.err and "No space left on device" in captured.err
    assert (
        summary_line(captured.out) == f"{burst_dir}: imported 2 photos, 0 duplicates, 0 skipped, of 10 files"
    )
    assert len(rows(tmp_path)) == 2
    assert_whole(tmp_path)
