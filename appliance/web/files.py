"""The photos and thumbnails: ``GET /media/<id>.jpg`` and ``GET /thumbnails/<id>.webp``, found by
their id in the index (never by a path in the request) and opened only as regular files reached
without a symlink (:mod:`appliance.datadir`).  An id is never reused and its files never change:
they are cached for a year, with an ETag."""

import os

import bottle

from appliance.datadir import DataDir, UnsafePath
from appliance.store import CAPTURE_FILE_NAME, IndexReader
from appliance.web.plugins import IMMUTABLE
from appliance.web.request import header


class Files:
    """The handlers of the files.  ``reader``: the index, whose ``data_dir`` holds them."""

    def __init__(self, reader: IndexReader):
        self._reader = reader
        self._files = DataDir(reader.data_dir)

    def media(self, name: str):
        """``GET /media/<id>.jpg``: the photo, its ETag its SHA-256."""
        return self._serve(name, "media_path", "jpg", "image/jpeg")

    def thumbnail(self, name: str):
        """``GET /thumbnails/<id>.webp``: the thumbnail, its ETag the capture's id."""
        return self._serve(name, "thumbnail_path", "webp", "image/webp")

    def _serve(self, name: str, column: str, extension: str, mimetype: str):
        """The file of ``column`` of the capture ``name`` names, as a ``bottle.HTTPResponse`` that
        streams it (closed once sent): a 304 when ``If-None-Match`` has its ETag, a 400 for a
        malformed name, a 404 for an unknown capture or one without that file (deleted meanwhile,
        or not a regular file in the data directory), a 503 when it cannot be read."""
        match = CAPTURE_FILE_NAME.fullmatch(name)
        if not match or match[2] != extension:
            raise bottle.HTTPError(400, f"expected /<32 hex characters>.{extension}")
        row = self._reader.get(match[1])
        if row is None or row[column] is None:
            raise bottle.HTTPError(404, "no such capture")
        etag = f'"{row["sha256"] if extension == "jpg" else row["id"]}"'
        headers = {"ETag": etag, "Cache-Control": IMMUTABLE}
        # RFC 9110 13.1.2: a list of tags, or "*"; a weak W/ tag matches too.
        asked = {tag.strip().removeprefix("W/") for tag in header("If-None-Match").split(",")}
        if etag in asked or "*" in asked:
            return bottle.HTTPResponse(status=304, **headers)
        try:
            file = self._files.open_read(row[column])
        except FileNotFoundError:
            raise bottle.HTTPError(404, "no such capture file (deleted meanwhile)") from None
        except UnsafePath:
            raise bottle.HTTPError(404, "no such capture file in the data directory") from None
        except OSError as exc:
            raise bottle.HTTPError(503, f"the capture file cannot be read: {exc.strerror or exc}") from None
        size = os.fstat(file.fileno()).st_size
        headers |= {"Content-Type": mimetype, "Content-Length": str(size)}
        return bottle.HTTPResponse(file, status=200, **headers)  # closed once sent (or for a HEAD)
