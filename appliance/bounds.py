"""The bounds of the settings: what values each one takes, and why.

Each check takes a value already of the setting's TOML type and returns what is wrong with it, in
words that follow the value in an error message (``"must be between 1 and 95"``), or None when it
passes; its ``allowed`` attribute says in words which values pass, for ``appliance config
--print-defaults`` and docs/configuration.md.  :func:`check_against_filesystem` bounds the
free-space thresholds by the size of the data filesystem, which no check of one value can know.
docs/configuration.md ("Bounds") gives the reason for each bound.
"""

import dataclasses
import datetime
import ipaddress
import json
import os
import re
import urllib.parse
import zoneinfo
from pathlib import Path
from typing import TYPE_CHECKING

from appliance.cleanup import MAX_HEADROOM_FRACTION
from appliance.exc import ConfigError
from hw.camera import LARGEST_SENSOR_PX, SIMULATED_MAX_SIZE_PX, first_replayable, replay_files
from hw.triggers import ActiveWindows

if TYPE_CHECKING:
    from appliance.config import Config

_BCM_PIN = re.compile(r"GPIO([0-9]|1[0-9]|2[0-7])")

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


def _allowing(allowed: str):
    """Give the decorated check its ``allowed`` text."""

    def decorate(check):
        check.allowed = allowed
        return check

    return decorate


def bcm_pin(value):
    if value == "" or _BCM_PIN.fullmatch(value):
        return None
    return 'must be a BCM pin name from "GPIO0" to "GPIO27", or "" when not fitted'


bcm_pin.allowed = '"GPIO0" to "GPIO27", or ""'


def size_px(value, full_ok=False):
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


size_px.allowed = (
    f"[{MIN_SIZE_PX}, {MIN_SIZE_PX}] to [{LARGEST_SENSOR_PX[0]}, {LARGEST_SENSOR_PX[1]}]; in simulation "
    f"at most [{SIMULATED_MAX_SIZE_PX[0]}, {SIMULATED_MAX_SIZE_PX[1]}]"
)


@_allowing(f"[0, 0], or {size_px.allowed}")
def size_px_or_full(value):
    return size_px(value, full_ok=True)


def kernel_path(value):
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


kernel_path.allowed = (
    f"a path without control characters, at most {PATH_MAX_BYTES} bytes ({NAME_MAX_BYTES} per name)"
)


@_allowing(f'{kernel_path.allowed}; or ""')
def path_or_empty(value):
    return None if value == "" else kernel_path(value)


_RCLONE_REMOTE = re.compile(r"[\w.][\w. -]*:[^\n]*")
_RATE = r"(?:off|\d+(?:\.\d+)?[bkmgtp]?i?)(?::(?:off|\d+(?:\.\d+)?[bkmgtp]?i?))?"
_BWLIMIT = re.compile(rf"{_RATE}|(?:(?:(?:mon|tue|wed|thu|fri|sat|sun)-)?\d\d:\d\d,{_RATE}(?: +|$))+")


@_allowing(
    '"", a remote of the rclone config file and a path ("fleet:camtrap-2026/"), or an absolute '
    "local folder; no connection string (credentials go in the config file)"
)
def rclone_remote(value):
    if value == "":
        return None
    if value.startswith("/"):
        return kernel_path(value)
    if value.startswith(":") or "," in value.partition(":")[0]:
        return (
            "must name a remote of the rclone config file, not a connection string: put the "
            "credentials in offload_rclone_config"
        )
    if not _RCLONE_REMOTE.fullmatch(value):
        return 'must be "<remote>:<path>" (a remote of the rclone config file), or an absolute folder'
    return None


@_allowing(
    'rclone\'s --bwlimit: "" none, a rate ("1M", "512k", "1M:off" upload:download) or a '
    'timetable ("08:00,512k 23:00,off")'
)
def bwlimit(value):
    if value == "" or _BWLIMIT.fullmatch(value.strip().lower()):
        return None
    return 'must be rclone\'s --bwlimit: a rate such as "1M" or "512k", or a timetable "08:00,512k 23:00,off"'


@_allowing(f"{kernel_path.allowed}, not empty, that is a folder or can be created as one")
def data_folder(value):
    """The data directory: a folder, or a path where one can be made (nothing on the way to it is a
    file).  Checked as the config is read, so that every command refuses a file with exit status
    2 before it opens anything."""
    if value == "":
        return 'must not be empty: name a folder (it is created if missing), e.g. "appliance-data"'
    problem = kernel_path(value)
    if problem:
        return problem
    path = Path(value)
    while not os.path.lexists(path) and path != path.parent:
        path = path.parent
    if not os.path.lexists(path) or path.is_dir():
        return None
    where = "" if path == Path(value) else f"is inside {str(path)!r}, which "
    if path.is_symlink():
        return (
            f"{where}is a symlink to {os.readlink(path)!r}, which does not exist: create that folder, "
            "or name another"
        )
    return f"{where}is a file, not a folder: name a folder (it is created if missing), or move the file away"


_REPLAY_UNSET = "leave it unset (run without --replay)"


@_allowing('a folder holding at least one JPEG that can be decoded, or ""; only with simulate = true')
def replay_folder(value):
    """simulate_replay_dir: an existing folder (its photos are checked with the other settings, by
    :func:`replay_photos`, once the config says it is used)."""
    if value == "":
        return None
    problem = kernel_path(value)
    if problem or Path(value).is_dir():
        return problem
    missing = "does not exist" if not os.path.lexists(value) else "is not a folder"
    return f"{missing}: name a folder of JPEG photos, or {_REPLAY_UNSET}"


def replay_photos(folder: str) -> str | None:
    """What is wrong with the replay folder ``folder`` (an existing one): no JPEG in it that can be
    decoded, so that the mistake is not hidden by the rendered scene the simulated camera would
    fall back to.  Decodes its files in name order up to the first that is such a JPEG."""
    to_do = f"add JPEG photos to it, or {_REPLAY_UNSET} for a rendered scene"
    try:
        files = replay_files(Path(folder))
    except OSError as exc:
        return f"cannot be read ({exc.strerror or exc}): {to_do}"
    if first_replayable(files) is None:
        looked_at = f"{len(files)} file{'s' if len(files) != 1 else ''} looked at"
        return f"holds no JPEG that can be decoded ({looked_at}): {to_do}"
    return None


def printable(max_chars: int, *, ascii_only: bool = False):
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
def web_token(value):
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
def listen_host(value):
    if value in ("", "localhost"):
        return None
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return 'must be an IP address such as "0.0.0.0" or "127.0.0.1", "localhost", or ""'
    return None


_HOST_NAME = re.compile(
    r"(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?)*\.?"
)


@_allowing('"", a host name ("broker.lan", "homeassistant.local") or an IP address')
def network_host(value):
    if value == "" or _HOST_NAME.fullmatch(value):
        return None
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return 'must be a host name such as "broker.lan" or an IP address, without a scheme or port'
    return None


@_allowing('"" (no TLS), "system" (the system\'s CAs), or the absolute path of a CA certificate file')
def tls_ca(value):
    if value in ("", "system"):
        return None
    if not value.startswith("/"):
        return (
            'must be "" (no TLS), "system" (the system\'s CAs), or the absolute path of a CA certificate file'
        )
    return kernel_path(value)


@_allowing("MQTT topic levels separated by /, none empty, without + # or NUL, at most 200 characters")
def mqtt_topic(value):
    if value == "":
        return None
    if len(value) > 200 or any(c in value for c in "+#\0") or "" in value.split("/"):
        return (
            'must be topic levels separated by "/" ("appliance/trap-7"), none empty (no leading, '
            "trailing or double /), without the wildcards + and #, at most 200 characters"
        )
    return None


@_allowing('an http:// or https:// address, or ""')
def http_url(value):
    if value == "":
        return None
    parts = urllib.parse.urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.query or parts.fragment:
        return 'must be the page\'s address such as "http://trap-7.local:8080", or ""'
    return None


@_allowing('an IANA time zone name such as "Europe/Berlin" (the files under /usr/share/zoneinfo), or ""')
def time_zone(value):
    if value == "":
        return None
    try:
        zoneinfo.ZoneInfo(value)
    # ValueError: an absolute path, "..", a NUL, a file that is no zone; OSError: a folder ("Europe").
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):
        return (
            'is not a time zone this system knows: give an IANA name such as "Europe/Berlin" or '
            '"America/New_York" (the files under /usr/share/zoneinfo; spelling and case matter), or "" '
            "for the system's own"
        )
    return None


@_allowing("printable ASCII, 1 to 16 characters (FAT takes 11, exFAT 11, ext4 16)")
def volume_label(value):
    """A filesystem label a stick is told by: ``fatlabel``, ``exfatlabel`` and ``e2label`` write
    it; ext4 keeps 16 bytes, FAT and exFAT 11 characters."""
    if not value:
        return 'must not be empty: a stick is written only when it carries this label (e.g. "TRAPDATA")'
    if len(value) > 16:
        return "is longer than 16 characters, more than any filesystem's label holds"
    if not (value.isascii() and value.isprintable()):
        return "must be printable ASCII (letters, digits, - and _ suit every filesystem)"
    return None


def one_of(choices):
    """A check that passes exactly the values of ``choices``."""

    def check(value):
        return None if value in choices else f"must be one of {', '.join(map(repr, choices))}"

    check.allowed = ", ".join(map(json.dumps, choices))
    return check


@_allowing(f'"HH:MM-HH:MM" strings, start and end differing; at most {MAX_WINDOWS}')
def time_windows(value):
    if not all(isinstance(v, str) for v in value):
        return 'must be a list of "HH:MM-HH:MM" strings'
    if len(value) > MAX_WINDOWS:
        return f"has more than {MAX_WINDOWS} windows"
    try:
        ActiveWindows(value)
    except ValueError as exc:
        return f"has {exc}"
    return None


camtrap_text = printable(TEXT_MAX_CHARS)


@_allowing(f"at most {MAX_CONTRIBUTORS} names, each of printable text, at most {TEXT_MAX_CHARS} characters")
def names(value):
    if len(value) > MAX_CONTRIBUTORS:
        return f"has more than {MAX_CONTRIBUTORS} names"
    if not all(isinstance(n, str) and n and not camtrap_text(n) for n in value):
        return f"must be a list of names, each of printable text, at most {TEXT_MAX_CHARS} characters"
    return None


def optional(check):
    """``check`` for a number setting that also takes "" (unset)."""

    def check_optional(value):
        if isinstance(value, str):
            return None if value == "" else 'must be a number, or "" when not set'
        return check(value)

    check_optional.allowed = f'{check.allowed}, or ""'
    return check_optional


@_allowing('an ISO 8601 date and time with a UTC offset, or ""')
def iso_datetime_or_empty(value):
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


def between(low, high):
    """A check of a number from ``low`` to ``high``, both included (in the setting's unit)."""

    def check(value):
        return None if low <= value <= high else f"must be between {low} and {high}"

    check.allowed = f"{low} to {high}"
    return check


def byte_count(also: str):
    """A check of a byte count from 0 to :data:`MAX_BYTES`; ``also`` says in words the bound that
    :func:`check_against_filesystem` adds."""
    check = between(0, MAX_BYTES)
    check.allowed = f"0 to {MAX_BYTES} (1 PiB); {also}"
    return check


def off_or_between(low, high):
    """A check of a number that is 0 (off) or from ``low`` to ``high``."""

    def check(value):
        return None if value == 0 or low <= value <= high else f"must be 0 (off) or {low} to {high}"

    check.allowed = f"0 (off), or {low} to {high}"
    return check


def check_against_filesystem(config: "Config", total_bytes: int, where: str = "the data filesystem") -> None:
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
    defaults = {f.name: f.default for f in dataclasses.fields(config)}
    for key in ("cleanup_start_free_bytes", "capture_min_free_bytes"):  # cleaning starts above both
        value = getattr(config, key)
        if value <= half:
            continue
        default = " (the default)" if value == defaults[key] else ""
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
    if config.cleanup_stop_free_bytes == defaults["cleanup_stop_free_bytes"] and key.endswith("bytes"):
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


def _bytes(n: float) -> str:
    return f"{n / 1e9:.1f} GB" if n >= 1e9 else f"{n / 1e6:.1f} MB"
