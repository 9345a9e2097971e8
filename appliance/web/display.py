"""How the pages show values to a person: times in the trap's time zone in one format, and a
capture's metadata as labelled rows with units.

The JSON API shows neither: it keeps ISO 8601 times with their offset, and the metadata as stored.
"""

import datetime
import html
import os
import re
import zoneinfo
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

# The one format of a time on the pages, e.g. "2026-12-03 15:04 CET" (%Z: the zone's abbreviation
# at that moment, summer time included; a zone without one gives its offset, "-03").
MINUTES_FORMAT = "%Y-%m-%d %H:%M %Z"
SECONDS_FORMAT = "%Y-%m-%d %H:%M:%S %Z"


# Where the C library finds the system's zone when $TZ is unset (timedatectl links it into the
# zoneinfo folder: /usr/share/zoneinfo/Europe/Berlin).
LOCALTIME = Path("/etc/localtime")


def system_zone(localtime: Path = LOCALTIME) -> zoneinfo.ZoneInfo | None:
    """This machine's zone, as the C library finds it: ``$TZ`` when it names a zone
    (``"Europe/Berlin"``, ``":Europe/Berlin"``), else ``localtime`` (with its IANA name when it
    links into a zoneinfo folder).  None when neither can be read (a POSIX ``$TZ`` rule such as
    ``"CET-1"``, no such file): the C library's own conversion is used then.

    A ZoneInfo rather than ``astimezone()``: the C library's conversion fails before 1970 on
    some systems and on the calendar's first days, where a zone's rules still answer."""
    name = os.environ.get("TZ", "").removeprefix(":")
    try:
        if name:
            return zoneinfo.ZoneInfo(name)
        real = os.path.realpath(localtime)
        if "/zoneinfo/" in real:
            return zoneinfo.ZoneInfo(real.split("/zoneinfo/", 1)[1])
        with open(localtime, "rb") as file:
            return zoneinfo.ZoneInfo.from_file(file)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):
        return None


class LocalTime:
    """Times as the pages show them, in ``zone`` (None: the C library's local time, with its
    summer time rules).  A template calls the instance: ``{{!when(iso)}}``."""

    def __init__(self, zone: zoneinfo.ZoneInfo | None = None):
        self.zone = zone

    @classmethod
    def named(cls, name: str) -> "LocalTime":
        """In the zone of IANA name ``name`` (the ``timezone`` setting, already checked when the
        config was loaded); "": the system's (:func:`system_zone`).  Raises
        ``zoneinfo.ZoneInfoNotFoundError`` for a zone this system does not know."""
        return cls(zoneinfo.ZoneInfo(name) if name else system_zone())

    @property
    def tzinfo(self) -> datetime.tzinfo:
        """The zone as a ``datetime.tzinfo``: :attr:`zone`, or without one the C library's local
        zone at its offset now (a fixed offset: across a change to or from summer time, hours
        before it are one hour off)."""
        return self.zone if self.zone is not None else datetime.datetime.now().astimezone().tzinfo

    @property
    def label(self) -> str:
        """The zone, for a heading: its IANA name (``"Pacific/Auckland"``), or when it has none
        its abbreviation now (``"CET"``)."""
        if self.zone is not None and self.zone.key:
            return self.zone.key
        return datetime.datetime.now(datetime.UTC).astimezone(self.zone).strftime("%Z")

    def local(self, moment: datetime.datetime) -> datetime.datetime:
        """``moment`` (aware; a naive one is taken as UTC) in this zone."""
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=datetime.UTC)
        return moment.astimezone(self.zone)

    def __call__(self, iso: str | None, *, seconds: bool = False) -> str:
        """HTML: the time ``iso`` (ISO 8601, as the index stores it) in this zone in the one
        format of the pages (to the minute, or with ``seconds``: ``2026-12-03 15:04:05 CET``),
        in a ``<time datetime="...">`` giving it in ISO 8601 with its offset; "" for None, and the
        value itself, escaped, when it is not a time."""
        if iso is None:
            return ""
        try:
            moment = self.local(datetime.datetime.fromisoformat(iso))
        except (ValueError, OverflowError):
            return html.escape(str(iso))
        shown = moment.strftime(SECONDS_FORMAT if seconds else MINUTES_FORMAT)
        return f'<time datetime="{moment.isoformat(timespec="seconds")}">{html.escape(shown)}</time>'

    def day(self, day: datetime.date) -> tuple[datetime.datetime, datetime.datetime]:
        """The bounds of ``day`` in this zone, its midnight and the next, in UTC (23 or 25 h apart
        on the days summer time begins or ends).  Raises ``OverflowError`` for a day at an end
        of the calendar whose bounds have no UTC equivalent (0001-01-01 east of Greenwich)."""
        bounds = []
        for midnight in (day, day + datetime.timedelta(days=1)):
            naive = datetime.datetime.combine(midnight, datetime.time())
            try:
                # astimezone() of a naive time reads it as the C library's local time.
                local = naive.astimezone() if self.zone is None else naive.replace(tzinfo=self.zone)
            except ValueError as exc:  # the C library's conversion: "year 0 is out of range"
                raise OverflowError(str(exc)) from None
            bounds.append(local.astimezone(datetime.UTC))
        return bounds[0], bounds[1]


# --- A capture's metadata ----------------------------------------------------------------------------


def yes_no(value) -> str:
    return "Yes" if value else "No"


def plain(value) -> str:
    """Any JSON value as text: Yes/No for a boolean, numbers without a float's noise, a list as
    its items separated by commas, an object as ``Label: value`` pairs separated by semicolons."""
    if isinstance(value, bool):
        return yes_no(value)
    if value is None:
        return "none"
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, list | tuple):
        return ", ".join(plain(item) for item in value)
    if isinstance(value, dict):
        return "; ".join(f"{humanise(key)}: {plain(item)}" for key, item in value.items())
    return str(value)


def humanise(key: str) -> str:
    """A metadata key as a label: ``"ColourCorrectionMatrix"`` and ``"colour_correction_matrix"``
    give ``"Colour correction matrix"``; a word in capitals stays so (``"ISOSpeed"``: ``"ISO
    speed"``)."""
    words = re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])|[_\s-]+", " ", key).split()
    words = [w if w.isupper() and len(w) > 1 else w.lower() for w in words]
    text = " ".join(words)
    return text[:1].upper() + text[1:] if text else key


def _exposure(seconds: float) -> str:
    # As photographers write it: 1/125 s, or 2.5 s for long ones.
    if seconds <= 0:
        return "0 s"
    if seconds >= 0.3:
        return f"{seconds:.2g} s"
    return f"1/{round(1 / seconds)} s"


def _focus(dioptres: float) -> str:
    # libcamera's LensPosition is in dioptres, 1 / the focus distance in metres; 0 is infinity.
    if dioptres <= 0:
        return f"{dioptres:g} dioptres (focused at infinity)"
    return f"{dioptres:.2f} dioptres (focused at {1 / dioptres:.2g} m)"


def _flash(value: int) -> str:
    # EXIF Flash (CIPA DC-008, 4.6.5): bit 0 says whether it fired.
    return "fired" if int(value) & 1 else "did not fire"


def _fraction(digits: str) -> str:
    # EXIF SubsecTime: the digits after the second's decimal point ("123": 0.123 s).
    text = str(digits).strip()
    if not text.isdigit():
        raise ValueError(text)
    return f"0.{text} s"


# EXIF Orientation (CIPA DC-008, 4.6.4): how the stored pixels must be turned to stand upright
# (browsers do it when they show the photo).
ORIENTATIONS = {
    1: "upright", 2: "mirrored", 3: "upside down", 4: "upside down, mirrored",
    5: "mirrored, on its side", 6: "on its side: turn 90° clockwise to view",
    7: "mirrored, on its side", 8: "on its side: turn 90° anticlockwise to view",
}  # fmt: skip


@dataclass(frozen=True)
class Field:
    """How one metadata value is shown: its ``label`` and ``show(value) -> str`` (with the unit)."""

    label: str
    show: Callable[[object], str] = plain


# Every key the appliance writes, by its place in the metadata: a top-level key is the camera's
# (hw.camera METADATA_KEYS: picamera2's names and units; the simulated camera's "Simulated" and
# "ReplayedFile"), "exif.<tag>" what appliance.exif wrote or read (EXIF units), "import.<key>"
# appliance.importer's.
FIELDS = {
    "SensorTimestamp": Field("Sensor time", lambda ns: f"{ns / 1e9:.3f} s after boot"),
    "ExposureTime": Field("Exposure", lambda us: _exposure(us / 1e6)),
    "AnalogueGain": Field("Analogue gain", lambda gain: f"{gain:.3g}×"),
    "DigitalGain": Field("Digital gain", lambda gain: f"{gain:.3g}×"),
    "Lux": Field("Light level", lambda lux: f"{lux:.0f} lux"),
    "ColourTemperature": Field("Colour temperature", lambda kelvin: f"{kelvin:.0f} K"),
    "LensPosition": Field("Focus", _focus),
    "Simulated": Field("Simulated camera", yes_no),
    "ReplayedFile": Field("Replayed from file"),
    "exif.Make": Field("Camera make"),
    "exif.Model": Field("Camera model"),
    "exif.BodySerialNumber": Field("Camera serial number"),
    "exif.Software": Field("Software"),
    "exif.DateTimeOriginal": Field(
        "Taken, by the camera's clock", lambda text: re.sub(r"^(\d{4}):(\d\d):(\d\d)", r"\1-\2-\3", text)
    ),
    "exif.OffsetTimeOriginal": Field("Camera's offset from UTC"),
    "exif.SubsecTimeOriginal": Field("Fraction of the second", _fraction),
    "exif.ExposureTime": Field("Exposure", _exposure),
    "exif.FNumber": Field("Aperture", lambda f: f"f/{f:.2g}"),
    "exif.ISOSpeedRatings": Field("Sensitivity", lambda iso: f"ISO {plain(iso)}"),
    "exif.FocalLength": Field("Focal length", lambda mm: f"{mm:.3g} mm"),
    "exif.Flash": Field("Flash", _flash),
    "exif.Orientation": Field("Orientation", lambda code: ORIENTATIONS[code]),
    "import.name": Field("Original file name"),
    "import.path": Field("Path in the imported folder"),
    "import.converted_from": Field("Converted to JPEG from"),
    "import.time_source": Field("Time taken from"),
}
# The headings of the metadata's objects; any other object's heading is its key, humanised.
GROUPS = {"": "Camera", "exif": "EXIF (in the photo file)", "import": "Import"}


def _row(path: str, key: str, value) -> tuple[str, str]:
    field = FIELDS.get(path)
    if field is None:
        return humanise(key), plain(value)
    try:
        return field.label, field.show(value)
    # A value of another type or range than the appliance writes (an imported photo's EXIF).
    except (TypeError, ValueError, KeyError, ZeroDivisionError, OverflowError):
        return field.label, plain(value)


def metadata_rows(metadata: dict) -> list[tuple[str, list[tuple[str, str]]]]:
    """A capture's ``metadata`` (the JSON object of its index row) as ``[(heading, [(label,
    text), ...]), ...]``: the camera's own values first, then one group per object (``exif``,
    ``import``, any other), each value labelled and given its unit by :data:`FIELDS`; a key it
    does not know gets a humanised label and its value as plain text.  Empty groups are left
    out."""
    groups: dict[str, list[tuple[str, str]]] = {"": []}
    for key, value in metadata.items():
        if isinstance(value, dict):
            groups[key] = [_row(f"{key}.{inner}", inner, item) for inner, item in value.items()]
        else:
            groups[""].append(_row(key, key, value))
    return [(GROUPS.get(name) or humanise(name), rows) for name, rows in groups.items() if rows]
