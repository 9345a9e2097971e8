"""The real server on loopback (``appliance.web.server``): its limits against slow, hostile and
malformed clients, and a fuzz of raw requests through it."""

import collections
import contextlib
import math
import os
import random
import re
import socket
import threading
import time
import urllib.parse

import pytest
import requests
import webtest
from web_client import (
    HOST,
    NASTY_SEGMENTS,
    TOKEN,
    assert_every_answer_headers,
    exchange,
    get,
    indexed_files,
    log_in,
    take,
)

from appliance.status import StatusCollector
from appliance.store import TRIGGERS, IndexReader
from appliance.web import WebDeps, WebServer, make_app


def raw_request(server: WebServer, head: bytes, body: bytes = b"") -> int:
    """Send ``head`` and ``body`` on a new connection; the status code of the answer.  The server may
    answer and close before all is sent."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        try:
            sock.sendall(head)
            sock.sendall(body)
        except (BrokenPipeError, ConnectionResetError):
            pass
        answer = b""
        while b"\r\n" not in answer:
            chunk = sock.recv(4096)
            if not chunk:
                break
            answer += chunk
    match = re.match(rb"HTTP/1\.[01] (\d{3}) ", answer)
    assert match, answer[:100]
    return int(match[1])


def get_status(server: WebServer, timeout_s: float = 5) -> int:
    return requests.get(f"{server.url}api/status", timeout=timeout_s).status_code


def test_malformed_http_request_gets_400_and_the_server_keeps_serving(server):
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nheader without a colon\r\n\r\n")
        # waitress answers a request it could not parse in HTTP/1.0.
        assert re.match(rb"HTTP/1\.[01] 400 ", sock.recv(100))
    assert get(server, "/api/status").status_code == 200


def test_busy_port_fails_at_start_up(server, store):
    reader = IndexReader(store.data_dir)
    app = make_app(WebDeps(reader, StatusCollector(reader, mode="simulation", started_monotonic=0).collect))
    with pytest.raises(OSError):
        WebServer(app, "127.0.0.1", server.port)


def test_100_kb_of_headers_get_a_4xx_and_the_server_keeps_serving(live):
    head = b"GET /api/status HTTP/1.1\r\nHost: x\r\nX-Padding: " + b"a" * 100_000 + b"\r\n\r\n"
    assert raw_request(live, head) in (400, 413, 431)
    many_headers = b"".join(b"X-Padding-%d: %s\r\n" % (i, b"a" * 1000) for i in range(100))
    assert raw_request(live, b"GET /api/status HTTP/1.1\r\nHost: x\r\n" + many_headers + b"\r\n") in (
        400,
        413,
        431,
    )
    assert get_status(live) == 200


def test_a_1_mb_body_gets_a_4xx_and_the_server_keeps_serving(live):
    host = f"127.0.0.1:{live.port}".encode()
    for path in (b"/login", b"/api/capture"):
        head = (
            b"POST " + path + b" HTTP/1.1\r\nHost: " + host + b"\r\nOrigin: http://" + host + b"\r\n"
            b"Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 1048576\r\n\r\n"
        )
        assert raw_request(live, head, b"token=" + b"a" * (1048576 - 6)) in (400, 413)
    assert get_status(live) == 200


def test_a_1_mb_chunked_body_gets_a_4xx(live):
    host = f"127.0.0.1:{live.port}".encode()
    head = (
        b"POST /login HTTP/1.1\r\nHost: " + host + b"\r\nOrigin: http://" + host + b"\r\n"
        b"Content-Type: application/x-www-form-urlencoded\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    body = b"100000\r\ntoken=" + b"a" * (0x100000 - 6) + b"\r\n0\r\n\r\n"
    try:
        status = raw_request(live, head, body)
    finally:
        assert get_status(live) == 200
    assert 400 <= status < 500


def test_a_client_that_sends_nothing_does_not_block_the_others(live):
    with socket.create_connection(("127.0.0.1", live.port)):
        started = time.monotonic()
        assert get_status(live, timeout_s=1) == 200
        assert time.monotonic() - started < 1


def page_seconds(server: WebServer, count: int = 30) -> list[float]:
    """Seconds each of ``count`` requests for ``GET /`` took, one after the other, each on a new
    connection."""
    seconds = []
    for _ in range(count):
        started = time.monotonic()
        assert requests.get(server.url, timeout=5).status_code == 200
        seconds.append(time.monotonic() - started)
    return seconds


def p99(seconds: list[float]) -> float:
    ordered = sorted(seconds)
    return ordered[math.ceil(0.99 * len(ordered)) - 1]


@contextlib.contextmanager
def trickling(port: int, count: int):
    """``count`` connections to ``port``, each sending the start of a request and then one header
    byte a second, from a background thread; one the server closes is opened again.  Yields
    ``{"opened": n, "bytes": n}``."""
    done, sent = threading.Event(), {"opened": 0, "bytes": 0}

    def start() -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        sock.sendall(b"GET / HTTP/1.1\r\nHost: trap.local\r\nX-Slow: ")
        sent["opened"] += 1
        return sock

    socks = [start() for _ in range(count)]

    def trickle() -> None:
        while not done.wait(1):
            for i, sock in enumerate(socks):
                try:
                    sock.sendall(b"a")
                    sent["bytes"] += 1
                except OSError:  # closed by the server (REQUEST_TIMEOUT_S): another one
                    sock.close()
                    socks[i] = start()

    thread = threading.Thread(target=trickle, name="trickle")
    thread.start()
    try:
        yield sent
    finally:
        done.set()
        thread.join()
        for sock in socks:
            sock.close()


def test_100_clients_trickling_a_header_byte_a_second_leave_the_page_answering_within_1_s(live, capsys):
    with trickling(live.port, 100) as sent:
        time.sleep(2.5)  # every one is part-way through its headers
        seconds = page_seconds(live)
    with capsys.disabled():
        print(f"\nGET / with 100 trickling clients: p99 {p99(seconds) * 1000:.0f} ms over {len(seconds)}, "
              f"{sent['opened']} connections opened, {sent['bytes']} bytes trickled")  # fmt: skip
    assert sent["bytes"] >= 100  # each one has sent some
    assert p99(seconds) < 1


def test_100_silent_clients_leave_the_page_answering_within_1_s(live, capsys):
    silent = [socket.create_connection(("127.0.0.1", live.port)) for _ in range(100)]
    try:
        time.sleep(0.5)
        seconds = page_seconds(live)
    finally:
        for sock in silent:
            sock.close()
    with capsys.disabled():
        print(f"\nGET / with 100 silent clients: p99 {p99(seconds) * 1000:.0f} ms over {len(seconds)}")
    assert p99(seconds) < 1


def test_a_request_still_arriving_after_the_request_timeout_is_dropped(live, monkeypatch):
    monkeypatch.setattr("appliance.web.server.REQUEST_TIMEOUT_S", 1)
    with socket.create_connection(("127.0.0.1", live.port), timeout=0.2) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: trap.local\r\n")
        started = time.monotonic()
        while time.monotonic() - started < 5:
            try:
                sock.sendall(b"X-Slow: a\r\n")  # a header line every 0.2 s: never silent
                if sock.recv(100) == b"":
                    break
            except TimeoutError:
                continue
            except OSError:
                break
        dropped_after_s = time.monotonic() - started
    assert 1 <= dropped_after_s < 3


# --- Against slow, hostile and malformed clients --------------------------------------------------


FUZZ_HEADERS = (
    "Authorization", "Cookie", "Origin", "Referer", "Sec-Fetch-Site", "Host", "If-None-Match",
    "Content-Type", "Range", "If-Modified-Since",
)  # fmt: skip
FIELD_BYTES = [9, *range(0x20, 0x7F), *range(0x80, 0x100)]


# Requests that are malformed before any header the app reads.
MALFORMED_HEADS = [
    b"GARBAGE\r\n\r\n",
    b"GET / HTTP/1.1\r\nheader without a colon\r\n\r\n",
    b"GET / HTTP/1.1\r\n folded: x\r\nConnection: close\r\n\r\n",
    b"GET / HTTP/1.1\r\nX: a\nb\r\nConnection: close\r\n\r\n",
    b"GET /\xff\xfe HTTP/1.1\r\nConnection: close\r\n\r\n",
    b"GET / HTTP/9.9\r\nConnection: close\r\n\r\n",
    b"GET  /  HTTP/1.1\r\nConnection: close\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\nConnection: close\r\n\r\n",
    b"GET / HTTP/1.1\r\nX: \x00\x01\x7f\r\nConnection: close\r\n\r\n",
    b"GET / HTTP/1.1\r\n: no name\r\nConnection: close\r\n\r\n",
]


class RawRequests:
    """Random raw HTTP/1.x requests aimed at the app's routes, queries, headers and bodies, drawn
    from ``rng``: request lines and values with any byte (non-UTF-8 ones included), but framed so
    that the server never waits for bytes that will not come (which would only time out)."""

    def __init__(self, rng, port: int, ids: list[str], etags: list[str], session: str):
        self.rng, self.port, self.ids, self.etags, self.session = rng, port, ids, etags, session
        self.origin = f"http://127.0.0.1:{port}"

    def bytes_(self, max_size: int = 40, *, line: bool = True) -> bytes:
        """Random bytes, half of them non-ASCII; none that ends a line when ``line``."""
        size = self.rng.randrange(max_size + 1)
        return bytes(b for b in self.rng.randbytes(size) if not (line and b in b"\r\n"))

    def field(self, max_size: int = 40) -> bytes:
        """Random bytes a header value may hold (RFC 9110 5.5: visible ASCII, space, tab and
        obs-text, the bytes 0x80 to 0xff, which are no UTF-8 on their own), so that most reach
        the app; bytes_ makes values the server refuses itself."""
        return bytes(self.rng.choices(FIELD_BYTES, k=self.rng.randrange(max_size + 1)))

    def pick(self, *choices):
        choice = self.rng.choice(choices)
        return choice() if callable(choice) else choice

    def segment(self) -> bytes:
        return self.pick(
            lambda: self.rng.choice(NASTY_SEGMENTS).encode(),
            lambda: urllib.parse.quote_from_bytes(self.bytes_(20), safe="").encode(),
            lambda: (
                bytes(b for b in self.bytes_(12) if b not in b" ?#")  # raw bytes: often a 400
                if self.rng.random() < 0.2
                else urllib.parse.quote_from_bytes(self.bytes_(12), safe="/%").encode()
            ),
            lambda: self.rng.choice(self.ids).encode(),
            lambda: "".join(
                self.rng.choices("0123456789abcdefABCDEF", k=self.rng.randrange(30, 35))
            ).encode(),
            lambda: b"a" * self.rng.randrange(200, 5000),
        )

    def path(self) -> bytes:
        some_id = self.rng.choice(self.ids)
        return self.pick(
            lambda: (
                self.rng.choice([b"/", b"/captures/", b"/api/captures/", b"/thumbnails/", b"/media/"])
                + b"/".join(self.segment() for _ in range(self.rng.randrange(4)))
                + self.rng.choice(
                    [b"", b".jpg", b".webp", b".db", b".jpg%00", b"/", b"/protect", b"/unprotect"]
                )
            ),
            lambda: self.rng.choice(
                [
                    f"/media/{some_id}.jpg",
                    f"/thumbnails/{some_id}.webp",
                    f"/captures/{some_id}",
                    f"/api/captures/{some_id}",
                    f"/captures/{some_id}/protect",
                    f"/api/captures/{some_id}/unprotect",
                ]
            ).encode(),  # fmt: skip
            lambda: self.rng.choice(
                [
                    "/",
                    "/captures",
                    "/api/status",
                    "/api/captures",
                    "/healthz",
                    "/metrics",
                    "/login",
                    "/logout",
                    "/api/capture",
                    "/style.css",
                    "/favicon.ico",
                    "/export/camtrap-dp.zip",
                ]
            ).encode(),  # fmt: skip
        )

    def query(self) -> bytes:
        values = [
            "9999-12-31", "0001-01-01", "2024-03-10", "2024-02-30", "20240310", "2024-W10-1",
            "9999-12-31T23:59:59-05:00", "0001-01-01T00:00+01:00", str(2**63), str(2**64), "-1", "0",
            "1e9", "1.5", "copy", "none", *TRIGGERS, "",
        ]  # fmt: skip
        names = ["before", "day", "trigger", "limit", "since", "until", "media"]
        pairs = []
        for _ in range(self.rng.randrange(4)):
            name = self.pick(
                lambda: self.rng.choice(names).encode(),
                lambda: urllib.parse.quote_from_bytes(self.bytes_(6), safe="").encode(),
            )
            value = self.pick(
                lambda: self.rng.choice(values).encode(),
                lambda: str(self.rng.randrange(-(10**30), 10**30)).encode(),
                lambda: b"9" * self.rng.randrange(1, 6000),
                lambda: urllib.parse.quote_from_bytes(self.bytes_(12), safe="").encode(),
                lambda: urllib.parse.quote_from_bytes(self.bytes_(12), safe="%&=+;").encode(),
            )
            pairs.append(name.replace(b" ", b"") + b"=" + value)
        return b"?" + b"&".join(pairs) if pairs else b""

    def header(self, name: str) -> bytes:
        raw = self.field
        values = {
            "Authorization": [f"Bearer {TOKEN}".encode(), b"Bearer wrong", lambda: b"Bearer " + raw(),
                              b"Basic dXNlcjpwYXNz"],
            "Cookie": [f"appliance_session={self.session}".encode(), lambda: b"appliance_session=" + raw(),
                       f"a{{=1; appliance_session={self.session}".encode(), b"appliance_session"],
            "Origin": [self.origin.encode(), b"http://evil.example", b"null", b"http://[", b"http://\xff"],
            "Referer": [f"{self.origin}/captures".encode(), b"http://evil.example/", b"http://[x/"],
            "Sec-Fetch-Site": [b"same-origin", b"cross-site", b"none", b"same-site"],
            "Host": [f"127.0.0.1:{self.port}".encode(), b"evil.example", b"", b"[::1"],
            "If-None-Match": [lambda: f'"{self.rng.choice(self.etags)}"'.encode(), b"*", b'W/"x", "y"', b","],
            "Content-Type": [b"application/x-www-form-urlencoded", b"multipart/form-data",
                             b"multipart/form-data; boundary=xyz", b"a; b", b"text/plain; charset=\xff",
                             b'multipart/form-data; boundary="'],
            "Range": [b"bytes=0-10", b"bytes=-5", b"bytes=10-0", b"bytes=99999999999999999999-",
                      b"bytes=0-0,5-"],
            "If-Modified-Since": [b"Sat, 29 Oct 1994 19:43:31 GMT", b"Fri, 31 Dec 9999 23:59:59 GMT", b"0"],
        }[name]  # fmt: skip
        return self.pick(*values, raw, raw) if self.rng.random() < 0.98 else self.bytes_()

    def body(self) -> tuple[list[bytes], bytes]:
        """Headers that frame a body, and the body."""
        body = self.pick(
            b"", f"token={TOKEN}".encode(), lambda: b"token=" + self.bytes_(30),
            lambda: b"token=" + urllib.parse.quote_from_bytes(self.bytes_(30)).encode(),
            lambda: self.bytes_(300, line=False),
            b'--xyz\r\nContent-Disposition: form-data; name="token"\r\n\r\n\xff\xfe\r\n--xyz--\r\n',
        )  # fmt: skip
        how = self.rng.choice(
            ["none", "length", "length", "short", "bad length", "huge", "chunked", "coding"]
        )
        if how == "length":
            return [b"Content-Length: %d" % len(body)], body
        if how == "short":  # the rest is read as the next request, or ignored
            return [b"Content-Length: %d" % self.rng.randrange(len(body) + 1)], body
        if how == "bad length":  # each refused before a body is awaited, or shorter than the one sent
            value = self.pick(
                b"-1", b"abc", b"1e3", b"0x10", b"+5", b" 5 ", b"5, 5", lambda: b"x" + self.bytes_(8)
            )
            return [b"Content-Length: " + value], body + b"." * 64
        if how == "huge":
            return [b"Content-Length: " + self.pick(b"1048576", b"%d" % 10**30)], body
        if how == "chunked":
            chunk = b"%x" % len(body) + self.pick(b"", b";a=b", b"zz") + b"\r\n" + body + b"\r\n"
            return [b"Transfer-Encoding: chunked"], chunk + b"0\r\n\r\n"
        if how == "coding":
            coding = self.pick(
                b"gzip", b"chunked, gzip", b"gzip, chunked", b"identity", lambda: self.bytes_(10)
            )
            return [b"Transfer-Encoding: " + coding], body
        return [], body

    def make(self) -> tuple[bytes, dict]:
        """A request, and what the checks need to know of it."""
        if self.rng.random() < 0.02:
            return self.rng.choice(MALFORMED_HEADS), {"method": b"", "path": b"", "coding": False}
        method = self.pick(b"GET", b"GET", b"GET", b"POST", b"POST", b"HEAD", b"PUT", b"DELETE", b"OPTIONS",
                           b"PATCH", lambda: self.bytes_(8).replace(b" ", b""))  # fmt: skip
        path = self.path()
        version = self.pick(b"HTTP/1.1", b"HTTP/1.1", b"HTTP/1.1", b"HTTP/1.0")
        headers = [
            name.encode() + b": " + self.header(name) for name in FUZZ_HEADERS if self.rng.random() < 0.35
        ]
        framing, body = self.body()
        headers = framing + headers + [b"Connection: close"]
        self.rng.shuffle(headers)
        head = method + b" " + path + self.query() + b" " + version + b"\r\n" + b"\r\n".join(headers)
        coding = any(h.lower().startswith(b"transfer-encoding") for h in headers)
        return head + b"\r\n\r\n" + body, {"method": method, "path": path, "coding": coding}


FUZZ_REQUESTS = 10_000
FUZZ_SENDERS = 4


def test_fuzzed_raw_requests_through_the_real_server_never_get_a_5xx(main_loop, capsys):
    """Raw requests through WebServer with actions on and a main loop that answers: no answer is a
    5xx but a 501 for a transfer coding other than chunked, every answer carries the security
    headers and a Cache-Control, and no file answered is one the index does not have.  Set
    FUZZ_SEED to replay the requests of a run (the seed is printed)."""
    app = main_loop.app()
    browser = webtest.TestApp(app, extra_environ={"HTTP_HOST": HOST})
    take(browser)
    take(browser)
    log_in(browser)
    session = browser.cookies["appliance_session"]
    rows = main_loop.reader.page(limit=10)
    ids, etags = [row["id"] for row in rows], [row["sha256"] for row in rows] + [row["id"] for row in rows]
    server = WebServer(app, "127.0.0.1", 0)
    seed = int(os.environ.get("FUZZ_SEED", random.randrange(2**32)))
    statuses, failures, files, lock = collections.Counter(), [], [], threading.Lock()

    def send(rng) -> None:
        requests_ = RawRequests(rng, server.port, ids, etags, session)
        for _ in range(FUZZ_REQUESTS // FUZZ_SENDERS):
            data, sent = requests_.make()
            try:
                answer = exchange(server.port, data)
            except OSError as exc:  # a timeout included
                answer, problems = None, [f"no answer: {exc!r}"]
            else:
                problems = [] if answer else ["closed without an answer"]
            if answer:
                if answer.status >= 500 and not (answer.status == 501 and sent["coding"]):
                    problems.append(f"{answer.status} {answer.body[:300]!r}")
                try:
                    assert_every_answer_headers(answer)
                except AssertionError as exc:
                    problems.append(f"headers: {exc}")
                file = sent["path"].startswith((b"/media/", b"/thumbnails/"))
                if answer.status == 200 and sent["method"] == b"GET" and file:
                    files.append((data[:200], answer.body))
            with lock:
                statuses[answer.status if answer else None] += 1
                failures.extend((problem, data[:300]) for problem in problems)

    started = time.monotonic()
    try:
        senders = [
            threading.Thread(target=send, args=(random.Random(seed + i),)) for i in range(FUZZ_SENDERS)
        ]
        for sender in senders:
            sender.start()
        for sender in senders:
            sender.join()
    finally:
        server.stop()
    elapsed = time.monotonic() - started
    indexed = indexed_files(main_loop.reader)
    with capsys.disabled():
        print(
            f"\nraw fuzz (seed {seed}): {sum(statuses.values())} requests in {elapsed:.1f} s; statuses "
            + ", ".join(f"{status}: {n}" for status, n in sorted(statuses.items(), key=str))
        )
    assert sum(statuses.values()) >= 10_000
    assert not failures, f"{len(failures)} failures (seed {seed}): {sorted(set(failures))[:10]}"
    strays = [request for request, body in files if body not in indexed]
    assert not strays, strays[:5]
    assert len(files) > 20  # the fuzz did fetch real files


@pytest.mark.parametrize(
    ("request_", "status"),
    [
        (b"GARBAGE\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nheader without a colon\r\n\r\n", 400),
        (b"POST /login HTTP/1.1\r\nHost: x\r\nContent-Length: 1048576\r\n\r\n", 413),
        (b"GET / HTTP/1.1\r\nHost: x\r\nX-Padding: " + b"a" * (20 << 10) + b"\r\n\r\n", 431),
        (b"POST /login HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n", 501),
    ],
    ids=["malformed request line", "header without a colon", "body over 16 KiB", "headers over 16 KiB",
         "unknown transfer coding"],
)  # fmt: skip
def test_the_servers_own_refusals_carry_the_security_headers_and_no_store(live, request_, status):
    answer = exchange(live.port, request_)
    assert answer.status == status
    assert_every_answer_headers(answer)
    assert answer.headers["cache-control"] == ["no-store"]


@pytest.mark.skipif(not socket.has_ipv6, reason="no IPv6 on this machine")
def test_the_url_of_a_server_on_an_ipv6_address_can_be_opened(store):
    # web_host = "::1": the URL the log and the start-up line give must be a URL (RFC 3986: an
    # IPv6 literal in brackets), not "http://::1:8080/".
    try:
        reader = IndexReader(store.data_dir)
        collect = StatusCollector(reader, mode="simulation", started_monotonic=0).collect
        server = WebServer(make_app(WebDeps(reader, collect)), "::1", 0)
    except OSError as exc:  # an IPv6 stack without a loopback address (some containers)
        pytest.skip(f"cannot listen on ::1: {exc}")
    try:
        assert server.url == f"http://[::1]:{server.port}/"
        assert requests.get(server.url, timeout=5).status_code == 200
    finally:
        server.stop()
