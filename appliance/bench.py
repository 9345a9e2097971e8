"""``appliance bench``: figures for the capture store, each against a baseline measured in the same
run, so that they mean the same on a busy CI machine and on a Pi.

Cleanup (issue 4): the time to choose a batch of the oldest unprotected captures in an index of
1,000, 100,000 and 1,000,000 captures (it must not grow with the index), and the time to delete
10,000 captures through the store against bare ``os.unlink`` of the same number of files of the
same sizes.

Web (issue 6): p50 and p99 latency of ``/``, ``/api/status`` and two ``/api/captures?before=``
pages (one in the middle of the index, one at its oldest end), served by the real
:class:`~appliance.web.WebServer` and asked over HTTP keep-alive, with an index of 1,000 and of
1,000,000 captures; the figure is the ratio of the p50s, which must not grow with the index size.
"""

import contextlib
import datetime
import http.client
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from appliance.cleanup import BATCH_SIZE
from appliance.exc import ApplianceError
from appliance.store import CaptureStore, IndexReader, iso_utc
from appliance.web import PAGE_SIZE, WebServer, make_app

INDEX_SIZES = (1_000, 100_000, 1_000_000)
DELETED = 10_000
PHOTO_BYTES, THUMBNAIL_BYTES = 3_000, 300  # small files: the cost measured is the file system's
# The index rows' timeline: the last day is the same at every size (one capture every
# RECENT_INTERVAL_S, the newest NEWEST_AGE_S old: 30 in the last hour, 720 in the last 24 h, all
# within the smallest index), so that the status counts do the same work at every size, and the
# sizes differ only by the history before it, spread evenly back to HISTORY_S.
RECENT_CAPTURES, RECENT_INTERVAL_S, NEWEST_AGE_S = 720, 120, 30
HISTORY_S = 90 * 86400
METADATA = json.dumps({"ExposureTime": 10000, "AnalogueGain": 1.0})
WEB_REQUESTS, WEB_WARMUP = 200, 20  # per route and index size
# Issue 6: "pagination cost must not grow with the page number or the index size".
WEB_RATIO_TARGET = 1.5


def _progress(text: str) -> None:
    if sys.stderr.isatty():
        print(f"\r{text:<60}", end="", file=sys.stderr, flush=True)


# One statement per batch, so that SQLite, not Python, makes the rows.  MATERIALIZED: without it
# SQLite flattens the CTE and evaluates randomblob() once per use of the id, giving a row whose
# paths name another id.
_FILL = """
WITH RECURSIVE numbers(seq) AS (SELECT :first UNION ALL SELECT seq + 1 FROM numbers WHERE seq < :last),
rows AS MATERIALIZED (
    SELECT seq, lower(hex(randomblob(16))) AS id,
           CASE WHEN :total - seq < :recent THEN :newest_s + (:total - seq) * :interval_s
                ELSE 86400 + (:total - seq - :recent + 1) * :spread_s END AS age_s
    FROM numbers
)
INSERT INTO captures (id, seq, captured_at, clock_synced, boot_id, since_boot_s, trigger, capture_method,
                      event_id, media_path, thumbnail_path, bytes, width, height, sha256, protected,
                      recovered, metadata)
SELECT id, seq, strftime('%Y-%m-%dT%H:%M:%f', julianday(:now) - age_s / 86400.0) || '+00:00', 1,
       printf('%032x', CAST(age_s / 86400 AS INTEGER)), 86400 - age_s % 86400,
       CASE seq % 10 WHEN 6 THEN 'timelapse' WHEN 7 THEN 'timelapse' WHEN 8 THEN 'button'
                     WHEN 9 THEN 'manual' ELSE 'motion' END,
       CASE seq % 10 WHEN 6 THEN 'timeLapse' WHEN 7 THEN 'timeLapse' ELSE 'activityDetection' END,
       id, 'media/' || substr(id, 1, 2) || '/' || id || '.jpg',
       'thumbnails/' || substr(id, 1, 2) || '/' || id || '.webp',
       2500000 + seq * 7919 % 1500000, 4056, 3040, lower(hex(randomblob(32))), seq % 1000 = 0, 0, :metadata
FROM rows
"""


def _grow_index(store: CaptureStore, rows: int, *, total: int, now: datetime.datetime) -> None:
    """Add index rows (no files) up to ``rows`` captures, as fast as SQLite takes them.

    The rows are those of seq ``store.last_seq + 1`` to ``rows`` in an index of ``total`` captures
    (seq 1 to ``total``) ending at ``now`` (aware): the newest :data:`RECENT_CAPTURES` one every
    :data:`RECENT_INTERVAL_S`, the others spread evenly back to :data:`HISTORY_S` before ``now``.
    Triggers are mixed (6 in 10 motion, 2 timelapse, 1 button, 1 manual), one capture in 1,000 is
    protected, and every row has its thumbnail path (the files are not written).
    """
    spread_s = (HISTORY_S - 86400) / max(1, total - RECENT_CAPTURES)
    while store.last_seq < rows:
        last = min(rows, store.last_seq + 50_000)
        with store.db.atomic():
            store.db.execute(
                _FILL,
                {
                    "first": store.last_seq + 1, "last": last, "total": total, "now": iso_utc(now),
                    "recent": RECENT_CAPTURES, "newest_s": NEWEST_AGE_S, "interval_s": RECENT_INTERVAL_S,
                    "spread_s": spread_s, "metadata": METADATA,
                },
            )  # fmt: skip
            store.db["counters"].update("last_seq", {"value": last})
        store.last_seq = last
        _progress(f"building the index: {store.last_seq:,} captures")


def _median_s(work, repeat: int = 21) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        work()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def _write_files(paths: list[Path]) -> None:
    for path in paths:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"\0" * (THUMBNAIL_BYTES if path.suffix == ".webp" else PHOTO_BYTES))


def cleanup_figures(data_dir: Path) -> dict:
    """Measure cleanup in ``data_dir`` (created; it should be on the card to measure).  Returns the
    figures: ``select_batch_ms`` by index size, ``select_ratio_1m_vs_1k``, ``delete_s``,
    ``unlink_s`` and ``delete_vs_unlink``."""
    store = CaptureStore(data_dir)
    figures: dict = {"select_batch_ms": {}}
    now = datetime.datetime.now(datetime.UTC)
    try:
        for size in INDEX_SIZES:
            _grow_index(store, size, total=INDEX_SIZES[-1], now=now)
            seconds = _median_s(lambda: store.oldest_unprotected(BATCH_SIZE))
            figures["select_batch_ms"][size] = round(seconds * 1000, 3)
        figures["select_ratio_1m_vs_1k"] = round(
            figures["select_batch_ms"][INDEX_SIZES[-1]] / figures["select_batch_ms"][INDEX_SIZES[0]], 2
        )
        figures["select_plan"] = " ".join(
            row[3] for row in store.db.execute(
                "EXPLAIN QUERY PLAN SELECT id FROM captures WHERE protected = 0 ORDER BY seq LIMIT 500"
            )
        )  # fmt: skip

        _progress(f"writing {DELETED:,} captures' files twice")
        victims = store.oldest_unprotected(DELETED)
        _write_files([data_dir / row[k] for row in victims for k in ("media_path", "thumbnail_path")])
        baseline = [
            data_dir / "baseline" / f"{i:05d}{ext}" for i in range(DELETED) for ext in (".jpg", ".webp")
        ]
        _write_files(baseline)
        os.sync()  # both sets on the disk before either is deleted

        _progress("deleting through the store")
        started = time.perf_counter()
        for first in range(0, len(victims), BATCH_SIZE):
            store.delete(victims[first : first + BATCH_SIZE])
        figures["delete_s"] = round(time.perf_counter() - started, 3)
        _progress("deleting with bare os.unlink")
        started = time.perf_counter()
        for path in baseline:
            os.unlink(path)
        figures["unlink_s"] = round(time.perf_counter() - started, 3)
        figures["delete_vs_unlink"] = round(figures["delete_s"] / figures["unlink_s"], 2)
    finally:
        store.close()
        _progress("")
    return figures


def _get(connection: http.client.HTTPConnection, path: str) -> tuple[float, bytes]:
    """GET ``path`` on ``connection`` (kept alive); returns (seconds until the whole body was read,
    the body).  Raises :class:`ApplianceError` for an answer other than 200."""
    started = time.perf_counter()
    connection.request("GET", path)
    response = connection.getresponse()
    body = response.read()
    seconds = time.perf_counter() - started
    if response.status != 200:
        raise ApplianceError(f"bench: GET {path} answered {response.status}: {body[:200]!r}")
    return seconds, body


def web_routes(size: int) -> dict[str, str]:
    """The routes measured, by name, as paths for an index of seq 1 to ``size``."""
    return {
        "/": "/",
        "/api/status": "/api/status",
        "/api/captures?before=<middle>&limit=24": f"/api/captures?before={size // 2}&limit={PAGE_SIZE}",
        # The oldest full page: seq PAGE_SIZE down to 1.
        "/api/captures?before=<oldest>": f"/api/captures?before={PAGE_SIZE + 1}",
    }


def web_figures(data_dir: Path) -> dict:
    """Measure the web page in ``data_dir`` with an index of the smallest and of the largest of
    :data:`INDEX_SIZES` captures, each served by its own :class:`~appliance.web.WebServer` on
    loopback while its writer stays open, as in the appliance.

    Returns ``web_ms`` (``{route: {size: {"p50": ms, "p99": ms}}}``, over :data:`WEB_REQUESTS`
    after :data:`WEB_WARMUP`), ``web_ratio_1m_vs_1k`` (``{route: p50 at the largest / p50 at the
    smallest}``), ``web_ratio_target``, ``web_verdict`` (``{route: "PASS" or "MISS"}``) and
    ``web_captures`` (``{size: the status page's counts}``, to show they did the same work).
    Raises :class:`ApplianceError` when a route answers anything but 200 or the wrong captures.
    """
    sizes = (INDEX_SIZES[0], INDEX_SIZES[-1])
    now = datetime.datetime.now(datetime.UTC)  # one timeline: the same last day at both sizes
    times = {route: {size: [] for size in sizes} for route in web_routes(1)}
    counts = {}
    with contextlib.ExitStack() as stack:
        for size in sizes:
            store = CaptureStore(data_dir / str(size))
            stack.callback(store.close)
            _grow_index(store, size, total=size, now=now)
        # Connected only now: the server drops a connection idle for SOCKET_TIMEOUT_S.
        connections = {}
        for size in sizes:
            app = make_app(
                IndexReader(data_dir / str(size)), mode="simulation", started_monotonic=time.monotonic()
            )
            server = WebServer(app, "127.0.0.1", 0)
            stack.callback(server.stop)
            connections[size] = http.client.HTTPConnection(server.host, server.port, timeout=30)
            stack.callback(connections[size].close)
            counts[size] = json.loads(_get(connections[size], "/api/status")[1])["captures"]
            if counts[size]["total"] != size:
                raise ApplianceError(f"bench: /api/status counts {counts[size]['total']}, not {size}")
            for path in web_routes(size).values():
                body = _get(connections[size], path)[1]
                if path.startswith("/api/captures") and len(json.loads(body)["captures"]) != PAGE_SIZE:
                    raise ApplianceError(f"bench: {path} is not a full page")
        # Round robin over routes and sizes, the first size alternating, so that a moment when the
        # machine is busy, and whatever one request leaves in the caches, fall on all alike.
        for i in range(WEB_WARMUP + WEB_REQUESTS):
            _progress(f"web: round {i + 1} of {WEB_WARMUP + WEB_REQUESTS}")
            for route in times:
                for size in sizes if i % 2 else sizes[::-1]:
                    seconds = _get(connections[size], web_routes(size)[route])[0]
                    if i >= WEB_WARMUP:
                        times[route][size].append(seconds)
    _progress("")
    figures: dict = {"web_ms": {}, "web_ratio_1m_vs_1k": {}, "web_ratio_target": WEB_RATIO_TARGET,
                     "web_verdict": {}, "web_captures": counts}  # fmt: skip
    for route, by_size in times.items():
        figures["web_ms"][route] = {
            size: {
                "p50": round(statistics.median(seconds) * 1000, 3),
                "p99": round(statistics.quantiles(seconds, n=100)[98] * 1000, 3),
            }
            for size, seconds in by_size.items()
        }
        p50 = [figures["web_ms"][route][size]["p50"] for size in sizes]
        ratio = figures["web_ratio_1m_vs_1k"][route] = round(p50[1] / p50[0], 2)
        figures["web_verdict"][route] = "PASS" if ratio <= WEB_RATIO_TARGET else "MISS"
    return figures


def main(data_dir: str | None, as_json: bool) -> int:
    """``appliance bench``: print the figures as a table, or as one JSON object.  Returns 0."""
    with tempfile.TemporaryDirectory(dir=data_dir, prefix="appliance-bench-") as scratch:
        figures = cleanup_figures(Path(scratch))
    with tempfile.TemporaryDirectory(dir=data_dir, prefix="appliance-bench-") as scratch:
        figures |= web_figures(Path(scratch))
    if as_json:
        print(json.dumps(figures))
        return 0
    print("cleanup: choosing a batch of the oldest unprotected captures (median of 21)")
    for size, ms in figures["select_batch_ms"].items():
        print(f"  {size:>9,} captures   {ms:8.3f} ms")
    print(f"  ratio 1,000,000 / 1,000: {figures['select_ratio_1m_vs_1k']}  ({figures['select_plan']})")
    print(f"cleanup: deleting {DELETED:,} captures (photo + thumbnail each)")
    print(f"  through the store  {figures['delete_s']:8.3f} s   (rows, files, folder fsyncs, in batches)")
    print(f"  bare os.unlink     {figures['unlink_s']:8.3f} s   (the same number of files, no fsync)")
    print(f"  ratio              {figures['delete_vs_unlink']:8.2f}")
    small, large = figures["web_captures"]
    print(f"web: latency over HTTP keep-alive, p50 / p99 in ms of {WEB_REQUESTS} requests each "
          f"(after {WEB_WARMUP} to warm up)")  # fmt: skip
    recent = ", ".join(
        f"{c['last_hour']} / {c['last_24h']} of {size:,}" for size, c in figures["web_captures"].items()
    )
    print(f"  captures in the last hour / 24 h: {recent}")
    header = f"{small:,} captures", f"{large:,} captures", f"ratio p50 (target <= {WEB_RATIO_TARGET})"
    print(f"  {'route':<40} {header[0]:>19} {header[1]:>19}   {header[2]}")
    for route, by_size in figures["web_ms"].items():
        cells = [f"{by_size[size]['p50']:8.3f} / {by_size[size]['p99']:8.3f}" for size in (small, large)]
        ratio, verdict = figures["web_ratio_1m_vs_1k"][route], figures["web_verdict"][route]
        print(f"  {route:<40} {cells[0]:>19} {cells[1]:>19}   {ratio:9.2f}  {verdict}")
    return 0
