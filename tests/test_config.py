import contextlib
import datetime
import io
import logging
import math
import os
import re
import signal
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from appliance import arguments, cli, config
from appliance.cli import main
from appliance.exc import ConfigError
from appliance.store import CaptureStore, IndexReader
from hw.camera import SIMULATED_MAX_SIZE_PX, SimulatedCamera
from hw.clock import ManualClock
from hw.exc import UnsupportedCameraSize


def write(tmp_path, text):
    path = tmp_path / "appliance.toml"
    path.write_text(text)
    return path


def test_defaults_need_no_file():
    cfg = config.load(None)
    assert cfg.thumbnail_max_px == 320
    assert (cfg.cleanup_start_free_percent, cfg.cleanup_stop_free_percent) == (10, 20)
    assert cfg.button_pin == "GPIO17"


def test_every_setting_has_one_reload_rule():
    names = {f.name for f in config.settings()}
    by_rule = {rule: config.settings_by_reload(rule) for rule in config.RELOAD_RULES}
    assert set().union(*by_rule.values()) == names
    assert sum(map(len, by_rule.values())) == len(names)
    assert {"burst_count", "cleanup_start_free_bytes", "camera_id"} <= by_rule[config.LIVE]
    assert {"jpeg_quality", "web_port", "data_dir"} <= by_rule[config.RESTART]
    assert {"latitude", "contributors", "import_convert"} <= by_rule[config.EXPORT]
    with pytest.raises(ValueError, match="rule must be one of"):
        config.settings_by_reload("sometimes")


def test_file_values_are_read_and_ints_accepted_for_floats(tmp_path):
    path = write(tmp_path, 'button_pin = "GPIO27"\ncapture_timeout_s = 3\ncamera_size_px = [2028, 1520]\n')
    cfg = config.load(path)
    assert cfg.button_pin == "GPIO27"
    assert cfg.capture_timeout_s == 3.0 and isinstance(cfg.capture_timeout_s, float)
    assert cfg.camera_size_px == (2028, 1520)


@pytest.mark.parametrize(
    ("text", "key", "reason"),
    [
        ("thumbnail_px = 10", "thumbnail_px", "unknown key"),
        ('thumbnail_max_px = "big"', "thumbnail_max_px", "expected int, got str"),
        ("simulate = 1", "simulate", "expected bool"),
        ("thumbnail_max_px = true", "thumbnail_max_px", "expected int, got bool"),
        ('button_pin = "17"', "button_pin", "BCM pin name"),
        ('motion_pin = "GPIO40"', "motion_pin", "BCM pin name"),
        ("cleanup_start_free_percent = 120", "cleanup_start_free_percent", "between 0 and 50"),
        ("cleanup_stop_free_percent = 5", "cleanup_stop_free_percent", "at least"),
        ("camera_size_px = [1, 2, 3]", "camera_size_px", "two integers"),
        ("camera_size_px = [0, 480]", "camera_size_px", "the width 64 to 9248 and the height 64 to 6944"),
        ("camera_lores_size_px = [true, 2]", "camera_lores_size_px", "two integers"),
        ('simulate_replay_dir = "/no/such/folder"', "simulate_replay_dir", "does not exist: name a folder"),
        ('simulate_replay_dir = "."', "simulate_replay_dir", "only used in simulation"),
        ("capture_timeout_s = 0", "capture_timeout_s", "between 0.5 and 25"),
        ("camera_exposure_time_us = 5000000", "capture_timeout_s", "too short for a 5 s exposure"),
        ('flash_pin = "GPIO17"', "flash_pin", "GPIO17 is already button_pin"),
        ("burst_count = 10\nmax_captures_per_minute = 5", "burst_count", "exceeds max_captures_per_minute"),
        ('active_windows = ["19:00-25:00"]', "active_windows", "'19:00-25:00' is not a window"),
        ("active_windows = [1900]", "active_windows", '"HH:MM-HH:MM" strings'),
        ('camera_awb_mode = "sunny"', "camera_awb_mode", "must be one of 'auto'"),
        ('button_hold_action = "reboot"', "button_hold_action", "'none', 'test_shot', 'shutdown'"),
        ("timelapse_interval_s = 0.5", "timelapse_interval_s", "0 (off) or 1 to 86400"),
        ("thumbnail_max_px = ", "", "Invalid value"),
    ],
)
def test_bad_values_name_file_and_key(tmp_path, text, key, reason):
    refused(tmp_path, text, key, reason)


def refused(tmp_path, text: str, key: str, reason: str) -> str:
    """Load a file holding ``text``: the error names the file and ``key`` and gives ``reason``.
    Returns the message."""
    path = write(tmp_path, text + "\n")
    with pytest.raises(ConfigError) as info:
        config.load(path)
    message = str(info.value)
    assert message.startswith(f"{path}: {key}")
    assert reason in message
    return message


def test_bad_config_exits_2_with_one_line_naming_file_and_key(tmp_path, capsys):
    path = write(tmp_path, "jpeg_quality = 200\n")
    assert main(["run", "--config", str(path), "--simulate", "--duration-s", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0
    assert str(path) in err and "jpeg_quality" in err


def test_replay_implies_simulation(tmp_path, capsys):
    assert main(["run", "--replay", str(tmp_path / "missing"), "--duration-s", "0"]) == 2
    assert "simulate_replay_dir" in capsys.readouterr().err


def test_command_line_usage_error_returns_2(capsys):
    assert main(["run", "--port", "eighty"]) == 2
    assert "invalid int value" in capsys.readouterr().err


def test_missing_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="nope.toml: no such file: check the path"):
        config.load(tmp_path / "nope.toml")


def test_command_line_overrides_are_checked():
    with pytest.raises(ConfigError, match="command line: web_port"):
        config.load(None, web_port=70000)


def test_later_files_override_earlier_ones_key_by_key(tmp_path):
    etc = tmp_path / "etc.toml"
    etc.write_text('motion_pin = "GPIO5"\njpeg_quality = 80\n')
    boot = tmp_path / "boot.toml"
    boot.write_text("jpeg_quality = 70\n")
    cfg = config.load([etc, boot])
    assert (cfg.motion_pin, cfg.jpeg_quality) == ("GPIO5", 70)
    assert config.default_paths([tmp_path / "missing.toml", boot]) == [boot]


def test_a_bad_key_in_either_file_names_that_file(tmp_path):
    good, bad = write(tmp_path, "jpeg_quality = 70\n"), tmp_path / "boot.toml"
    bad.write_text("jpeg_quality = 700\n")
    with pytest.raises(ConfigError, match=f"^{bad}: jpeg_quality: 700 must be between 1 and 95"):
        config.load([good, bad])


def test_the_printed_defaults_are_every_setting_commented_and_load_to_the_defaults(tmp_path, capsys):
    assert main(["config", "--print-defaults"]) == 0
    text = capsys.readouterr().out
    assert all(line == "" or line.startswith("#") for line in text.splitlines())
    assert config.load(write(tmp_path, text)) == config.load(None)
    uncommented = "\n".join(line[2:] for line in text.splitlines() if re.match(r"# [a-z0-9_]+ = ", line))
    assert len(uncommented.splitlines()) == len(config.settings())
    assert config.load(write(tmp_path, uncommented)) == config.load(None)


def test_config_check_says_ok_or_names_the_file_and_key(tmp_path, capsys):
    good = write(tmp_path, "jpeg_quality = 70\n")
    assert main(["config", "--check", str(good)]) == 0
    assert capsys.readouterr().out == f"{good}: ok\n"
    bad = tmp_path / "bad.toml"
    bad.write_text('uv_pin = "GPIO4"\n')
    assert main(["config", "--check", str(good), str(bad)]) == 2
    assert f"{bad}: uv_pin: GPIO4 is already motion_pin" in capsys.readouterr().err


def test_a_byte_order_mark_from_a_windows_editor_is_fine(tmp_path):
    path = tmp_path / "appliance.toml"
    path.write_bytes("\ufeffjpeg_quality = 70\n".encode())
    assert config.load(path).jpeg_quality == 70


def test_config_check_also_checks_the_files_together(tmp_path, capsys):
    etc, boot = tmp_path / "etc.toml", tmp_path / "boot.toml"
    etc.write_text("max_captures_per_minute = 5\n")
    boot.write_text("burst_count = 10\n")
    assert main(["config", "--check", str(etc), str(boot)]) == 2
    captured = capsys.readouterr()
    assert f"{etc}: ok" in captured.out and f"{boot}: ok" in captured.out
    assert "burst_count: a burst of 10 exceeds max_captures_per_minute (5)" in captured.err


@pytest.mark.parametrize(
    "text, message",
    [
        ('latitude = "51.5"', "latitude: '51.5' must be a number, or \"\" when not set"),
        ("longitude = 181", "longitude: 181.0 must be between -180 and 180"),
        ("camera_tilt_deg = 12.5", "camera_tilt_deg: expected int or str, got float 12.5"),
        (
            'deployment_start = "2026-05-01T18:00:00"',
            "deployment_start: .* must be an ISO 8601 date and time",
        ),
        ('feature_type = "trail"', "feature_type: 'trail' must be one of"),
        ('data_license = "CC0-1.0"', "data_license, media_license: set both"),
    ],
)
def test_deployment_settings_are_checked(tmp_path, text, message):
    with pytest.raises(ConfigError, match=message):
        config.load(write(tmp_path, text + "\n"))


def test_deployment_coordinates_take_numbers_or_stay_unset(tmp_path):
    cfg = config.load(write(tmp_path, "latitude = 51\nlongitude = -4.5\ncamera_heading_deg = 285\n"))
    assert (cfg.latitude, cfg.longitude, cfg.camera_heading_deg) == (51.0, -4.5, 285)
    assert config.load(None).latitude == ""


# Settings that cannot destroy data (issue 15): each finding through the real command.


@pytest.fixture
def filled(tmp_path):
    """A data directory holding 5 captures; returns ``(data_dir, their ids)``."""
    data_dir = tmp_path / "data"
    store = CaptureStore(data_dir)
    try:
        clock = ManualClock()
        jpeg = SimulatedCamera(size_px=(64, 48)).capture(timeout_s=1).jpeg
        ids = [store.add(jpeg, None, timestamp=clock.now(), trigger="motion")["id"] for _ in range(5)]
    finally:
        store.close()
    return data_dir, ids


def captures(data_dir) -> tuple[list, list]:
    """The ids in the index, and the photo files on disk."""
    rows = IndexReader(data_dir).latest(1000)
    return sorted(r["id"] for r in rows), sorted(p.stem for p in (data_dir / "media").rglob("*.jpg"))


def with_setting(path, text):
    """Set the keys of ``text`` (TOML) in the file at ``path``, replacing the lines of those keys."""
    keys = {line.split("=")[0].strip() for line in text.splitlines()}
    kept = [line for line in path.read_text().splitlines() if line.split("=")[0].strip() not in keys]
    path.write_text("\n".join([*kept, text, ""]))


def run_once(config_path, data_dir=None, *extra) -> int:
    data = ["--data-dir", str(data_dir)] if data_dir else []
    return main(["run", "--config", str(config_path), "--simulate", "--duration-s", "0.5", "--port", "0",
                 *data, *extra])  # fmt: skip


@pytest.mark.parametrize(
    ("text", "key", "reason"),
    [
        ("capture_min_free_bytes = 9223372036854775807", "capture_min_free_bytes", "between 0 and"),
        ("camera_size_px = [100000, 100000]", "camera_size_px", "the width 64 to 9248"),
        ("camera_size_px = [9248, 6944]", "camera_size_px", "larger than the simulated camera's"),
        ('data_dir = "appliance\\u0000data"', "data_dir", "control characters"),
        ("simulate_trigger_interval_s = inf", "simulate_trigger_interval_s", "finite"),
        ("cleanup_interval_s = nan", "cleanup_interval_s", "finite"),
        ('web_token = "            "', "web_token", "without spaces"),
    ],
    ids=["floor", "size", "simulated-size", "nul", "inf", "nan", "spaces-token"],
)
def test_the_findings_are_refused_with_exit_2_and_nothing_is_deleted(
    tmp_path, run_config, filled, capsys, text, key, reason
):
    data_dir, ids = filled
    with_setting(run_config, f"simulate = true\n{text}")

    assert main(["config", "--check", str(run_config)]) == 2
    checked = capsys.readouterr().err
    data = [] if key == "data_dir" else ["--data-dir", str(data_dir)]
    result = subprocess.run(  # the real command, in a process of its own
        [sys.executable, "-m", "appliance", "run", "--config", str(run_config), "--simulate",
         "--duration-s", "0.5", "--port", "0", *data],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    status, err = result.returncode, result.stderr

    assert status == 2
    for message in (checked, err):
        assert f"appliance: config error: {run_config}: {key}: " in message and reason in message
        assert message.count("\n") == 1  # one line, no traceback
    assert captures(data_dir) == (sorted(ids), sorted(ids))


def test_the_web_token_is_never_shown_in_the_error(tmp_path, capsys):
    assert main(["config", "--check", str(write(tmp_path, 'web_token = "secret with spaces"\n'))]) == 2
    err = capsys.readouterr().err
    assert "web_token: (a secret of 18 characters) must be printable characters" in err
    assert "secret with" not in err


@pytest.mark.parametrize(
    ("token", "ok"),
    [
        ("", True),
        ("a" * 16, True),
        ("a" * 15, False),
        ("ключ-доступа-ёлка-ß€", True),  # any printable Unicode
        ("a" * 8 + "\u00a0" + "a" * 8, False),  # a no-break space is a space
        ("a" * 16 + "\t", False),
        ("a" * 16 + "\u200b", False),  # a zero-width space: not printable
        ("a" * 256, True),
        ("a" * 257, False),
    ],
)
def test_a_web_token_is_empty_or_16_printable_characters_without_spaces(token, ok):
    if ok:
        assert config.check_value("web_token", token) == token
    else:
        with pytest.raises(ConfigError, match="^web_token: "):
            config.check_value("web_token", token)


def test_a_command_line_inf_is_refused_as_a_file_one_is(capsys):
    assert main(["run", "--simulate", "--trigger-interval-s", "inf", "--duration-s", "0"]) == 2
    assert "command line: simulate_trigger_interval_s: inf must be a finite number" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("text", "key", "reason"),
    [
        ("timelapse_interval_s = 1e400", "timelapse_interval_s", "finite"),
        ("capture_timeout_s = -inf", "capture_timeout_s", "finite"),
        ("latitude = nan", "latitude", "finite"),
        (f"headroom_hours = {'9' * 400}", "headroom_hours", "is too large"),
        (f"jpeg_quality = {'9' * 5000}", "", "Exceeds the limit"),  # tomllib's own refusal
        ("web_port = -1", "web_port", "between 0 and 65535"),
        ("cleanup_start_free_percent = 100", "cleanup_start_free_percent", "between 0 and 50"),
        ("cleanup_stop_free_percent = 100", "cleanup_stop_free_percent", "between 0 and 90"),
        ("cleanup_stop_free_bytes = -1", "cleanup_stop_free_bytes", "between 0 and"),
        ("cleanup_interval_s = 0.1", "cleanup_interval_s", "between 1 and 3600"),
        ("simulate_trigger_interval_s = 1e-300", "simulate_trigger_interval_s", "between 0.01 and 3600"),
        ("timelapse_interval_s = 1e9", "timelapse_interval_s", "0 (off) or 1 to 86400"),
        ("camera_lores_size_px = [32, 32]", "camera_lores_size_px", "the width 64"),
        ("camera_size_px = [320, 240]", "camera_lores_size_px", "does not fit within camera_size_px"),
        ('data_mount = "/mnt/\\n"', "data_mount", "control characters"),
        (f'data_dir = "{"d" * 256}"', "data_dir", "a name longer than 255 bytes"),
        (f'data_dir = "{"/d" * 2100}"', "data_dir", "too long"),
        ('simulate_replay_dir = "\\u0007"', "simulate_replay_dir", "control characters"),
        ('camera_make = "Müller"', "camera_make", "plain ASCII"),
        ('camera_model = "cam\\r\\nX-Injected: 1"', "camera_model", "control characters"),
        (f'camera_id = "{"x" * 129}"', "camera_id", "longer than 128"),
        ('location_name = "a\\tb"', "location_name", "control characters"),
        (f'project_title = "{"t" * 256}"', "project_title", "longer than 255"),
        ('contributors = ["Ada", "Bob\\u0000"]', "contributors", "list of names"),
        ("contributors = [" + ", ".join(['"x"'] * 101) + "]", "contributors", "more than 100"),
        ("active_windows = [" + ", ".join(['"01:00-02:00"'] * 25) + "]", "active_windows", "more than 24"),
        ('web_host = "example.invalid"', "web_host", "IP address"),
        ("coordinate_uncertainty_m = 40000000", "coordinate_uncertainty_m", "between 1 and 20037509"),
        ("camera_height_m = 1200", "camera_height_m", "between 0 and 150"),
        ("thumbnail_max_px = [1, 2]", "thumbnail_max_px", "expected int, got list"),
        ("burst_count = {a = 1}", "burst_count", "expected int, got dict"),
    ],
)
def test_every_kind_of_setting_has_bounds(tmp_path, text, key, reason):
    message = refused(tmp_path, text, key, reason)
    assert "\n" not in message and len(message) < 400


@pytest.mark.parametrize(
    "text",
    [
        'web_host = "::1"',
        'web_host = "localhost"',
        'camera_make = "Raspberry Pi Ltd."',
        'location_name = "Białowieża MRI 01, north edge"',
        'contributors = ["Ada Lovelace", "Łukasz Ż."]',
        "camera_size_px = [4608, 2592]\ncamera_lores_size_px = [4608, 2592]",
        "camera_size_px = [64, 64]\ncamera_lores_size_px = [64, 64]",
        "coordinate_uncertainty_m = 20037509",
        "timelapse_interval_s = 86400",
        "simulate_trigger_interval_s = 0.01",
        "cleanup_start_free_percent = 50\ncleanup_stop_free_percent = 90",
    ],
)
def test_values_at_the_bounds_are_accepted(tmp_path, text):
    config.load(write(tmp_path, text + "\n"))


def test_the_simulated_camera_size_is_bounded_only_in_simulation(tmp_path):
    path = write(tmp_path, "camera_size_px = [9248, 6944]\n")
    assert config.load(path).camera_size_px == (9248, 6944)  # on hardware, the camera decides
    with pytest.raises(ConfigError, match=r"camera_size_px: \[9248, 6944\] is larger than the simulated"):
        config.load(path, simulate=True)
    assert SIMULATED_MAX_SIZE_PX == (4608, 3040)
    with pytest.raises(UnsupportedCameraSize, match="main stream 4610 x 3040"):
        SimulatedCamera(size_px=(4610, 3040))


# Free-space thresholds against the data filesystem.

MB = 10**6


@pytest.mark.parametrize(
    ("settings", "total", "refused"),
    [
        ({}, 32_000 * MB, None),  # the defaults on a 32 GB card
        ({}, 4_000 * MB, None),
        ({}, 2_000 * MB, "cleanup_start_free_bytes"),  # 1 GiB is more than half of it
        ({}, 512 * MB, "cleanup_start_free_bytes"),
        ({"cleanup_start_free_bytes": 50 * MB, "cleanup_stop_free_bytes": 100 * MB}, 512 * MB,
         "capture_min_free_bytes"),  # 256 MiB
        ({"cleanup_start_free_bytes": 50 * MB, "cleanup_stop_free_bytes": 100 * MB,
          "capture_min_free_bytes": 25 * MB}, 512 * MB, None),
        ({"capture_min_free_bytes": (1 << 50)}, 32_000 * MB, "capture_min_free_bytes"),
        ({"capture_min_free_bytes": 16_001 * MB}, 32_000 * MB, "capture_min_free_bytes"),
        ({"capture_min_free_bytes": 16_000 * MB}, 32_000 * MB, None),
        # A stop above 90 %, or one the headroom's start (half the filesystem) pushes there.
        ({"cleanup_stop_free_percent": 90, "headroom_hours": 0}, 32_000 * MB, None),
        ({"cleanup_stop_free_percent": 51}, 32_000 * MB, "cleanup_stop_free_percent"),
        ({"cleanup_stop_free_percent": 50, "headroom_hours": 0}, 32_000 * MB, None),
        ({"cleanup_stop_free_bytes": 29_000 * MB, "headroom_hours": 0}, 32_000 * MB,
         "cleanup_stop_free_bytes"),
        ({"cleanup_stop_free_bytes": 18_000 * MB}, 32_000 * MB, "cleanup_stop_free_bytes"),
        ({"cleanup_start_free_bytes": 0, "cleanup_start_free_percent": 0, "cleanup_stop_free_bytes": 0,
          "cleanup_stop_free_percent": 0, "capture_min_free_bytes": 0}, 0, None),
    ],
)  # fmt: skip
def test_thresholds_that_would_delete_every_capture_are_refused(settings, total, refused):
    cfg = config.Config(**settings)
    if refused is None:
        config.check_against_filesystem(cfg, total)
        return
    with pytest.raises(ConfigError, match=f"^{refused}: ") as info:
        config.check_against_filesystem(cfg, total, "the filesystem holding /data")
    message = str(info.value)
    assert f"the filesystem holding /data ({total / 1e9:.1f} GB)" in message or "MB)" in message
    assert f"set {refused} to at most" in message and "e.g." in message


def test_the_suggested_thresholds_pass(tmp_path):
    """The e.g. in the message is a fix: the thresholds it names pass on that filesystem."""
    total = 512 * MB
    with pytest.raises(ConfigError) as info:
        config.check_against_filesystem(config.Config(), total)
    suggested = dict(re.findall(r"([a-z_]+) = (\d+)", str(info.value).split("e.g.")[1]))
    config.check_against_filesystem(config.Config(**{k: int(v) for k, v in suggested.items()}), total)


@pytest.fixture
def stick(tmpfs):
    """A real 512 MB filesystem (a tmpfs), as a small USB stick."""
    return tmpfs("512m", "stick")


@pytest.mark.parametrize("command", ["run", "check", "cleanup", "config"])
def test_the_defaults_on_a_512_mb_stick_are_refused_saying_what_to_set(tmp_path, stick, capsys, command):
    data_dir = stick / "not" / "made" / "yet"  # measured at its nearest existing parent
    path = write(tmp_path, f'data_dir = "{data_dir}"\n')
    argv = {
        "run": ["run", "--config", str(path), "--simulate", "--duration-s", "0.5", "--port", "0"],
        "check": ["check", "--config", str(path), "--simulate"],
        "cleanup": ["cleanup", "--config", str(path)],
        "config": ["config", "--check", str(path)],
    }[command]

    assert main(argv) == 2

    err = capsys.readouterr().err
    assert err.startswith(
        f"appliance: config error: {path}: cleanup_start_free_bytes: 1073741824 bytes (the default)"
    )
    assert f"more than half of the filesystem holding {data_dir} (536.9 MB)" in err
    assert "set cleanup_start_free_bytes to at most 268435456" in err
    assert not data_dir.exists()


def test_the_suggested_thresholds_run_on_the_stick(tmp_path, stick, capsys):
    path = write(tmp_path, f'data_dir = "{stick / "data"}"\n')
    main(["config", "--check", str(path)])
    suggestion = capsys.readouterr().err.split("e.g. ")[1].rstrip(")\n").replace(", ", "\n")
    path.write_text(path.read_text() + suggestion + "\n")

    assert main(["config", "--check", str(path)]) == 0
    assert run_once(path) == 0


SMALL = (
    f"capture_min_free_bytes = {25 * MB}\ncleanup_start_free_bytes = {50 * MB}\n"
    f"cleanup_stop_free_bytes = {100 * MB}\n"
)


def test_a_reload_checks_the_thresholds_against_the_filesystem_too(stick, tmp_path):
    """SIGHUP applies the cleanup thresholds live: the config it reads is checked against the
    filesystem too (a ConfigError, which the reload logs, keeping the running config)."""
    path = write(tmp_path, f'data_dir = "{stick / "data"}"\n{SMALL}')
    args = arguments.parser().parse_args(["run", "--config", str(path), "--simulate"])
    assert cli._load_config(args).capture_min_free_bytes == 25 * MB
    path.write_text(
        path.read_text().replace(
            f"capture_min_free_bytes = {25 * MB}", f"capture_min_free_bytes = {300 * MB}"
        )
    )
    with pytest.raises(ConfigError, match="capture_min_free_bytes: 300000000 bytes is more than half"):
        cli._load_config(args)


def test_a_data_mount_not_mounted_is_left_to_the_preflight_check(tmp_path, stick, capsys):
    """The filesystem check would measure the wrong one: the preflight check refuses (exit 1)."""
    path = write(tmp_path, f'data_dir = "{stick / "usb" / "data"}"\ndata_mount = "{stick / "usb"}"\n')
    assert main(["config", "--check", str(path)]) == 0
    assert run_once(path) == 1


# The property: whatever value a setting is given, of its type or not, huge, negative, inf, nan,
# control characters, any Unicode, the appliance either refuses it (exit status 2, naming the key,
# from `config --check` and from `run` alike) or starts and stops cleanly with it (exit status 0).
# Every setting of config.settings() is covered, so a new setting is too.


def toml_text(text: str) -> str:
    """A TOML basic string: every character that is not printable escaped (TOML allows \\u and \\U)."""
    out = []
    for c in text:
        if c in '"\\' or not c.isprintable():
            out.append(f"\\u{ord(c):04X}" if ord(c) <= 0xFFFF else f"\\U{ord(c):08X}")
        else:
            out.append(c)
    return '"' + "".join(out) + '"'


def toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return "nan" if math.isnan(value) else {math.inf: "inf", -math.inf: "-inf"}.get(value, repr(value))
    if isinstance(value, str):
        return toml_text(value)
    if isinstance(value, list):
        return "[" + ", ".join(map(toml_value, value)) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{toml_text(k)} = {toml_value(v)}" for k, v in value.items()) + "}"
    return str(value)


# Every generated file starts from run_config (conftest.py: nothing to clean on the test
# machine's disk, whatever its free space), in simulation; the data directory is added per example.


def base(run_config: Path) -> dict:
    return {**tomllib.loads(run_config.read_text()), "simulate": True}


SETTINGS = {f.name: f for f in config.settings()}
WRONG_KIND = st.one_of(
    st.booleans(),
    st.integers(),
    st.floats(),
    st.text(max_size=8),
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)
EDGE_INTS = [0, 1, -1, 63, 64, 65535, 65536, 4608, 9248, 9249, 2**31, 2**63 - 1, -(2**63), 10**30]


def samples(f) -> list[str]:
    """Meaningful strings for setting ``f``: its default, "", and each value quoted in what its
    check allows ("GPIO27", "auto", "127.0.0.1" ...)."""
    allowed = getattr(f.metadata["check"], "allowed", "")
    return sorted({"", str(f.default), *re.findall(r'"([^"]*)"', allowed)})


def within(f) -> st.SearchStrategy:
    """Values for setting ``f`` inside the ranges its check's ``allowed`` text gives ("0.01 to 3600",
    "[64, 64] to [9248, 6944]; in simulation at most [4608, 3040]"), and its meaningful strings."""
    kinds = f.metadata["kind"] if isinstance(f.metadata["kind"], tuple) else (f.metadata["kind"],)
    allowed = getattr(f.metadata["check"], "allowed", "")
    parts = [st.just(list(f.default) if isinstance(f.default, tuple) else f.default)]
    if str in kinds:
        parts.append(st.sampled_from(samples(f)))
    for low, high in re.findall(r"(?<![\[\d])(-?\d+(?:\.\d+)?) to (-?\d+(?:\.\d+)?)", allowed):
        if int in kinds:
            parts.append(st.integers(int(low), int(high)))
        if float in kinds:
            parts.append(st.floats(float(low), float(high)))
    if sizes := re.search(r"\[(\d+), (\d+)\] to \[(\d+), (\d+)\]", allowed):
        low_w, low_h, high_w, high_h = map(int, sizes.groups())
        if simulated := re.search(r"in simulation at most \[(\d+), (\d+)\]", allowed):
            high_w, high_h = map(int, simulated.groups())
        parts.append(st.tuples(st.integers(low_w, high_w), st.integers(low_h, high_h)).map(list))
    return st.one_of(parts)


def values(f) -> st.SearchStrategy:
    """Values for setting ``f``: of its own kind (within its bounds, near them, at random, far
    beyond) or not."""
    kinds = f.metadata["kind"] if isinstance(f.metadata["kind"], tuple) else (f.metadata["kind"],)
    parts = [WRONG_KIND, within(f)]
    for kind in kinds:
        if kind is bool:
            parts.append(st.booleans())
        elif kind is int:
            parts += [st.integers(), st.integers(-100, 100_000), st.sampled_from(EDGE_INTS)]
        elif kind is float:
            parts += [st.floats(), st.floats(-10, 100_000), st.integers(-10, 100_000)]
        elif kind is str:
            parts += [
                st.text(),
                st.text(st.characters(codec="ascii"), max_size=40),
                st.sampled_from(samples(f)),
                st.integers(200, 5000).map(lambda n: "é" * n),
                st.datetimes(timezones=st.sampled_from([None, datetime.UTC])).map(
                    datetime.datetime.isoformat
                ),
            ]
        elif kind is list:
            time = st.from_regex(r"[0-2][0-9]:[0-5][0-9]-[0-2][0-9]:[0-5][0-9]", fullmatch=True)
            parts += [
                st.lists(
                    st.sampled_from([0, 63, 64, 480, 640, 3040, 4608, 6944, 9248, 9249]),
                    min_size=2,
                    max_size=2,
                ),
                st.lists(st.integers(0, 10_000), min_size=2, max_size=2),
                st.lists(st.text(max_size=20), max_size=3),
                st.lists(time, max_size=3),
                st.lists(st.one_of(st.integers(), st.floats(), st.text(max_size=4)), max_size=3),
            ]
    return st.one_of(parts)


def names(message: str, key: str) -> bool:
    return re.search(rf"(?<![a-z_]){key}(?![a-z_])", message) is not None


class Trial:
    """A folder for one example: the config file, a data directory, and the real command run
    in-process (its output and log kept, its signal handlers restored)."""

    def __init__(self, folder: Path):
        self.folder, self.path = folder, folder / "appliance.toml"
        self.data_dir = str(folder / "data")

    def write(self, settings: dict) -> None:
        text = "".join(f"{key} = {toml_value(value)}\n" for key, value in settings.items())
        self.path.write_text(text, encoding="utf-8")

    def main(self, *argv) -> tuple[int, str]:
        out = io.StringIO()
        handler = logging.StreamHandler(out)
        handlers = {s: signal.getsignal(s) for s in (signal.SIGHUP, signal.SIGINT, signal.SIGTERM)}
        logging.getLogger().addHandler(handler)
        try:
            with (
                contextlib.redirect_stdout(out),
                contextlib.redirect_stderr(out),
                contextlib.chdir(self.folder),
            ):
                status = main(list(argv))
        finally:
            logging.getLogger().removeHandler(handler)
            for signum, handler_ in handlers.items():
                signal.signal(signum, handler_)
        return status, out.getvalue()

    def check(self) -> tuple[int, str]:
        return self.main("config", "--check", str(self.path))

    def run(self) -> tuple[int, str]:
        argv = ["--config", str(self.path), "--simulate", "--duration-s", "0.5", "--port", "0"]
        return self.main("run", *argv, "--log-level", "WARNING")


def under(folder: str, value):
    """A generated data_dir inside the example's folder: never a path elsewhere on this machine."""
    if not isinstance(value, str):
        return value
    parts = [part for part in value.split("/") if part not in ("", ".", "..")]
    return "/".join([folder, *parts])


@pytest.mark.parametrize("key", SETTINGS)
# run_config is only read: the same file for every example is fine.
@settings(
    max_examples=12,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(data=st.data())
def test_any_value_of_any_setting_is_refused_with_exit_2_naming_it_or_accepted(run_config, key, data):
    value = data.draw(values(SETTINGS[key]), label=key)
    with tempfile.TemporaryDirectory() as folder:
        trial = Trial(Path(folder))
        if key == "data_dir":
            value = under(trial.data_dir, value)
        trial.write({**base(run_config), "data_dir": trial.data_dir, key: value})

        checked, said = trial.check()
        if checked == 0:
            return  # accepted: run with it by test_accepted_values_of_every_setting_run_together
        ran, logged = trial.run()

    assert (checked, ran) == (2, 2), (said, logged)
    for message in (said, logged):
        assert message.startswith("appliance: config error: ") and message.count("\n") == 1, message
        assert names(message, key), message


# Photos to replay (simulate_replay_dir), when the samples are there.
SAMPLES = Path(__file__).resolve().parents[2] / "shared" / "samples"  # as in conftest.py
REPLAY = [str(SAMPLES / "camtrap-dp-burst")] if SAMPLES.is_dir() else []


def starts_as_designed(key: str, value) -> bool:
    """Whether ``run`` must start with ``value`` once ``config --check`` accepts it.  Not so, by
    design, with exit status 1: a ``data_mount`` that is not mounted (the preflight check waits for
    the disk, tests/test_preflight.py); ``simulate`` stays true, as ``run --simulate`` sets it and
    ``config --check`` must judge the same file.  (A replay folder without a photo is refused by
    both, tests/test_cli_errors.py.)"""
    if key == "simulate":
        return False
    if key == "data_mount":
        return value == "" or (isinstance(value, str) and os.path.ismount(value))
    return True


@settings(
    max_examples=12,
    deadline=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.function_scoped_fixture,
    ],
)
@given(data=st.data())
def test_accepted_values_of_every_setting_run_together(run_config, data):
    """One value for each setting, gathered in one file, each kept only if ``config --check`` still
    accepts the file with it (a value refused alone, or by a rule between settings such as two
    settings naming one pin), and ``run`` must start and stop cleanly with the file (see
    :func:`starts_as_designed` for the exceptions)."""
    with tempfile.TemporaryDirectory() as folder:
        trial = Trial(Path(folder))
        drawn = {}
        for key, f in SETTINGS.items():
            extra = [st.sampled_from(REPLAY)] if key == "simulate_replay_dir" and REPLAY else []
            value = data.draw(st.one_of(*extra, within(f), values(f)), label=key)
            if starts_as_designed(key, value):
                drawn[key] = under(trial.data_dir, value) if key == "data_dir" else value
        kept, taken = {**base(run_config), "data_dir": trial.data_dir}, set()
        for _ in range(2):  # twice: a start threshold goes in once its stop is there
            for key, value in drawn.items():
                trial.write({**kept, key: value})
                if key not in taken and trial.check()[0] == 0:
                    kept[key] = value
                    taken.add(key)
        trial.write(kept)

        checked, said = trial.check()
        ran, logged = trial.run()

    assert checked == 0, said
    assert ran == 0, logged


@pytest.mark.parametrize("zone", ["", "Europe/Berlin", "Pacific/Auckland", "UTC"])
def test_a_timezone_is_empty_or_a_zone_this_system_knows(zone):
    assert config.check_value("timezone", zone) == zone


@pytest.mark.parametrize(
    "zone",
    ["Europe", "europe/berlin", "Mars/Olympus_Mons", "/etc/localtime", "../etc/passwd", "CET\x00", "x" * 300],
)
def test_a_timezone_this_system_does_not_know_is_refused_naming_the_key(tmp_path, capsys, zone):
    with pytest.raises(
        ConfigError,
        match=r"^timezone: .* is not a time zone this system knows: give an IANA name",
    ):
        config.check_value("timezone", zone)
    path = write(tmp_path, f"timezone = {config.toml_value(zone)}\n")
    assert main(["config", "--check", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"{path}: timezone: " in err and err.count("\n") == 1
