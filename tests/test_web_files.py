"""The photos and thumbnails (``appliance.web.files``): found by id in the index, immutable with an
ETag, never a file the index does not have."""

import hashlib
import io

import bottle
import pytest
from PIL import Image
from web_client import UNKNOWN_ID, bind_request, get

from appliance.store import IndexReader
from appliance.web.files import Files


def test_thumbnail_and_media_are_served_from_the_index(server, photo):
    row = server.rows[0]
    thumb = get(server, f"/thumbnails/{row['id']}.webp")
    assert thumb.headers["Content-Type"] == "image/webp"
    assert max(Image.open(io.BytesIO(thumb.content)).size) == 320
    media = get(server, f"/media/{row['id']}.jpg")
    assert media.headers["Content-Type"] == "image/jpeg"
    assert hashlib.sha256(media.content).hexdigest() == hashlib.sha256(photo).hexdigest()


@pytest.mark.parametrize(
    ("prefix", "column", "extension", "content_type"),
    [
        ("/thumbnails/", "thumbnail_path", "webp", "image/webp"),
        ("/media/", "media_path", "jpg", "image/jpeg"),
    ],
)
def test_files_are_served_immutable_with_an_etag_and_304_when_unchanged(
    client, captures, store, prefix, column, extension, content_type
):
    row, app = captures[2], client()
    url = f"{prefix}{row['id']}.{extension}"
    response = app.get(url, status=200)
    assert response.content_type == content_type
    assert response.body == (store.data_dir / row[column]).read_bytes()
    etag = response.headers["ETag"]
    assert etag == f'"{row["sha256"] if extension == "jpg" else row["id"]}"'
    cache = response.headers["Cache-Control"]
    assert "immutable" in cache and "max-age=31536000" in cache
    not_modified = app.get(url, headers={"If-None-Match": etag}, status=304)
    assert not_modified.body == b"" and not_modified.headers["ETag"] == etag
    assert "immutable" in not_modified.headers["Cache-Control"]
    assert app.get(url, headers={"If-None-Match": '"something else"'}, status=200).body == response.body
    app.get(url, headers={"If-None-Match": f'"other", W/{etag}'}, status=304)
    app.get(url, headers={"If-None-Match": "*"}, status=304)


def test_media_etag_is_the_photos_sha256(client, captures, store):
    row = captures[0]
    response = client().get(f"/media/{row['id']}.jpg", status=200)
    assert response.headers["ETag"] == f'"{hashlib.sha256(response.body).hexdigest()}"'


@pytest.mark.parametrize(
    ("path", "status"),
    [
        (f"/media/{UNKNOWN_ID}.jpg", 404),
        (f"/thumbnails/{UNKNOWN_ID}.webp", 404),
        (f"/media/{UNKNOWN_ID}.webp", 400),
        (f"/thumbnails/{UNKNOWN_ID}.jpg", 400),
        (f"/media/{UNKNOWN_ID.upper()}.jpg", 400),
        ("/media/captures.db", 400),
        ("/media/..%2fcaptures.db", [400, 404]),  # as above
        ("/media/%2e%2e%2f%2e%2e%2fetc%2fpasswd", [400, 404]),
    ],
)
def test_files_unknown_are_404_and_malformed_are_400(client, path, status):
    client().get(path, status=status)


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/media/" + "0" * 32 + ".jpg", 404),
        ("/media/" + "A" * 32 + ".jpg", 400),
        ("/media/abc.jpg", 400),
        # waitress decodes %2f in PATH_INFO, as WSGI has it: no route (404), or a bad name (400).
        ("/media/%2e%2e%2f%2e%2e%2fcaptures.db", (400, 404)),
        ("/thumbnails/..%2fcaptures.db", (400, 404)),
        ("/nothing", 404),
    ],
)
def test_unknown_is_404_and_malformed_is_400_never_500(server, path, status):
    assert get(server, path).status_code in (status if isinstance(status, tuple) else (status,))


def test_extension_must_match_the_route(server):
    row_id = server.rows[0]["id"]
    assert get(server, f"/thumbnails/{row_id}.jpg").status_code == 400
    assert get(server, f"/media/{row_id}.webp").status_code == 400


def test_a_capture_without_a_thumbnail_has_a_404_thumbnail(client, captures):
    client().get(f"/thumbnails/{captures[4]['id']}.webp", status=404)


def test_capture_without_thumbnail_is_404_for_its_thumbnail(server):
    manual = get(server, "/api/status").json()["latest"][0]
    assert get(server, f"/thumbnails/{manual['id']}.webp").status_code == 404


def test_the_file_handlers_answer_without_http(store, captures):
    files = Files(IndexReader(store.data_dir))
    row = captures[2]
    bind_request(f"/media/{row['id']}.jpg")
    answer = files.media(f"{row['id']}.jpg")
    with answer.body as file:
        assert file.read() == (store.data_dir / row["media_path"]).read_bytes()
    assert answer.status_code == 200 and answer.headers["ETag"] == f'"{row["sha256"]}"'
    bind_request(headers={"If-None-Match": f'"{row["id"]}"'})
    assert files.thumbnail(f"{row['id']}.webp").status_code == 304
    for name, status in ((f"{row['id']}.webp", 400), (f"{UNKNOWN_ID}.jpg", 404)):
        with pytest.raises(bottle.HTTPError) as error:
            files.media(name)
        assert error.value.status_code == status
