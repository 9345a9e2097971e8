"""The Camtrap DP export over the web (``appliance.web.export``): ``GET /export/camtrap-dp.zip``
streamed, its token, its limits and the snapshot each download holds."""

import csv
import io
import socket
import time
import urllib.parse
import zipfile

import bottle
import pytest
import requests
from test_export import deployment, download, export, validate
from web_client import bind_request

from appliance.status import StatusCollector
from appliance.store import IndexReader
from appliance.web import WebDeps, WebServer, make_app
from appliance.web.export import MAX_EXPORTS, Export


@pytest.fixture
def serve(tmp_path, store):
    """Serve the store's web app on 127.0.0.1 (real HTTP) with the deployment config; returns
    ``url(path)``.  Keyword arguments go to WebDeps."""
    servers = []

    def start(**options):
        reader = IndexReader(store.data_dir)
        status = StatusCollector(reader, mode="simulation", started_monotonic=0)
        app = make_app(WebDeps(reader, status.collect, config=lambda: deployment(tmp_path), **options))
        servers.append(WebServer(app, "127.0.0.1", 0))
        return lambda path: servers[-1].url.rstrip("/") + path

    yield start
    for server in servers:
        server.stop()


def test_the_streamed_zip_is_a_valid_archive_whose_package_validates(tmp_path, store, filled, serve):
    url = serve()
    archive = tmp_path / "package.zip"
    response = download(url("/export/camtrap-dp.zip"), archive)
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "application/zip"
    assert response.headers["Content-Disposition"] == 'attachment; filename="ridge-2026.zip"'
    assert "Content-Length" not in response.headers  # streamed (chunked), never built first
    with zipfile.ZipFile(archive) as zf:
        assert zf.testzip() is None  # every member's CRC checks
        names = zf.namelist()
        zf.extractall(tmp_path / "unzipped")
    assert names[:2] == ["datapackage.json", "deployments.csv"]
    assert sorted(names[2:-2]) == sorted(f"media/{r['id']}.jpg" for r in filled)
    assert names[-2:] == ["media.csv", "observations.csv"]
    result = validate(tmp_path / "unzipped")
    assert result.returncode == 0, result.stdout + result.stderr
    # The same package as the folder export (but for the time it was created).
    assert export(tmp_path, store, tmp_path / "folder") == 0
    for name in ("deployments.csv", "media.csv", "observations.csv"):
        assert (tmp_path / "unzipped" / name).read_bytes() == (tmp_path / "folder" / name).read_bytes()
    for row in filled:
        unzipped = tmp_path / "unzipped" / "media" / f"{row['id']}.jpg"
        assert unzipped.read_bytes() == (store.data_dir / row["media_path"]).read_bytes()


def test_the_zip_takes_a_range_and_media_none(tmp_path, store, filled, serve):
    url = serve()
    archive = tmp_path / "day.zip"
    query = "?since=2026-06-02&media=none"
    assert download(url("/export/camtrap-dp.zip" + query), archive).status_code == 200
    with zipfile.ZipFile(archive) as zf:
        assert not [name for name in zf.namelist() if name.startswith("media/")]
        media = list(csv.DictReader(io.TextIOWrapper(zf.open("media.csv"), "utf-8")))
    assert [m["mediaID"] for m in media] == [r["id"] for r in filled[4:]]
    for bad in ("?since=yesterday", "?media=link", "?until=2026-13-01", "?until=9999-12-31T23:00-05:00"):
        response = requests.get(url("/export/camtrap-dp.zip" + bad), timeout=10)
        assert response.status_code == 400 and "bad" in response.text


def test_the_zip_needs_the_token_when_one_is_set(tmp_path, store, filled, serve):
    url = serve(token="s3cret")
    response = requests.get(url("/export/camtrap-dp.zip"), timeout=10)
    assert response.status_code == 401
    wrong = {"Authorization": "Bearer s3cre"}
    assert requests.get(url("/export/camtrap-dp.zip"), headers=wrong, timeout=10).status_code == 401
    assert "Download all as Camtrap DP" not in requests.get(url("/"), timeout=10).text
    archive = tmp_path / "package.zip"
    response = download(url("/export/camtrap-dp.zip"), archive, headers={"Authorization": "Bearer s3cret"})
    assert response.status_code == 200 and zipfile.is_zipfile(archive)


def test_the_zip_is_refused_with_the_reason_when_settings_are_missing(tmp_path, store, filled):
    reader = IndexReader(store.data_dir)
    status = StatusCollector(reader, mode="simulation", started_monotonic=0)
    app = make_app(
        WebDeps(reader, status.collect, config=lambda: deployment(tmp_path, 'deployment_id = "x"\n'))
    )
    server = WebServer(app, "127.0.0.1", 0)
    try:
        response = requests.get(server.url + "export/camtrap-dp.zip", timeout=10)
        assert response.status_code == 409
        assert "latitude, longitude: not set in the config" in response.text
        page = requests.get(server.url, timeout=10).text  # no link to a download that fails
        assert "Download all as Camtrap DP" not in page and "set latitude and longitude" in page
    finally:
        server.stop()


def start_download(store, photo, clock, serve) -> socket.socket:
    """A client that starts the ZIP download of about 20 MB of photos (more than the socket
    buffers and the server's buffer hold) and reads only its first 4 kB; the download's snapshot
    then holds the WAL."""
    for _ in range(60):
        store.add(photo, None, timestamp=clock.now(), trigger="motion")
    url = urllib.parse.urlsplit(serve()("/export/camtrap-dp.zip"))
    client = socket.socket()
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    client.connect((url.hostname, url.port))
    client.sendall(f"GET {url.path} HTTP/1.1\r\nHost: {url.netloc}\r\n\r\n".encode())
    assert client.recv(4096).startswith(b"HTTP/1.1 200")
    store.add(photo, None, timestamp=clock.now(), trigger="motion")
    assert store.checkpoint()[0] == 1  # the download's snapshot holds the WAL
    return client


def test_a_client_that_goes_away_ends_the_snapshot(tmp_path, store, photo, clock, serve):
    """A download dropped halfway closes its read transaction, so the WAL checkpoints again."""
    start_download(store, photo, clock, serve).close()
    deadline = time.monotonic() + 10
    while store.checkpoint()[0] == 1:
        assert time.monotonic() < deadline, "the snapshot of a dropped download was never closed"
        time.sleep(0.1)


def test_a_client_that_stops_reading_is_dropped_and_its_snapshot_ends(
    tmp_path, store, photo, clock, serve, monkeypatch
):
    """A download whose client stays connected but reads nothing more is dropped by the kernel
    after SEND_TIMEOUT_S (TCP_USER_TIMEOUT), which ends its read transaction: the WAL checkpoints
    again, and the download's place is free."""
    monkeypatch.setattr("appliance.web.server.SEND_TIMEOUT_S", 1)
    with start_download(store, photo, clock, serve):
        deadline = time.monotonic() + 15
        while store.checkpoint()[0] == 1:  # the client, still connected, reads nothing more
            assert time.monotonic() < deadline, "the snapshot of a stalled download was never closed"
            time.sleep(0.2)


def test_a_head_request_releases_its_snapshot(tmp_path, store, filled, serve, photo, clock):
    url = serve()
    response = requests.head(url("/export/camtrap-dp.zip"), timeout=10)
    assert response.status_code == 200 and response.headers["Content-Type"] == "application/zip"
    store.add(photo, None, timestamp=clock.now(), trigger="motion")
    assert store.checkpoint()[0] == 0


def test_downloads_at_once_are_limited_and_the_rest_told_to_wait(tmp_path, store, photo, clock, serve):
    for _ in range(60):  # about 20 MB each: more than the socket buffers hold
        store.add(photo, None, timestamp=clock.now(), trigger="motion")
    url = serve()
    first = requests.get(url("/export/camtrap-dp.zip"), stream=True, timeout=10)
    second = requests.get(url("/export/camtrap-dp.zip"), stream=True, timeout=10)
    try:
        assert first.status_code == second.status_code == 200
        busy = requests.get(url("/export/camtrap-dp.zip"), timeout=10)
        assert busy.status_code == 503 and "2 downloads are under way" in busy.text
        assert busy.headers["Retry-After"] == "60"
        assert requests.get(url("/api/status"), timeout=10).status_code == 200  # the page still answers
        for _ in first.iter_content(1 << 20):  # the first one finishes: its place is free again
            pass
    finally:
        first.close()
        second.close()
    deadline = time.monotonic() + 10
    while (status := requests.head(url("/export/camtrap-dp.zip"), timeout=10).status_code) == 503:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert status == 200


# --- Without HTTP ------------------------------------------------------------------------------------


def test_the_export_handler_answers_without_http(tmp_path, store, filled):
    reader = IndexReader(store.data_dir)
    with pytest.raises(bottle.HTTPError) as answer:
        Export(reader, None).available(lambda: "never")()
    assert answer.value.status_code == 404
    export_ = Export(reader, lambda: deployment(tmp_path))
    bind_request("/export/camtrap-dp.zip", query="media=link")
    with pytest.raises(bottle.HTTPError) as answer:
        export_.zip()
    assert answer.value.status_code == 400
    for _ in range(MAX_EXPORTS + 1):  # each download read to its end frees its place
        bind_request("/export/camtrap-dp.zip", query="media=none")
        archive = b"".join(export_.zip())
        assert bottle.response.headers["Content-Disposition"] == 'attachment; filename="ridge-2026.zip"'
    with zipfile.ZipFile(io.BytesIO(archive)) as zf:
        assert "media.csv" in zf.namelist() and not [n for n in zf.namelist() if n.startswith("media/")]
