"""What a handler reads from the request (query parameters, headers, cookies, a capture id) and
the redirect it answers with.  Each bad value is a 400 naming it, never a 500."""

import datetime
import urllib.parse
from collections.abc import Callable

import bottle

from appliance.store import CAPTURE_ID, TRIGGERS, IndexReader

# Captures on a page of the gallery and of /api/captures; ?limit= asks for at most MAX_PAGE_SIZE.
PAGE_SIZE = 24
MAX_PAGE_SIZE = 100


def query(name: str, parse: Callable[[str], object], default=None):
    """Query parameter ``name`` parsed by ``parse`` (``default`` when absent or empty); a value
    ``parse`` refuses (``ValueError``, ``OverflowError``) is a 400 naming it."""
    value = bottle.request.query.get(name)
    if value in (None, ""):
        return default
    try:
        return parse(value)
    except (ValueError, OverflowError):
        raise bottle.HTTPError(400, f"bad {name}: {value[:40]!r}") from None


def see_other(path: str):
    """Raise a 303 to ``path`` on this server, keeping the headers set so far (a cookie).  Its
    Location is relative (RFC 9110 10.2.2), where ``bottle.redirect`` makes it absolute from the
    Host header: a Host that is no host (``[::1``) made that a 500."""
    answer = bottle.response.copy(cls=bottle.HTTPResponse)
    answer.status = 303
    answer.set_header("Location", path)
    raise answer


def header(name: str) -> str:
    """Request header ``name`` as WSGI gives it: each byte as one latin-1 character (PEP 3333), ""
    when absent.  Bottle's own ``get_header`` decodes the bytes as UTF-8 and raises on any other."""
    return bottle.request.environ.get("HTTP_" + name.upper().replace("-", "_"), "")


def cookie(name: str) -> str:
    """Cookie ``name`` from the ``Cookie`` header, "" when absent.  Read by hand: the standard
    library's parser (behind Bottle's ``get_cookie``) raises, or stops, at the first cookie it finds
    illegal, and a browser sends us every cookie of this host, those of other ports included."""
    for pair in header("Cookie").split(";"):
        key, _, value = pair.strip().partition("=")
        if key == name:
            return value
    return ""


def seq(value: str) -> int:
    """A capture's ``seq``: an integer from 1 to 2**63 - 1; raises ``ValueError``."""
    number = int(value)
    if not 0 < number < 2**63:
        raise ValueError(value)
    return number


def day(value: str) -> datetime.date:
    """A day, ``YYYY-MM-DD``, before the last of the calendar; raises ``ValueError``."""
    parsed = datetime.date.fromisoformat(value)
    if parsed == datetime.date.max:  # the index asks for captures before the next day, which is none
        raise ValueError(value)
    return parsed


def trigger(value: str) -> str:
    """One of :data:`~appliance.store.TRIGGERS`; raises ``ValueError``."""
    if value not in TRIGGERS:
        raise ValueError(value)
    return value


def capture_id(value: str) -> str:
    """``value`` when it is a capture id (32 lower-case hex characters), else a 400."""
    if not CAPTURE_ID.fullmatch(value):
        raise bottle.HTTPError(400, "expected a capture id of 32 hex characters")
    return value


def capture_row(reader: IndexReader, value: str) -> dict:
    """The index row of capture ``value``: a 400 for a malformed id, a 404 for an unknown one."""
    row = reader.get(capture_id(value))
    if row is None:
        raise bottle.HTTPError(404, "no such capture")
    return row


def gallery_query() -> dict:
    """The gallery's filters from the query, ``{"before": seq, "day": date, "trigger": str}``
    (None for each absent one); a bad one is a 400."""
    return {"before": query("before", seq), "day": query("day", day), "trigger": query("trigger", trigger)}


def next_url(path: str, rows: list[dict], limit: int, filters: dict) -> str | None:
    """The link to the page after ``rows`` (at ``path``, keeping ``filters`` but ``before``), or
    None when ``rows`` is the last page (fewer than ``limit``)."""
    if len(rows) < limit:
        return None
    params = {k: str(v) for k, v in filters.items() if v is not None and k != "before"}
    return f"{path}?{urllib.parse.urlencode(params | {'before': rows[-1]['seq']})}"
