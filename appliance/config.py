"""The configuration: TOML files, every key optional, each documented here.

:func:`load` reads files (stdlib ``tomllib``), rejects unknown keys and values of the wrong type or
out of range with :class:`~appliance.exc.ConfigError` naming the file and the key, and returns a
frozen :class:`Config`.  No file is needed: the defaults suit a Pi, and ``--simulate`` runs anywhere.

Without ``--config``, the files at :data:`DEFAULT_PATHS` that exist are read in order, each
overriding the keys it sets: ``/etc/appliance/appliance.toml`` (written by the installer), then
``/boot/firmware/appliance.toml``, on the SD card's FAT partition, so that settings can be changed
from any computer with a card reader.

Each setting declares, in the metadata of its :class:`Config` field, its ``doc``, ``check`` (see
:mod:`appliance.bounds`), TOML ``kind`` and ``reload`` rule (:data:`LIVE`, :data:`RESTART` or
:data:`EXPORT`); ``appliance config --print-defaults`` (:func:`defaults_file`) and
docs/configuration.md (``python docs/generate.py``) are both written from it.
"""

import dataclasses
import json
import math
import os
import shutil
import textwrap
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from appliance import bounds
from appliance.bounds import (
    FEATURE_TYPES,
    MAX_BYTES,
    MAX_CONTRIBUTORS,
    MAX_START_PERCENT,
    MAX_STOP_FRACTION,
    MAX_WINDOWS,
    MIN_SIZE_PX,
    NAME_MAX_BYTES,
    PATH_MAX_BYTES,
    SAMPLING_DESIGNS,
    TEXT_MAX_CHARS,
    WEB_TOKEN_MAX_CHARS,
    WEB_TOKEN_MIN_CHARS,
    check_against_filesystem,
)
from appliance.exc import ConfigError
from appliance.exif import MAX_TEXT as EXIF_MAX_CHARS
from hw.camera import AUTOFOCUS_MODES, AWB_MODES, SIMULATED_MAX_SIZE_PX

__all__ = [
    "AREAS", "DEFAULT_PATHS", "EXPORT", "FEATURE_TYPES", "LIVE", "MAX_BYTES", "MAX_CONTRIBUTORS",
    "MAX_START_PERCENT", "MAX_STOP_FRACTION", "MAX_WINDOWS", "MIN_SIZE_PX", "NAME_MAX_BYTES",
    "PATH_MAX_BYTES", "RELOAD_RULES", "RESTART", "SAMPLING_DESIGNS", "TEXT_MAX_CHARS",
    "WEB_TOKEN_MAX_CHARS", "WEB_TOKEN_MIN_CHARS", "Config", "check_against_filesystem",
    "check_filesystem", "check_value", "default_paths", "defaults_file", "load", "settings",
    "settings_by_reload", "toml_value",
]  # fmt: skip

# Read in this order, later files overriding earlier ones (see the module docstring).
DEFAULT_PATHS = (Path("/etc/appliance/appliance.toml"), Path("/boot/firmware/appliance.toml"))

# How a changed setting takes effect in a running appliance (the ``reload`` of its metadata):
# LIVE: a reload (SIGHUP, systemctl reload appliance) applies it while running;
LIVE = "live"
# RESTART: it keeps its running value until the appliance restarts (a reload logs that it waits);
RESTART = "restart"
# EXPORT: read where it is used, by each export (appliance export camtrap-dp; the web's ZIP reads
# the running config, which a reload replaces) or by appliance import: nothing to restart.
EXPORT = "export"
RELOAD_RULES = (LIVE, RESTART, EXPORT)


def _setting(default, doc: str, check=None, *, reload: str, kind=None, secret=False):
    """A config field: ``doc`` is the one-line description that ``--print-defaults`` and
    docs/configuration.md show; ``check(value)`` returns an error string or None, and its
    ``allowed`` attribute (when it has one) says in words which values pass (see
    :mod:`appliance.bounds`); ``reload`` is :data:`LIVE`, :data:`RESTART` or :data:`EXPORT`;
    ``kind`` is the TOML type when the default's type is not enough (float settings accept
    integers), or a tuple of types any of which is accepted (``(float, str)``: a number, or "" for
    unset); ``secret``: error messages give the value's length, never the value."""
    if reload not in RELOAD_RULES:
        raise ValueError(f"reload must be one of {RELOAD_RULES}, not {reload!r}")
    metadata = {"doc": doc, "check": check, "reload": reload, "kind": kind or type(default), "secret": secret}
    return field(default=default, metadata=metadata)


@dataclass(frozen=True)
class Config:
    """Every setting of the appliance.  Units are in the names."""

    data_dir: str = _setting(
        "appliance-data",
        "Folder holding captures.db, media/ and thumbnails/ (relative paths are taken from the "
        "working directory).",
        bounds.data_folder,
        reload=RESTART,
    )
    data_mount: str = _setting(
        "",
        'Mount point the data directory must be on, e.g. "/var/lib/appliance" for a USB disk mounted '
        "there (the service's data directory; mount the disk at it in /etc/fstab, with nofail): while "
        "it is not mounted, the appliance refuses to start (exit status 1, preflight data_mount in the "
        'log) rather than write to the SD card; "": no requirement.',
        bounds.path_or_empty,
        reload=RESTART,
    )
    simulate: bool = _setting(
        False, "Run without a Pi: gpiozero MockFactory pins and a simulated camera.", reload=RESTART
    )
    simulate_replay_dir: str = _setting(
        "",
        "In simulation, replay the JPEGs in this folder (in name order, looping) instead of "
        "rendering a synthetic scene.",
        bounds.replay_folder,
        reload=RESTART,
    )
    simulate_trigger_interval_s: float = _setting(
        3.0,
        "In simulation, seconds between simulated triggers (button and PIR in turn).",
        bounds.between(0.01, 3600),
        reload=RESTART,
        kind=float,
    )
    button_pin: str = _setting(
        "GPIO17",
        'BCM pin of the push button (to ground), "" when not fitted.',
        bounds.bcm_pin,
        reload=RESTART,
    )
    motion_pin: str = _setting(
        "GPIO4",
        'BCM pin of the PIR motion sensor output, "" when not fitted.',
        bounds.bcm_pin,
        reload=RESTART,
    )
    button_bounce_time_s: float = _setting(
        0.05,
        "gpiozero bounce_time of the button, in seconds; 0 turns debouncing off.",
        bounds.between(0, 5),
        reload=RESTART,
        kind=float,
    )
    camera_size_px: tuple[int, int] = _setting(
        (0, 0),
        "Photo size [width, height] in pixels; [0, 0] is the sensor's full resolution. At most the "
        "camera's largest sensor mode: a larger one stops the appliance at start (exit status 2).",
        bounds.size_px_or_full,
        reload=RESTART,
        kind=list,
    )
    camera_lores_size_px: tuple[int, int] = _setting(
        (640, 480),
        "Size [width, height] of the camera's low-resolution stream, at most camera_size_px (or the "
        "sensor's full resolution); thumbnails are made from a frame of half this size.",
        bounds.size_px,
        reload=RESTART,
        kind=list,
    )
    jpeg_quality: int = _setting(
        90, "JPEG quality of photos, 1 to 95.", bounds.between(1, 95), reload=RESTART
    )
    camera_exposure_time_us: int = _setting(
        0,
        "Fixed exposure time in microseconds; 0 lets the camera choose.",
        bounds.between(0, 10_000_000),
        reload=RESTART,
    )
    camera_analogue_gain: float = _setting(
        0.0,
        "Fixed analogue gain (1.0 is none); 0 lets the camera choose.",
        bounds.between(0, 64),
        reload=RESTART,
        kind=float,
    )
    camera_awb_mode: str = _setting(
        "auto",
        f"White balance (libcamera's AwbMode): one of {', '.join(AWB_MODES)}.",
        bounds.one_of(tuple(AWB_MODES)),
        reload=RESTART,
    )
    camera_autofocus: str = _setting(
        "off",
        'Autofocus on cameras that have it (Camera Module 3): "off"; "continuous" refocuses all the '
        'time; "cycle" runs one focus cycle before each capture (up to about a second more per '
        "capture). Ignored, with a warning, on a camera without autofocus.",
        bounds.one_of(AUTOFOCUS_MODES),
        reload=RESTART,
    )
    camera_max_failures: int = _setting(
        8,
        "Failed captures or re-opens of the camera in a row after which the appliance exits (status "
        "1) for systemd to restart it (every 30 s, for ever); between failures the camera is "
        "re-opened after 1, 2, 4 ... s (at most 60 s), so the default rides out about two minutes "
        "of camera trouble.",
        bounds.between(1, 1000),
        reload=RESTART,
    )
    camera_make: str = _setting(
        "Raspberry Pi",
        "EXIF Make written into each photo the camera takes.",
        bounds.printable(EXIF_MAX_CHARS, ascii_only=True),
        reload=LIVE,
    )
    camera_model: str = _setting(
        "",
        'EXIF Model written into each photo; "" takes the camera\'s own (the sensor, e.g. imx708, or '
        '"simulated").',
        bounds.printable(EXIF_MAX_CHARS, ascii_only=True),
        reload=LIVE,
    )
    camera_id: str = _setting(
        "",
        "Camera identifier (e.g. its serial number), written as EXIF BodySerialNumber and Camtrap DP "
        'cameraID; "": none.',
        bounds.printable(EXIF_MAX_CHARS, ascii_only=True),
        reload=LIVE,
    )
    trigger_cooldown_s: float = _setting(
        2.0,
        "Seconds after a capture from one source (button or motion) during which that source's "
        "triggers are counted, not captured.",
        bounds.between(0, 3600),
        reload=LIVE,
        kind=float,
    )
    max_captures_per_minute: int = _setting(
        30,
        "At most this many captures in any 60 s, whatever triggered them (a burst counts whole); "
        "triggers beyond it are counted, not captured; 0: no limit. At least burst_count.",
        bounds.between(0, 10_000),
        reload=LIVE,
    )
    burst_count: int = _setting(1, "Photos taken for each trigger.", bounds.between(1, 100), reload=LIVE)
    burst_interval_s: float = _setting(
        0.5,
        "Seconds from the start of one photo of a burst to the next.",
        bounds.between(0, 60),
        reload=LIVE,
        kind=float,
    )
    button_hold_time_s: float = _setting(
        3.0,
        "Seconds the button must be held for button_hold_action.",
        bounds.between(0.5, 60),
        reload=RESTART,
        kind=float,
    )
    button_hold_action: str = _setting(
        "none",
        'What holding the button does, besides the capture of the press: "none", "test_shot" (one '
        'more capture, trigger "manual"), or "shutdown" (stop the appliance cleanly, exit status 0, so '
        'its data is safe whatever happens to the power; systemd does not restart it), or "offload" '
        "(copy the photos to the USB stick now, see offload_usb_path).",
        bounds.one_of(("none", "test_shot", "shutdown", "offload")),
        reload=RESTART,
    )
    timelapse_interval_s: float = _setting(
        0.0,
        "Seconds between timelapse captures (trigger timelapse) within active_windows; 0: no timelapse.",
        bounds.off_or_between(1, 86400),
        reload=LIVE,
        kind=float,
    )
    active_windows: tuple[str, ...] = _setting(
        (),
        'Local times of day when timelapse captures and the UV light are on, e.g. ["19:00-06:00"]; a '
        "window whose end is before its start spans midnight; [] means always.",
        bounds.time_windows,
        reload=LIVE,
        kind=list,
    )
    flash_pin: str = _setting(
        "",
        'BCM pin switching the flash, on only while each photo is taken; "" when not fitted.',
        bounds.bcm_pin,
        reload=RESTART,
    )
    flash_active_high: bool = _setting(
        True,
        "The flash is on when its pin is high (false: when low, as on many relay boards).",
        reload=RESTART,
    )
    flash_pre_delay_s: float = _setting(
        0.0,
        "Seconds the flash is on before the exposure starts, for lights that need time to reach full output.",
        bounds.between(0, 5),
        reload=LIVE,
        kind=float,
    )
    uv_pin: str = _setting(
        "",
        'BCM pin switching the attract (UV) light, on during active_windows; "" when not fitted.',
        bounds.bcm_pin,
        reload=RESTART,
    )
    uv_active_high: bool = _setting(
        True, "The UV light is on when its pin is high (false: when low).", reload=RESTART
    )
    capture_timeout_s: float = _setting(
        5.0,
        "Seconds to wait for a frame before a capture fails; at most 25, so that a capture (twice "
        "this with an autofocus cycle) always ends within the systemd watchdog's 60 s. At least twice "
        "the exposure (camera_exposure_time_us) plus 1 s.",
        bounds.between(0.5, 25),
        reload=LIVE,
        kind=float,
    )
    thumbnail_max_px: int = _setting(
        320, "Longest edge of WebP thumbnails, in pixels.", bounds.between(16, 4096), reload=LIVE
    )
    cleanup_start_free_percent: float = _setting(
        10.0,
        "Start deleting the oldest unprotected captures when free space on the data filesystem "
        "falls below this percentage of it (or below cleanup_start_free_bytes); at most 50, as "
        "cleaning that starts with more than half of the filesystem free would keep it mostly empty.",
        bounds.between(0, MAX_START_PERCENT),
        reload=LIVE,
        kind=float,
    )
    cleanup_start_free_bytes: int = _setting(
        1 << 30,
        "Start deleting when free space falls below this many bytes (or below "
        "cleanup_start_free_percent); 1 GiB by default. At most half of the data filesystem.",
        bounds.byte_count("at most half of the data filesystem"),
        reload=LIVE,
    )
    cleanup_stop_free_percent: float = _setting(
        20.0,
        "Stop deleting once free space is back above this percentage (and above "
        "cleanup_stop_free_bytes); at most 90, as free space may never reach more. At least "
        "cleanup_start_free_percent.",
        bounds.between(0, round(100 * MAX_STOP_FRACTION)),
        reload=LIVE,
        kind=float,
    )
    cleanup_stop_free_bytes: int = _setting(
        2 << 30,
        "Stop deleting once free space is back above this many bytes (and above "
        "cleanup_stop_free_percent); 2 GiB by default. Even with the headroom at its cap (half "
        "the filesystem), cleaning must stop below 90 % of the data filesystem free. At least "
        "cleanup_start_free_bytes.",
        bounds.byte_count(
            "with the headroom at its cap, cleaning must stop below 90 % of the data filesystem free"
        ),
        reload=LIVE,
    )
    headroom_hours: float = _setting(
        24.0,
        "Also start deleting when free space would not hold this many hours of capturing at the "
        "last hour's rate (bytes captured in the last hour times this); 0 turns it off.",
        bounds.between(0, 24 * 365),
        reload=LIVE,
        kind=float,
    )
    max_capture_age_days: float = _setting(
        0.0,
        "Delete unprotected captures older than this many days (only those taken with a "
        "synchronised clock, and only while the clock is synchronised); 0 keeps them whatever "
        "their age.",
        bounds.between(0, 36500),
        reload=LIVE,
        kind=float,
    )
    capture_min_free_bytes: int = _setting(
        256 << 20,
        "Pause capturing while a capture would leave less than this many bytes free; 256 MiB "
        "by default. Cleaning always starts above it, so at most half of the data filesystem.",
        bounds.byte_count("at most half of the data filesystem"),
        reload=LIVE,
    )
    cleanup_prefer_offloaded: bool = _setting(
        True,
        "With an offload target set (offload_usb_path or offload_remote), cleanup deletes the "
        "oldest unprotected captures already copied and verified there first, then the oldest of "
        "the others; false: the oldest unprotected first, copied or not.",
        reload=LIVE,
    )
    cleanup_keep_unoffloaded: bool = _setting(
        False,
        "With an offload target set (offload_usb_path or offload_remote), cleanup never deletes a "
        "capture that exists nowhere else (not yet copied and verified there): when only such "
        "captures are left to delete, capturing pauses at capture_min_free_bytes with a banner "
        "asking for a USB stick.",
        reload=LIVE,
    )
    cleanup_interval_s: float = _setting(
        60.0,
        "Seconds between disk-space checks (monotonic clock).",
        bounds.between(1, 3600),
        reload=RESTART,
        kind=float,
    )
    offload_usb_path: str = _setting(
        "",
        'Mount point of a USB stick to copy the photos to, e.g. "/media/appliance-usb" (the installer '
        "mounts a stick labelled offload_usb_label there); each copy is read back and checked against "
        'its SHA-256 before it counts as offloaded; "": no USB offload.',
        bounds.path_or_empty,
        reload=LIVE,
    )
    offload_usb_label: str = _setting(
        "TRAPDATA",
        "Filesystem label a stick must carry to be written (so that a random stick never is); FAT "
        "labels are at most 11 characters, in capitals.",
        bounds.volume_label,
        reload=LIVE,
    )
    offload_usb_auto: bool = _setting(
        True,
        "Start copying by itself when a stick with the label appears at offload_usb_path; false: only "
        'when asked ("Copy to USB now", appliance offload, a button hold).',
        reload=LIVE,
    )
    offload_delete_after: bool = _setting(
        False,
        "Delete each unprotected capture from the card once its copy on the stick (or on "
        "offload_remote) is verified (the "
        '"empty the trap" workflow), as cleanup deletes; false: keep it until cleanup needs the room.',
        reload=LIVE,
    )
    offload_check_interval_s: float = _setting(
        5.0,
        "Seconds between two looks for a stick at offload_usb_path (monotonic clock).",
        bounds.between(1, 3600),
        reload=LIVE,
        kind=float,
    )
    offload_remote: str = _setting(
        "",
        'Where to upload the photos with rclone, as "<remote>:<path>" of offload_rclone_config, e.g. '
        '"fleet:camtrap-2026/" (an S3 bucket and folder), or an absolute folder (a NAS); one folder per '
        "deployment there, as on a USB stick. Each upload counts as offloaded only once the remote's "
        'own hash of it (or, without one, its bytes read back) matches the photo; "": no upload.',
        bounds.rclone_remote,
        reload=LIVE,
    )
    offload_rclone_config: str = _setting(
        "",
        "The rclone config file that defines offload_remote and holds its credentials (readable by "
        "root and the appliance's user only: preflight warns otherwise); \"\": rclone's own "
        "(~/.config/rclone/rclone.conf of the appliance's user).",
        bounds.path_or_empty,
        reload=LIVE,
    )
    offload_bwlimit: str = _setting(
        "",
        'Bandwidth limit of the uploads, in rclone\'s --bwlimit syntax: "1M" (1 MiB/s), "512k", or a '
        'timetable "08:00,256k 20:00,off"; "": no limit.',
        bounds.bwlimit,
        reload=LIVE,
    )
    offload_windows: tuple[str, ...] = _setting(
        (),
        'Local times of day when uploading is allowed, e.g. ["22:00-06:00"] on a solar unit; a '
        "window whose end is before its start spans midnight; [] means always. An upload under way "
        "when a window closes stops after the file in flight.",
        bounds.time_windows,
        reload=LIVE,
        kind=list,
    )
    offload_interval_s: float = _setting(
        300.0,
        "Seconds between two looks for captures to upload to offload_remote while everything is "
        "uploaded (monotonic clock); new captures wait at most this long.",
        bounds.between(5, 86400),
        reload=LIVE,
        kind=float,
    )
    offload_io_timeout_s: float = _setting(
        60.0,
        "Seconds without any data moving after which an upload (or a look at the remote) counts as "
        'stalled and ends as "timed out", to be tried again later (rclone\'s --timeout); more on a '
        "link that stalls for long and recovers (GSM, satellite).",
        bounds.between(1, 3600),
        reload=LIVE,
        kind=float,
    )
    offload_retry_max_s: float = _setting(
        1800.0,
        "After a failed upload (the remote unreachable, a credential refused...), the wait before "
        "the next try doubles from 15 s up to this many seconds.",
        bounds.between(5, 86400),
        reload=LIVE,
        kind=float,
    )
    web_host: str = _setting(
        "",
        'Address the status page listens on: "0.0.0.0" every interface, "127.0.0.1" this machine '
        'only; "" is 0.0.0.0 on hardware and 127.0.0.1 in simulation.',
        bounds.listen_host,
        reload=RESTART,
    )
    web_port: int = _setting(
        8080, "TCP port of the status page (0: any free port).", bounds.between(0, 65535), reload=RESTART
    )
    web_token: str = _setting(
        "",
        "Secret that turns on the web actions (a test shot, protecting captures) for whoever sends it "
        '(log-in form, or Authorization: Bearer); "": actions off. Use a long random string, at '
        "least 16 characters, no spaces, e.g. from openssl rand -hex 16.",
        bounds.web_token,
        reload=RESTART,
        secret=True,
    )
    timezone: str = _setting(
        "",
        'Time zone the pages show times in, an IANA name such as "Europe/Berlin"; "": the system\'s '
        "(timedatectl). Stored times, EXIF offsets and the JSON API are not affected.",
        bounds.time_zone,
        reload=RESTART,
    )
    web_url: str = _setting(
        "",
        'The status page\'s address as others reach it, e.g. "http://trap-7.local:8080", for the links '
        'in MQTT messages and Home Assistant; "": http://<host name>.local:<web_port>, or the address it '
        "listens on when that is one address (as in simulation).",
        bounds.http_url,
        reload=RESTART,
    )
    mqtt_host: str = _setting(
        "",
        "MQTT broker to publish the state, captures and thumbnails to (docs/mqtt.md), a host name or "
        'IP address; "": no MQTT.',
        bounds.network_host,
        reload=RESTART,
    )
    mqtt_port: int = _setting(
        0,
        "TCP port of the MQTT broker; 0: 1883, or 8883 with mqtt_tls.",
        bounds.between(0, 65535),
        reload=RESTART,
    )
    mqtt_username: str = _setting(
        "",
        'User name at the broker; "": connect anonymously.',
        bounds.printable(TEXT_MAX_CHARS),
        reload=RESTART,
    )
    mqtt_password_file: str = _setting(
        "",
        "File holding mqtt_username's password on its first line, readable only by root and the "
        "appliance's user (chmod 600: preflight warns otherwise); the password itself never goes in "
        'the config. "": no password.',
        bounds.path_or_empty,
        reload=RESTART,
    )
    mqtt_tls: str = _setting(
        "",
        'TLS to the broker: "" none, "system" verified with the system\'s CA certificates, or the '
        "absolute path of the CA certificate that signed the broker's (e.g. a Mosquitto with its own CA).",
        bounds.tls_ca,
        reload=RESTART,
    )
    mqtt_topic_prefix: str = _setting(
        "",
        'Topic under which the trap publishes (<prefix>/state, /captures, ...); "": '
        "appliance/<camera_id, or the host name>.",
        bounds.mqtt_topic,
        reload=RESTART,
    )
    mqtt_discovery_prefix: str = _setting(
        "homeassistant",
        "Home Assistant's MQTT discovery prefix, under which the trap announces its sensors, photo and "
        '(with mqtt_commands) buttons; "": no discovery.',
        bounds.mqtt_topic,
        reload=RESTART,
    )
    mqtt_state_interval_s: float = _setting(
        60.0,
        "Seconds between two publications of the state (it is also published at once when its level "
        "changes: ok, warning, error).",
        bounds.between(5, 86400),
        reload=RESTART,
        kind=float,
    )
    mqtt_commands: bool = _setting(
        False,
        "Take commands over MQTT (<prefix>/command/capture, /protect, /offload) and show Home "
        "Assistant's buttons: anyone the broker lets publish there can use them, so limit it with the "
        "broker's ACL (docs/mqtt.md).",
        reload=RESTART,
    )
    mqtt_keepalive_s: int = _setting(
        60,
        "MQTT keep-alive, in seconds: the broker announces the trap offline (its last will) at once "
        "when its process dies, and about 1.5 times this (Mosquitto: up to a few seconds more) after "
        "its link dies silently.",
        bounds.between(5, 3600),
        reload=RESTART,
    )

    # Deployment metadata for `appliance export camtrap-dp`, named after the Camtrap DP terms.
    deployment_id: str = _setting(
        "",
        'Camtrap DP deploymentID, unique among the deployments of a project; "": camera_id (or, '
        "when that is not set, the host name and 6 hex digits of a hash of /etc/machine-id) and the "
        'deployment start in UTC, e.g. "trap-07-20260501T160000Z" or '
        '"raspberrypi-3f9a1c-20260501T160000Z".',
        bounds.camtrap_text,
        reload=EXPORT,
    )
    location_name: str = _setting(
        "",
        'Camtrap DP locationName, e.g. "Oak ridge, north edge"; "": none.',
        bounds.camtrap_text,
        reload=EXPORT,
    )
    location_id: str = _setting(
        "",
        'Camtrap DP locationID, shared by deployments at one place; "": none.',
        bounds.camtrap_text,
        reload=EXPORT,
    )
    latitude: float | str = _setting(
        "",
        'Latitude of the camera in decimal degrees (WGS84); "": not set (the export refuses: '
        "Camtrap DP requires it).",
        bounds.optional(bounds.between(-90, 90)),
        reload=EXPORT,
        kind=(float, str),
    )
    longitude: float | str = _setting(
        "",
        'Longitude of the camera in decimal degrees (WGS84); "": not set (the export refuses: '
        "Camtrap DP requires it).",
        bounds.optional(bounds.between(-180, 180)),
        reload=EXPORT,
        kind=(float, str),
    )
    coordinate_uncertainty_m: int | str = _setting(
        "",
        "Uncertainty of latitude/longitude in metres (Camtrap DP coordinateUncertainty), at most "
        'half the Earth\'s circumference; "": unknown.',
        bounds.optional(bounds.between(1, 20_037_509)),
        reload=EXPORT,
        kind=(int, str),
    )
    camera_height_m: float | str = _setting(
        "",
        "Height of the camera above the ground in metres, at most 150 (the tallest trees stand "
        'about 116 m); "": unknown.',
        bounds.optional(bounds.between(0, 150)),
        reload=EXPORT,
        kind=(float, str),
    )
    camera_tilt_deg: int | str = _setting(
        "",
        'Tilt of the camera in degrees, -90 (down) to 90 (up), 0 level; "": unknown.',
        bounds.optional(bounds.between(-90, 90)),
        reload=EXPORT,
        kind=(int, str),
    )
    camera_heading_deg: int | str = _setting(
        "",
        'Compass heading the camera faces in degrees, 0 (north) to 360, clockwise; "": unknown.',
        bounds.optional(bounds.between(0, 360)),
        reload=EXPORT,
        kind=(int, str),
    )
    setup_by: str = _setting(
        "", 'Who set the camera up (Camtrap DP setupBy); "": none.', bounds.camtrap_text, reload=EXPORT
    )
    habitat: str = _setting(
        "", 'Short description of the habitat at the camera; "": none.', bounds.camtrap_text, reload=EXPORT
    )
    feature_type: str = _setting(
        "",
        'Camtrap DP featureType the camera watches, e.g. "trailGame" or "waterSource"; "": none.',
        bounds.one_of(("", *FEATURE_TYPES)),
        reload=EXPORT,
    )
    bait_use: bool = _setting(
        False, "Bait or lure was used at the camera (Camtrap DP baitUse).", reload=EXPORT
    )
    deployment_start: str = _setting(
        "",
        'Start of the deployment, ISO 8601 with a UTC offset (e.g. "2026-05-01T18:00:00+02:00"); '
        '"": the first exported capture.',
        bounds.iso_datetime_or_empty,
        reload=EXPORT,
    )
    deployment_end: str = _setting(
        "",
        'End of the deployment, ISO 8601 with a UTC offset; "": the last exported capture.',
        bounds.iso_datetime_or_empty,
        reload=EXPORT,
    )
    project_title: str = _setting(
        "",
        'Title of the project in the exported package; "": the deployment id.',
        bounds.camtrap_text,
        reload=EXPORT,
    )
    sampling_design: str = _setting(
        "opportunistic",
        "Camtrap DP samplingDesign of the project.",
        bounds.one_of(SAMPLING_DESIGNS),
        reload=EXPORT,
    )
    contributors: tuple[str, ...] = _setting(
        (),
        'People or organisations of the exported package, e.g. ["Ada Lovelace", "Field Station"]; '
        "the first is the contact, the others contributors.",
        bounds.names,
        reload=EXPORT,
        kind=list,
    )
    data_license: str = _setting(
        "",
        'Licence of the exported data (SPDX id, e.g. "CC0-1.0"); "": none (set both licences or neither).',
        bounds.camtrap_text,
        reload=EXPORT,
    )
    media_license: str = _setting(
        "",
        'Licence of the exported photos (SPDX id, e.g. "CC-BY-4.0"); "": none (set both licences or '
        "neither).",
        bounds.camtrap_text,
        reload=EXPORT,
    )
    import_convert: bool = _setting(
        True,
        "appliance import: convert images that are not JPEG (PNG, TIFF, WebP...) to JPEG at "
        "jpeg_quality, upright; false: skip them.",
        reload=EXPORT,
    )

    @property
    def web_listen_host(self) -> str:
        """The address the status page listens on: :attr:`web_host`, or when it is "" the rule its
        doc gives (every interface on a field unit, this machine alone in simulation)."""
        return self.web_host or ("127.0.0.1" if self.simulate else "0.0.0.0")

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
        if self.simulate_replay_dir:
            problem = bounds.replay_photos(self.simulate_replay_dir)
            if problem:
                raise ConfigError(f"simulate_replay_dir: {self.simulate_replay_dir!r} {problem}")
        if bool(self.data_license) != bool(self.media_license):
            raise ConfigError(
                "data_license, media_license: set both (Camtrap DP wants one of each) or neither"
            )
        if self.mqtt_password_file and not self.mqtt_username:
            raise ConfigError("mqtt_password_file: set mqtt_username too (the password is that user's)")
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


# The settings by area, for docs/configuration.md: each area begins at its key and runs, in the
# order of Config's fields, up to the next area's.
AREAS = {
    "data_dir": "Data directory",
    "simulate": "Simulation",
    "button_pin": "Trigger pins",
    "camera_size_px": "Camera",
    "trigger_cooldown_s": "Triggers: gate, bursts, button hold, timelapse",
    "flash_pin": "Lights",
    "capture_timeout_s": "Capture",
    "cleanup_start_free_percent": "Disk space",
    "offload_usb_path": "USB offload",
    "offload_remote": "Remote offload (rclone)",
    "web_host": "Status page",
    "mqtt_host": "MQTT and Home Assistant",
    "deployment_id": "Camtrap DP deployment",
    "import_convert": "Import",
}


def settings() -> list[dataclasses.Field]:
    """The fields of :class:`Config`, in documentation order."""
    return list(dataclasses.fields(Config))


def settings_by_reload(rule: str) -> frozenset[str]:
    """The names of the settings whose reload rule is ``rule`` (:data:`LIVE`, :data:`RESTART` or
    :data:`EXPORT`); the three sets hold every setting, each once.  Raises ``ValueError`` for
    another rule."""
    if rule not in RELOAD_RULES:
        raise ValueError(f"rule must be one of {RELOAD_RULES}, not {rule!r}")
    return frozenset(f.name for f in settings() if f.metadata["reload"] == rule)


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
        except FileNotFoundError:
            raise ConfigError(f"{path}: no such file: check the path (a TOML config file)") from None
        except IsADirectoryError:
            raise ConfigError(f"{path}: is a folder: name the TOML config file itself") from None
        except OSError as exc:
            raise ConfigError(
                f"{path}: cannot be read ({exc.strerror or exc}): check its permissions"
            ) from exc
        # ValueError: tomllib.TOMLDecodeError, and an integer too long to convert (over 4300 digits).
        except (UnicodeDecodeError, ValueError, RecursionError) as exc:
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


def toml_value(value) -> str:
    """``value`` (a setting's: bool, int, float, str or a tuple of them) written as TOML."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (tuple, list)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
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
        lines += [f"# {f.name} = {toml_value(f.default)}", ""]
    return "\n".join(lines)
