import re
from pathlib import Path

import pytest

from appliance import config
from appliance.cli import main
from appliance.exc import ConfigError

README = Path(__file__).resolve().parents[1] / "README.md"


def write(tmp_path, text):
    path = tmp_path / "appliance.toml"
    path.write_text(text)
    return path


def test_defaults_need_no_file():
    cfg = config.load(None)
    assert cfg.thumbnail_max_px == 320
    assert (cfg.cleanup_start_free_percent, cfg.cleanup_stop_free_percent) == (10, 20)
    assert cfg.button_pin == "GPIO17"


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
        ("cleanup_start_free_percent = 120", "cleanup_start_free_percent", "between 0 and 100"),
        ("cleanup_stop_free_percent = 5", "cleanup_stop_free_percent", "at least"),
        ("camera_size_px = [1, 2, 3]", "camera_size_px", "two integers"),
        ("camera_size_px = [0, 480]", "camera_size_px", "two integers > 0"),
        ("camera_lores_size_px = [true, 2]", "camera_lores_size_px", "two integers > 0"),
        ('simulate_replay_dir = "/no/such/folder"', "simulate_replay_dir", "is not a folder"),
        ('simulate_replay_dir = "."', "simulate_replay_dir", "only used in simulation"),
        ("capture_timeout_s = 0", "capture_timeout_s", "between 0.5 and 25"),
        ("camera_exposure_time_us = 5000000", "capture_timeout_s", "too short for a 5 s exposure"),
        ('flash_pin = "GPIO17"', "flash_pin", "GPIO17 is already button_pin"),
        ("burst_count = 10\nmax_captures_per_minute = 5", "burst_count", "exceeds max_captures_per_minute"),
        ('active_windows = ["19:00-25:00"]', "active_windows", "'19:00-25:00' is not a window"),
        ("active_windows = [1900]", "active_windows", '"HH:MM-HH:MM" strings'),
        ('camera_awb_mode = "sunny"', "camera_awb_mode", "must be one of 'auto'"),
        ('button_hold_action = "reboot"', "button_hold_action", "'none', 'test_shot', 'shutdown'"),
        ("timelapse_interval_s = 0.5", "timelapse_interval_s", "0 (off) or at least 1"),
        ("thumbnail_max_px = ", "", "Invalid value"),
    ],
)
def test_bad_values_name_file_and_key(tmp_path, text, key, reason):
    path = write(tmp_path, text + "\n")
    with pytest.raises(ConfigError) as info:
        config.load(path)
    message = str(info.value)
    assert message.startswith(f"{path}: {key}")
    assert reason in message


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
    with pytest.raises(ConfigError, match="No such file"):
        config.load(tmp_path / "nope.toml")


def test_command_line_overrides_are_checked():
    with pytest.raises(ConfigError, match="command line: web_port"):
        config.load(None, web_port=70000)


def test_every_setting_is_documented_in_the_readme():
    readme = README.read_text()
    documented = set(re.findall(r"`([a-z0-9_]+)`", readme))
    missing = [f.name for f in config.settings() if f.name not in documented]
    assert not missing, f"settings missing from README.md: {missing}"
    assert all(f.metadata["doc"] for f in config.settings())


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
