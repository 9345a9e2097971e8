"""The Camtrap DP export over the web: ``GET /export/camtrap-dp.zip?since=ISO&until=ISO&media=
copy|none``, the package (:mod:`appliance.export`) streamed as a ZIP archive, at most
:data:`MAX_EXPORTS` at once."""

import functools
import logging
import threading
from collections.abc import Callable

import bottle

from appliance.config import Config
from appliance.exc import ExportError
from appliance.export import Package, parse_time, zip_stream
from appliance.store import IndexReader
from appliance.web.request import query

log = logging.getLogger(__name__)

# ZIP downloads at once: each holds a server thread and reads the card; more wait (503).
MAX_EXPORTS = 2


class Export:
    """The handler of the export.

    :param reader: the index.
    :param config: returns the config whose deployment settings the export uses, read at each
        export; None: there is no export (404).
    """

    def __init__(self, reader: IndexReader, config: Callable[[], Config] | None):
        self._reader = reader
        self._config = config
        self._exports = threading.BoundedSemaphore(MAX_EXPORTS)

    @property
    def on(self) -> bool:
        """Whether there is an export."""
        return self._config is not None

    def available(self, callback: Callable) -> Callable:
        """Decorator for the route table: 404 when there is no export, before anything else is
        checked."""

        @functools.wraps(callback)
        def guarded(*args, **kwargs):
            if self._config is None:
                raise bottle.HTTPError(404, "no export here")
            return callback(*args, **kwargs)

        return guarded

    def zip(self):
        """``GET /export/camtrap-dp.zip``: the archive, streamed (chunked, never built whole); 400
        for a bad ``since``, ``until`` or ``media``, 409 with the reason when the config lacks
        settings the package needs, 503 (``Retry-After: 60``) while :data:`MAX_EXPORTS` are under
        way."""
        media = bottle.request.query.get("media") or "copy"
        if media not in ("copy", "none"):
            raise bottle.HTTPError(400, f"bad media: {media[:40]!r} (copy or none)")
        since, until = query("since", parse_time), query("until", parse_time)
        if not self._exports.acquire(blocking=False):
            raise bottle.HTTPError(
                503, f"{MAX_EXPORTS} downloads are under way; try again later", Retry_After="60"
            )
        try:
            package = Package(
                self._config(), self._reader, since=since, until=until, media=media,
                on_close=self._exports.release,
            )  # fmt: skip
        except ExportError as exc:
            raise bottle.HTTPError(409, str(exc)) from None
        log.info("export: streaming %d captures as %s.zip", package.total, package.name)
        bottle.response.content_type = "application/zip"
        bottle.response.set_header("Content-Disposition", f'attachment; filename="{package.name}.zip"')
        bottle.response.set_header("Cache-Control", "no-store")
        return zip_stream(package)
