"""What every answer of the web app carries, as Bottle plugins and a WSGI middleware: the security
headers, a ``Cache-Control`` chosen by the route, and a 503 (never a 500) for an index that cannot
be read."""

import logging
import sqlite3
import threading
import time

import bottle

log = logging.getLogger(__name__)

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
# Cache-Control, by kind of answer; each route in the route table names its own, errors and
# redirects are NO_STORE.  The API, the actions and the log-in answer with what is true now (and a
# session): nothing keeps them.  Pages may be kept (for Back) but are asked for again before each
# showing (no-cache; they carry no validator, so that is a full fetch): they show live figures and
# whether one is logged in, and a max-age of even a few seconds would show the page from before a
# log-in or a protect after the 303 that leads back to it.  Files never change: cached for a year.
NO_STORE = "no-store"
REVALIDATE = "no-cache"
IMMUTABLE = "public, max-age=31536000, immutable"
# An unreadable index is logged at most this often (each request still answers 503 with the reason).
UNREADABLE_LOG_INTERVAL_S = 60


class IndexUnreadable:
    """Bottle plugin: a route that cannot read the index (the file deleted or damaged, no
    permission) answers 503 with sqlite's reason, and the log gets one line (at most one every
    :data:`UNREADABLE_LOG_INTERVAL_S` while the reason stays the same), not a traceback.  A
    mistake in our own SQL (``sqlite3.ProgrammingError``, ``IntegrityError``) stays a 500 with its
    traceback."""

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


class CacheControl:
    """Bottle plugin: the route's ``cache`` config (:data:`NO_STORE` when it has none) as the
    ``Cache-Control`` of its answers that set none.  Errors raised are left alone: their headers
    are the error's own, and :func:`with_headers` gives them :data:`NO_STORE`."""

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


def with_headers(app):
    """WSGI middleware around ``app``: the security headers on every response, errors included,
    and ``Cache-Control: no-store`` on those that have none (errors, redirects)."""

    def wrapped(environ, start_response):
        def start(status, headers, exc_info=None):
            extra = SECURITY_HEADERS
            if not any(name.lower() == "cache-control" for name, _ in headers):
                extra = [*extra, ("Cache-Control", NO_STORE)]
            return start_response(status, headers + extra, exc_info)

        return app(environ, start)

    return wrapped
