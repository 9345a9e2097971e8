"""The JSON API and the health check: ``GET /api/status``, ``/api/activity``, ``/api/captures``,
``/api/captures/<id>`` and ``/healthz`` (docs/web-api.md)."""

import datetime
from collections.abc import Callable

import bottle

from appliance.activity import read_activity
from appliance.status import Status, capture_json
from appliance.store import IndexReader
from appliance.web.display import LocalTime
from appliance.web.request import MAX_PAGE_SIZE, PAGE_SIZE, capture_row, gallery_query, next_url, query, seq


class Api:
    """The handlers of the JSON API; each returns a dict (Bottle answers it as JSON).

    :param reader: the index.
    :param status: returns the :class:`~appliance.status.Status` now.
    :param zone: returns the trap's zone (a ``datetime.tzinfo``: the ``timezone`` setting's), for
        the diel counts; None: the system's.
    """

    def __init__(
        self,
        reader: IndexReader,
        status: Callable[[], Status],
        zone: Callable[[], datetime.tzinfo] | None = None,
    ):
        self._reader = reader
        self._status = status
        self._zone = zone or (lambda: LocalTime.named("").tzinfo)

    def status(self) -> dict:
        """``GET /api/status``: :meth:`Status.to_json <appliance.status.Status.to_json>`."""
        return self._status().to_json()

    def activity(self) -> dict:
        """``GET /api/activity``: :meth:`Activity.to_json <appliance.activity.Activity.to_json>`,
        the numbers of the status page's plots."""
        return read_activity(self._reader, datetime.datetime.now(datetime.UTC), self._zone()).to_json()

    def captures(self) -> dict:
        """``GET /api/captures?before=SEQ&day=YYYY-MM-DD&trigger=T&limit=N``: ``{"captures":
        [...], "next": URL or None}``, newest first, ``limit`` (default :data:`PAGE_SIZE`) at most
        :data:`MAX_PAGE_SIZE`; a bad parameter is a 400 naming it."""
        filters = gallery_query()
        limit = min(query("limit", seq, PAGE_SIZE), MAX_PAGE_SIZE)
        rows = self._reader.page(limit=limit, **filters)
        kept = filters | {"limit": limit if limit != PAGE_SIZE else None}
        return {
            "captures": [capture_json(r) for r in rows],
            "next": next_url("/api/captures", rows, limit, kept),
        }

    def capture(self, capture_id: str) -> dict:
        """``GET /api/captures/<id>``: the capture with its ``sha256`` and ``metadata``; 400 for a
        malformed id, 404 for an unknown one."""
        return capture_json(capture_row(self._reader, capture_id), full=True)

    def healthz(self) -> dict:
        """``GET /healthz``: 200 ``{"status": "ok", "problems": {area: reason}}``, or 503 with
        ``"error"`` while a problem stops capturing (warnings alone stay 200)."""
        status = self._status()
        stopped = status.level == "error"
        bottle.response.status = 503 if stopped else 200
        return {"status": "error" if stopped else "ok", "problems": status.problem_reasons()}
