"""How the pages show values (``appliance.web.display``): times in a zone, the system's zone, and
each known metadata value with its unit.  The pages that use them: tests/test_web_pages.py."""

import datetime
import os
import shutil

import pytest

from appliance.web.display import FIELDS, LocalTime, metadata_rows, system_zone

ZONEINFO = "/usr/share/zoneinfo"


@pytest.mark.parametrize(
    ("key", "value", "shown"),
    [
        ("ExposureTime", 12000, "1/83 s"),
        ("ExposureTime", 2_500_000, "2.5 s"),
        ("SensorTimestamp", 123_456_789_012, "123.457 s after boot"),
        ("ColourTemperature", 5612.4, "5612 K"),
        ("LensPosition", 2.0, "2.00 dioptres (focused at 0.5 m)"),
        ("LensPosition", 0.0, "0 dioptres (focused at infinity)"),
        ("exif.ExposureTime", 0.008, "1/125 s"),
        ("exif.FNumber", 2.8, "f/2.8"),
        ("exif.FocalLength", 4.74, "4.74 mm"),
        ("exif.SubsecTimeOriginal", "042", "0.042 s"),
        ("exif.Orientation", 6, "on its side: turn 90° clockwise to view"),
        ("exif.Flash", 16, "did not fire"),
        ("import.time_source", "file mtime", "file mtime"),
    ],
)
def test_each_known_metadata_value_is_shown_with_its_unit(key, value, shown):
    group, _, name = key.rpartition(".")
    rows = metadata_rows({group: {name: value}} if group else {name: value})
    ((_, [(label, text)]),) = rows
    assert (label, text) == (FIELDS[key].label, shown)


def test_a_time_is_shown_in_the_zone_in_one_format_inside_a_time_element():
    auckland = LocalTime.named("Pacific/Auckland")
    assert auckland("2026-12-03T02:04:05.123+00:00") == (
        '<time datetime="2026-12-03T15:04:05+13:00">2026-12-03 15:04 NZDT</time>'
    )
    assert auckland("2026-06-03T02:04:05.123+00:00", seconds=True) == (
        '<time datetime="2026-06-03T14:04:05+12:00">2026-06-03 14:04:05 NZST</time>'
    )
    assert auckland(None) == "" and auckland("<not a time>") == "&lt;not a time&gt;"


def test_a_day_runs_from_local_midnight_to_the_next_summer_time_included():
    new_york = LocalTime.named("America/New_York")
    start, end = new_york.day(datetime.date(2026, 3, 8))  # clocks go forward: a 23 h day
    assert (start.isoformat(), end.isoformat()) == ("2026-03-08T05:00:00+00:00", "2026-03-09T04:00:00+00:00")
    with pytest.raises(OverflowError):
        LocalTime.named("Pacific/Auckland").day(datetime.date(1, 1, 1))


def test_the_system_zone_is_tz_or_etc_localtime_by_its_iana_name(tmp_path, monkeypatch):
    if not os.path.isfile(f"{ZONEINFO}/Europe/Berlin"):
        pytest.skip(f"no time zone database at {ZONEINFO}")
    monkeypatch.setenv("TZ", ":Pacific/Auckland")
    assert system_zone(tmp_path / "absent").key == "Pacific/Auckland"
    monkeypatch.delenv("TZ")
    link = tmp_path / "localtime"
    link.symlink_to(f"{ZONEINFO}/Europe/Berlin")  # as timedatectl sets it
    assert system_zone(link).key == "Europe/Berlin"
    copied = tmp_path / "copied"
    shutil.copyfile(f"{ZONEINFO}/Europe/Berlin", copied)  # as some images ship it: no name
    zone = system_zone(copied)
    assert zone.key is None and LocalTime(zone).label in ("CET", "CEST")
    assert system_zone(tmp_path / "absent") is None
    monkeypatch.setenv("TZ", "CET-1")  # a POSIX rule: left to the C library
    assert system_zone(link) is None
    assert LocalTime(None)("2026-12-03T02:04:05+00:00").startswith('<time datetime="2026-12-03T')
