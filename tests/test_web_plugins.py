"""What every answer carries (``appliance.web.plugins``): the security headers, a Cache-Control by
kind of route, and a 503 with the reason for an index that cannot be read."""

import logging
import queue
import sqlite3

import bottle
import pytest
import requests
from web_client import ORIGIN, TOKEN, UNKNOWN_ID, assert_security_headers, log_in

from appliance.web.plugins import NO_STORE, SECURITY_HEADERS, IndexUnreadable, with_headers


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/", 200),
        ("GET", "/style.css", 200),
        ("GET", "/captures", 200),
        ("GET", "/login", 200),
        ("GET", "/api/status", 200),
        ("GET", "/api/captures", 200),
        ("GET", "/healthz", 200),
        ("GET", "/metrics", 200),
        ("GET", "/nothing/here", 404),
        ("GET", f"/captures/{UNKNOWN_ID}", 404),
        ("GET", "/captures/not-an-id", 400),
        ("GET", "/captures?before=x", 400),
        ("GET", f"/media/{UNKNOWN_ID}.jpg", 404),
        ("GET", "/media/bad.jpg", 400),
        ("POST", "/api/capture", 403),
        ("PUT", "/api/status", 405),
        ("DELETE", "/captures", 405),
        ("HEAD", "/api/status", 200),
    ],
)
def test_security_headers_are_on_every_response(client, method, path, status):
    response = client().request(path, method=method, status=status)
    assert_security_headers(response)


def test_security_headers_are_on_file_304_and_auth_401_and_303_responses(client, captures):
    app = client(token=TOKEN, submit=queue.Queue().put)
    url = f"/media/{captures[0]['id']}.jpg"
    assert_security_headers(app.get(url, status=200))
    assert_security_headers(app.get(url, headers={"If-None-Match": f'"{captures[0]["sha256"]}"'}, status=304))
    assert_security_headers(app.post("/api/capture", status=401))
    assert_security_headers(app.post("/login", {"token": "wrong"}, headers={"Origin": ORIGIN}, status=401))
    assert_security_headers(log_in(app))


@pytest.mark.parametrize(
    ("method", "path", "status", "cache_control"),
    [
        ("GET", "/", 200, "no-cache"),
        ("HEAD", "/", 200, "no-cache"),
        ("GET", "/captures", 200, "no-cache"),
        ("GET", "/captures/{id}", 200, "no-cache"),
        ("GET", "/style.css", 200, "no-cache"),
        ("GET", "/favicon.ico", 204, "no-cache"),
        ("GET", "/login", 200, "no-store"),
        ("GET", "/api/status", 200, "no-store"),
        ("GET", "/api/captures", 200, "no-store"),
        ("GET", "/api/captures/{id}", 200, "no-store"),
        ("GET", "/healthz", 200, "no-store"),
        ("GET", "/metrics", 200, "no-store"),
        ("GET", "/media/{id}.jpg", 200, "public, max-age=31536000, immutable"),
        ("GET", "/thumbnails/{id}.webp", 200, "public, max-age=31536000, immutable"),
        ("POST", "/login", 303, "no-store"),
        ("POST", "/logout", 303, "no-store"),
        ("POST", "/api/capture", 401, "no-store"),
        ("GET", f"/captures/{UNKNOWN_ID}", 404, "no-store"),
        ("GET", "/captures?day=yesterday", 400, "no-store"),
        ("PUT", "/api/status", 405, "no-store"),
    ],
)
def test_cache_control_is_set_by_the_kind_of_route(live, captures, method, path, status, cache_control):
    origin = live.url.rstrip("/")
    url, data = origin + path.format(id=captures[2]["id"]), {"token": TOKEN} if method == "POST" else None
    response = requests.request(
        method, url, data=data, headers={"Origin": origin}, allow_redirects=False, timeout=5
    )
    assert response.status_code == status
    assert response.headers["Cache-Control"] == cache_control


INDEX_ROUTES = [
    "/", "/api/status", "/healthz", "/captures", "/metrics", "/api/captures", "/captures/{id}",
    "/api/captures/{id}", "/media/{id}.jpg", "/thumbnails/{id}.webp",
]  # fmt: skip


@pytest.mark.parametrize("damage", ["removed", "not a database"])
def test_an_unreadable_index_is_a_503_with_the_reason_and_one_log_line(live, store, captures, damage, caplog):
    db = store.data_dir / "captures.db"
    if damage == "not a database":  # overwritten in place: damaged pages, as a failing card gives
        assert store.checkpoint()[0] == 0  # else the WAL's newer copy of the first page is read
        db.write_bytes(b"this is no SQLite file\n" * 500)
        reason = "the capture index cannot be read: file is not a database"
    else:
        db.unlink()
        reason = "the capture index cannot be read: unable to open database file"
    for route in INDEX_ROUTES:
        response = requests.get(live.url.rstrip("/") + route.format(id=captures[2]["id"]), timeout=5)
        assert (response.status_code, response.text) == (503, f"503 {reason}\n"), route
        assert response.headers["Cache-Control"] == "no-store"
    logged = [record for record in caplog.records if record.levelno >= logging.WARNING]
    assert [record.getMessage() for record in logged] == [f"web: {reason}"]
    assert logged[0].exc_info is None


# --- Without HTTP ------------------------------------------------------------------------------------


def test_every_answer_gets_the_security_headers_and_a_cache_control():
    def answer(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"hello"]

    def cached(environ, start_response):
        start_response("200 OK", [("Cache-Control", "public")])
        return [b""]

    sent = []
    with_headers(answer)({}, lambda status, headers, exc_info=None: sent.append(headers))
    with_headers(cached)({}, lambda status, headers, exc_info=None: sent.append(headers))
    plain, kept = (dict(headers) for headers in sent)
    assert plain["Cache-Control"] == NO_STORE and kept["Cache-Control"] == "public"
    for name, value in SECURITY_HEADERS:
        assert plain[name] == kept[name] == value


def test_an_unreadable_index_becomes_a_503_but_a_mistake_in_our_sql_stays_a_500():
    plugin = IndexUnreadable()

    def failing(error):
        def handler():
            raise error

        return plugin.apply(handler, None)

    with pytest.raises(bottle.HTTPError) as answer:
        failing(sqlite3.OperationalError("disk I/O error"))()
    assert answer.value.status_code == 503
    assert answer.value.body == "the capture index cannot be read: disk I/O error"
    with pytest.raises(sqlite3.ProgrammingError):
        failing(sqlite3.ProgrammingError("no such column"))()
