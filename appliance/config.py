"""The configuration: TOML files, every key optional, documented here and in the README.

:func:`load` reads files (stdlib ``tomllib``), rejects unknown keys and values of the wrong type or
out of range with :class:`~appliance.exc.ConfigError` naming the file and the key, and returns a
frozen :class:`Config`.  No file is needed: the defaults suit a Pi, and ``--simulate`` runs anywhere.

Without ``--config``, the files at :data:`DEFAULT_PATHS` that exist are read in order, each
overriding the keys it sets: ``/etc/appliance/appliance.toml`` (written by the installer), then
``/boot/firmware/appliance.toml``, on the SD card's FAT partition, so that settings can be changed
from any computer with a card reader.
"""

import dataclasses
import datetime
import ipaddress
import json
import math
import os
import re
import shutil
import textwrap
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from appliance.cleanup import MAX_HEADROOM_FRACTION
from appliance.exc import ConfigError
from appliance.exif import MAX_TEXT as EXIF_MAX_CHARS
from hw.camera import AUTOFOCUS_MODES, AWB_MODES, LARGEST_SENSOR_PX, SIMULATED_MAX_SIZE_PX
from hw.triggers import ActiveWindows

# Read in this order, later files overriding earlier ones (see the module docstring).
DEFAULT_PATHS = (Path("/etc/appliance/appliance.toml"), Path("/boot/firmware/appliance.toml"))

_BCM_PIN = re.compile(r"GPIO([0-9]|1[0-9]|2[0-7])")

# The bounds of the settings; the README's configuration table gives each with its reason.
# Byte thresholds: larger than any disk a Pi mounts (the real bound is check_against_filesystem).
MAX_BYTES = 1 << 50  # 1 PiB
# A path, encoded as the kernel sees it: Linux PATH_MAX (4096, with the terminating NUL) and NAME_MAX.
PATH_MAX_BYTES = 4095
NAME_MAX_BYTES = 255
# Photo and low-resolution stream sizes: at least this many pixels a side (picamera2 rounds odd
# sizes down to even ones, so a 1-pixel side would become 0), at most LARGEST_SENSOR_PX.
MIN_SIZE_PX = 64
# Text written into the Camtrap DP tables and descriptor: one line a spreadsheet shows whole.
TEXT_MAX_CHARS = 255
MAX_CONTRIBUTORS = 100
MAX_WINDOWS = 24
WEB_TOKEN_MIN_CHARS, WEB_TOKEN_MAX_CHARS = 16, 256
# No free-space threshold may ask for more than half of the data filesystem to start cleaning, the
# cap cleanup puts on the headroom (cleanup.MAX_HEADROOM_FRACTION); and cleanup must be able to stop
# below this share of it: ext4 keeps 5 % of its blocks for root, so free space as the appliance
# measures it never exceeds 95 %, and the filesystem's metadata, the index and the reserve file
# take more.  A stop free space never reaches would have cleanup delete every unprotected capture.
MAX_START_PERCENT = round(100 * MAX_HEADROOM_FRACTION)
MAX_STOP_FRACTION = 0.9


def _setting(default, doc: str, check=None, *, kind=None, secret=False):
    """A config field: ``doc`` is the one-line description shown in the README and by tests;
    ``check(value)`` returns an error string or None, and its ``allowed`` attribute (when it has
    one) says in words which values pass, for ``--print-defaults`` and the README; ``kind`` is the
    TOML type when the default's type is not enough (float settings accept integers), or a tuple of
    types any of which is accepted (``(float, str)``: a number, or "" for unset); ``secret``: error
    messages give the value's length, never the value."""
    return field(
        default=default,
        metadata={"doc": doc, "check": check, "kind": kind or type(default), "secret": secret},
    )


def _allowing(allowed: str):
    """Give the decorated check its ``allowed`` text."""

    def decorate(check):
        check.allowed = allowed
        return check

    return decorate


def _pin(value):
    if value == "" or _BCM_PIN.fullmatch(value):
        return None
    return 'must be a BCM pin name from "GPIO0" to "GPIO27", or "" when not fitted'


_pin.allowed = '"GPIO0" to "GPIO27", or ""'


def _size(value, full_ok=False):
    low, (high_w, high_h) = MIN_SIZE_PX, LARGEST_SENSOR_PX
    if full_ok and list(value) == [0, 0]:
        return None
    whole = len(value) == 2 and all(type(v) is int for v in value)
    if whole and low <= value[0] <= high_w and low <= value[1] <= high_h:
        return None
    return (
        f"must be [width, height] in pixels: two integers, the width {low} to {high_w} and the height "
        f"{low} to {high_h} (the largest sensor of any Pi camera)" + (", or [0, 0]" if full_ok else "")
    )


_size.allowed = (
    f"[{MIN_SIZE_PX}, {MIN_SIZE_PX}] to [{LARGEST_SENSOR_PX[0]}, {LARGEST_SENSOR_PX[1]}]; in simulation "
    f"at most [{SIMULATED_MAX_SIZE_PX[0]}, {SIMULATED_MAX_SIZE_PX[1]}]"
)


@_allowing(f"[0, 0], or {_size.allowed}")
def _size_or_full(value):
    return _size(value, full_ok=True)


def _path(value):
    """A path the kernel takes: no control character (a NUL ends it early, a newline breaks the
    log), at most PATH_MAX bytes in all, taken from the working directory, and NAME_MAX a name."""
    if any(ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0 for c in value):
        return "must not contain control characters (NUL, newline, tab ...)"
    try:
        encoded = os.fsencode(value)
        absolute = os.fsencode(os.path.abspath(value)) if value else encoded
    except (UnicodeError, OSError):
        return "is not a path this system can encode"
    if len(absolute) > PATH_MAX_BYTES:
        return f"is too long: at most {PATH_MAX_BYTES} bytes, from the working directory if relative"
    if any(len(name) > NAME_MAX_BYTES for name in encoded.split(b"/")):
        return f"has a name longer than {NAME_MAX_BYTES} bytes"
    return None


_path.allowed = (
    f"a path without control characters, at most {PATH_MAX_BYTES} bytes ({NAME_MAX_BYTES} per name)"
)


@_allowing(f'{_path.allowed}; or ""')
def _path_or_empty(value):
    return None if value == "" else _path(value)


@_allowing('an existing folder, or ""; only with simulate = true')
def _folder_or_empty(value):
    if value == "":
        return None
    return _path(value) or (None if Path(value).is_dir() else "is not a folder")


def _text(max_chars: int, *, ascii_only: bool = False):
    """A text written into a file: printable characters only (no control or formatting character,
    no line break), at most ``max_chars``; with ``ascii_only``, printable ASCII (an EXIF ASCII
    field is 7-bit ASCII: Exif 2.32, 4.6.2)."""

    def check(value):
        if len(value) > max_chars:
            return f"is longer than {max_chars} characters"
        if not value.isprintable():
            return "must not contain control characters (line breaks, tabs ...)"
        if ascii_only and not value.isascii():
            return "must be plain ASCII (an EXIF text field is 7-bit ASCII)"
        return None

    kind = "printable ASCII" if ascii_only else "printable text"
    check.allowed = f"{kind}, at most {max_chars} characters"
    return check


@_allowing(
    f'"", or {WEB_TOKEN_MIN_CHARS} to {WEB_TOKEN_MAX_CHARS} printable characters, none of them a space'
)
def _token(value):
    if value == "":
        return None
    if not all(c.isprintable() and not c.isspace() for c in value):
        return "must be printable characters without spaces, tabs or line breaks"
    if not WEB_TOKEN_MIN_CHARS <= len(value) <= WEB_TOKEN_MAX_CHARS:
        return (
            f"must be {WEB_TOKEN_MIN_CHARS} to {WEB_TOKEN_MAX_CHARS} characters long (or empty: "
            "actions off); e.g. from openssl rand -hex 16"
        )
    return None


@_allowing('"", "localhost", or an IP address (e.g. "0.0.0.0", "127.0.0.1", "::")')
def _host(value):
    if value in ("", "localhost"):
        return None
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return 'must be an IP address such as "0.0.0.0" or "127.0.0.1", "localhost", or ""'
    return None


def _one_of(choices):
    def check(value):
        return None if value in choices else f"must be one of {', '.join(map(repr, choices))}"

    check.allowed = ", ".join(map(json.dumps, choices))
    return check


@_allowing(f'"HH:MM-HH:MM" strings, start and end differing; at most {MAX_WINDOWS}')
def _windows(value):
    if not all(isinstance(v, str) for v in value):
        return 'must be a list of "HH:MM-HH:MM" strings'
    if len(value) > MAX_WINDOWS:
        return f"has more than {MAX_WINDOWS} windows"
    try:
        ActiveWindows(value)
    except ValueError as exc:
        return f"has {exc}"
    return None


_name = _text(TEXT_MAX_CHARS)


@_allowing(f"at most {MAX_CONTRIBUTORS} names, each of printable text, at most {TEXT_MAX_CHARS} characters")
def _names(value):
    if len(value) > MAX_CONTRIBUTORS:
        return f"has more than {MAX_CONTRIBUTORS} names"
    if not all(isinstance(n, str) and n and not _name(n) for n in value):
        return f"must be a list of names, each of printable text, at most {TEXT_MAX_CHARS} characters"
    return None


def _optional(check):
    """``check`` for a number setting that also takes "" (unset)."""

    def check_optional(value):
        if isinstance(value, str):
            return None if value == "" else 'must be a number, or "" when not set'
        return check(value)

    check_optional.allowed = f'{check.allowed}, or ""'
    return check_optional


@_allowing('an ISO 8601 date and time with a UTC offset, or ""')
def _iso_datetime_or_empty(value):
    try:
        if value == "" or datetime.datetime.fromisoformat(value).tzinfo is not None:
            return None
    except ValueError:
        pass
    return 'must be an ISO 8601 date and time with a UTC offset, e.g. "2026-05-01T18:00:00+02:00", or ""'


# Camtrap DP 1.0 enums (deployments-table-schema.json, camtrap-dp-profile.json).
FEATURE_TYPES = (
    "roadPaved", "roadDirt", "trailHiking", "trailGame", "roadUnderpass", "roadOverpass", "roadBridge",
    "culvert", "burrow", "nestSite", "carcass", "waterSource", "fruitingTree",
)  # fmt: skip
SAMPLING_DESIGNS = (
    "simpleRandom", "systematicRandom", "clusteredRandom", "experimental", "targeted", "opportunistic",
)  # fmt: skip


def _between(low, high):
    def check(value):
        return None if low <= value <= high else f"must be between {low} and {high}"

    check.allowed = f"{low} to {high}"
    return check


def _byte_count(also: str):
    check = _between(0, MAX_BYTES)
    check.allowed = f"0 to {MAX_BYTES} (1 PiB); {also}"
    return check


def _off_or_between(low, high):
    def check(value):
        return None if value == 0 or low <= value <= high else f"must be 0 (off) or {low} to {high}"

    check.allowed = f"0 (off), or {low} to {high}"
    return check


@dataclass(frozen=True)
class Config:
    """Every setting of the appliance.  Units are in the names."""

    data_dir: str = _setting(
        "appliance-data",
        "Folder holding captures.db, media/ and thumbnails/ (relative paths are taken from the "
        "working directory).",
        _path,
    )
    data_mount: str = _setting(
        "",
        'Mount point the data directory must be on, e.g. "/mnt/usb" for a USB disk: while it is not '
        'mounted the appliance refuses to start rather than write to the SD card; "": no requirement.',
        _path_or_empty,
    )
    simulate: bool = _setting(False, "Run without a Pi: gpiozero MockFactory pins and a simulated camera.")
    simulate_replay_dir: str = _setting(
        "",
        "In simulation, replay the JPEGs in this folder (in name order, looping) instead of "
        "rendering a synthetic scene.",
        _folder_or_empty,
    )
    simulate_trigger_interval_s: float = _setting(
        3.0,
        "In simulation, seconds between simulated triggers (button and PIR in turn).",
        _between(0.01, 3600),
        kind=float,
    )
    button_pin: str = _setting("GPIO17", 'BCM pin of the push button (to ground), "" when not fitted.', _pin)
    motion_pin: str = _setting("GPIO4", 'BCM pin of the PIR motion sensor output, "" when not fitted.', _pin)
    button_bounce_time_s: float = _setting(
        0.05,
        "gpiozero bounce_time of the button, in seconds.",
        _between(0, 5),
        kind=float,
    )
    camera_size_px: tuple[int, int] = _setting(
        (0, 0),
        "Photo size [width, height] in pixels; [0, 0] is the sensor's full resolution. At most the "
        "camera's largest sensor mode: a larger one stops the appliance at start (exit status 2).",
        _size_or_full,
        kind=list,
    )
    camera_lores_size_px: tuple[int, int] = _setting(
        (640, 480),
        "Size [width, height] of the camera's low-resolution stream, at most camera_size_px (or the "
        "sensor's full resolution); thumbnails are made from a frame of half this size.",
        _size,
        kind=list,
    )
    jpeg_quality: int = _setting(90, "JPEG quality of photos, 1 to 95.", _between(1, 95))
    camera_exposure_time_us: int = _setting(
        0, "Fixed exposure time in microseconds; 0 lets the camera choose.", _between(0, 10_000_000)
    )
    camera_analogue_gain: float = _setting(
        0.0, "Fixed analogue gain (1.0 is none); 0 lets the camera choose.", _between(0, 64), kind=float
    )
    camera_awb_mode: str = _setting(
        "auto", f"White balance: one of {', '.join(AWB_MODES)}.", _one_of(tuple(AWB_MODES))
    )
    camera_autofocus: str = _setting(
        "off",
        'Autofocus on cameras that have it (Camera Module 3): "off", "continuous", or "cycle" (one '
        "focus cycle before each capture, up to about a second more per capture).",
        _one_of(AUTOFOCUS_MODES),
    )
    camera_max_failures: int = _setting(
        8,
        "Failed captures or re-opens of the camera in a row after which the appliance exits (status "
        "1) for systemd to restart it; between failures the camera is re-opened after 1, 2, 4 ... s "
        "(at most 60 s), so the default rides out about two minutes of camera trouble.",
        _between(1, 1000),
    )
    camera_make: str = _setting(
        "Raspberry Pi",
        "EXIF Make written into each photo the camera takes.",
        _text(EXIF_MAX_CHARS, ascii_only=True),
    )
    camera_model: str = _setting(
        "",
        'EXIF Model written into each photo; "" takes the camera\'s own (the sensor, e.g. imx708, or '
        '"simulated").',
        _text(EXIF_MAX_CHARS, ascii_only=True),
    )
    camera_id: str = _setting(
        "",
        "Camera identifier (e.g. its serial number), written as EXIF BodySerialNumber and Camtrap DP "
        'cameraID; "": none.',
        _text(EXIF_MAX_CHARS, ascii_only=True),
    )
    trigger_cooldown_s: float = _setting(
        2.0,
        "Seconds after a capture from one source (button or motion) during which that source's "
        "triggers are counted, not captured.",
        _between(0, 3600),
        kind=float,
    )
    max_captures_per_minute: int = _setting(
        30,
        "At most this many captures in any 60 s, whatever triggered them (bursts count whole); "
        "triggers beyond it are counted, not captured; 0: no limit.",
        _between(0, 10_000),
    )
    burst_count: int = _setting(1, "Photos taken for each trigger.", _between(1, 100))
    burst_interval_s: float = _setting(
        0.5, "Seconds from one photo of a burst to the next.", _between(0, 60), kind=float
    )
    button_hold_time_s: float = _setting(
        3.0, "Seconds the button must be held for button_hold_action.", _between(0.5, 60), kind=float
    )
    button_hold_action: str = _setting(
        "none",
        'What holding the button does, besides the capture of the press: "none", "test_shot" (one '
        'more capture, trigger "manual"), or "shutdown" (stop the appliance cleanly, so its data is safe '
        "whatever happens to the power; systemd does not restart it).",
        _one_of(("none", "test_shot", "shutdown")),
    )
    timelapse_interval_s: float = _setting(
        0.0,
        "Seconds between timelapse captures (trigger timelapse) within active_windows; 0: no timelapse.",
        _off_or_between(1, 86400),
        kind=float,
    )
    active_windows: tuple[str, ...] = _setting(
        (),
        'Local times of day when timelapse captures and the UV light are on, e.g. ["19:00-06:00"] '
        "(a window may span midnight); [] means always.",
        _windows,
        kind=list,
    )
    flash_pin: str = _setting(
        "", 'BCM pin switching the flash, on only while each photo is taken; "" when not fitted.', _pin
    )
    flash_active_high: bool = _setting(True, "The flash is on when its pin is high (false: when low).")
    flash_pre_delay_s: float = _setting(
        0.0,
        "Seconds the flash is on before the exposure starts, for lights that need time to reach full output.",
        _between(0, 5),
        kind=float,
    )
    uv_pin: str = _setting(
        "", 'BCM pin switching the attract (UV) light, on during active_windows; "" when not fitted.', _pin
    )
    uv_active_high: bool = _setting(True, "The UV light is on when its pin is high (false: when low).")
    capture_timeout_s: float = _setting(
        5.0,
        "Seconds to wait for a frame before a capture fails; at most 25, so that a capture (twice "
        "this with an autofocus cycle) always ends within the systemd watchdog's 60 s.",
        _between(0.5, 25),
        kind=float,
    )
    thumbnail_max_px: int = _setting(320, "Longest edge of WebP thumbnails, in pixels.", _between(16, 4096))
    cleanup_start_free_percent: float = _setting(
        10.0,
        "Start deleting the oldest unprotected captures when free space on the data filesystem "
        "falls below this percentage of it (or below cleanup_start_free_bytes); at most 50, as "
        "cleaning that starts with more than half of the filesystem free would keep it mostly empty.",
        _between(0, MAX_START_PERCENT),
        kind=float,
    )
    cleanup_start_free_bytes: int = _setting(
        1 << 30,
        "Start deleting when free space falls below this many bytes (or below "
        "cleanup_start_free_percent); 1 GiB by default. At most half of the data filesystem.",
        _byte_count("at most half of the data filesystem"),
    )
    cleanup_stop_free_percent: float = _setting(
        20.0,
        "Stop deleting once free space is back above this percentage (and above "
        "cleanup_stop_free_bytes); at most 90, as free space may never reach more.",
        _between(0, round(100 * MAX_STOP_FRACTION)),
        kind=float,
    )
    cleanup_stop_free_bytes: int = _setting(
        2 << 30,
        "Stop deleting once free space is back above this many bytes (and above "
        "cleanup_stop_free_percent); 2 GiB by default. Even with the headroom at its cap (half "
        "the filesystem), cleaning must stop below 90 % of the data filesystem free.",
        _byte_count(
            "with the headroom at its cap, cleaning must stop below 90 % of the data filesystem free"
        ),
    )
    headroom_hours: float = _setting(
        24.0,
        "Also start deleting when free space would not hold this many hours of capturing at the "
        "last hour's rate (bytes captured in the last hour times this); 0 turns it off.",
        _between(0, 24 * 365),
        kind=float,
    )
    max_capture_age_days: float = _setting(
        0.0,
        "Delete unprotected captures older than this many days (only those taken with a "
        "synchronised clock, and only while the clock is synchronised); 0 keeps them whatever "
        "their age.",
        _between(0, 36500),
        kind=float,
    )
    capture_min_free_bytes: int = _setting(
        256 << 20,
        "Pause capturing while a capture would leave less than this many bytes free; 256 MiB "
        "by default.  Cleaning always starts above it, so at most half of the data filesystem.",
        _byte_count("at most half of the data filesystem"),
    )
    cleanup_interval_s: float = _setting(
        60.0, "Seconds between disk-space checks (monotonic clock).", _between(1, 3600), kind=float
    )
    web_host: str = _setting(
        "",
        'Address the status page listens on: "0.0.0.0" every interface, "127.0.0.1" this machine '
        'only; "" is 0.0.0.0 on hardware and 127.0.0.1 in simulation.',
        _host,
    )
    web_port: int = _setting(8080, "TCP port of the status page (0: any free port).", _between(0, 65535))
    web_token: str = _setting(
        "",
        "Secret that turns on the web actions (a test shot, protecting captures) for whoever sends it "
        '(log-in form, or Authorization: Bearer); "": actions off. Use a long random string, at '
        "least 16 characters, no spaces.",
        _token,
        secret=True,
    )

    # Deployment metadata for `appliance export camtrap-dp`, named after the Camtrap DP terms.
    deployment_id: str = _setting(
        "",
        'Camtrap DP deploymentID, unique among the deployments of a project; "": camera_id (or '
        '"appliance") and the date of the deployment start, e.g. "appliance-20260501".',
        _name,
    )
    location_name: str = _setting(
        "", 'Camtrap DP locationName, e.g. "Oak ridge, north edge"; "": none.', _name
    )
    location_id: str = _setting(
        "", 'Camtrap DP locationID, shared by deployments at one place; "": none.', _name
    )
    latitude: float | str = _setting(
        "",
        'Latitude of the camera in decimal degrees (WGS84); "": not set (the export refuses: '
        "Camtrap DP requires it).",
        _optional(_between(-90, 90)),
        kind=(float, str),
    )
    longitude: float | str = _setting(
        "",
        'Longitude of the camera in decimal degrees (WGS84); "": not set (the export refuses: '
        "Camtrap DP requires it).",
        _optional(_between(-180, 180)),
        kind=(float, str),
    )
    coordinate_uncertainty_m: int | str = _setting(
        "",
        "Uncertainty of latitude/longitude in metres (Camtrap DP coordinateUncertainty), at most "
        'half the Earth\'s circumference; "": unknown.',
        _optional(_between(1, 20_037_509)),
        kind=(int, str),
    )
    camera_height_m: float | str = _setting(
        "",
        "Height of the camera above the ground in metres, at most 150 (the tallest trees stand "
        'about 116 m); "": unknown.',
        _optional(_between(0, 150)),
        kind=(float, str),
    )
    camera_tilt_deg: int | str = _setting(
        "",
        'Tilt of the camera in degrees, -90 (down) to 90 (up), 0 level; "": unknown.',
        _optional(_between(-90, 90)),
        kind=(int, str),
    )
    camera_heading_deg: int | str = _setting(
        "",
        'Compass heading the camera faces in degrees, 0 (north) to 360, clockwise; "": unknown.',
        _optional(_between(0, 360)),
        kind=(int, str),
    )
    setup_by: str = _setting("", 'Who set the camera up (Camtrap DP setupBy); "": none.', _name)
    habitat: str = _setting("", 'Short description of the habitat at the camera; "": none.', _name)
    feature_type: str = _setting(
        "",
        'Camtrap DP featureType the camera watches, e.g. "trailGame" or "waterSource"; "": none.',
        _one_of(("", *FEATURE_TYPES)),
    )
    bait_use: bool = _setting(False, "Bait or lure was used at the camera (Camtrap DP baitUse).")
    deployment_start: str = _setting(
        "",
        'Start of the deployment, ISO 8601 with a UTC offset (e.g. "2026-05-01T18:00:00+02:00"); '
        '"": the first exported capture.',
        _iso_datetime_or_empty,
    )
    deployment_end: str = _setting(
        "",
        'End of the deployment, ISO 8601 with a UTC offset; "": the last exported capture.',
        _iso_datetime_or_empty,
    )
    project_title: str = _setting(
        "", 'Title of the project in the exported package; "": the deployment id.', _name
    )
    sampling_design: str = _setting(
        "opportunistic",
        "Camtrap DP samplingDesign of the project.",
        _one_of(SAMPLING_DESIGNS),
    )
    contributors: tuple[str, ...] = _setting(
        (),
        'People or organisations of the exported package, e.g. ["Ada Lovelace", "Field Station"]; '
        "the first is the contact, the others contributors.",
        _names,
        kind=list,
    )
    data_license: str = _setting(
        "",
        'Licence of the exported data (SPDX id, e.g. "CC0-1.0"); "": none (set both licences or neither).',
        _name,
    )
    media_license: str = _setting(
        "",
        'Licence of the exported photos (SPDX id, e.g. "CC-BY-4.0"); "": none (set both licences or '
        "neither).",
        _name,
    )
    import_convert: bool = _setting(
        True,
        "appliance import: convert images that are not JPEG (PNG, TIFF, WebP...) to JPEG at "
        "jpeg_quality, upright; false: skip them.",
    )

    def __post_init__(self):
        if self.simulate:  # the simulated camera's sizes are bounded as a sensor's are
            for key in ("camera_size_px", "camera_lores_size_px"):
                size = getattr(self, key)
                if size[0] > SIMULATED_MAX_SIZE_PX[0] or size[1] > SIMULATED_MAX_SIZE_PX[1]:
                    raise ConfigError(
                        f"{key}: {list(size)} is larger than the simulated camera's largest, "
                        f"{list(SIMULATED_MAX_SIZE_PX)} (simulate = true)"
                    )
        main, lores = self.camera_size_px, self.camera_lores_size_px
        if any(main) and (lores[0] > main[0] or lores[1] > main[1]):
            raise ConfigError(
                f"camera_lores_size_px: {list(lores)} does not fit within camera_size_px {list(main)}: "
                "the low-resolution stream may not be larger than the photo"
            )
        pins = {}
        for key in ("button_pin", "motion_pin", "flash_pin", "uv_pin"):
            pin = getattr(self, key)
            if pin and pin in pins:
                raise ConfigError(f"{key}: {pin} is already {pins[pin]}")
            pins[pin] = key
        exposure_s = self.camera_exposure_time_us / 1e6
        if self.capture_timeout_s < 2 * exposure_s + 1:
            # A frame whose exposure starts after the trigger can take two exposures to arrive.
            raise ConfigError(
                f"capture_timeout_s: {self.capture_timeout_s} s is too short for a {exposure_s:g} s "
                f"exposure (camera_exposure_time_us); it must be at least {2 * exposure_s + 1:g} s"
            )
        if self.max_captures_per_minute and self.burst_count > self.max_captures_per_minute:
            raise ConfigError(
                f"burst_count: a burst of {self.burst_count} exceeds max_captures_per_minute "
                f"({self.max_captures_per_minute})"
            )
        if self.simulate_replay_dir and not self.simulate:
            raise ConfigError("simulate_replay_dir: only used in simulation (simulate = true)")
        if bool(self.data_license) != bool(self.media_license):
            raise ConfigError(
                "data_license, media_license: set both (Camtrap DP wants one of each) or neither"
            )
        if self.cleanup_stop_free_percent < self.cleanup_start_free_percent:
            raise ConfigError(
                "cleanup_stop_free_percent: must be at least cleanup_start_free_percent "
                f"({self.cleanup_stop_free_percent} < {self.cleanup_start_free_percent})"
            )
        if self.cleanup_stop_free_bytes < self.cleanup_start_free_bytes:
            raise ConfigError(
                "cleanup_stop_free_bytes: must be at least cleanup_start_free_bytes "
                f"({self.cleanup_stop_free_bytes} < {self.cleanup_start_free_bytes})"
            )


# The deployment metadata, read at each export (`appliance export camtrap-dp`, the web's ZIP), and
# what only `appliance import` reads: none of them needs a restart.
EXPORT_IMPORT_SETTINGS = frozenset(
    (
        "deployment_id", "location_name", "location_id", "latitude", "longitude",
        "coordinate_uncertainty_m", "camera_height_m", "camera_tilt_deg", "camera_heading_deg", "setup_by",
        "habitat", "feature_type", "bait_use", "deployment_start", "deployment_end", "project_title",
        "sampling_design", "contributors", "data_license", "media_license", "import_convert",
    )
)  # fmt: skip


def settings() -> list[dataclasses.Field]:
    """The fields of :class:`Config`, in documentation order."""
    return list(dataclasses.fields(Config))


def check_value(key: str, value):
    """Return ``value`` converted to the type of setting ``key``.

    Raises :class:`ConfigError` (message without the file name) for an unknown key, a wrong type
    or a value out of range.
    """
    fields = {f.name: f for f in settings()}
    if key not in fields:
        raise ConfigError(f"{key}: unknown key")
    kind = fields[key].metadata["kind"]
    kinds = kind if isinstance(kind, tuple) else (kind,)  # a tuple: any of these (e.g. float or "")
    ok = isinstance(value, kinds) and not (bool not in kinds and isinstance(value, bool))
    secret = fields[key].metadata["secret"]
    if float in kinds and isinstance(value, int) and not isinstance(value, bool):
        try:
            value, ok = float(value), True
        except OverflowError:
            raise ConfigError(f"{key}: {_shown(value, secret)} is too large") from None
    if not ok:
        expected = " or ".join(k.__name__ for k in kinds)
        raise ConfigError(f"{key}: expected {expected}, got {type(value).__name__} {_shown(value, secret)}")
    if isinstance(value, float) and not math.isfinite(value):  # TOML has inf and nan
        raise ConfigError(f"{key}: {value!r} must be a finite number")
    check = fields[key].metadata["check"]
    problem = check(value) if check else None
    if problem:
        raise ConfigError(f"{key}: {_shown(value, secret)} {problem}")
    return tuple(value) if isinstance(value, list) else value


def _shown(value, secret: bool = False) -> str:
    """``value`` for an error message: its repr (one line), cut short when long; a secret's length only."""
    if secret and isinstance(value, str):
        return f"(a secret of {len(value)} characters)"
    try:
        text = repr(value)
    except ValueError:  # an integer of more digits than Python converts (sys.get_int_max_str_digits)
        return f"(an integer of {value.bit_length()} bits)"
    if len(text) <= 80:
        return text
    if isinstance(value, str):
        size = f"{len(value)} characters"
    elif isinstance(value, (list, tuple, dict)):
        size = f"{len(value)} items"
    else:
        size = f"{len(text)} characters"
    return f"{text[:60]}... ({size})"


def default_paths(paths=DEFAULT_PATHS) -> list[Path]:
    """The files of ``paths`` that exist, in the order they are read."""
    return [path for path in paths if path.is_file()]


def load(path: Path | list[Path] | None = None, **overrides) -> Config:
    """Read the TOML file at ``path`` (or each file of a list, later ones overriding earlier ones;
    None: defaults only), then apply ``overrides``.

    Raises :class:`ConfigError` naming the file and the key for an unreadable file, invalid TOML,
    an unknown key, a value of the wrong type or out of range.  Overrides (from the command line)
    are checked the same way and named as such.
    """
    paths = _paths(path)
    values = {}
    for path in paths:
        try:
            # utf-8-sig: a file saved by an editor that writes a byte-order mark (Windows Notepad,
            # on the SD card's boot partition) reads as if it had none.
            document = tomllib.loads(Path(path).read_text(encoding="utf-8-sig"))
        # ValueError: tomllib.TOMLDecodeError, and an integer too long to convert (over 4300 digits).
        except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
            raise ConfigError(f"{path}: {exc}") from exc
        for key, value in document.items():
            try:
                values[key] = check_value(key, value)
            except ConfigError as exc:
                raise ConfigError(f"{path}: {exc}") from None
    for key, value in overrides.items():
        try:
            values[key] = check_value(key, value)
        except ConfigError as exc:
            raise ConfigError(f"command line: {exc}") from None
    try:
        return Config(**values)
    except ConfigError as exc:
        raise ConfigError(f"{' + '.join(map(str, paths)) or 'command line'}: {exc}") from None


def _paths(path) -> list:
    return [] if path is None else [path] if isinstance(path, (str, Path)) else list(path)


def check_against_filesystem(config: Config, total_bytes: int, where: str = "the data filesystem") -> None:
    """Refuse free-space thresholds of ``config`` that would have cleanup delete every capture on a
    data filesystem of ``total_bytes`` (``where`` names it in the message).

    Cleanup starts when free space falls below the larger of ``cleanup_start_free_percent`` of the
    filesystem and ``cleanup_start_free_bytes``, and always one capture above
    ``capture_min_free_bytes``; a busy hour raises the start (``headroom_hours``) to at most half the
    filesystem (:data:`~appliance.cleanup.MAX_HEADROOM_FRACTION`); a run stops once free space is
    back above that start plus the hysteresis (the stop thresholds less the start ones).  Refused:

    - ``cleanup_start_free_bytes`` or ``capture_min_free_bytes`` above half the filesystem: cleaning
      would start with most of it free and go on (the percentages are bounded by their checks);
    - a stop that, at its highest (the headroom at its cap, when ``headroom_hours`` is set), is above
      :data:`MAX_STOP_FRACTION` of the filesystem: free space may never get there, and the run
      would go on until no unprotected capture is left.

    Raises :class:`ConfigError` naming the key, its value, the filesystem's size and the fix.
    """
    total, half = total_bytes, int(total_bytes * MAX_HEADROOM_FRACTION)
    size = f"{where} ({_bytes(total)})"
    unit = 10**6 if total >= 10**8 else 10**3  # round the example to MB, or kB on a tiny one
    example = (
        f"for a filesystem this size, e.g. capture_min_free_bytes = {total // 20 // unit * unit}, "
        f"cleanup_start_free_bytes = {total // 10 // unit * unit}, "
        f"cleanup_stop_free_bytes = {total // 5 // unit * unit}"
    )
    defaults = Config()
    for key in ("cleanup_start_free_bytes", "capture_min_free_bytes"):  # cleaning starts above both
        value = getattr(config, key)
        if value <= half:
            continue
        default = " (the default)" if value == getattr(defaults, key) else ""
        if value >= total:
            what = "free space is always below it, so cleaning would start at once and delete every capture"
        else:
            what = "cleaning would start with more than half of it free, and keep it mostly empty"
        raise ConfigError(
            f"{key}: {value} bytes{default} is more than half of {size}: {what}; set {key} to at "
            f"most {half} ({example})"
        )
    static_start = max(total * config.cleanup_start_free_percent / 100, config.cleanup_start_free_bytes)
    static_stop = max(total * config.cleanup_stop_free_percent / 100, config.cleanup_stop_free_bytes)
    headroom = half if config.headroom_hours else 0
    highest_start = max(static_start, config.capture_min_free_bytes, headroom)
    highest_stop = highest_start + max(0.0, static_stop - static_start)
    limit = total * MAX_STOP_FRACTION
    if highest_stop <= limit + 1:  # a byte for the rounding of the percentages
        return
    room = limit - highest_start + static_start  # the highest static stop that passes
    if config.cleanup_stop_free_bytes >= total * config.cleanup_stop_free_percent / 100:
        key, value, fix = "cleanup_stop_free_bytes", f"{config.cleanup_stop_free_bytes} bytes", f"{int(room)}"
    else:
        key, value, fix = (
            "cleanup_stop_free_percent",
            f"{config.cleanup_stop_free_percent:g} %",
            f"{room * 100 / total:.0f}",
        )
    if config.cleanup_stop_free_bytes == defaults.cleanup_stop_free_bytes and key.endswith("bytes"):
        value += " (the default)"
    by_headroom = headroom == highest_start > static_start
    raised = " (its start raised to half the filesystem by headroom_hours)" if by_headroom else ""
    raise ConfigError(
        f"{key}: {value} would have cleanup run until {_bytes(highest_stop)} of {size} are free"
        f"{raised}, more than {100 * MAX_STOP_FRACTION:.0f} %, which free space may never reach: "
        f"cleanup would delete every unprotected capture; set {key} to at most {fix}"
        + (" or headroom_hours = 0" if by_headroom else "")
        + f" ({example})"
    )


def check_filesystem(config: Config, path: Path | list[Path] | None = None) -> None:
    """:func:`check_against_filesystem` with the size of the filesystem holding ``config.data_dir``
    (or, while it does not exist, its nearest existing parent), for the config read from ``path``
    (named in the message, as :func:`load` names it).

    Skipped when ``data_mount`` is set and not mounted (the preflight check refuses to start then)
    or when the filesystem cannot be read (the preflight checks report that).  Raises
    :class:`ConfigError` as :func:`check_against_filesystem` does.
    """
    if config.data_mount and not os.path.ismount(config.data_mount):
        return
    folder = Path(os.path.abspath(config.data_dir))
    try:
        while not folder.exists():
            folder = folder.parent
        total = shutil.disk_usage(folder).total
    except OSError:
        return
    try:
        check_against_filesystem(config, total, f"the filesystem holding {config.data_dir}")
    except ConfigError as exc:
        raise ConfigError(f"{' + '.join(map(str, _paths(path))) or 'defaults'}: {exc}") from None


def _bytes(n: float) -> str:
    return f"{n / 1e9:.1f} GB" if n >= 1e9 else f"{n / 1e6:.1f} MB"


def _toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (tuple, list)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, str):
        return json.dumps(value)  # a TOML basic string: the same escapes as JSON
    return repr(value)


def defaults_file() -> str:
    """A config file with every setting commented out at its default, each after its description:
    uncomment a line to change it.  What ``appliance config --print-defaults`` prints."""
    lines = [
        "# Camera-trap appliance settings (TOML). Every key is optional; each is shown commented",
        "# out at its default. /boot/firmware/appliance.toml overrides /etc/appliance/appliance.toml.",
        "",
    ]
    for f in settings():
        lines += textwrap.wrap(f.metadata["doc"], 98, initial_indent="# ", subsequent_indent="# ")
        allowed = getattr(f.metadata["check"], "allowed", None)
        if allowed and allowed not in f.metadata["doc"]:
            lines += textwrap.wrap(f"Allowed: {allowed}.", 98, initial_indent="# ", subsequent_indent="#   ")
        lines += [f"# {f.name} = {_toml_value(f.default)}", ""]
    return "\n".join(lines)
