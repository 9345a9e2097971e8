"""Import and export (issue 9): ``appliance import`` against storing the photos bare, and the
streamed Camtrap DP ZIP against reading the photos and their CRC-32, with its peak allocations.
"""

import dataclasses
import time
import tracemalloc
import zlib
from pathlib import Path

from appliance import config as config_module
from appliance import thumbnails
from appliance.bench import plan
from appliance.bench.measuring import _progress
from appliance.exc import ApplianceError
from appliance.export import CHUNK_BYTES, Package, zip_stream
from appliance.importer import import_photos
from appliance.store import CaptureStore, IndexReader
from hw.clock import SystemClock


def transfer_figures(scratch: Path, photo: bytes) -> dict:
    """``appliance import`` and the Camtrap DP ZIP, with :data:`plan.TRANSFER_PHOTOS` distinct copies of
    ``photo`` (bytes appended after its end) in ``scratch``.  Each way runs in two halves, in the
    order ABBA, so that a busy moment weighs on both alike.

    Returns ``transfer``: ``photos``, ``import_per_s`` and ``bare_per_s`` (photos stored per
    second), ``import_ratio`` (import / bare), ``zip_mb_per_s`` and ``read_crc_mb_per_s``,
    ``zip_ratio`` (time to stream the ZIP / time to read and CRC the photos), ``zip_bytes``,
    ``zip_peak_bytes`` (tracemalloc peak while streaming, in a third, untimed run: tracing slows
    every allocation).
    """
    halves = [scratch / "first", scratch / "second"]
    for half, folder in enumerate(halves):
        folder.mkdir()
        for n in range(half, plan.TRANSFER_PHOTOS, 2):
            (folder / f"{n:04d}.jpg").write_bytes(photo + n.to_bytes(4, "big"))
    max_px, clock = config_module.load().thumbnail_max_px, SystemClock()
    bare, imported = CaptureStore(scratch / "bare"), CaptureStore(scratch / "imported")
    seconds = {"bare": 0.0, "import": 0.0, "zip": 0.0, "read": 0.0}
    try:
        for step, folder in [("bare", halves[0]), ("import", halves[0]), ("import", halves[1]),
                             ("bare", halves[1])]:  # fmt: skip
            _progress(f"import: {plan.TRANSFER_PHOTOS} photos, {step}")
            started = time.perf_counter()
            if step == "bare":
                for path in sorted(folder.iterdir()):
                    jpeg = path.read_bytes()
                    thumbnail = thumbnails.from_jpeg(jpeg, max_px)
                    bare.add(jpeg, thumbnail, timestamp=clock.now(), trigger="import")
            else:
                summary = import_photos(
                    folder, IndexReader(scratch / "imported"), imported, thumbnail_max_px=max_px
                )
                if summary.skipped or summary.duplicates:
                    raise ApplianceError(f"bench: import skipped photos: {summary.skipped}")
            seconds[step] += time.perf_counter() - started
    finally:
        bare.close()
        imported.close()
    _progress("export: the Camtrap DP ZIP")
    reader = IndexReader(scratch / "imported")
    config = dataclasses.replace(config_module.load(), latitude=51.496, longitude=4.774)

    def stream_zip() -> int:
        return sum(len(chunk) for chunk in zip_stream(Package(config, reader)))

    def read_and_crc() -> None:
        crc = 0
        for row in reader.latest(plan.TRANSFER_PHOTOS):
            with open(scratch / "imported" / row["media_path"], "rb") as file:
                for chunk in iter(lambda file=file: file.read(CHUNK_BYTES), b""):
                    crc = zlib.crc32(chunk, crc)

    for step in ("read", "zip", "zip", "read"):
        started = time.perf_counter()
        if step == "zip":
            stream_zip()
        else:
            read_and_crc()
        seconds[step] += time.perf_counter() - started
    tracemalloc.start()
    try:
        zip_bytes = stream_zip()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        _progress("")
    photo_bytes = plan.TRANSFER_PHOTOS * len(photo)
    return {
        "transfer": {
            "photos": plan.TRANSFER_PHOTOS,
            "import_per_s": round(plan.TRANSFER_PHOTOS / seconds["import"], 2),
            "bare_per_s": round(plan.TRANSFER_PHOTOS / seconds["bare"], 2),
            "import_ratio": round(seconds["bare"] / seconds["import"], 3),
            "zip_bytes": zip_bytes,
            "zip_mb_per_s": round(2 * zip_bytes / seconds["zip"] / 1e6, 1),
            "read_crc_mb_per_s": round(2 * photo_bytes / seconds["read"] / 1e6, 1),
            "zip_ratio": round(seconds["zip"] / seconds["read"], 3),
            "zip_peak_bytes": peak,
        }
    }
