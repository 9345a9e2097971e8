"""What storing a capture costs (issue 8): the durable ingest against bare durable writes, with
the memory it takes; the thumbnail against the naive way; and what that rate means on the card.
"""

import hashlib
import io
import resource
import shutil
import statistics
import time
from pathlib import Path

from PIL import Image

from appliance import config as config_module
from appliance import thumbnails
from appliance.bench import plan
from appliance.bench.measuring import _median_s, _progress
from appliance.bench.photo import _replay_shot
from appliance.cleanup import Policy, decide
from appliance.store import DB_NAME, CaptureStore, publish
from hw.clock import SystemClock

ROUND = 100  # captures per round; the store and the bare writes alternate rounds
# The RSS growth is measured from this capture to the last (from a quarter of the run when it is
# shorter than 10,000 captures: CI's --captures 1000 measures from capture 250).
GROWTH_FROM = 1_000
# Hours until cleanup are given at this capture rate (one a minute) and at the default rate limit.
FIELD_CAPTURES_PER_HOUR = 60


def _status_bytes(field: str) -> int | None:
    """``VmRSS`` or ``VmHWM`` of this process in bytes (Linux), or None."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _reset_peak_rss() -> str:
    """Start the peak RSS afresh (Linux: ``5`` to ``/proc/self/clear_refs`` resets ``VmHWM``), so
    that it covers what follows and not the photo made before.  Returns where the peak will be read."""
    try:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")
    except OSError:
        return "ru_maxrss since the process started"
    return "VmHWM since the ingest run started"


def _peak_rss(source: str) -> int:
    if source.startswith("VmHWM"):
        return _status_bytes("VmHWM")
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def ingest_figures(data_dir: Path, photo_dir: Path, captures: int) -> dict:
    """Store ``captures`` captures of the photo in ``photo_dir`` through a :class:`CaptureStore`
    in ``data_dir``, and publish its bytes as many times bare, in alternating rounds of
    :data:`ROUND`.  Each capture is what the main loop does after the camera: the thumbnail from
    the small frame (:func:`appliance.thumbnails.make`), then :meth:`CaptureStore.add`.

    Returns ``ingest`` (``photo_bytes``, ``thumbnail_bytes``, ``index_bytes_per_capture``,
    ``captures``, ``store_per_s``, ``limit_per_s``, ``ratio``) and ``memory`` (``peak_rss_bytes``
    over the run and where it was read, ``rss_bytes`` at capture ``growth_from`` and at the last,
    ``growth_bytes``).  Between rounds, untimed, the files written are deleted so the run needs
    the room of one round only; the index keeps every row, as it would on a card filling up.
    """
    defaults = config_module.load()
    shot = _replay_shot(photo_dir, defaults.camera_lores_size_px)
    jpeg, frame, max_px = shot.jpeg, shot.frame, defaults.thumbnail_max_px
    growth_from = GROWTH_FROM if captures >= 10 * GROWTH_FROM else captures // 4
    limit_dir = data_dir / "limit"
    limit_dir.mkdir()
    clock = SystemClock()
    store = CaptureStore(data_dir / "store")
    seconds = {"store": 0.0, "limit": 0.0}
    parts = {"thumbnail": 0.0, "add": 0.0}  # the store's time, split
    rss_bytes: dict[int, int | None] = {}
    done = thumbnail_bytes = 0

    def through_store(count: int) -> list[dict]:
        nonlocal done, thumbnail_bytes
        rows = []
        for _ in range(count):
            started = time.perf_counter()
            thumbnail = thumbnails.make(jpeg, frame, max_px)
            made = time.perf_counter()
            rows.append(
                store.add(jpeg, thumbnail, timestamp=clock.now(), trigger="motion", metadata=shot.metadata)
            )
            parts["thumbnail"] += made - started
            parts["add"] += time.perf_counter() - made
            thumbnail_bytes = len(thumbnail)
            done += 1
            if done == growth_from:
                rss_bytes[done] = _status_bytes("VmRSS")
        return rows

    def bare(count: int, first: int) -> list[Path]:
        paths = [limit_dir / f"{first + i:06d}.jpg" for i in range(count)]
        for path in paths:
            publish(path, jpeg)
        return paths

    peak_source = _reset_peak_rss()
    try:
        for round_number, first in enumerate(range(0, captures, ROUND)):
            count = min(ROUND, captures - first)
            _progress(f"ingest: {first:,} of {captures:,} captures, and as many bare writes")
            for step in ("store", "limit") if round_number % 2 == 0 else ("limit", "store"):
                started = time.perf_counter()
                written = through_store(count) if step == "store" else bare(count, first)
                seconds[step] += time.perf_counter() - started
                if step == "store":
                    written = [
                        data_dir / "store" / row[k]
                        for row in written
                        for k in ("media_path", "thumbnail_path")
                    ]
                for path in written:
                    path.unlink()
        rss_bytes[captures] = _status_bytes("VmRSS")
        peak = _peak_rss(peak_source)
    finally:
        store.close()
        _progress("")
    store_per_s, limit_per_s = captures / seconds["store"], captures / seconds["limit"]
    growth = None if None in rss_bytes.values() else rss_bytes[captures] - rss_bytes[growth_from]
    return {
        "ingest": {
            "photo_bytes": len(jpeg),
            "photo_size_px": list(Image.open(io.BytesIO(jpeg)).size),
            "thumbnail_bytes": thumbnail_bytes,
            "index_bytes_per_capture": round((data_dir / "store" / DB_NAME).stat().st_size / captures),
            "captures": captures,
            "store_per_s": round(store_per_s, 2),
            "limit_per_s": round(limit_per_s, 2),
            "ratio": round(store_per_s / limit_per_s, 3),
            # Where the store's time per capture goes: the thumbnail, then add(), of which the
            # SHA-256 of the photo (measured apart) is pure CPU.
            "per_capture_ms": {
                "thumbnail": round(parts["thumbnail"] / captures * 1000, 3),
                "add": round(parts["add"] / captures * 1000, 3),
                "sha256": round(_median_s(lambda: hashlib.sha256(jpeg).digest(), repeat=9) * 1000, 3),
                "bare_write": round(seconds["limit"] / captures * 1000, 3),
            },
        },
        "memory": {
            "peak_rss_bytes": peak,
            "peak_source": peak_source,
            "growth_from": growth_from,
            "rss_bytes": rss_bytes,
            "growth_bytes": growth,
        },
    }


def _naive_thumbnail(jpeg: bytes, max_px: int) -> bytes:
    with Image.open(io.BytesIO(jpeg)) as image:
        image.load()  # the full decode: thumbnail() alone would ask for a reduced one (draft)
        image.thumbnail((max_px, max_px))
        out = io.BytesIO()
        image.save(out, "WEBP")
    return out.getvalue()


def _reduced_decode(jpeg: bytes, max_px: int) -> None:
    with Image.open(io.BytesIO(jpeg)) as image:
        image.draft("RGB", (max_px, max_px))
        image.load()


def thumbnail_figures(photo_dir: Path) -> dict:
    """Median milliseconds of :data:`plan.THUMBNAIL_RUNS` of each way to make the thumbnail of the photo
    in ``photo_dir``, interleaved: ``frame`` (the store's, from the camera's small frame), ``jpeg``
    (the store's, from the JPEG), ``naive`` (full decode, ``thumbnail()``, WebP at Pillow's default
    effort) and ``decode_floor`` (the reduced-size decode alone).  Returns ``thumbnail_ms`` and
    ``thumbnail_speedup_vs_naive`` (``{"jpeg", "frame"}``) and ``thumbnail_vs_decode_floor``."""
    defaults = config_module.load()
    shot = _replay_shot(photo_dir, defaults.camera_lores_size_px)
    jpeg, frame, max_px = shot.jpeg, shot.frame, defaults.thumbnail_max_px
    ways = {
        "frame": lambda: thumbnails.make(jpeg, frame, max_px),
        "jpeg": lambda: thumbnails.make(jpeg, None, max_px),
        "naive": lambda: _naive_thumbnail(jpeg, max_px),
        "decode_floor": lambda: _reduced_decode(jpeg, max_px),
    }
    times = {name: [] for name in ways}
    for run in range(plan.THUMBNAIL_RUNS + 1):
        _progress(f"thumbnails: run {run + 1} of {plan.THUMBNAIL_RUNS + 1}")
        names = list(ways)
        for name in names[run % len(names) :] + names[: run % len(names)]:
            started = time.perf_counter()
            ways[name]()
            if run:  # the first run warms up
                times[name].append(time.perf_counter() - started)
    _progress("")
    ms = {name: round(statistics.median(seconds) * 1000, 3) for name, seconds in times.items()}
    return {
        "thumbnail_ms": ms,
        "thumbnail_frame_px": list(frame.size),
        "thumbnail_speedup_vs_naive": {
            "jpeg": round(ms["naive"] / ms["jpeg"], 2),
            "frame": round(ms["naive"] / ms["frame"], 2),
        },
        "thumbnail_vs_decode_floor": round(ms["jpeg"] / ms["decode_floor"], 2),
    }


def field_figures(data_dir: Path, ingest: dict) -> dict:
    """What the card under ``data_dir`` means in the field, with the photo measured and the
    default config: ``captures_per_minute`` the storage sustains (the store's rate; the camera's
    own time comes on top), ``bytes_per_capture`` (photo, thumbnail, index row), the free space
    and the free space at which cleanup would start, and ``hours_to_cleanup`` at
    :data:`FIELD_CAPTURES_PER_HOUR` and at the default ``max_captures_per_minute``."""
    defaults = config_module.load()
    usage = shutil.disk_usage(data_dir)
    per_capture = ingest["photo_bytes"] + ingest["thumbnail_bytes"] + ingest["index_bytes_per_capture"]
    hours, starts = {}, {}
    for per_hour in (FIELD_CAPTURES_PER_HOUR, defaults.max_captures_per_minute * 60):
        starts[per_hour] = decide(
            usage.total,
            usage.free,
            Policy.from_config(defaults),
            per_capture * per_hour,
            cleaning=False,
            capture_bytes=per_capture,
        ).start_bytes
        hours[per_hour] = round(max(0, usage.free - starts[per_hour]) / (per_capture * per_hour), 1)
    return {
        "captures_per_minute": round(ingest["store_per_s"] * 60),
        "rate_limit_per_minute": defaults.max_captures_per_minute,
        "bytes_per_capture": per_capture,
        "free_bytes": usage.free,
        "cleanup_start_free_bytes": starts[FIELD_CAPTURES_PER_HOUR],
        "hours_to_cleanup": hours,
    }
