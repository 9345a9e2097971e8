"""The status page, gallery and JSON API: a Bottle app served by waitress from its own threads.

The web side never writes and never touches hardware: it reads the index through
:class:`~appliance.store.IndexReader` (read-only connections) and the appliance's
:class:`~appliance.status.Status`, and hands every action (a test shot, protecting a capture) to
the main loop as a :class:`~appliance.loop.Request`.  Files are served by id lookup in the index,
never from a path in the request.  Every answer to bad input is a 4xx with a one-line reason; an
index that cannot be read is a 503 with sqlite's reason, never a 500.  Every answer carries the
security headers and a ``Cache-Control`` (the route table says which).

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

One module per concept: :mod:`~appliance.web.app` (the dependencies, the handlers and the route
table), :mod:`~appliance.web.pages`, :mod:`~appliance.web.api`, :mod:`~appliance.web.actions`,
:mod:`~appliance.web.files`, :mod:`~appliance.web.export`, :mod:`~appliance.web.metrics` (the
handlers), :mod:`~appliance.web.auth` (who may act), :mod:`~appliance.web.request` (reading a
request), :mod:`~appliance.web.plugins` (what every answer carries) and
:mod:`~appliance.web.server` (waitress, bounded against slow clients).
"""

from appliance.status import LATEST_COUNT, capture_json
from appliance.web.app import Views, WebDeps, make_app, routes
from appliance.web.pages import VIEWS
from appliance.web.request import MAX_PAGE_SIZE, PAGE_SIZE
from appliance.web.server import WebServer, listen, port_holder

__all__ = [
    "LATEST_COUNT",
    "MAX_PAGE_SIZE",
    "PAGE_SIZE",
    "VIEWS",
    "Views",
    "WebDeps",
    "WebServer",
    "capture_json",
    "listen",
    "port_holder",
    "make_app",
    "routes",
]
