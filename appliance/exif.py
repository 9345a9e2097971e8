"""EXIF for the photos the appliance takes itself (replayed and imported photos keep their own bytes).

:func:`describe` says what a photo carries, as EXIF tag names and JSON-serialisable values, so the
same dict can go into the index row; :func:`embed` puts it into the JPEG without re-encoding it.

Tags (Exif 2.32, CIPA DC-008-2019): ``DateTimeOriginal`` in local time with ``OffsetTimeOriginal``
(``+HH:MM``) and ``SubsecTimeOriginal`` (milliseconds), ``Make``, ``Model`` and ``Software`` of the
appliance, ``BodySerialNumber`` when a camera id is configured, and from picamera2 metadata, when
present, ``ExposureTime`` (seconds) and ``ISOSpeedRatings`` (ISO, 100 x analogue x digital
gain, as picamera2's own EXIF does).
"""

import datetime
from dataclasses import dataclass
from fractions import Fraction

from PIL import ExifTags, Image, TiffImagePlugin

from appliance import __version__

_SOI = b"\xff\xd8"
_EXIF_HEADER = b"Exif\x00\x00"
_APP0, _APP1 = 0xE0, 0xE1
_IFD0_TAGS = ("Make", "Model", "Software")


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
