"""The web app: what it depends on (:class:`WebDeps`), its handlers (:class:`Views`) and its route
table (:func:`routes`), read top to bottom; :func:`make_app` puts them together."""

import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass

import bottle

from appliance.config import Config
from appliance.loop import Request
from appliance.status import Status
from appliance.store import IndexReader
from appliance.web.actions import Actions
from appliance.web.api import Api
from appliance.web.auth import Auth, Login
from appliance.web.export import Export
from appliance.web.files import Files
from appliance.web.metrics import Metrics
from appliance.web.pages import Pages
from appliance.web.plugins import IMMUTABLE, REVALIDATE, CacheControl, IndexUnreadable, with_headers

log = logging.getLogger(__name__)

# Errors answered in plain text, "<code> <reason>\n" (Bottle's own are HTML pages).
ERROR_CODES = (400, 401, 403, 404, 405, 409, 413, 416, 500, 503)


@dataclass(frozen=True)
class WebDeps:
    """What the web app reads, and whom it asks to act.

    :param reader: the index, read-only (:class:`~appliance.store.IndexReader`).
    :param status: returns the appliance's state now, a :class:`~appliance.status.Status`
        (:meth:`StatusCollector.collect <appliance.status.StatusCollector.collect>`): the page,
        ``/api/status``, ``/healthz`` and ``/metrics`` all read it.
    :param submit: hands an action (a :class:`~appliance.loop.Request`) to the main loop (its
        queue's ``put``); None: actions are off.
    :param token: the ``web_token`` that actions (and the export) need; "": actions are off and
        the export is open to all.
    :param config: returns the running config (after a reload, the new one): the export reads
        its deployment settings at each export, the pages and ``/api/activity`` its ``timezone``
        and the pages its ``camera_id`` at each request; None: no export (404), and the pages
        show the defaults.
    """

    reader: IndexReader
    status: Callable[[], Status]
    submit: Callable[[Request], None] | None = None
    token: str = ""
    config: Callable[[], Config] | None = None


@dataclass(frozen=True)
class Views:
    """The handlers of every route, grouped by what they serve; each a plain method a test can
    call without HTTP (inside a Bottle request context for those that read the request)."""

    auth: Auth
    pages: Pages
    login: Login
    api: Api
    actions: Actions
    files: Files
    export: Export
    metrics: Metrics

    @classmethod
    def of(cls, deps: WebDeps) -> "Views":
        """The handlers over ``deps``."""
        auth = Auth(deps.token, actions_on=bool(deps.token) and deps.submit is not None)

        def status() -> Status:  # only the web knows whether it takes actions
            return dataclasses.replace(deps.status(), actions=auth.actions_on)

        pages = Pages(deps.reader, status, auth, config=deps.config)
        return cls(
            auth=auth,
            pages=pages,
            login=Login(auth, pages.render),
            api=Api(deps.reader, status, zone=lambda: pages.when().tzinfo),
            actions=Actions(deps.submit),
            files=Files(deps.reader),
            export=Export(deps.reader, deps.config),
            metrics=Metrics(status, deps.reader),
        )


def routes(views: Views) -> list[tuple[str, str, Callable, dict]]:
    """Every route: ``(method, path, handler, options)``, the options as Bottle's ``app.route``
    takes them: ``apply``, the decorators that guard it, outermost first; ``cache``, the
    ``Cache-Control`` of its answers (:data:`~appliance.web.plugins.NO_STORE` when unsaid)."""
    auth, pages, login, api, actions, files, export = (
        views.auth, views.pages, views.login, views.api, views.actions, views.files, views.export
    )  # fmt: skip
    action = {"apply": [auth.action]}
    protect = "<capture_id>/<verb:re:protect|unprotect>"
    return [
        # The pages
        ("GET", "/", pages.status, {"cache": REVALIDATE}),
        ("GET", "/favicon.ico", pages.favicon, {"cache": REVALIDATE}),
        ("GET", "/style.css", pages.style, {"cache": REVALIDATE}),
        ("GET", "/captures", pages.gallery, {"cache": REVALIDATE}),
        ("GET", "/captures/<capture_id>", pages.capture, {"cache": REVALIDATE}),
        ("POST", f"/captures/{protect}", actions.protect_form, action),
        ("POST", "/offload", actions.offload_form, action),
        ("GET", "/login", login.form, {}),
        ("POST", "/login", login.login, {"apply": [auth.actions_enabled, auth.same_origin]}),
        ("POST", "/logout", login.logout, {"apply": [auth.same_origin]}),
        # The JSON API, the health check and the metrics
        ("GET", "/api/status", api.status, {}),
        ("GET", "/api/activity", api.activity, {}),
        ("GET", "/api/captures", api.captures, {}),
        ("GET", "/api/captures/<capture_id>", api.capture, {}),
        ("POST", "/api/capture", actions.capture, action),
        ("POST", f"/api/captures/{protect}", actions.protect, action),
        ("POST", "/api/offload", actions.offload, action),
        ("GET", "/healthz", api.healthz, {}),
        ("GET", "/metrics", views.metrics.metrics, {}),
        # The export and the files
        ("GET", "/export/camtrap-dp.zip", export.zip, {"apply": [export.available, auth.private]}),
        ("GET", "/thumbnails/<name>", files.thumbnail, {"cache": IMMUTABLE}),
        ("GET", "/media/<name>", files.media, {"cache": IMMUTABLE}),
    ]


def make_app(deps: WebDeps):
    """The web app over ``deps``, a WSGI callable (serve it with
    :class:`~appliance.web.server.WebServer`): the routes of :func:`routes`, where an index that
    cannot be read is a 503 with sqlite's reason, every error is plain text, and every answer
    carries the security headers and a ``Cache-Control``."""
    app = bottle.Bottle()
    app.install(IndexUnreadable())
    app.install(CacheControl())
    for method, path, handler, options in routes(Views.of(deps)):
        app.route(path, method, handler, **options)
    for code in ERROR_CODES:
        app.error(code)(plain_error)
    return with_headers(app)


def plain_error(error: bottle.HTTPError) -> str:
    """An error as ``"<code> <reason>\\n"`` in plain text; a 5xx with an exception behind it is
    logged with its traceback."""
    if error.status_code >= 500 and error.exception is not None:
        log.error(
            "web request %s %s failed", bottle.request.method, bottle.request.path, exc_info=error.exception
        )
    bottle.response.content_type = "text/plain; charset=utf-8"
    return f"{error.status_code} {error.body}\n"
