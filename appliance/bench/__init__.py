"""``appliance bench``: figures for the capture store, each against a baseline measured in the same
run, so that they mean the same on a busy CI machine and on a Pi.

Cleanup (issue 4): the time to choose a batch of the oldest unprotected captures in an index of
1,000, 100,000 and 1,000,000 captures (it must not grow with the index; the three indexes are
timed in turn, round after round, and the least time of each kept), and the time to delete
10,000 captures through the store against bare ``os.unlink`` of the same number of files of the
same sizes.

Web (issue 6): p50 and p99 latency of ``/``, ``/api/status`` and two ``/api/captures?before=``
pages (one in the middle of the index, one at its oldest end), served by the real
:class:`~appliance.web.WebServer` and asked over HTTP keep-alive, with an index of 1,000 and of
1,000,000 captures; the figure is the ratio of the p50s, which must not grow with the index size.

The capture path (issue 8), with one photo (``--photo``, or a synthetic 12 MP one):

- Durable ingest: captures acknowledged per second through the real :class:`CaptureStore` (the
  thumbnail from the camera's small frame, both files published, the index row committed) against
  the limit, the same JPEG bytes published alone (write, fsync, rename, folder fsync), in
  alternating rounds so that a busy moment weighs on both alike.  Memory: the peak RSS over that
  run and the RSS growth from an early capture to the last.
- Thumbnails: the store's way from the small frame and from the JPEG (a DCT-scaled decode), against
  the naive way (a full decode, ``thumbnail()``, Pillow's default WebP effort) and against the bare
  reduced-size decode.
- Trigger to acknowledgement: a real gpiozero ``MockFactory`` pin pressed, the real
  :class:`~appliance.loop.MainLoop` capturing from a :class:`~hw.camera.SimulatedCamera` replaying the
  photo; the camera's own time is taken off, and the rest compared with one bare durable write of
  the same bytes after each trigger.  Then the same presses while a full check recovers 25,000
  photos without rows beside capturing (issue 15), against the idle figure.
- Start-up: from process start to ``READY=1`` of a real ``appliance run --simulate``, with an empty
  index and with the web figures' index of 1,000,000 captures, each after a clean shutdown.
- Field figures for the card under the data directory: captures per minute the storage sustains
  with this photo, and hours of capturing until cleanup would start.

Import and export (issue 9), with :data:`plan.TRANSFER_PHOTOS` distinct copies of the photo:

- ``appliance import`` of a folder of them, against the bare way to store such files (read each,
  make its thumbnail from the JPEG, :meth:`CaptureStore.add`): what identifying, EXIF, the
  duplicate lookup and the checks add.
- The streamed Camtrap DP ZIP of those captures, against reading the same photos and computing
  their CRC-32, which every ZIP writer must; and the peak of Python's allocations while streaming
  (``tracemalloc``), which must not depend on the size of the package.
"""

import json
import shutil
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

from appliance.bench import plan
from appliance.bench.cleanup import cleanup_figures
from appliance.bench.index import RECENT_CAPTURES as RECENT_CAPTURES
from appliance.bench.index import _grow_index as _grow_index
from appliance.bench.ingest import field_figures, ingest_figures, thumbnail_figures
from appliance.bench.latency import latency_figures, recovery_figures
from appliance.bench.measuring import _progress
from appliance.bench.photo import synthetic_photo
from appliance.bench.startup import startup_figures
from appliance.bench.transfer import transfer_figures
from appliance.bench.web import web_figures
from appliance.exc import ApplianceError


def verdict(value: float | None, compare: str, target: float) -> dict:
    """One figure against its target: ``{"value", "compare" (">=" or "<="), "target", "verdict"}``,
    the verdict ``"PASS"`` or ``"MISS"`` (``"n/a"`` when the value could not be measured)."""
    if value is None:
        result = "n/a"
    else:
        result = "PASS" if (value >= target if compare == ">=" else value <= target) else "MISS"
    return {"value": value, "compare": compare, "target": target, "verdict": result}


def verdicts(figures: dict) -> dict:
    """Every figure that has a target, as :func:`verdict` gives it, by name."""
    memory = figures["memory"]
    growth = memory["growth_bytes"]
    return {
        "ingest_ratio": verdict(figures["ingest"]["ratio"], ">=", plan.INGEST_RATIO_TARGET),
        "thumbnail_speedup_vs_naive_jpeg": verdict(
            figures["thumbnail_speedup_vs_naive"]["jpeg"], ">=", plan.THUMBNAIL_SPEEDUP_TARGET["jpeg"]
        ),
        "thumbnail_speedup_vs_naive_frame": verdict(
            figures["thumbnail_speedup_vs_naive"]["frame"], ">=", plan.THUMBNAIL_SPEEDUP_TARGET["frame"]
        ),
        "thumbnail_vs_decode_floor": verdict(
            figures["thumbnail_vs_decode_floor"], "<=", plan.THUMBNAIL_FLOOR_TARGET
        ),
        "latency_p99_ratio": verdict(figures["latency_ratio"]["p99"], "<=", plan.LATENCY_P99_RATIO_TARGET),
        "recovery_latency_ratio": verdict(
            figures["recovery_latency_ratio"], "<=", plan.RECOVERY_LATENCY_TARGET
        ),
        "peak_rss_mib": verdict(
            round(memory["peak_rss_bytes"] / 2**20, 1), "<=", plan.PEAK_RSS_TARGET_BYTES / 2**20
        ),
        "rss_growth_mib": verdict(
            None if growth is None else round(growth / 2**20, 2), "<=", plan.RSS_GROWTH_TARGET_BYTES / 2**20
        ),
        "startup_ratio": verdict(figures["startup_ratio"], "<=", plan.STARTUP_RATIO_TARGET),
        "captures_per_minute": verdict(
            figures["field"]["captures_per_minute"], ">=", figures["field"]["rate_limit_per_minute"]
        ),
        "select_ratio_1m_vs_1k": verdict(figures["select_ratio_1m_vs_1k"], "<=", plan.SELECT_RATIO_TARGET),
        "import_ratio": verdict(figures["transfer"]["import_ratio"], ">=", plan.IMPORT_RATIO_TARGET),
        "zip_ratio": verdict(figures["transfer"]["zip_ratio"], "<=", plan.EXPORT_RATIO_TARGET),
        "zip_peak_mib": verdict(
            round(figures["transfer"]["zip_peak_bytes"] / 2**20, 2),
            "<=",
            plan.EXPORT_PEAK_TARGET_BYTES / 2**20,
        ),
    }


def measure(data_dir: Path, photo: bytes, captures: int) -> dict:
    """Every figure, measured in scratch folders under ``data_dir`` (removed afterwards)."""
    figures: dict = {}
    with tempfile.TemporaryDirectory(dir=data_dir, prefix="appliance-bench-") as scratch:
        photo_dir = Path(scratch) / "photo"
        photo_dir.mkdir()
        (photo_dir / "photo.jpg").write_bytes(photo)
        # First, while the process is small: the peak RSS is the capture path's, not the big indexes'.
        (Path(scratch) / "ingest").mkdir()
        figures |= ingest_figures(Path(scratch) / "ingest", photo_dir, captures)
        shutil.rmtree(Path(scratch) / "ingest")
        figures |= thumbnail_figures(photo_dir)
        (Path(scratch) / "latency").mkdir()
        figures |= latency_figures(
            Path(scratch) / "latency", photo_dir, min(plan.LATENCY_TRIGGERS, captures // 20)
        )
        shutil.rmtree(Path(scratch) / "latency")
        (Path(scratch) / "recovery").mkdir()
        figures |= recovery_figures(
            Path(scratch) / "recovery",
            photo_dir,
            min(plan.LATENCY_TRIGGERS, captures // 20),
            figures["latency_ms"]["acknowledged"],
        )
        shutil.rmtree(Path(scratch) / "recovery")
    figures["field"] = field_figures(data_dir, figures["ingest"])
    with tempfile.TemporaryDirectory(dir=data_dir, prefix="appliance-bench-") as scratch:
        figures |= transfer_figures(Path(scratch), photo)
    with tempfile.TemporaryDirectory(dir=data_dir, prefix="appliance-bench-") as scratch:
        figures |= cleanup_figures(Path(scratch))
    with tempfile.TemporaryDirectory(dir=data_dir, prefix="appliance-bench-") as scratch:
        figures |= web_figures(Path(scratch))
        # The web's largest index, closed cleanly by now: building another would take half a minute.
        (Path(scratch) / "startup").mkdir()
        figures |= startup_figures(Path(scratch) / "startup", Path(scratch) / str(plan.INDEX_SIZES[-1]))
    figures["verdicts"] = verdicts(figures)
    return figures


def _line(label: str, value: str, name: str, figures: dict) -> None:
    check = figures["verdicts"].get(name)
    target = f"{check['compare']} {check['target']:g}" if check else "no target"
    print(f"  {label:<54} {value:>12}   {target:<10} {check['verdict'] if check else ''}")


def print_table(figures: dict, photo_name: str) -> None:
    """The figures as the table of ``appliance bench``."""
    ingest, memory, field = figures["ingest"], figures["memory"], figures["field"]
    width, height = ingest["photo_size_px"]
    print(
        f"capture path: {photo_name}, {width}x{height}, {ingest['photo_bytes'] / 1e6:.2f} MB; "
        f"thumbnail {ingest['thumbnail_bytes']:,} bytes"
    )
    print(f"  {'figure':<54} {'value':>12}   {'target':<10} verdict")
    _line(
        f"ingest: store / bare durable write ({ingest['captures']:,} each)",
        f"{ingest['ratio']:.3f}",
        "ingest_ratio",
        figures,
    )
    print(
        f"    store {ingest['store_per_s']:.1f} captures/s (thumbnail from the frame, photo, thumbnail, row);"
        f" bare {ingest['limit_per_s']:.1f} writes/s"
    )
    part = ingest["per_capture_ms"]
    print(
        f"    ms per capture: thumbnail {part['thumbnail']:.1f} + add() {part['add']:.1f} (SHA-256 of the"
        f" photo {part['sha256']:.1f} of it), against a bare write of {part['bare_write']:.1f}"
    )
    ms = figures["thumbnail_ms"]
    speedup = figures["thumbnail_speedup_vs_naive"]
    _line(
        "thumbnail from the JPEG: naive / store's way",
        f"{speedup['jpeg']:.2f}",
        "thumbnail_speedup_vs_naive_jpeg",
        figures,
    )
    _line(
        "thumbnail from the small frame: naive / store's way",
        f"{speedup['frame']:.2f}",
        "thumbnail_speedup_vs_naive_frame",
        figures,
    )
    _line(
        "thumbnail from the JPEG: store's way / reduced decode",
        f"{figures['thumbnail_vs_decode_floor']:.2f}",
        "thumbnail_vs_decode_floor",
        figures,
    )
    print(
        f"    median ms of {plan.THUMBNAIL_RUNS}: frame {ms['frame']:.1f}, JPEG {ms['jpeg']:.1f}, "
        f"naive {ms['naive']:.1f}, reduced decode alone {ms['decode_floor']:.1f}"
    )
    latency = figures["latency_ms"]
    _line(
        f"trigger to ack, p99 / bare write p99 ({figures['latency_triggers']} presses)",
        f"{figures['latency_ratio']['p99']:.2f}",
        "latency_p99_ratio",
        figures,
    )
    print(
        f"    ms p50 / p99: acknowledged minus camera {latency['acknowledged']['p50']:.1f} / "
        f"{latency['acknowledged']['p99']:.1f}, bare write {latency['bare']['p50']:.1f} / "
        f"{latency['bare']['p99']:.1f} (p50 ratio {figures['latency_ratio']['p50']:.2f}); "
        f"camera {latency['camera']['p50']:.1f} / {latency['camera']['p99']:.1f}"
    )
    _line(
        f"recovery of {figures['recovery_photos']:,} photos: trigger to ack p99 / idle",
        f"{figures['recovery_latency_ratio']:.2f}",
        "recovery_latency_ratio",
        figures,
    )
    recovery = figures["recovery_latency_ms"]
    print(
        f"    ms p50 / p99: {recovery['p50']:.1f} / {recovery['p99']:.1f} (idle "
        f"{latency['acknowledged']['p50']:.1f} / {latency['acknowledged']['p99']:.1f}); "
        f"{figures['recovery_progress'] * 100:.0f} % of the check done by the last press, "
        f"{figures['recovery_photos_per_s']:.0f} photos/s"
    )
    growth = figures["verdicts"]["rss_growth_mib"]["value"]
    _line(
        "memory: peak RSS over the ingest run, MiB",
        f"{memory['peak_rss_bytes'] / 2**20:.1f}",
        "peak_rss_mib",
        figures,
    )
    _line(
        f"memory: RSS growth, capture {memory['growth_from']:,} to {ingest['captures']:,}, MiB",
        "n/a" if growth is None else f"{growth:.2f}",
        "rss_growth_mib",
        figures,
    )
    startup = figures["startup_s"]
    _line(
        f"start-up to READY=1: {figures['startup_index_size']:,} captures / empty",
        f"{figures['startup_ratio']:.2f}",
        "startup_ratio",
        figures,
    )
    print(
        f"    median s of {plan.STARTUP_RUNS}: empty {startup['empty']:.3f}, "
        f"{figures['startup_index_size']:,} captures {startup['full']:.3f}"
    )
    _line(
        "field: captures per minute the storage sustains",
        f"{field['captures_per_minute']:,}",
        "captures_per_minute",
        figures,
    )
    for per_hour, hours in field["hours_to_cleanup"].items():
        _line(
            f"field: hours until cleanup starts, at {per_hour / 60:g} capture(s)/min",
            f"{hours:,.1f}",
            "",
            figures,
        )
    print(
        f"    {field['bytes_per_capture'] / 1e6:.2f} MB per capture; {field['free_bytes'] / 1e9:.1f} GB free,"
        f" cleanup starts below {field['cleanup_start_free_bytes'] / 1e9:.1f} GB (default config)"
    )
    transfer = figures["transfer"]
    _line(f"import: appliance import / bare store ({transfer['photos']} photos)",
          f"{transfer['import_ratio']:.2f}", "import_ratio", figures)  # fmt: skip
    print(f"    {transfer['import_per_s']:.1f} photos/s imported, {transfer['bare_per_s']:.1f} stored bare")
    _line("export: streamed ZIP / read and CRC-32 of the photos", f"{transfer['zip_ratio']:.2f}",
          "zip_ratio", figures)  # fmt: skip
    _line(f"export: peak allocations streaming {transfer['zip_bytes'] / 1e6:.0f} MB of ZIP, MiB",
          f"{transfer['zip_peak_bytes'] / 2**20:.2f}", "zip_peak_mib", figures)  # fmt: skip
    print(
        f"    ZIP {transfer['zip_mb_per_s']:,.0f} MB/s; "
        f"read and CRC-32 {transfer['read_crc_mb_per_s']:,.0f} MB/s"
    )


def main(
    data_dir: str | None, as_json: bool, *, photo: str | None = None, captures: int = plan.CAPTURES
) -> int:
    """``appliance bench``: measure in ``data_dir`` (default: the temporary folder) with the JPEG
    at ``photo`` (default: :func:`synthetic_photo`) and ``captures`` captures; print the figures
    as a table, or as one JSON object.  Returns 0 whatever the verdicts (a measurement, not a
    test), 1 when the benchmark itself failed, 2 for a bad argument."""
    if captures < plan.MIN_CAPTURES:
        print(f"appliance bench: --captures must be at least {plan.MIN_CAPTURES}", file=sys.stderr)
        return 2
    try:
        if photo is None:
            _progress("making a synthetic 12 MP photo")
            jpeg, photo_name = synthetic_photo(), "synthetic photo (jpeg_quality 90)"
        else:
            jpeg, photo_name = Path(photo).read_bytes(), photo
        started = time.monotonic()
        figures = measure(Path(data_dir or tempfile.gettempdir()), jpeg, captures)
    except (ApplianceError, OSError, sqlite3.Error) as exc:
        _progress("")
        print(f"appliance bench: failed: {exc}", file=sys.stderr)
        return 1
    figures["photo"] = photo_name
    figures["bench_s"] = round(time.monotonic() - started, 1)
    if as_json:
        print(json.dumps(figures))
        return 0
    print_table(figures, photo_name)
    print(
        "cleanup: choosing a batch of the oldest unprotected captures "
        f"(least of {plan.SELECT_RUNS}, sizes interleaved)"
    )
    for size, ms in figures["select_batch_ms"].items():
        print(f"  {size:>9,} captures   {ms:8.3f} ms")
    check = figures["verdicts"]["select_ratio_1m_vs_1k"]
    print(
        f"  plan: {figures['select_plan']}\n  ratio {plan.INDEX_SIZES[-1]:,} / {plan.INDEX_SIZES[0]:,}: "
        f"{figures['select_ratio_1m_vs_1k']}   target <= {check['target']:g}  {check['verdict']}"
    )
    print(f"cleanup: deleting {plan.DELETED:,} captures (photo + thumbnail each)")
    print(f"  through the store  {figures['delete_s']:8.3f} s   (rows, files, folder fsyncs, in batches)")
    print(f"  bare os.unlink     {figures['unlink_s']:8.3f} s   (the same number of files, no fsync)")
    print(f"  ratio              {figures['delete_vs_unlink']:8.2f}   (no target: the price of the fsyncs)")
    small, large = figures["web_captures"]
    print(
        f"web: latency over HTTP keep-alive, p50 / p99 in ms of {plan.WEB_REQUESTS} requests each "
        f"(after {plan.WEB_WARMUP} to warm up)"
    )
    recent = ", ".join(
        f"{c['last_hour']} / {c['last_24h']} of {size:,}" for size, c in figures["web_captures"].items()
    )
    print(f"  captures in the last hour / 24 h: {recent}")
    header = f"{small:,} captures", f"{large:,} captures", f"ratio p50 (target <= {plan.WEB_RATIO_TARGET})"
    print(f"  {'route':<40} {header[0]:>19} {header[1]:>19}   {header[2]}")
    for route, by_size in figures["web_ms"].items():
        cells = [f"{by_size[size]['p50']:8.3f} / {by_size[size]['p99']:8.3f}" for size in (small, large)]
        ratio, verdict_ = figures["web_ratio_1m_vs_1k"][route], figures["web_verdict"][route]
        print(f"  {route:<40} {cells[0]:>19} {cells[1]:>19}   {ratio:9.2f}  {verdict_}")
    print(f"({figures['bench_s']:.0f} s)")
    return 0
