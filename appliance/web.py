"""The status page, gallery and JSON API: a Bottle app served by waitress from its own threads.

The web side never writes and never touches hardware: it reads the index through
:class:`~appliance.store.IndexReader` (read-only connections) and the other parts' ``status()``
snapshots, and hands every action (a test shot, protecting a capture) to the main loop as a
:class:`~appliance.loop.Request`.  Files are served by id lookup in the index, never from a path
in the request.  Every answer to bad input is a 4xx with a one-line reason; an index that cannot be
read is a 503 with sqlite's reason, never a 500.  Every answer carries the security headers and a
``Cache-Control`` (the route table says which).

Pages: ``GET /`` (status), ``GET /captures`` (gallery: ``?before=SEQ&day=YYYY-MM-DD&trigger=T``),
``GET /captures/<id>`` (one photo), ``GET/POST /login``, ``POST /logout``.
API: ``GET /api/status``, ``GET /api/captures``, ``GET /api/captures/<id>``, ``GET /healthz``,
``GET /metrics`` (Prometheus text format); with ``web_token`` set, ``POST /api/capture``,
``POST /api/captures/<id>/protect`` and ``/unprotect``.
Export: ``GET /export/camtrap-dp.zip?since=ISO&until=ISO&media=copy|none``, the Camtrap DP package
(:mod:`appliance.export`) streamed as a ZIP archive; with ``web_token`` set, only when logged in or
with the Bearer token.
Files: ``GET /thumbnails/<id>.webp``, ``GET /media/<id>.jpg`` (immutable: ETag and a year's
Cache-Control).
"""

import datetime
import hashlib
import hmac
import json
import logging
import os
import socket
import sqlite3
import threading
import time
import urllib.parse
from collections.abc import Callable
from pathlib import Path

import bottle
import prometheus_client
import waitress
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from waitress import wasyncore
from waitress.channel import HTTPChannel
from waitress.task import ErrorTask

from appliance import __version__
from appliance.cleanup import free_percent
from appliance.clocktrust import DISTRUSTED, TRUSTED, UNSYNCHRONISED
from appliance.config import Config
from appliance.datadir import DataDir, UnsafePath
from appliance.exc import ExportError
from appliance.export import Package, parse_time, zip_stream
from appliance.loop import Health, Request
from appliance.reconcile import Reconciliation
from appliance.store import CAPTURE_FILE_NAME as _FILE_NAME
from appliance.store import CAPTURE_ID as _ID
from appliance.store import TRIGGERS, IndexReader
from hw import system
from hw.clock import boot_id

log = logging.getLogger(__name__)

VIEWS = Path(__file__).with_name("views")
LATEST_COUNT = 12
PAGE_SIZE = 24
MAX_PAGE_SIZE = 100
REFRESH_S = 30
# Seconds a web request waits for the main loop to do its action.
ACTION_TIMEOUT_S = 15
# Problems that mean the appliance is not capturing (healthz 503, red banner); others warn.
ERROR_AREAS = ("camera", "storage", "space")
SESSION_COOKIE = "appliance_session"
# Request bodies (the login form, empty action POSTs) are tiny; anything bigger is refused (413).
MAX_BODY_BYTES = 16 << 10
# The request line and headers together; past this, 431.
MAX_HEADER_BYTES = 16 << 10
# A connection that sends nothing for this long, between requests or within one, is closed.
SOCKET_TIMEOUT_S = 5
# A request's head and body must have arrived this long after its first byte, or its connection is
# closed: a client trickling bytes holds a connection at most this long.  16 KiB in 10 s is 13 kbit/s.
REQUEST_TIMEOUT_S = 10
# Open connections at most; past it, new ones wait in the listen backlog.  Well under the 1024 file
# descriptors a service gets by default (systemd's LimitNOFILE soft limit).
CONNECTION_LIMIT = 500
# An answer is buffered up to this much per connection (in memory); then its thread waits for the
# client to read.  A client that reads nothing for SEND_TIMEOUT_S is dropped by the kernel.
OUTBUF_BYTES = 1 << 20
SEND_TIMEOUT_S = 30
# ZIP downloads at once: each holds a server thread and reads the card; more wait (503).
MAX_EXPORTS = 2
SECURITY_HEADERS = [
    (
        "Content-Security-Policy",
        "default-src 'self'; img-src 'self'; style-src 'self'; frame-ancestors 'none'; form-action 'self'",
    ),
    ("X-Content-Type-Options", "nosniff"),
    # same-origin, not no-referrer: under no-referrer browsers send our own forms with Origin: null.
    ("Referrer-Policy", "same-origin"),
    ("X-Frame-Options", "DENY"),
]
# Cache-Control, by kind of answer; each route in make_app names its own, errors and redirects are
# NO_STORE.  The API, the actions and the log-in answer with what is true now (and a session):
# nothing keeps them.  Pages may be kept (for Back) but are asked for again before each showing
# (no-cache; they carry no validator, so that is a full fetch): they show live figures and whether
# one is logged in, and a max-age of even a few seconds would show the page from before a log-in or
# a protect after the 303 that leads back to it.  Files never change: cached for a year.
NO_STORE = "no-store"
REVALIDATE = "no-cache"
IMMUTABLE = "public, max-age=31536000, immutable"
# An unreadable index is logged at most this often (each request still answers 503 with the reason).
UNREADABLE_LOG_INTERVAL_S = 60


def capture_json(row: dict, *, full: bool = False) -> dict:
    """A capture as the API gives it (README, "JSON API"); ``full`` adds its metadata."""
    out = {
        "id": row["id"],
        "seq": row["seq"],
        "captured_at": row["captured_at"],
        "clock_synced": bool(row["clock_synced"]),
        "recovered": bool(row["recovered"]),
        "trigger": row["trigger"],
        "capture_method": row["capture_method"],
        "event_id": row["event_id"],
        "bytes": row["bytes"],
        "width": row["width"],
        "height": row["height"],
        "protected": bool(row["protected"]),
        "page_url": f"/captures/{row['id']}",
        "media_url": f"/media/{row['id']}.jpg",
        "thumbnail_url": f"/thumbnails/{row['id']}.webp" if row["thumbnail_path"] else None,
    }
    if full:
        out["sha256"] = row["sha256"]
        out["metadata"] = json.loads(row["metadata"] or "{}")
    return out


def _query(name: str, parse: Callable[[str], object], default=None):
    """Query parameter ``name`` parsed by ``parse``; a bad value is a 400 naming it."""
    value = bottle.request.query.get(name)
    if value in (None, ""):
        return default
    try:
        return parse(value)
    except (ValueError, OverflowError):
        raise bottle.HTTPError(400, f"bad {name}: {value[:40]!r}") from None


def _see_other(path: str):
    """Raise a 303 to ``path`` on this server, keeping the headers set so far (a cookie).  Its
    Location is relative (RFC 9110 10.2.2), where ``bottle.redirect`` makes it absolute from the
    Host header: a Host that is no host (``[::1``) made that a 500."""
    answer = bottle.response.copy(cls=bottle.HTTPResponse)
    answer.status = 303
    answer.set_header("Location", path)
    raise answer


def _header(name: str) -> str:
    """Request header ``name`` as WSGI gives it: each byte as one latin-1 character (PEP 3333), ""
    when absent.  Bottle's own ``get_header`` decodes the bytes as UTF-8 and raises on any other."""
    return bottle.request.environ.get("HTTP_" + name.upper().replace("-", "_"), "")


def _cookie(name: str) -> str:
    """Cookie ``name`` from the ``Cookie`` header, "" when absent.  Read by hand: the standard
    library's parser (behind Bottle's ``get_cookie``) raises, or stops, at the first cookie it finds
    illegal, and a browser sends us every cookie of this host, those of other ports included."""
    for pair in _header("Cookie").split(";"):
        key, _, value = pair.strip().partition("=")
        if key == name:
            return value
    return ""


def _seq(value: str) -> int:
    number = int(value)
    if not 0 < number < 2**63:
        raise ValueError(value)
    return number


def _day(value: str) -> datetime.date:
    day = datetime.date.fromisoformat(value)
    if day == datetime.date.max:  # the index asks for captures before the next day, which is none
        raise ValueError(value)
    return day


def _trigger(value: str) -> str:
    if value not in TRIGGERS:
        raise ValueError(value)
    return value


def _capture_id(capture_id: str) -> str:
    if not _ID.fullmatch(capture_id):
        raise bottle.HTTPError(400, "expected a capture id of 32 hex characters")
    return capture_id


def make_app(
    reader: IndexReader,
    *,
    mode: str,
    started_monotonic: float,
    health: Health | None = None,
    reconciliation: Reconciliation | None = None,
    cleanup_status: Callable[[], dict] | None = None,
    hardware_status: Callable[[], dict] | None = None,
    disk_usage: Callable[[Path], object] = system.disk_usage,
    submit: Callable[[Request], None] | None = None,
    token: str = "",
    export_config: Callable[[], Config] | None = None,
) -> bottle.Bottle:
    """Build the web app.

    ``reader``: the index; ``mode``: ``"simulation"`` or ``"hardware"``; ``started_monotonic``:
    :func:`time.monotonic` at start-up (for the uptime); ``health``: the main loop's current
    problems; ``reconciliation``: what the start-up check of the store did, updated by a full check
    running beside capturing; ``cleanup_status()``: the cleanup's state
    (:meth:`~appliance.cleanup.Cleanup.status`); ``hardware_status()``: ``{"camera":
    RecoveringCamera.status(), "triggers": TriggerGate.status(), "system": Probes.snapshot(),
    "uv_light_on": bool}`` (see :mod:`hw`); ``disk_usage(path)``: as
    :func:`hw.system.disk_usage` (None when unknown), for the data directory's filesystem;
    ``submit(request)``: hands an action to the main loop (None: actions are off); ``token``: the
    ``web_token`` actions (and the export) need ("": actions are off, the export is open);
    ``export_config()``: the config whose deployment settings the export uses, read at each
    export (None: no export, 404).
    """
    app = bottle.Bottle()
    files = DataDir(reader.data_dir) if reader is not None else None
    # Every route: an unreadable index is a 503; each answers with its ``cache`` (NO_STORE unless
    # the route says otherwise).
    app.install(_IndexUnreadable())
    app.install(_CacheControl())
    health = health or Health()
    session = hmac.new(token.encode(), b"appliance session", hashlib.sha256).hexdigest() if token else ""
    actions_on = bool(token) and submit is not None
    exports = threading.BoundedSemaphore(MAX_EXPORTS)

    def status() -> dict:
        usage = disk_usage(reader.data_dir)
        cleanup = cleanup_status() if cleanup_status else {}
        problems = health.problems()
        if cleanup.get("state") == "paused":
            problems["space"] = cleanup["reason"]
        hardware = hardware_status() if hardware_status else {}
        camera = hardware.get("camera") or {}
        if camera.get("state", "ok") != "ok":
            problems["camera"] = (
                f"{camera['state']} after {camera['failures']} failures: {camera['last_error']}"
            )
        system = hardware.get("system") or {}
        if system.get("problems"):
            problems["power and temperature"] = ", ".join(system["problems"])
        clock = hardware.get("clock") or {}
        if clock.get("state") == DISTRUSTED:
            problems["clock"] = clock["reason"]
        elif system.get("clock_synced") is False or clock.get("state") == UNSYNCHRONISED:
            problems["clock"] = "not synchronised: captures are flagged clock_synced = 0"
        # Counted by time since boot while the wall clock cannot be trusted (appliance.clocktrust).
        trusted = clock.get("state", TRUSTED) == TRUSTED and system.get("clock_synced") is not False
        boot = None if trusted else (boot_id(), time.clock_gettime(time.CLOCK_BOOTTIME))
        counts = reader.counts(datetime.datetime.now(datetime.UTC), boot=boot)
        floor = cleanup.get("capture_min_free_bytes") or 0
        rate = counts["bytes_last_hour"]
        return {
            "version": __version__,
            "mode": mode,
            "level": "error" if problems.keys() & set(ERROR_AREAS) else "warning" if problems else "ok",
            "problems": problems,
            "startup_check": reconciliation.as_dict() if reconciliation else None,
            "cleanup": cleanup | {"last_run": reader.last_cleanup_run()},
            "uptime_s": round(time.monotonic() - started_monotonic, 1),
            "captures": counts,
            "disk": usage
            and {
                "total_bytes": usage.total,
                "free_bytes": usage.free,
                "free_percent": round(free_percent(usage), 1),
                "hours_left": round(max(0, usage.free - floor) / rate, 1) if rate else None,
            },
            "actions": actions_on,
            **hardware,
            "latest": [capture_json(row) for row in reader.latest(LATEST_COUNT)],
        }

    def credentials() -> str | None:
        """How the request is authorised: ``"bearer"``, ``"cookie"`` or None (not at all)."""
        if not token:
            return None
        header = _header("Authorization")
        if header.startswith("Bearer "):
            try:  # the bytes the client sent, to match a token's UTF-8 whatever they are
                given = header[7:].encode("latin-1")
            except UnicodeEncodeError:  # only from a WSGI server that breaks PEP 3333
                given = b""
            if hmac.compare_digest(given, token.encode()):
                return "bearer"
        cookie = _cookie(SESSION_COOKIE)
        if cookie and hmac.compare_digest(cookie.encode(), session.encode()):
            return "cookie"
        return None

    def authorised() -> bool:
        return credentials() is not None

    def check_action() -> None:
        """An action must be on, authorised, and (for a browser's cookie) from our own pages."""
        if not actions_on:
            raise bottle.HTTPError(403, "actions are off: set web_token in the config")
        how = credentials()
        if how is None:
            raise bottle.HTTPError(401, "log in or send Authorization: Bearer <web_token>")
        if how == "cookie":
            same_origin()

    def same_origin() -> None:
        # Cross-site request forgery: SameSite=Strict keeps the cookie off other sites' requests;
        # the browser's own word (Sec-Fetch-Site), or else Origin or Referer against Host, is
        # checked as well for browsers that ignore SameSite.  A request that proves nothing (none
        # of them, as an HTTP/1.0 client may send) is refused.
        fetch_site = _header("Sec-Fetch-Site")
        if fetch_site == "same-origin":
            return
        origin, host = _header("Origin") or _header("Referer"), _header("Host")
        try:
            netloc = urllib.parse.urlsplit(origin).netloc
        except ValueError:  # e.g. "http://[": not a URL
            netloc = ""
        if fetch_site or not host or netloc != host:
            raise bottle.HTTPError(403, "cross-site request refused")

    def ask(request: Request, timeout_s: float = ACTION_TIMEOUT_S) -> Request:
        submit(request)
        if not request.done.wait(timeout_s):
            raise bottle.HTTPError(503, "the appliance is busy; try again")
        return request

    def render(name: str, **values) -> str:
        return bottle.template(
            name, template_lookup=[str(VIEWS)], logged_in=authorised(), actions_on=actions_on, **values
        )

    @app.get("/", cache=REVALIDATE)
    def index():
        export_on = export_config is not None and (not token or authorised())
        return render("status", refresh_s=REFRESH_S, export_on=export_on, **status())

    @app.get("/favicon.ico", cache=REVALIDATE)
    def favicon():
        return bottle.HTTPResponse(status=204)  # no icon, and no 404 in every browser's console

    @app.get("/style.css", cache=REVALIDATE)
    def style():
        return bottle.static_file("style.css", root=str(VIEWS), mimetype="text/css")

    def gallery_query() -> dict:
        return {
            "before": _query("before", _seq),
            "day": _query("day", _day),
            "trigger": _query("trigger", _trigger),
        }

    def next_url(path: str, rows: list[dict], limit: int, query: dict) -> str | None:
        if len(rows) < limit:
            return None
        params = {k: str(v) for k, v in query.items() if v is not None and k != "before"}
        return f"{path}?{urllib.parse.urlencode(params | {'before': rows[-1]['seq']})}"

    def api_next_url(rows: list[dict], limit: int, query: dict) -> str | None:
        return next_url(
            "/api/captures", rows, limit, query | {"limit": limit if limit != PAGE_SIZE else None}
        )

    @app.get("/captures", cache=REVALIDATE)
    def gallery():
        query = gallery_query()
        rows = reader.page(limit=PAGE_SIZE, **query)
        return render(
            "gallery", captures=[capture_json(r) for r in rows], query=query, triggers=TRIGGERS,
            next_url=next_url("/captures", rows, PAGE_SIZE, query),
        )  # fmt: skip

    def lookup(capture_id: str) -> dict:
        row = reader.get(_capture_id(capture_id))
        if row is None:
            raise bottle.HTTPError(404, "no such capture")
        return row

    @app.get("/captures/<capture_id>", cache=REVALIDATE)
    def photo(capture_id):
        return render("capture", c=capture_json(lookup(capture_id), full=True))

    @app.get("/api/status")
    def api_status():
        return status()

    @app.get("/api/captures")
    def api_captures():
        query = gallery_query()
        limit = min(_query("limit", _seq, PAGE_SIZE), MAX_PAGE_SIZE)
        rows = reader.page(limit=limit, **query)
        return {
            "captures": [capture_json(r) for r in rows],
            "next": api_next_url(rows, limit, query),
        }

    @app.get("/api/captures/<capture_id>")
    def api_capture(capture_id):
        return capture_json(lookup(capture_id), full=True)

    @app.get("/healthz")
    def healthz():
        current = status()
        errors = {k: v for k, v in current["problems"].items() if k in ERROR_AREAS}
        bottle.response.status = 503 if errors else 200
        return {"status": "error" if errors else "ok", "problems": current["problems"]}

    registry = prometheus_client.CollectorRegistry()
    registry.register(_Metrics(status, reader))

    @app.get("/metrics")
    def metrics():
        bottle.response.content_type = prometheus_client.CONTENT_TYPE_LATEST
        return prometheus_client.generate_latest(registry)

    @app.post("/api/capture")
    def api_capture_now():
        check_action()
        done = ask(Request("capture"))
        if done.error:
            raise bottle.HTTPError(503, done.error)
        return {"captured": done.result}

    def protect(capture_id: str, protected: bool) -> None:
        check_action()
        done = ask(Request("protect" if protected else "unprotect", _capture_id(capture_id)))
        if done.error:
            raise bottle.HTTPError(404 if done.error == "no such capture" else 503, done.error)

    @app.post("/api/captures/<capture_id>/<verb:re:protect|unprotect>")
    def api_protect(capture_id, verb):
        protect(capture_id, verb == "protect")
        return {"id": capture_id, "protected": verb == "protect"}

    @app.post("/captures/<capture_id>/<verb:re:protect|unprotect>")
    def form_protect(capture_id, verb):
        protect(capture_id, verb == "protect")
        _see_other(f"/captures/{capture_id}")

    @app.get("/export/camtrap-dp.zip")
    def export_zip():
        if export_config is None:
            raise bottle.HTTPError(404, "no export here")
        if token and not authorised():
            raise bottle.HTTPError(401, "log in or send Authorization: Bearer <web_token>")
        media = bottle.request.query.get("media") or "copy"
        if media not in ("copy", "none"):
            raise bottle.HTTPError(400, f"bad media: {media[:40]!r} (copy or none)")
        since, until = _query("since", parse_time), _query("until", parse_time)
        if not exports.acquire(blocking=False):
            raise bottle.HTTPError(
                503, f"{MAX_EXPORTS} downloads are under way; try again later", Retry_After="60"
            )
        try:
            package = Package(
                export_config(), reader, since=since, until=until, media=media, on_close=exports.release
            )
        except ExportError as exc:
            raise bottle.HTTPError(409, str(exc)) from None
        log.info("export: streaming %d captures as %s.zip", package.total, package.name)
        bottle.response.content_type = "application/zip"
        bottle.response.set_header("Content-Disposition", f'attachment; filename="{package.name}.zip"')
        bottle.response.set_header("Cache-Control", "no-store")
        return zip_stream(package)

    @app.get("/login")
    def login_form():
        return render("login", failed=False)

    @app.post("/login")
    def login():
        if not actions_on:
            raise bottle.HTTPError(403, "actions are off: set web_token in the config")
        same_origin()
        try:
            # getunicode: the UTF-8 a browser sends (plain get gives latin-1); None when it is not.
            given = bottle.request.forms.getunicode("token") or ""
        except ValueError:  # Bottle's parser meets a malformed Content-Type or multipart body
            raise bottle.HTTPError(400, "malformed form") from None
        if not hmac.compare_digest(given.encode(), token.encode()):
            bottle.response.status = 401
            return render("login", failed=True)
        bottle.response.set_cookie(SESSION_COOKIE, session, httponly=True, samesite="strict", path="/")
        _see_other("/")

    @app.post("/logout")
    def logout():
        same_origin()
        bottle.response.delete_cookie(SESSION_COOKIE, path="/")
        _see_other("/")

    def serve(name: str, column: str, extension: str, mimetype: str):
        match = _FILE_NAME.fullmatch(name)
        if not match or match[2] != extension:
            raise bottle.HTTPError(400, f"expected /<32 hex characters>.{extension}")
        row = reader.get(match[1])
        if row is None or row[column] is None:
            raise bottle.HTTPError(404, "no such capture")
        # An id is never reused and its files never change: cache them for good.
        etag = f'"{row["sha256"] if extension == "jpg" else row["id"]}"'
        headers = {"ETag": etag, "Cache-Control": "public, max-age=31536000, immutable"}
        # RFC 9110 13.1.2: a list of tags, or "*"; a weak W/ tag matches too.
        asked = {tag.strip().removeprefix("W/") for tag in _header("If-None-Match").split(",")}
        if etag in asked or "*" in asked:
            return bottle.HTTPResponse(status=304, **headers)
        try:  # only a regular file reached without a symlink (appliance.datadir), never a path
            file = files.open_read(row[column])
        except FileNotFoundError:
            raise bottle.HTTPError(404, "no such capture file (deleted meanwhile)") from None
        except UnsafePath:
            raise bottle.HTTPError(404, "no such capture file in the data directory") from None
        except OSError as exc:
            raise bottle.HTTPError(503, f"the capture file cannot be read: {exc.strerror or exc}") from None
        size = os.fstat(file.fileno()).st_size
        headers |= {"Content-Type": mimetype, "Content-Length": str(size)}
        return bottle.HTTPResponse(file, status=200, **headers)  # closed once sent (or for a HEAD)

    @app.get("/thumbnails/<name>", cache=IMMUTABLE)
    def thumbnail(name):
        return serve(name, "thumbnail_path", "webp", "image/webp")

    @app.get("/media/<name>", cache=IMMUTABLE)
    def media(name):
        return serve(name, "media_path", "jpg", "image/jpeg")

    def plain_error(error: bottle.HTTPError) -> str:
        if error.status_code >= 500 and error.exception is not None:
            log.error(
                "web request %s %s failed",
                bottle.request.method,
                bottle.request.path,
                exc_info=error.exception,
            )
        bottle.response.content_type = "text/plain; charset=utf-8"
        return f"{error.status_code} {error.body}\n"

    for code in (400, 401, 403, 404, 405, 409, 413, 416, 500, 503):
        app.error(code)(plain_error)
    return _with_headers(app)


class _Metrics:
    """The status as Prometheus metrics, read at each scrape (a custom collector, as
    prometheus_client documents for values kept elsewhere)."""

    def __init__(self, status: Callable[[], dict], reader: IndexReader):
        self._status, self._reader = status, reader

    def collect(self):
        status = self._status()
        captures = GaugeMetricFamily("appliance_captures", "Captures in the index.")
        captures.add_metric([], status["captures"]["total"])
        yield captures
        hour = GaugeMetricFamily("appliance_captures_last_hour", "Captures of the last hour.")
        hour.add_metric([], status["captures"]["last_hour"])
        yield hour
        suppressed = CounterMetricFamily(
            "appliance_triggers_suppressed",
            "Triggers counted but not captured since start-up.",
            labels=["source"],
        )
        for source, count in (status.get("triggers") or {}).get("suppressed", {}).items():
            suppressed.add_metric([source], count)
        yield suppressed
        runs, freed = self._reader.cleanup_totals()
        cleanup_runs = CounterMetricFamily("appliance_cleanup_runs", "Cleanup runs recorded in the index.")
        cleanup_runs.add_metric([], runs)
        yield cleanup_runs
        freed_bytes = CounterMetricFamily("appliance_cleanup_freed_bytes", "Bytes freed by cleanup runs.")
        freed_bytes.add_metric([], freed)
        yield freed_bytes
        if status["disk"]:
            free = GaugeMetricFamily("appliance_free_bytes", "Free bytes on the data filesystem.")
            free.add_metric([], status["disk"]["free_bytes"])
            yield free
        camera = status.get("camera") or {}
        failures = CounterMetricFamily("appliance_camera_failures", "Camera failures since start-up.")
        failures.add_metric([], camera.get("total_failures", 0))
        yield failures
        temperature = (status.get("system") or {}).get("cpu_temperature_c")
        if temperature is not None:
            gauge = GaugeMetricFamily("appliance_cpu_temperature_celsius", "CPU temperature.")
            gauge.add_metric([], temperature)
            yield gauge


class _IndexUnreadable:
    """Bottle plugin: a route that cannot read the index (the file deleted or damaged, no
    permission) answers 503 with sqlite's reason, and the log gets one line (at most one every
    :data:`UNREADABLE_LOG_INTERVAL_S` while the reason stays the same), not a traceback."""

    name, api = "index_unreadable", 2

    def __init__(self):
        self._lock = threading.Lock()
        self._logged = ("", -float("inf"))  # the reason last logged, and when (monotonic)

    def apply(self, callback, route):
        def wrapper(*args, **kwargs):
            try:
                return callback(*args, **kwargs)
            except sqlite3.DatabaseError as exc:
                if isinstance(exc, sqlite3.ProgrammingError | sqlite3.IntegrityError):
                    raise  # a mistake in our SQL, not the card's doing: a 500 with its traceback
                reason = f"the capture index cannot be read: {exc}"
                self._log(reason)
                raise bottle.HTTPError(503, reason) from None

        return wrapper

    def _log(self, reason: str) -> None:
        now = time.monotonic()
        with self._lock:
            last_reason, last_logged = self._logged
            if reason == last_reason and now - last_logged < UNREADABLE_LOG_INTERVAL_S:
                return
            self._logged = (reason, now)
        log.error("web: %s", reason)


class _CacheControl:
    """Bottle plugin: the route's ``cache`` config (:data:`NO_STORE` when it has none) as the
    ``Cache-Control`` of its answers that set none.  Errors raised are left alone: their headers
    are the error's own, and :func:`_with_headers` gives them :data:`NO_STORE`."""

    name, api = "cache_control", 2

    def apply(self, callback, route):
        value = route.config.get("cache", NO_STORE)

        def wrapper(*args, **kwargs):
            out = callback(*args, **kwargs)
            if isinstance(out, bottle.HTTPError):
                return out
            # Bottle copies a returned HTTPResponse's headers over bottle.response's.
            target = out if isinstance(out, bottle.HTTPResponse) else bottle.response
            if "Cache-Control" not in target.headers:
                target.set_header("Cache-Control", value)
            return out

        return wrapper


def _with_headers(app):
    """WSGI middleware: the security headers on every response, errors included, and
    ``Cache-Control: no-store`` on those that have none (errors, redirects)."""

    def wrapped(environ, start_response):
        def start(status, headers, exc_info=None):
            extra = SECURITY_HEADERS
            if not any(name.lower() == "cache-control" for name, _ in headers):
                extra = [*extra, ("Cache-Control", NO_STORE)]
            return start_response(status, headers + extra, exc_info)

        return app(environ, start)

    return wrapped


class _ErrorTask(ErrorTask):
    """waitress's own answer to a request it refused before the app saw it (400 malformed, 413
    body too large, 431 headers too large, 501 a transfer coding other than chunked), with the
    headers every answer of ours carries.  Relies on waitress 3: ``ErrorTask.execute`` extends
    ``Task.response_headers``, a list sent with the answer's first write, which it makes itself."""

    def execute(self):
        self.response_headers.extend([*SECURITY_HEADERS, ("Cache-Control", NO_STORE)])
        super().execute()


class _Channel(HTTPChannel):
    """waitress's connection, with :class:`_ErrorTask` and a deadline for each request to arrive.
    Relies on waitress 3's ``HTTPChannel``: ``error_task_class``; ``received(data)``, called by the
    server's loop with each chunk read; ``request``, the request being received (None between
    requests); and ``will_close``, which has the loop close the connection."""

    error_task_class = _ErrorTask
    request_started = 0.0  # time.monotonic() when the request being received began

    def received(self, data):
        now = time.monotonic()
        if self.request is None:
            self.request_started = now
        elif now - self.request_started > REQUEST_TIMEOUT_S:
            self.will_close = True  # a trickle: closed, without an answer it would not read
            return False
        return super().received(data)


class WebServer:
    """Serves ``app`` with waitress on ``host``:``port`` from a background thread.  ``port`` 0
    picks a free port; :attr:`port` tells which.  ``threads``: requests served at once.

    Slow and hostile clients are bounded so that the page keeps answering:

    - waitress reads requests and writes answers for every connection in one thread (an event
      loop over non-blocking sockets); only a request that has wholly arrived takes one of the
      ``threads``.  A client that sends slowly, or nothing, costs a connection, never a thread: with
      100 connections trickling a header byte a second, or 100 silent ones, ``GET /`` still answers
      in milliseconds (tests/test_web_api.py).
    - At most :data:`CONNECTION_LIMIT` (500) connections are open at once; past it, new ones wait in
      the listen backlog until one closes.
    - A connection that sends nothing for :data:`SOCKET_TIMEOUT_S` (5 s) is closed (checked every
      second), and one whose request has not wholly arrived :data:`REQUEST_TIMEOUT_S` (10 s) after
      its first byte is closed at its next byte: a trickling client holds a connection that long.
    - Headers over :data:`MAX_HEADER_BYTES` (16 KiB) are a 431, bodies over :data:`MAX_BODY_BYTES`
      (16 KiB) a 413, a malformed request a 400, a transfer coding other than chunked a 501:
      answered by waitress itself, with the security headers and ``Cache-Control: no-store``.
    - An answer is buffered up to :data:`OUTBUF_BYTES` (1 MiB) per connection, in memory; then its
      thread waits for the client to read.  A client that reads nothing for
      :data:`SEND_TIMEOUT_S` (30 s) is dropped by the kernel (``TCP_USER_TIMEOUT``), which frees
      the thread and ends a ZIP download's snapshot of the index.

    Raises ``OSError`` when the address cannot be bound (e.g. the port is in use).
    """

    def __init__(self, app, host: str, port: int, threads: int = 16):
        family, _, _, _, address = socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        # Bound here, so that a busy port fails at start-up; one address, even for a name that has
        # several, so that there is one port to tell.
        sock = socket.create_server(address, family=family)
        if hasattr(socket, "TCP_USER_TIMEOUT"):  # Linux; accepted connections inherit it
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, SEND_TIMEOUT_S * 1000)
        self.host, self.port = sock.getsockname()[:2]
        self._map: dict = {}
        try:
            self._server = waitress.create_server(
                app,
                map=self._map,
                sockets=[sock],
                threads=threads,
                connection_limit=CONNECTION_LIMIT,
                channel_timeout=SOCKET_TIMEOUT_S,
                cleanup_interval=1,
                max_request_header_size=MAX_HEADER_BYTES,
                max_request_body_size=MAX_BODY_BYTES,
                outbuf_high_watermark=OUTBUF_BYTES,
                outbuf_overflow=4 * OUTBUF_BYTES,  # above the watermark: answers never go to disk
                asyncore_use_poll=True,  # select() cannot watch file descriptors past 1023
                ident="camtrap-appliance",
                expose_tracebacks=False,
                log_socket_errors=False,  # a client that goes away is not the appliance's error
            )
        except BaseException:
            sock.close()
            raise
        # waitress's server makes each accepted connection with its channel_class; none is accepted
        # before the loop runs, below.
        self._server.channel_class = _Channel
        self._thread = threading.Thread(target=self._server.run, name="web", daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        """The URL to open on this machine."""
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::", "") else self.host
        return f"http://{host}:{self.port}/"

    def stop(self) -> None:
        """Close the listening socket and every connection (a download in progress ends), then
        stop the threads (waiting up to 5 s for requests being served)."""
        # Closed by the loop's own thread, between two turns: the map is the loop's alone.
        try:
            self._server.trigger.pull_trigger(lambda: wasyncore.close_all(self._map))
        except OSError as exc:  # the loop's wake-up pipe is gone (seen once in CI): close from here
            log.warning("web: stopping without the server loop's wake-up pipe: %s", exc)
            wasyncore.close_all(self._map, ignore_all=True)
        self._thread.join(timeout=10)
        self._server.task_dispatcher.shutdown()
