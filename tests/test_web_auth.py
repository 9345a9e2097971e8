"""Who may act (``appliance.web.auth``): actions off, refused or accepted, the log-in and its
session cookie, and requests from other sites."""

import datetime
import inspect
import logging
import queue
import re
import urllib.parse

import bottle
import pytest
import requests
import webtest
from web_client import (
    BEARER,
    FOREIGN,
    HOST,
    ORIGIN,
    TOKEN,
    UNKNOWN_ID,
    assert_every_answer_headers,
    bind_request,
    exchange,
    live_session,
    log_in,
    take,
)

from appliance.web import WebServer, auth
from appliance.web.auth import Auth

# --- Actions: off, refused, accepted --------------------------------------------------------------


ACTIONS = [
    "/api/capture",
    f"/api/captures/{UNKNOWN_ID}/protect",
    f"/api/captures/{UNKNOWN_ID}/unprotect",
    f"/captures/{UNKNOWN_ID}/protect",
    f"/captures/{UNKNOWN_ID}/unprotect",
    "/api/offload",
    "/offload",
]


@pytest.mark.parametrize("path", [*ACTIONS, "/login"])
@pytest.mark.parametrize(
    "options",
    # A loop that never answers stands behind submit: nothing must reach it.
    [{}, {"submit": queue.Queue().put}, {"token": TOKEN}],
    ids=["no token, no loop", "no token", "no loop"],
)
def test_every_action_is_refused_when_actions_are_off(client, options, path):
    app = client(**options)
    for headers in ({}, BEARER, {**BEARER, "Origin": ORIGIN}):
        response = app.post(path, {"token": TOKEN}, headers=headers, status=403)
        assert "actions are off" in response.text
    assert app.get("/api/status").json["actions"] is False


WRONG_CREDENTIALS = [
    {},
    {"Origin": ORIGIN},
    {"Authorization": "Bearer wrong-token"},
    {"Authorization": f"Bearer {TOKEN}x"},
    {"Authorization": f"Bearer {TOKEN[:-1]}"},
    {"Authorization": "Bearer "},
    {"Authorization": TOKEN},
    {"Authorization": f"bearer {TOKEN}", "Origin": ORIGIN},
    {"Authorization": f"Basic {TOKEN}", "Origin": ORIGIN},
    {"Cookie": f"appliance_session={TOKEN}", "Origin": ORIGIN},
]


@pytest.mark.parametrize("action", [path.replace(UNKNOWN_ID, "{id}") for path in ACTIONS])
def test_actions_without_the_right_credentials_are_401(loop_app, action):
    app, reader = loop_app.app, loop_app.reader
    capture_id = take(app)
    # Each action, were it done, would show: a second capture, or protected flipped.
    protected = action.endswith("/unprotect")
    verb = "protect" if protected else "unprotect"
    app.post(f"/api/captures/{capture_id}/{verb}", headers=BEARER, status=200)
    for headers in WRONG_CREDENTIALS:
        app.post(action.format(id=capture_id), headers=headers, status=401)
    assert reader.counts(datetime.datetime.now(datetime.UTC))["total"] == 1
    assert reader.get(capture_id)["protected"] == protected


def test_actions_with_the_bearer_token_are_accepted(loop_app):
    app = loop_app.app
    assert app.get("/api/status").json["actions"] is True
    capture_id = take(app)
    app.post(f"/api/captures/{capture_id}/protect", headers=BEARER, status=200)
    response = app.post(f"/captures/{capture_id}/unprotect", headers=BEARER, status=303)
    assert response.location == f"/captures/{capture_id}"


def test_tokens_are_compared_in_constant_time():
    source = inspect.getsource(auth)
    # The bearer token, the session cookie and the log-in form: each through hmac.compare_digest.
    assert source.count("hmac.compare_digest(") >= 3
    assert len(re.findall(r"compare_digest\([^\n]*\btoken\.encode\(\)\)", source)) >= 2
    assert re.search(r"compare_digest\([^\n]*\bsession\.encode\(\)\)", source)
    assert not re.search(r"(==|!=|\bin)\s*(token|session)\b|\b(token|session)\s*(==|!=)", source)


# --- Log-in, session cookie and cross-site requests -----------------------------------------------


def test_login_with_the_right_token_sets_an_httponly_samesite_strict_cookie(loop_app):
    response = log_in(loop_app.app)
    assert response.location == "/"
    (cookie,) = response.headers.getall("Set-Cookie")
    name_value, *attributes = [part.strip() for part in cookie.split(";")]
    name, value = name_value.split("=", 1)
    assert name == "appliance_session" and re.fullmatch(r"[0-9a-f]{64}", value)
    assert TOKEN not in cookie  # the cookie is derived from the token, not the token itself
    attributes = {attribute.lower() for attribute in attributes}
    assert {"httponly", "samesite=strict", "path=/"} <= attributes


def test_login_with_a_wrong_token_is_401_without_a_cookie(loop_app):
    for token in ("wrong", TOKEN[:-1], TOKEN + " ", ""):
        response = loop_app.app.post("/login", {"token": token}, headers={"Origin": ORIGIN}, status=401)
        assert "Set-Cookie" not in response.headers
        assert "Wrong token." in response.text
    assert not loop_app.app.cookies


def test_login_from_another_site_is_403(loop_app):
    for headers in ({"Origin": FOREIGN}, {}, {"Referer": f"{FOREIGN}/login"}):
        response = loop_app.app.post("/login", {"token": TOKEN}, headers=headers, status=403)
        assert "Set-Cookie" not in response.headers


def test_a_logged_in_form_post_from_our_origin_protects_and_unprotects(loop_app):
    app, reader = loop_app.app, loop_app.reader
    capture_id = take(app)
    log_in(app)
    response = app.post(f"/captures/{capture_id}/protect", headers={"Origin": ORIGIN}, status=303)
    assert response.location == f"/captures/{capture_id}"
    assert reader.get(capture_id)["protected"] == 1
    page = response.follow(status=200).text
    assert f'<form method="post" action="/captures/{capture_id}/unprotect">' in page
    assert "<dt>Protected from cleanup</dt><dd>Yes</dd>" in page
    # Without Origin, a Referer from our own pages will do.
    referer = {"Referer": f"{ORIGIN}/captures/{capture_id}"}
    app.post(f"/captures/{capture_id}/unprotect", headers=referer, status=303)
    assert reader.get(capture_id)["protected"] == 0


@pytest.mark.parametrize(
    "headers",
    [
        {"Origin": FOREIGN},
        {"Origin": FOREIGN, "Referer": f"{ORIGIN}/"},
        {"Referer": f"{FOREIGN}/captures"},
        {"Origin": f"http://{HOST}.evil.example"},
        {"Origin": f"http://{HOST}:8080"},
        {"Origin": "null"},
        {},
    ],
    ids=["foreign origin", "foreign origin, our referer", "foreign referer", "lookalike", "other port",
         "null", "none"],
)  # fmt: skip
def test_a_logged_in_form_post_from_another_origin_or_none_is_403(loop_app, headers):
    app, reader = loop_app.app, loop_app.reader
    capture_id = take(app)
    log_in(app)
    response = app.post(f"/captures/{capture_id}/protect", headers=headers, status=403)
    assert "cross-site request refused" in response.text
    app.post(f"/api/captures/{capture_id}/protect", headers=headers, status=403)
    assert reader.get(capture_id)["protected"] == 0


def test_a_cookie_request_with_a_non_bearer_authorization_header_is_still_checked_for_origin(loop_app):
    app, reader = loop_app.app, loop_app.reader
    capture_id = take(app)
    log_in(app)
    headers = {"Origin": FOREIGN, "Authorization": "Basic dXNlcjpwYXNz"}
    app.post(f"/captures/{capture_id}/protect", headers=headers, expect_errors=True)
    assert reader.get(capture_id)["protected"] == 0


def test_logout_clears_the_cookie(loop_app):
    app = loop_app.app
    capture_id = take(app)
    log_in(app)
    response = app.post("/logout", headers={"Origin": ORIGIN}, status=303)
    (cookie,) = response.headers.getall("Set-Cookie")
    assert cookie.startswith('appliance_session="";') or cookie.startswith("appliance_session=;")
    assert "max-age=-1" in cookie.lower() or "max-age=0" in cookie.lower()
    assert not app.cookies
    assert "/protect" not in app.get(f"/captures/{capture_id}", status=200).text
    app.post(f"/captures/{capture_id}/protect", headers={"Origin": ORIGIN}, status=401)


def test_logout_from_another_site_is_403_and_keeps_the_cookie(loop_app):
    log_in(loop_app.app)
    response = loop_app.app.post("/logout", headers={"Origin": FOREIGN}, status=403)
    assert "Set-Cookie" not in response.headers and loop_app.app.cookies


def browser_form_headers(page: webtest.TestResponse) -> dict:
    """The headers a browser sends with a same-origin form POST from ``page``: the page's
    Referrer-Policy decides Origin and Referer (Fetch standard, "append a request `Origin` header":
    a non-CORS POST under ``no-referrer`` has ``Origin: null``; Referrer Policy spec for Referer)."""
    origin = f"{page.request.scheme}://{page.request.host}"
    policy = page.headers.get("Referrer-Policy", "strict-origin-when-cross-origin")
    headers = {"Sec-Fetch-Site": "same-origin", "Content-Type": "application/x-www-form-urlencoded"}
    if policy == "no-referrer":
        return headers | {"Origin": "null"}
    referer = f"{origin}/" if policy in ("origin", "strict-origin") else page.request.url
    return headers | {"Origin": origin, "Referer": referer}


@pytest.mark.parametrize("form", ["login", "protect", "logout"])
def test_our_forms_work_as_a_browser_sends_them(loop_app, form):
    app = loop_app.app
    capture_id = take(app)
    if form == "login":
        page = app.get("/login", status=200)
        app.post("/login", f"token={TOKEN}", headers=browser_form_headers(page), status=303)
    else:
        log_in(app)
        page = app.get(f"/captures/{capture_id}", status=200)
        action = f"/captures/{capture_id}/protect" if form == "protect" else "/logout"
        app.post(action, "", headers=browser_form_headers(page), status=303)


# --- The real server ------------------------------------------------------------------------------


NOT_UTF8 = {
    "Authorization": f"Bearer {TOKEN}".encode() + b"\xff",
    "Origin": b"http://127.0.0.1:%d\xff\xfe",
    "Referer": b"http://127.0.0.1:%d\xc3(/captures",
    "Sec-Fetch-Site": b"same-origin\x80",
}


@pytest.mark.parametrize("header", list(NOT_UTF8))
@pytest.mark.parametrize("path", ["/login", "/logout", "/api/capture", f"/captures/{UNKNOWN_ID}/protect"])
def test_a_header_byte_that_is_not_utf8_is_a_4xx_without_a_traceback(live, header, path, caplog):
    cookie = live_session(live).encode()
    value = NOT_UTF8[header].replace(b"%d", str(live.port).encode())
    request = (
        b"POST " + path.encode() + b" HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n" % live.port
        + b"Cookie: appliance_session=" + cookie + b"\r\n" + header.encode() + b": " + value + b"\r\n"
        b"Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )  # fmt: skip
    answer = exchange(live.port, request)
    assert answer.status in (401, 403), answer
    assert_every_answer_headers(answer)
    assert not [record for record in caplog.records if record.levelno >= logging.ERROR]


def test_a_cookie_post_over_http_1_0_without_host_origin_or_referer_is_403(live):
    cookie = b"Cookie: appliance_session=" + live_session(live).encode() + b"\r\n"
    for path in (b"/logout", b"/api/capture", b"/captures/%s/protect" % UNKNOWN_ID.encode()):
        answer = exchange(
            live.port, b"POST " + path + b" HTTP/1.0\r\n" + cookie + b"Content-Length: 0\r\n\r\n"
        )
        assert answer.status == 403 and answer.body == b"403 cross-site request refused\n", (path, answer)
    # The same cookie, from our own page, is taken.
    ours = b"Host: 127.0.0.1:%d\r\nOrigin: http://127.0.0.1:%d\r\n" % (live.port, live.port)
    answer = exchange(live.port, b"POST /logout HTTP/1.0\r\n" + ours + cookie + b"Content-Length: 0\r\n\r\n")
    assert answer.status == 303


NON_ASCII_TOKEN = "çlé-secrète-ünïcødé-0123"


def test_a_non_ascii_token_logs_in_through_the_form_and_by_bearer(main_loop):
    server = WebServer(main_loop.app(token=NON_ASCII_TOKEN), "127.0.0.1", 0)
    origin = server.url.rstrip("/")
    try:
        with requests.Session() as browser:
            # As a browser sends the form of a UTF-8 page: the token's UTF-8 bytes, percent-encoded.
            body = "token=" + urllib.parse.quote(NON_ASCII_TOKEN, encoding="utf-8")
            form = {"Content-Type": "application/x-www-form-urlencoded", "Origin": origin,
                    "Sec-Fetch-Site": "same-origin"}  # fmt: skip
            response = browser.post(f"{origin}/login", data=body, headers=form, allow_redirects=False)
            assert response.status_code == 303 and browser.cookies["appliance_session"]
            response = browser.post(f"{origin}/api/capture", headers={"Origin": origin}, timeout=10)
            assert response.status_code == 200 and len(response.json()["captured"]) == 1
            latin1 = "token=" + urllib.parse.quote(NON_ASCII_TOKEN, encoding="latin-1")
            assert browser.post(f"{origin}/login", data=latin1, headers=form).status_code == 401
        # The header as sent: the token's UTF-8 bytes, which WSGI hands over as latin-1 characters.
        bearer = {"Authorization": b"Bearer " + NON_ASCII_TOKEN.encode()}
        response = requests.post(f"{origin}/api/capture", headers=bearer, timeout=10)
        assert response.status_code == 200 and len(response.json()["captured"]) == 1
        for wrong in (NON_ASCII_TOKEN.encode("latin-1"), NON_ASCII_TOKEN.encode()[:-1] + b"\xff"):
            response = requests.post(f"{origin}/api/capture", headers={"Authorization": b"Bearer " + wrong})
            assert response.status_code == 401
    finally:
        server.stop()
    assert main_loop.reader.counts(datetime.datetime.now(datetime.UTC))["total"] == 2


# --- Without HTTP: the decorators the route table applies -------------------------------------------


def handler() -> str:
    return "done"


@pytest.mark.parametrize(
    ("actions_on", "headers", "status"),
    [
        (False, BEARER, 403),
        (True, {}, 401),
        (True, {"Authorization": "Bearer wrong"}, 401),
        (True, {"Cookie": f"appliance_session={Auth(TOKEN, actions_on=True).session}"}, 403),
        (True, {"Cookie": f"appliance_session={TOKEN}", "Origin": ORIGIN}, 401),
    ],
    ids=["actions off", "no credentials", "wrong token", "cookie from nowhere", "token as cookie"],
)
def test_an_action_is_refused_before_its_handler_runs(actions_on, headers, status):
    ran = []
    guarded = Auth(TOKEN, actions_on=actions_on).action(lambda: ran.append(1))
    bind_request(headers=headers)
    with pytest.raises(bottle.HTTPError) as answer:
        guarded()
    assert answer.value.status_code == status and ran == []


@pytest.mark.parametrize(
    "headers",
    [
        BEARER,
        {"Cookie": f"appliance_session={Auth(TOKEN, actions_on=True).session}", "Origin": ORIGIN},
        {"Cookie": f"a{{=1; appliance_session={Auth(TOKEN, actions_on=True).session}",
         "Sec-Fetch-Site": "same-origin"},
    ],
    ids=["bearer", "cookie from our origin", "cookie beside an illegal one, same-origin"],
)  # fmt: skip
def test_an_action_with_the_token_or_our_own_cookie_runs(headers):
    bind_request(headers=headers)
    assert Auth(TOKEN, actions_on=True).action(handler)() == "done"


def test_the_credentials_say_how_the_request_is_authorised():
    auth = Auth(TOKEN, actions_on=True)
    bind_request(headers=BEARER)
    assert auth.credentials() == "bearer" and auth.authorised()
    bind_request(headers={"Cookie": f"appliance_session={auth.session}"})
    assert auth.credentials() == "cookie"
    bind_request(headers=BEARER)
    assert Auth("", actions_on=False).credentials() is None  # no token: nobody
    assert auth.session != TOKEN and TOKEN not in auth.session


def test_same_origin_and_private_guard_their_routes():
    auth = Auth(TOKEN, actions_on=True)
    bind_request(headers={"Origin": FOREIGN})
    with pytest.raises(bottle.HTTPError) as answer:
        auth.same_origin(handler)()
    assert answer.value.status_code == 403
    bind_request(headers={"Origin": ORIGIN})
    assert auth.same_origin(handler)() == "done"
    with pytest.raises(bottle.HTTPError) as answer:
        auth.private(handler)()
    assert answer.value.status_code == 401
    assert Auth("", actions_on=False).private(handler)() == "done"  # no token: open to all
    with pytest.raises(bottle.HTTPError) as answer:
        Auth(TOKEN, actions_on=False).actions_enabled(handler)()
    assert answer.value.status_code == 403
