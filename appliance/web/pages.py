"""The HTML pages: the status page, the gallery and one capture's page (templates in
``appliance/views``)."""

import datetime
from collections.abc import Callable
from pathlib import Path

import bottle

from appliance.activity import local_zone, plots, read_activity
from appliance.status import Status, capture_json
from appliance.store import TRIGGERS, IndexReader
from appliance.web.auth import Auth
from appliance.web.request import PAGE_SIZE, capture_row, gallery_query, next_url

VIEWS = Path(__file__).parent.parent / "views"
# Seconds between two reloads of the status page by the browser.
REFRESH_S = 30


class Pages:
    """The handlers of the pages.

    :param reader: the index.
    :param status: returns the :class:`~appliance.status.Status` now.
    :param auth: who is logged in (the pages show the log-in or log-out, and the actions).
    :param export_on: whether the export is offered (a config for it), shown to those who may
        download it.
    :param zone: returns the trap's zone (a ``datetime.tzinfo``), for the diel plot.
    """

    def __init__(
        self,
        reader: IndexReader,
        status: Callable[[], Status],
        auth: Auth,
        *,
        export_on: bool,
        zone: Callable[[], datetime.tzinfo] = local_zone,
    ):
        self._reader = reader
        self._status = status
        self._auth = auth
        self._export_on = export_on
        self._zone = zone

    def render(self, name: str, **values) -> str:
        """Template ``name`` with ``values``, and whether one is logged in and actions are on
        (the layout's log-in or log-out)."""
        return bottle.template(
            name,
            template_lookup=[str(VIEWS)],
            logged_in=self._auth.authorised(),
            actions_on=self._auth.actions_on,
            **values,
        )

    def status(self) -> str:
        """``GET /``: the status page, with the activity plots (:mod:`appliance.activity`),
        reloaded every :data:`REFRESH_S` s."""
        export_on = self._export_on and (not self._auth.token or self._auth.authorised())
        activity = plots(read_activity(self._reader, datetime.datetime.now(datetime.UTC), self._zone()))
        return self.render(
            "status", refresh_s=REFRESH_S, export_on=export_on, status=self._status(), activity=activity
        )

    def favicon(self):
        """``GET /favicon.ico``: no icon, and no 404 in every browser's console (204)."""
        return bottle.HTTPResponse(status=204)

    def style(self):
        """``GET /style.css``."""
        return bottle.static_file("style.css", root=str(VIEWS), mimetype="text/css")

    def gallery(self) -> str:
        """``GET /captures?before=SEQ&day=YYYY-MM-DD&trigger=T``: :data:`PAGE_SIZE` captures,
        newest first, and a link to older ones; a bad filter is a 400."""
        filters = gallery_query()
        rows = self._reader.page(limit=PAGE_SIZE, **filters)
        return self.render(
            "gallery", captures=[capture_json(r) for r in rows], query=filters, triggers=TRIGGERS,
            next_url=next_url("/captures", rows, PAGE_SIZE, filters),
        )  # fmt: skip

    def capture(self, capture_id: str) -> str:
        """``GET /captures/<id>``: one photo and its metadata; 400 for a malformed id, 404 for an
        unknown one."""
        return self.render("capture", c=capture_json(capture_row(self._reader, capture_id), full=True))
