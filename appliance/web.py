"""The status page and JSON API, a Bottle app served by cheroot from its own threads.

The web side never writes: it reads the index through :class:`~appliance.store.IndexReader`
(read-only connections) and serves files looked up by id in the index, never a path from the
request.

Routes: ``GET /`` (HTML status page), ``GET /api/status`` (the same as JSON),
``GET /thumbnails/<id>.webp`` and ``GET /media/<id>.jpg``.  A malformed id is a 400, an unknown
one a 404.
"""

import datetime
import re
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path

import bottle
from cheroot import wsgi

from appliance import __version__
from appliance.cleanup import free_percent
from appliance.loop import Health
from appliance.reconcile import Reconciliation
from appliance.store import IndexReader

VIEWS = Path(__file__).with_name("views")
LATEST_COUNT = 24
REFRESH_S = 15
_FILE_NAME = re.compile(r"([0-9a-f]{32})\.(webp|jpg)")


def make_app(
    reader: IndexReader,
    *,
    mode: str,
    started_monotonic: float,
    health: Health | None = None,
    reconciliation: Reconciliation | None = None,
    cleanup_status: Callable[[], dict] | None = None,
    hardware_status: Callable[[], dict] | None = None,
    disk_usage: Callable[[Path], object] = shutil.disk_usage,
) -> bottle.Bottle:
    """Build the web app.

    ``reader``: the index; ``mode``: ``"simulation"`` or ``"hardware"``; ``started_monotonic``:
    :func:`time.monotonic` at start-up (for the uptime); ``health``: the main loop's current
    problems; ``reconciliation``: what the start-up check of the store did, updated by a full check
    running beside capturing; ``cleanup_status()``: the cleanup's state
    (:meth:`~appliance.cleanup.Cleanup.status`); ``hardware_status()``: ``{"camera":
    RecoveringCamera.status(), "triggers": TriggerGate.status(), "system": Probes.snapshot(),
    "uv_light_on": bool}`` (see :mod:`hw`); ``disk_usage(path)``: as
    :func:`shutil.disk_usage`, for the data directory's filesystem.
    """
    app = bottle.Bottle()
    health = health or Health()

    def status() -> dict:
        usage = disk_usage(reader.data_dir)
        latest = reader.latest(LATEST_COUNT)
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
        if system.get("clock_synced") is False:
            problems["clock"] = "not synchronised: captures are flagged clock_synced = 0"
        return {
            "version": __version__,
            "mode": mode,
            "problems": problems,
            "startup_check": reconciliation.as_dict() if reconciliation else None,
            "cleanup": cleanup | {"last_run": reader.last_cleanup_run()},
            "uptime_s": round(time.monotonic() - started_monotonic, 1),
            **hardware,
            "captures": reader.counts(datetime.datetime.now(datetime.UTC)),
            "disk": {
                "total_bytes": usage.total,
                "free_bytes": usage.free,
                "free_percent": round(free_percent(usage), 1),
            },
            "latest": [
                {
                    "id": row["id"],
                    "seq": row["seq"],
                    "captured_at": row["captured_at"],
                    "clock_synced": bool(row["clock_synced"]),
                    "recovered": bool(row["recovered"]),
                    "trigger": row["trigger"],
                    "bytes": row["bytes"],
                    "width": row["width"],
                    "height": row["height"],
                    "protected": bool(row["protected"]),
                    "media_url": f"/media/{row['id']}.jpg",
                    "thumbnail_url": (f"/thumbnails/{row['id']}.webp" if row["thumbnail_path"] else None),
                }
                for row in latest
            ],
        }

    @app.get("/")
    def index():
        return bottle.template("status", template_lookup=[str(VIEWS)], refresh_s=REFRESH_S, **status())

    @app.get("/api/status")
    def api_status():
        return status()

    def serve(name: str, column: str, extension: str, mimetype: str):
        match = _FILE_NAME.fullmatch(name)
        if not match or match[2] != extension:
            raise bottle.HTTPError(400, f"expected /<32 hex characters>.{extension}")
        row = reader.get(match[1])
        if row is None or row[column] is None:
            raise bottle.HTTPError(404, "no such capture")
        return bottle.static_file(row[column], root=str(reader.data_dir), mimetype=mimetype)

    @app.get("/thumbnails/<name>")
    def thumbnail(name):
        return serve(name, "thumbnail_path", "webp", "image/webp")

    @app.get("/media/<name>")
    def media(name):
        return serve(name, "media_path", "jpg", "image/jpeg")

    return app


class WebServer:
    """Serves ``app`` with cheroot (a multi-threaded WSGI server) on ``host``:``port`` from a
    background thread.  ``port`` 0 picks a free port; :attr:`port` tells which.

    Raises ``OSError`` when the address cannot be bound (e.g. the port is in use).
    """

    def __init__(self, app, host: str, port: int, threads: int = 4):
        self._server = wsgi.Server((host, port), app, numthreads=threads)
        self._server.prepare()  # binds now, so a busy port fails at start-up
        self.host, self.port = self._server.bind_addr[:2]
        self._thread = threading.Thread(target=self._server.serve, name="web", daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        """The URL to open on this machine."""
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::", "") else self.host
        return f"http://{host}:{self.port}/"

    def stop(self) -> None:
        self._server.stop()
        self._thread.join()
