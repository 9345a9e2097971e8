"""Who may act: the ``web_token``, sent as ``Authorization: Bearer <web_token>`` or exchanged at
``POST /login`` for a session cookie, and the checks against cross-site requests.

The checks are decorators that the route table applies to the routes that need them
(:meth:`Auth.action` to every action), never calls a handler makes by hand.  Every token and
cookie is compared in constant time (:func:`hmac.compare_digest`).
"""

import functools
import hashlib
import hmac
import urllib.parse
from collections.abc import Callable

import bottle

from appliance.web.request import cookie, header, see_other

SESSION_COOKIE = "appliance_session"
ACTIONS_OFF = "actions are off: set web_token in the config"
LOG_IN = "log in or send Authorization: Bearer <web_token>"


class Auth:
    """The credentials of a request, and the decorators that guard routes with them.

    :param token: the ``web_token`` ("": no token, nobody is authorised).  The session cookie is
        derived from it (HMAC-SHA256), so that the cookie never holds the token itself.
    :param actions_on: whether the web takes actions at all (a token is set and the main loop
        takes requests).
    """

    def __init__(self, token: str, *, actions_on: bool):
        self.token = token
        self.actions_on = actions_on
        derived = hmac.new(token.encode(), b"appliance session", hashlib.sha256)
        self.session = derived.hexdigest() if token else ""

    def credentials(self) -> str | None:
        """How the request is authorised: ``"bearer"``, ``"cookie"`` or None (not at all)."""
        if not self.token:
            return None
        given = header("Authorization")
        if given.startswith("Bearer "):
            try:  # the bytes the client sent, to match a token's UTF-8 whatever they are
                sent = given[7:].encode("latin-1")
            except UnicodeEncodeError:  # only from a WSGI server that breaks PEP 3333
                sent = b""
            if hmac.compare_digest(sent, self.token.encode()):
                return "bearer"
        session = cookie(SESSION_COOKIE)
        if session and hmac.compare_digest(session.encode(), self.session.encode()):
            return "cookie"
        return None

    def authorised(self) -> bool:
        """Whether the request carries the token or a session cookie."""
        return self.credentials() is not None

    def token_matches(self, given: str) -> bool:
        """Whether ``given`` (as typed into the log-in form) is the token."""
        return hmac.compare_digest(given.encode(), self.token.encode())

    def check_same_origin(self) -> None:
        """A 403 unless the request comes from our own pages.

        Cross-site request forgery: SameSite=Strict keeps the cookie off other sites' requests; the
        browser's own word (``Sec-Fetch-Site``), or else ``Origin`` or ``Referer`` against
        ``Host``, is checked as well for browsers that ignore SameSite.  A request that proves
        nothing (none of them, as an HTTP/1.0 client may send) is refused."""
        fetch_site = header("Sec-Fetch-Site")
        if fetch_site == "same-origin":
            return
        origin, host = header("Origin") or header("Referer"), header("Host")
        try:
            netloc = urllib.parse.urlsplit(origin).netloc
        except ValueError:  # e.g. "http://[": not a URL
            netloc = ""
        if fetch_site or not host or netloc != host:
            raise bottle.HTTPError(403, "cross-site request refused")

    # Decorators for the route table (Bottle's apply=[...]); each raises before the handler runs.

    def action(self, callback: Callable) -> Callable:
        """An action (a test shot, protect): 403 while actions are off, 401 without the token or
        a session cookie, 403 for a cookie sent from another site."""

        @functools.wraps(callback)
        def guarded(*args, **kwargs):
            if not self.actions_on:
                raise bottle.HTTPError(403, ACTIONS_OFF)
            how = self.credentials()
            if how is None:
                raise bottle.HTTPError(401, LOG_IN)
            if how == "cookie":
                self.check_same_origin()
            return callback(*args, **kwargs)

        return guarded

    def actions_enabled(self, callback: Callable) -> Callable:
        """403 while actions are off (the log-in: there is nothing to log in to)."""

        @functools.wraps(callback)
        def guarded(*args, **kwargs):
            if not self.actions_on:
                raise bottle.HTTPError(403, ACTIONS_OFF)
            return callback(*args, **kwargs)

        return guarded

    def same_origin(self, callback: Callable) -> Callable:
        """403 for a request that does not come from our own pages (see
        :meth:`check_same_origin`)."""

        @functools.wraps(callback)
        def guarded(*args, **kwargs):
            self.check_same_origin()
            return callback(*args, **kwargs)

        return guarded

    def private(self, callback: Callable) -> Callable:
        """With a token set, 401 without it or a session cookie (the export); open to all
        without one."""

        @functools.wraps(callback)
        def guarded(*args, **kwargs):
            if self.token and not self.authorised():
                raise bottle.HTTPError(401, LOG_IN)
            return callback(*args, **kwargs)

        return guarded


class Login:
    """``GET /login`` (the form), ``POST /login`` (the token for a session cookie, HttpOnly and
    SameSite=Strict) and ``POST /logout``.  ``render(name, **values)``: a page (see
    :meth:`~appliance.web.pages.Pages.render`)."""

    def __init__(self, auth: Auth, render: Callable[..., str]):
        self._auth = auth
        self._render = render

    def form(self) -> str:
        return self._render("login", failed=False)

    def login(self) -> str:
        """303 to ``/`` with the cookie; 401 with the form again for a wrong token; 400 for a
        malformed form."""
        try:
            # getunicode: the UTF-8 a browser sends (plain get gives latin-1); None when it is not.
            given = bottle.request.forms.getunicode("token") or ""
        except ValueError:  # Bottle's parser meets a malformed Content-Type or multipart body
            raise bottle.HTTPError(400, "malformed form") from None
        if not self._auth.token_matches(given):
            bottle.response.status = 401
            return self._render("login", failed=True)
        bottle.response.set_cookie(
            SESSION_COOKIE, self._auth.session, httponly=True, samesite="strict", path="/"
        )
        see_other("/")

    def logout(self):
        """303 to ``/``, the cookie cleared."""
        bottle.response.delete_cookie(SESSION_COOKIE, path="/")
        see_other("/")
