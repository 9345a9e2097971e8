"""The web page (issue 6): latency of its routes over HTTP keep-alive, with the smallest and the
largest index; the status page with its activity plots (issue 17), over a week of disk samples.
"""

import contextlib
import datetime
import http.client
import json
import statistics
import time
from pathlib import Path

from appliance.activity import DISK_DAYS, DISK_SAMPLE_INTERVAL_S
from appliance.bench import plan
from appliance.bench.index import _grow_index
from appliance.bench.measuring import _progress
from appliance.exc import ApplianceError
from appliance.status import StatusCollector
from appliance.store import CaptureStore, IndexReader
from appliance.store.synthetic import disk_history
from appliance.web import PAGE_SIZE, WebDeps, WebServer, make_app


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
        "/api/activity": "/api/activity",
        "/api/captures?before=<middle>&limit=24": f"/api/captures?before={size // 2}&limit={PAGE_SIZE}",
        # The oldest full page: seq PAGE_SIZE down to 1.
        "/api/captures?before=<oldest>": f"/api/captures?before={PAGE_SIZE + 1}",
    }


def web_figures(data_dir: Path) -> dict:
    """Measure the web page in ``data_dir`` with an index of the smallest and of the largest of
    :data:`plan.INDEX_SIZES` captures, each served by its own :class:`~appliance.web.WebServer` on
    loopback while its writer stays open, as in the appliance.

    Each index has a week of disk samples (:func:`~appliance.store.synthetic.disk_history`), so
    that the status page draws its three activity plots in full.

    Returns ``web_ms`` (``{route: {size: {"p50": ms, "p99": ms}}}``, over :data:`plan.WEB_REQUESTS`
    after :data:`plan.WEB_WARMUP`), ``web_ratio_1m_vs_1k`` (``{route: p50 at the largest / p50 at the
    smallest}``), ``web_ratio_target``, ``web_verdict`` (``{route: "PASS" or "MISS"}``),
    ``web_captures`` (``{size: the status page's counts}``, to show they did the same work) and
    ``web_activity`` (``{size: {"last_24h": captures in the hourly plot, "week": in the diel plot,
    "disk_hours": points of the disk plot}}``).  Raises :class:`ApplianceError` when a route
    answers anything but 200 or the wrong captures, or the status page lacks its plots.
    """
    sizes = (plan.INDEX_SIZES[0], plan.INDEX_SIZES[-1])
    now = datetime.datetime.now(datetime.UTC)  # one timeline: the same last day at both sizes
    times = {route: {size: [] for size in sizes} for route in web_routes(1)}
    counts, activity = {}, {}
    with contextlib.ExitStack() as stack:
        for size in sizes:
            store = CaptureStore(data_dir / str(size))
            stack.callback(store.close)
            _grow_index(store, size, total=size, now=now)
            disk_history(store, now=now, days=DISK_DAYS, interval_s=DISK_SAMPLE_INTERVAL_S)
        # Connected only now: the server drops a connection idle for SOCKET_TIMEOUT_S.
        connections = {}
        for size in sizes:
            reader = IndexReader(data_dir / str(size))
            status = StatusCollector(reader, mode="simulation", started_monotonic=time.monotonic())
            app = make_app(WebDeps(reader, status.collect))
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
                if path == "/" and (body.count(b'<svg class="plot"') != 3 or b"No captures" in body):
                    raise ApplianceError("bench: the status page does not draw its three activity plots")
            served = json.loads(_get(connections[size], "/api/activity")[1])
            activity[size] = {
                "last_24h": sum(h["captures"] for h in served["hourly"]["hours"]),
                "week": sum(h["captures"] for h in served["diel"]["hours"]),
                "disk_hours": len(served["disk"]["hours"]),
            }
        # Round robin over routes and sizes, the first size alternating, so that a moment when the
        # machine is busy, and whatever one request leaves in the caches, fall on all alike.
        for i in range(plan.WEB_WARMUP + plan.WEB_REQUESTS):
            _progress(f"web: round {i + 1} of {plan.WEB_WARMUP + plan.WEB_REQUESTS}")
            for route in times:
                for size in sizes if i % 2 else sizes[::-1]:
                    seconds = _get(connections[size], web_routes(size)[route])[0]
                    if i >= plan.WEB_WARMUP:
                        times[route][size].append(seconds)
    _progress("")
    figures: dict = {"web_ms": {}, "web_ratio_1m_vs_1k": {}, "web_ratio_target": plan.WEB_RATIO_TARGET,
                     "web_verdict": {}, "web_captures": counts, "web_activity": activity}  # fmt: skip
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
        figures["web_verdict"][route] = "PASS" if ratio <= plan.WEB_RATIO_TARGET else "MISS"
    return figures
