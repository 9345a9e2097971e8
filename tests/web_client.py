"""The web app as the tests of ``appliance/web`` meet it: the token and hosts they use, a disk of
known size, the app over a store with every option, and helpers that read its answers."""

import collections
import contextlib
import datetime
import html
import inspect
import re
import socket
import time

import bottle
import requests
import webtest
from prometheus_client.parser import text_string_to_metric_families

from appliance import thumbnails
from appliance.status import StatusCollector
from appliance.store import IndexReader
from appliance.web import WebDeps, WebServer, make_app
from hw.camera import SimulatedCamera

TOKEN = "a-long-random-web-token-0123456789"
BEARER = {"Authorization": f"Bearer {TOKEN}"}
HOST = "trap.local"
ORIGIN = f"http://{HOST}"
FOREIGN = "http://evil.example"
DiskUsage = collections.namedtuple("DiskUsage", "total used free")
DISK = DiskUsage(total=64_000_000_000, used=48_000_000_000, free=16_000_000_000)  # 25.0 % free
OLD_DAY = datetime.date(2024, 3, 10)
METADATA = {"ExposureTime": 12000, "AnalogueGain": 2.5, "Lux": 310.0}
UNKNOWN_ID = "0123456789abcdef" * 2
CAPTURE_FIELDS = {
    "id", "seq", "captured_at", "clock_synced", "recovered", "trigger", "capture_method", "event_id",
    "bytes", "width", "height", "protected", "page_url", "media_url", "thumbnail_url",
}  # fmt: skip
SECURITY_HEADERS = ("Content-Security-Policy", "X-Content-Type-Options", "Referrer-Policy")
NASTY_SEGMENTS = [
    "..", ".", "%2e%2e", "%2e%2e%2f", "..%2f..%2fcaptures.db", "%2e%2e%2f%2e%2e%2fcaptures.db",
    "..%5c..%5ccaptures.db", "captures.db", "captures.db-wal", ".lock", "%2fetc%2fpasswd", "%00",
    "a%00.jpg", "%C3%A9", "%FF%FE", "%F0%9F%A6%8A", "%", "%zz", "~", "media", "thumbnails",
]  # fmt: skip


def bind_request(path: str = "/", *, query: str = "", headers: dict | None = None) -> None:
    """Bind Bottle's request of this thread to a GET of ``path`` with ``query`` and ``headers``
    from Host HOST, and a fresh response: what a handler called without HTTP reads and writes."""
    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": path, "QUERY_STRING": query, "HTTP_HOST": HOST}
    environ |= {"HTTP_" + name.upper().replace("-", "_"): value for name, value in (headers or {}).items()}
    bottle.request.bind(environ)
    bottle.response.bind()


def shoot(camera: SimulatedCamera) -> tuple[bytes, bytes]:
    """A real JPEG from ``camera`` and its WebP thumbnail."""
    shot = camera.capture(1.0)
    return shot.jpeg, thumbnails.make(shot.jpeg, shot.frame, 32)


def capture_ids(page: str) -> list[str]:
    """The ids of the photo pages a page links to, in page order."""
    return re.findall(r'<a href="/captures/([0-9a-f]{32})">', page)


def older_link(page: str) -> str | None:
    match = re.search(r'<a href="([^"]*)">Older', page)
    return html.unescape(match[1]) if match else None


def metric_samples(text: str) -> dict:
    """``{(sample name, ((label, value), ...)): value}`` from Prometheus text."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def indexed_files(reader: IndexReader) -> set[bytes]:
    """The bytes of every photo and thumbnail the index has."""
    return {
        (reader.data_dir / row[column]).read_bytes()
        for row in reader.page(limit=100_000)
        for column in ("media_path", "thumbnail_path")
        if row[column]
    }


# The options of client() that go to the StatusCollector; the others go to WebDeps.
COLLECTOR_OPTIONS = set(inspect.signature(StatusCollector).parameters) - {"reader"}


def app_over(reader: IndexReader, **options):
    """The app over ``reader``: ``options`` as StatusCollector's (default: simulation, up 3725 s,
    disk DISK) and WebDeps's."""
    parts = {key: options.pop(key) for key in COLLECTOR_OPTIONS & options.keys()}
    defaults = {
        "mode": "simulation",
        "started_monotonic": time.monotonic() - 3725,
        "disk_usage": lambda path: DISK,
    }
    status = StatusCollector(reader, **defaults | parts)
    return make_app(WebDeps(reader, status.collect, **options))


def get(server, path, **kwargs):
    return requests.get(f"{server.url.rstrip('/')}{path}", timeout=5, **kwargs)


def log_in(app: webtest.TestApp) -> webtest.TestResponse:
    return app.post("/login", {"token": TOKEN}, headers={"Origin": ORIGIN}, status=303)


def take(app: webtest.TestApp) -> str:
    """A test shot through the API; its id."""
    (capture_id,) = app.post("/api/capture", headers=BEARER, status=200).json["captured"]
    return capture_id


def assert_security_headers(response: webtest.TestResponse) -> None:
    for name in SECURITY_HEADERS:
        assert len(response.headers.getall(name)) == 1, name
    csp = response.headers["Content-Security-Policy"]
    assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["Referrer-Policy"]


Answer = collections.namedtuple("Answer", "status headers body")


def exchange(port: int, data: bytes, timeout_s: float = 10) -> Answer | None:
    """Send ``data`` on a new connection to 127.0.0.1:``port`` and read until the server closes.
    The answer (``headers``: ``{lower-case name: [values]}``), or None when the server closed
    without one.  The server may answer and close before all is sent."""
    chunks = []
    with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as sock:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(data)
        while True:
            try:
                chunk = sock.recv(1 << 16)
            except ConnectionResetError:
                break
            if not chunk:
                break
            chunks.append(chunk)
    if not chunks:
        return None
    head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    match = re.fullmatch(r"HTTP/1\.[01] (\d{3}) .*", status_line)
    assert match, head[:200]
    headers = collections.defaultdict(list)
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()].append(value.strip())
    return Answer(int(match[1]), dict(headers), body)


def assert_every_answer_headers(answer: Answer) -> None:
    """The security headers once each, and one Cache-Control."""
    for name in SECURITY_HEADERS:
        assert len(answer.headers.get(name.lower(), [])) == 1, (name, answer)
    assert len(answer.headers.get("cache-control", [])) == 1, answer


def live_session(server: WebServer) -> str:
    """Log in to ``server`` (token TOKEN) as its own log-in form does; the session cookie's value."""
    origin = server.url.rstrip("/")
    response = requests.post(
        f"{origin}/login", data={"token": TOKEN}, headers={"Origin": origin}, allow_redirects=False, timeout=5
    )
    assert response.status_code == 303
    return response.cookies["appliance_session"]
