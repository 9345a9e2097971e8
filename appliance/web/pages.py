"""The HTML pages: the status page, the gallery and one capture's page (templates in
``appliance/views``), their times in the ``timezone`` setting's zone (:mod:`appliance.web.display`)."""

import datetime
import socket
from collections.abc import Callable
from pathlib import Path

import bottle

from appliance.activity import plots, read_activity
from appliance.config import Config
from appliance.export import missing_settings
from appliance.status import Status, capture_json
from appliance.store import TRIGGERS, IndexReader
from appliance.web.auth import Auth
from appliance.web.display import LocalTime, metadata_rows
from appliance.web.request import PAGE_SIZE, capture_row, gallery_query, next_url

VIEWS = Path(__file__).parent.parent / "views"
# Seconds between two reloads of the status page by the browser.
REFRESH_S = 30


class Pages:
    """The handlers of the pages.

    :param reader: the index.
    :param status: returns the :class:`~appliance.status.Status` now.
    :param auth: who is logged in (the pages show the log-in or log-out, and the actions).
    :param config: returns the running config, read at each page: its ``timezone`` (the zone of
        every time shown), its ``camera_id`` (the trap's name in the titles; "": ``host_name``)
        and whether an export could succeed (:func:`~appliance.export.missing_settings`); None:
        the defaults, and no export offered.
    :param host_name: the trap's name when ``camera_id`` is ""; None: this machine's host name.
    """

    def __init__(
        self,
        reader: IndexReader,
        status: Callable[[], Status],
        auth: Auth,
        *,
        config: Callable[[], Config] | None = None,
        host_name: str | None = None,
    ):
        self._reader = reader
        self._status = status
        self._auth = auth
        self._config = config
        self._defaults = Config()
        self._host_name = host_name or socket.gethostname()

    def config(self) -> Config:
        """The running config (the defaults without one)."""
        return self._config() if self._config is not None else self._defaults

    def when(self) -> LocalTime:
        """Times as the pages show them, in the running config's ``timezone``."""
        return LocalTime.named(self.config().timezone)

    def render(self, name: str, **values) -> str:
        """Template ``name`` with ``values``, and what every page shows: ``trap`` (the trap's
        name, for the title), ``when`` (:class:`~appliance.web.display.LocalTime`: a time as
        HTML, in the configured zone), whether one is logged in, whether actions are on, and
        whether a token is set (the layout's log-in or log-out, the capture page's hints)."""
        config = self.config()
        return bottle.template(
            name,
            template_lookup=[str(VIEWS)],
            trap=config.camera_id or self._host_name,
            when=self.when(),
            logged_in=self._auth.authorised(),
            actions_on=self._auth.actions_on,
            token_set=bool(self._auth.token),
            **values,
        )

    def export_offer(self) -> dict | None:
        """What the status page says of the Camtrap DP download: None when there is no export,
        else ``{"missing": settings to set first (empty when it can succeed), "allowed": whether
        this visitor may download it (no token is set, or logged in)}``."""
        if self._config is None:
            return None
        allowed = not self._auth.token or self._auth.authorised()
        return {"missing": missing_settings(self._config()), "allowed": allowed}

    def status(self) -> str:
        """``GET /``: the status page, with the activity plots (:mod:`appliance.activity`),
        reloaded every :data:`REFRESH_S` s."""
        now = datetime.datetime.now(datetime.UTC)
        activity = plots(read_activity(self._reader, now, self.when().tzinfo))
        return self.render(
            "status",
            refresh_s=REFRESH_S,
            export=self.export_offer(),
            status=self._status(),
            activity=activity,
        )

    def favicon(self):
        """``GET /favicon.ico``: no icon, and no 404 in every browser's console (204)."""
        return bottle.HTTPResponse(status=204)

    def style(self):
        """``GET /style.css``."""
        return bottle.static_file("style.css", root=str(VIEWS), mimetype="text/css")

    def gallery(self) -> str:
        """``GET /captures?before=SEQ&day=YYYY-MM-DD&trigger=T``: :data:`PAGE_SIZE` captures,
        newest first, and a link to older ones; ``day`` is a day in the configured zone (where
        ``/api/captures`` takes a UTC day).  A bad filter is a 400."""
        filters = gallery_query()
        when = self.when()
        since = until = None
        if filters["day"] is not None:
            try:
                since, until = when.day(filters["day"])
            except OverflowError:
                raise bottle.HTTPError(
                    400, f"bad day: {filters['day']} is out of range in {when.label}"
                ) from None
        rows = self._reader.page(
            limit=PAGE_SIZE, before=filters["before"], trigger=filters["trigger"], since=since, until=until
        )
        return self.render(
            "gallery", captures=[capture_json(r) for r in rows], query=filters, triggers=TRIGGERS,
            next_url=next_url("/captures", rows, PAGE_SIZE, filters),
        )  # fmt: skip

    def capture(self, capture_id: str) -> str:
        """``GET /captures/<id>``: one photo and its metadata (labelled rows with units, see
        :func:`~appliance.web.display.metadata_rows`); 400 for a malformed id, 404 for an unknown
        one."""
        capture = capture_json(capture_row(self._reader, capture_id), full=True)
        return self.render("capture", c=capture, metadata=metadata_rows(capture["metadata"]))
