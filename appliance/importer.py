"""``appliance import``: index a folder of photos from elsewhere (an earlier unit, another camera).

Each file, in path order (folders recursively, symlinked folders not followed), is either imported,
a duplicate, or skipped with its reason; none stops the import, and each photo is stored by
:meth:`~appliance.store.CaptureStore.add`, so an import that is interrupted leaves whole captures
or nothing of a photo, and is simply run again.

1. Only regular files of at most :data:`MAX_FILE_BYTES` are read (a FIFO or a device would hang).
2. Pillow identifies the file.  A JPEG is stored byte for byte (an MPO too: a JPEG with more
   pictures after the first); any other image Pillow reads, up to :data:`CONVERT_MAX_PIXELS`, is
   converted to an upright JPEG when ``import_convert`` is on, else skipped.  Past Pillow's
   decompression-bomb limit (``Image.MAX_IMAGE_PIXELS``, 89 MP), skipped.
3. A photo whose SHA-256 is already in the index (or earlier in this run) is a duplicate.
4. The pixels are decoded at thumbnail scale: a truncated or damaged photo is skipped.  The
   thumbnail is upright by the EXIF orientation.
5. The capture time is EXIF ``DateTimeOriginal`` with ``OffsetTimeOriginal`` (Exif 2.32); without
   an offset, in the zone given (default: this machine's); without either, the file's mtime.  An
   EXIF block too damaged to read is noted, and the mtime used.  Every imported capture is
   recorded ``clock_synced = 0``: another camera's clock is not vouched for.
6. The import stops before the free space of the data directory falls below
   ``capture_min_free_bytes``, so it never takes the space the appliance's own captures need.
"""

import datetime
import hashlib
import io
import logging
import os
import stat
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, ImageOps

from appliance import exif, thumbnails
from appliance.exc import StoreError
from appliance.store import DB_NAME, MAX_PHOTO_BYTES, CaptureStore, IndexReader
from hw.clock import Timestamp
from hw.system import disk_usage

log = logging.getLogger(__name__)

# Larger files are skipped unread: a camera-trap JPEG is a few MB, a 100 MP one about 50 MB (the
# store's own limit on what it reads back).
MAX_FILE_BYTES = MAX_PHOTO_BYTES
# Larger images are not converted: the full decode of a 24 MP RGBA image takes about 100 MB, what
# a Pi Zero 2 W can spare.  (A JPEG is decoded at thumbnail scale, whatever its size.)
CONVERT_MAX_PIXELS = 24_000_000
JPEG_FORMATS = ("JPEG", "MPO")


class Skip(Exception):
    """A file that is not imported, and why."""


@dataclass
class Photo:
    """What is stored of one file: ``jpeg`` (the bytes), ``thumbnail`` (WebP), ``taken`` (aware),
    ``metadata`` (for the index row: ``exif`` fields and the ``import`` record)."""

    jpeg: bytes
    thumbnail: bytes
    taken: datetime.datetime
    metadata: dict
    note: str = ""


@dataclass
class ImportSummary:
    """What an import did (or, in a dry run, would do).  ``skipped`` and ``notes`` are ``(path,
    reason)``; ``stopped`` says why the import ended early ("" when it did not)."""

    files: int = 0
    imported: int = 0
    duplicates: int = 0
    skipped: list[tuple[Path, str]] = field(default_factory=list)
    notes: list[tuple[Path, str]] = field(default_factory=list)
    stopped: str = ""


def walk(folder: Path, exclude: Path | None = None) -> list[Path]:
    """Every file under ``folder`` (not in ``exclude``), sorted by path; symlinked folders are
    listed as files (and then skipped), never followed, so a loop cannot make it endless."""
    found = []
    for top, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if exclude is None or Path(top, d).resolve() != exclude)
        found += [Path(top, name) for name in files]
        found += [Path(top, name) for name in dirs if Path(top, name).is_symlink()]
    return sorted(found)


def _rgb(image: Image.Image) -> Image.Image:
    """``image`` as 8-bit RGB: 16-bit greys scaled (Pillow's convert would clip them at 255) and
    transparency flattened onto white."""
    if image.mode.startswith("I"):  # I;16, I;16B, I: 16-bit or integer greys
        image = image.convert("I").point(lambda v: v / 257).convert("L")
    if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
        image = image.convert("RGBA")
        flat = Image.new("RGBA", image.size, "white")
        flat.alpha_composite(image)
        image = flat
    return image.convert("RGB")


def read_photo(
    path: Path,
    data: bytes,
    mtime: float,
    *,
    convert: bool,
    jpeg_quality: int,
    thumbnail_max_px: int,
    assume: datetime.tzinfo | str | None,
    is_duplicate: Callable[[bytes], bool],
) -> Photo | None:
    """The :class:`Photo` to store for the file at ``path`` holding ``data`` and last modified at
    ``mtime`` (seconds since the epoch), or None when ``is_duplicate(jpeg bytes)`` says it is
    already in.  ``assume``: the zone of an EXIF time without offset (see
    :func:`appliance.exif.original_time`).  A photo whose EXIF Pillow warned about carries a
    ``note``.  Raises :class:`Skip` with the reason, and whatever Pillow raises on a damaged file
    (the caller skips it too)."""
    with warnings.catch_warnings(record=True) as caught:  # Pillow warns of damaged EXIF entries
        warnings.simplefilter("always")
        # Past Image.MAX_IMAGE_PIXELS (89 MP) Pillow only warns, up to twice that: refuse it.
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        photo = _read_photo(path, data, mtime, convert, jpeg_quality, thumbnail_max_px, assume, is_duplicate)
    damage = [str(w.message).strip() for w in caught if issubclass(w.category, UserWarning)]
    if photo is not None and damage and not photo.note:
        photo.note = f"EXIF partly damaged, kept what could be read (Pillow: {damage[0]})"
    return photo


def _read_photo(
    path, data, mtime, convert, jpeg_quality, thumbnail_max_px, assume, is_duplicate
) -> Photo | None:
    try:
        image = Image.open(io.BytesIO(data))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise Skip(f"too many pixels: {exc}") from None
    except Image.UnidentifiedImageError:
        raise Skip("not an image Pillow can read") from None
    with image:
        note = ""
        try:
            fields = exif.read(image)
        except ValueError as exc:
            fields, note = {}, f"{exc}; time from the file's mtime, thumbnail as stored"
        metadata = {"import": {"name": path.name}}
        if image.format in JPEG_FORMATS:
            jpeg = data
            if is_duplicate(jpeg):
                return None
            # Decodes at thumbnail scale: a truncated photo fails here.  Upright unless the EXIF
            # could not be read, orientation included.
            thumbnail = thumbnails.from_jpeg(jpeg, thumbnail_max_px, upright=not note)
        elif not convert:
            raise Skip(f"{image.format} is not JPEG (import_convert = false)")
        elif image.width * image.height > CONVERT_MAX_PIXELS:
            raise Skip(
                f"{image.format} of {image.width}x{image.height} is too large to convert "
                f"(at most {CONVERT_MAX_PIXELS / 1e6:g} MP)"
            )
        else:
            image.load()
            upright = _rgb(image if note else ImageOps.exif_transpose(image))
            out = io.BytesIO()
            upright.save(out, "JPEG", quality=jpeg_quality)
            jpeg = out.getvalue()
            if is_duplicate(jpeg):
                return None
            thumbnail = thumbnails.from_frame(upright, thumbnail_max_px)
            metadata["import"]["converted_from"] = image.format
    taken = exif.original_time(fields)
    source = "EXIF DateTimeOriginal and OffsetTimeOriginal"
    if taken is None and (taken := exif.original_time(fields, assume)) is not None:
        source = f"EXIF DateTimeOriginal, offset assumed {taken.isoformat()[-6:]}"
    if taken is None:
        taken = datetime.datetime.fromtimestamp(mtime, datetime.UTC)
        source = "file mtime"
    metadata["import"]["time_source"] = source
    if fields:
        metadata["exif"] = fields
    return Photo(jpeg, thumbnail, taken, metadata, note)


def import_photos(
    folder: Path,
    reader: IndexReader,
    store: CaptureStore | None,
    *,
    trigger: str = "import",
    convert: bool = True,
    jpeg_quality: int = 90,
    thumbnail_max_px: int = 320,
    assume: datetime.tzinfo | str | None = "local",
    min_free_bytes: int = 0,
    progress: Callable[[int, int], None] | None = None,
    stop_requested: Callable[[], bool] = lambda: False,
) -> ImportSummary:
    """Import the photos under ``folder`` into ``store`` (None: a dry run, which writes nothing),
    looking duplicates up in ``reader`` (the same data directory's index).  ``trigger``: recorded
    for each capture (see :data:`~appliance.store.TRIGGERS`); ``convert``, ``jpeg_quality``: for
    images that are not JPEG; ``thumbnail_max_px``: thumbnail size; ``assume``: zone of EXIF times without
    offset; ``min_free_bytes``: the free space to keep; ``progress(done, total)`` per file;
    ``stop_requested()``: asked before each file, True ends the import there (for Ctrl-C, which
    must not interrupt a photo halfway into the store).

    Returns the :class:`ImportSummary`; a store that fails (the photos before it are imported,
    the one then is not) ends the import, with the reason in ``stopped``.
    """
    summary = ImportSummary()
    paths = walk(folder, exclude=reader.data_dir.resolve())
    summary.files = len(paths)
    seen: set[str] = set()  # SHA-256 of the photos of this run, for a dry run's duplicates
    indexed = (reader.data_dir / DB_NAME).is_file()  # a dry run into a new data directory: none

    def is_duplicate(jpeg: bytes) -> bool:
        digest = hashlib.sha256(jpeg).hexdigest()
        if digest in seen or (indexed and reader.with_sha256(digest)):
            return True
        seen.add(digest)
        return False

    for done, path in enumerate(paths, 1):
        if stop_requested():
            summary.stopped = f"interrupted before {path}; {len(paths) - done + 1} files not looked at"
            break
        if progress:
            progress(done, len(paths))
        try:
            photo = read_photo(
                path,
                *_read(path),
                convert=convert,
                jpeg_quality=jpeg_quality,
                thumbnail_max_px=thumbnail_max_px,
                assume=assume,
                is_duplicate=is_duplicate,
            )
        except Skip as exc:
            summary.skipped.append((path, str(exc)))
            continue
        except Exception as exc:  # Pillow's decoders raise any kind of error on a damaged file
            summary.skipped.append((path, f"damaged: {type(exc).__name__}: {exc}"))
            continue
        if photo is None:
            summary.duplicates += 1
            continue
        if photo.note:
            summary.notes.append((path, photo.note))
        photo.metadata["import"]["path"] = str(path.relative_to(folder))
        if store is not None:
            usage = disk_usage(reader.data_dir)
            if usage and usage.free - len(photo.jpeg) - len(photo.thumbnail) < min_free_bytes:
                summary.stopped = (
                    f"stopped before {path}: the free space ({usage.free} bytes) would fall below "
                    f"capture_min_free_bytes ({min_free_bytes}); {len(paths) - done + 1} files not looked at"
                )
                break
            try:
                store.add(
                    photo.jpeg,
                    photo.thumbnail,
                    timestamp=Timestamp(photo.taken, clock_synced=False, boot_id="", since_boot_s=None),
                    trigger=trigger,
                    metadata=photo.metadata,
                )
            except StoreError as exc:  # nothing of this photo is left behind (see CaptureStore.add)
                summary.stopped = f"stopped at {path}: {exc}"
                break
        summary.imported += 1
    return summary


def _read(path: Path) -> tuple[bytes, float]:
    """The bytes of the file at ``path`` and its mtime; raises :class:`Skip` for a file that is
    not regular, empty, too large or unreadable."""
    try:
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode):
            raise Skip("not a regular file")
        if st.st_size == 0:
            raise Skip("empty file")
        if st.st_size > MAX_FILE_BYTES:
            raise Skip(f"larger than {MAX_FILE_BYTES >> 20} MiB")
        # Non-blocking, and checked again once open: a file replaced by a FIFO since the stat must
        # not hang the import.
        with os.fdopen(os.open(path, os.O_RDONLY | os.O_NONBLOCK), "rb") as file:
            st = os.fstat(file.fileno())
            data = file.read(MAX_FILE_BYTES + 1)
            if not stat.S_ISREG(st.st_mode) or len(data) > MAX_FILE_BYTES:
                raise Skip("changed while being read")
            return data, st.st_mtime
    except OSError as exc:
        raise Skip(f"cannot read: {exc.strerror or exc}") from None
