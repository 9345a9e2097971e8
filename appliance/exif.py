"""EXIF: written into the photos the appliance takes, read from photos it imports or recovers.

:func:`describe` says what a photo carries, as EXIF tag names and JSON-serialisable values, so the
same dict can go into the index row; :func:`embed` puts it into the JPEG without re-encoding it.
:func:`read` takes the same fields (and a few more cameras write) from any photo, whatever state its
EXIF block is in; :func:`original_time` says when it was taken.  Replayed and imported photos keep
their own bytes.

Tags (Exif 2.32, CIPA DC-008-2019): ``DateTimeOriginal`` in local time with ``OffsetTimeOriginal``
(``+HH:MM``) and ``SubsecTimeOriginal`` (milliseconds), ``Make``, ``Model`` and ``Software`` of the
appliance, ``BodySerialNumber`` when a camera id is configured, and from picamera2 metadata, when
present, ``ExposureTime`` (seconds) and ``ISOSpeedRatings`` (ISO, 100 x analogue x digital
gain, as picamera2's own EXIF does).
"""

import datetime
import math
import warnings
from dataclasses import dataclass
from fractions import Fraction

from PIL import ExifTags, Image, TiffImagePlugin

from appliance import __version__

_SOI = b"\xff\xd8"
_EXIF_HEADER = b"Exif\x00\x00"
_APP0, _APP1 = 0xE0, 0xE1
_IFD0_TAGS = ("Make", "Model", "Software")
# What :func:`read` keeps of a photo's EXIF (IFD0 and the Exif sub-IFD): who took it, when, and
# how; enough for Camtrap DP's exifData without a maker note's kilobytes.
READ_TAGS = frozenset(
    (*_IFD0_TAGS, "Orientation", "BodySerialNumber", "DateTimeOriginal", "OffsetTimeOriginal",
     "SubsecTimeOriginal", "ExposureTime", "FNumber", "ISOSpeedRatings", "FocalLength", "Flash")
)  # fmt: skip
# Characters kept of a text field: cameras pad Make and Model with NULs, hostile files with more.
MAX_TEXT = 128


@dataclass(frozen=True)
class Identity:
    """Who took the photo: EXIF ``Make``, ``Model`` and ``BodySerialNumber`` (``""``: left out)."""

    make: str
    model: str
    serial: str = ""


def describe(wall: datetime.datetime, identity: Identity, camera_metadata: dict | None = None) -> dict:
    """The EXIF fields of a photo taken at ``wall`` (an aware datetime), as ``{tag name: value}``.

    ``camera_metadata``: picamera2's names (``ExposureTime`` in µs, ``AnalogueGain``,
    ``DigitalGain``); missing entries are left out.  Strings and numbers only.
    """
    local = wall.astimezone()
    offset = local.strftime("%z")
    fields = {
        "DateTimeOriginal": local.strftime("%Y:%m:%d %H:%M:%S"),
        "OffsetTimeOriginal": f"{offset[:3]}:{offset[3:]}",
        "SubsecTimeOriginal": f"{local.microsecond // 1000:03d}",
        "Make": identity.make,
        "Model": identity.model,
        "Software": f"camtrap-appliance {__version__}",
    }
    if identity.serial:
        fields["BodySerialNumber"] = identity.serial
    metadata = camera_metadata or {}
    if "ExposureTime" in metadata:
        fields["ExposureTime"] = metadata["ExposureTime"] / 1_000_000
    if "AnalogueGain" in metadata:
        gain = metadata["AnalogueGain"] * metadata.get("DigitalGain", 1.0)
        fields["ISOSpeedRatings"] = round(gain * 100)
    return fields


def _exif_bytes(fields: dict) -> bytes:
    exif = Image.Exif()
    sub_ifd = exif.get_ifd(ExifTags.IFD.Exif)
    for name, value in fields.items():
        if name == "ExposureTime":
            fraction = Fraction(value).limit_denominator(1_000_000)
            value = TiffImagePlugin.IFDRational(fraction.numerator, fraction.denominator)
        (exif if name in _IFD0_TAGS else sub_ifd)[ExifTags.Base[name]] = value
    return exif.tobytes()


def embed(jpeg: bytes, fields: dict) -> bytes:
    """Return ``jpeg`` with an APP1 Exif segment holding ``fields`` (from :func:`describe`).

    The compressed image data are copied unchanged.  Any Exif segment already there (picamera2
    writes its own) is replaced; the new one goes right after SOI, or after a JFIF APP0 segment
    that comes first (JFIF 1.02 wants APP0 first; Exif readers accept APP1 after it).  Raises
    ``ValueError`` when ``jpeg`` does not start with a JPEG SOI marker or its header segments are
    truncated.
    """
    if not jpeg.startswith(_SOI):
        raise ValueError("not a JPEG: no SOI marker")
    exif = _exif_bytes(fields)
    ours = b"\xff\xe1" + (len(exif) + 2).to_bytes(2, "big") + exif
    head, jfif = [], b""
    pos = len(_SOI)
    # The application segments (APP0-APP15) come first; stop at the first other marker.
    while pos + 4 <= len(jpeg) and jpeg[pos] == 0xFF and _APP0 <= jpeg[pos + 1] <= 0xEF:
        end = pos + 2 + int.from_bytes(jpeg[pos + 2 : pos + 4], "big")
        if end > len(jpeg):
            raise ValueError("not a JPEG: truncated header segment")
        segment = jpeg[pos:end]
        if pos == len(_SOI) and jpeg[pos + 1] == _APP0:
            jfif = segment
        elif not (jpeg[pos + 1] == _APP1 and segment[4:10] == _EXIF_HEADER):
            head.append(segment)
        pos = end
    return b"".join([_SOI, jfif, ours, *head, jpeg[pos:]])


def _plain(value):
    """An EXIF value as JSON's types: text without NUL padding, numbers (a rational as a float),
    lists of those; None for what has no such form (binary blobs, x/0 rationals)."""
    if isinstance(value, bytes):
        value = value.decode("latin-1")
    if isinstance(value, str):
        text = value.replace("\x00", " ").strip()
        return text[:MAX_TEXT] if text.isprintable() else None
    if isinstance(value, tuple):
        items = [_plain(item) for item in value[:8]]
        return None if None in items else items
    try:
        number = float(value)  # IFDRational, int, float
    except (TypeError, ValueError, ZeroDivisionError):
        return None
    if not math.isfinite(number):
        return None
    return int(number) if isinstance(value, int) else number


def read(image: Image.Image) -> dict:
    """The fields of :data:`READ_TAGS` that ``image`` (an open Pillow image) carries, as ``{tag
    name: str | int | float | list}``; unreadable or binary values are left out, text is stripped
    of NUL padding and cut to :data:`MAX_TEXT` characters.

    Raises ``ValueError`` naming the reason when the EXIF block cannot be parsed at all.
    """
    try:
        with warnings.catch_warnings(action="ignore"):  # Pillow warns of each damaged entry
            exif = image.getexif()
            tags = [*exif.items(), *exif.get_ifd(ExifTags.IFD.Exif).items()]
    except Exception as exc:  # Pillow's TIFF parser raises any kind of error on hostile bytes
        raise ValueError(f"EXIF unreadable: {type(exc).__name__}: {exc}") from exc
    fields = {}
    for tag, value in tags:
        name = ExifTags.TAGS.get(tag)
        if name in READ_TAGS and (plain := _plain(value)) is not None:
            fields[name] = plain
    return fields


def original_time(fields: dict, assume: datetime.tzinfo | str | None = None) -> datetime.datetime | None:
    """When the photo was taken, from :func:`read`'s ``DateTimeOriginal``, ``OffsetTimeOriginal``
    and ``SubsecTimeOriginal`` (Exif 2.32), as an aware datetime.  A time without its offset is
    taken to be in ``assume``: a tzinfo, or ``"local"`` for this machine's zone (with its summer
    time rules); with None such a time is ambiguous, and the result None.  None as well when the
    fields are missing or not a valid date (cameras never set write ``0000:00:00 00:00:00``).
    """
    taken, offset = fields.get("DateTimeOriginal"), fields.get("OffsetTimeOriginal")
    subsec = str(fields.get("SubsecTimeOriginal", "0")).strip()
    if not isinstance(taken, str):
        return None
    try:
        naive = datetime.datetime.strptime(taken, "%Y:%m:%d %H:%M:%S")
        naive += datetime.timedelta(seconds=float(f"0.{subsec}") if subsec.isdigit() else 0)
    except (ValueError, OverflowError):
        return None
    try:  # an offset that does not parse ("  :  ", say) counts as none
        return naive.replace(tzinfo=datetime.datetime.strptime(str(offset), "%z").tzinfo)
    except ValueError:
        pass
    if assume is None:
        return None
    try:
        return naive.astimezone() if assume == "local" else naive.replace(tzinfo=assume)
    except (ValueError, OverflowError):
        return None
