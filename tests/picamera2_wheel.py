"""The picamera2 wheel for the tests that read its source (tests/test_picamera2_contract.py,
tests/test_picamera2_camera.py): picamera2 cannot be installed off a Raspberry Pi (it needs
libcamera), but its wheel is pure Python.  The README's test command gets it by itself: the newest
release in the range of setup.cfg's ``pi`` extra, downloaded once with this interpreter's pip into
pytest's cache and reused from there (``PICAMERA2_WHEEL`` names one instead)."""

import configparser
import contextlib
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import parse_wheel_filename

ROOT = Path(__file__).resolve().parents[1]


def picamera2_requirement() -> Requirement:
    """The picamera2 requirement of setup.cfg's ``pi`` extra (e.g. ``picamera2<0.4,>=0.3.38``): the
    range the contract tests check, kept in that one place."""
    setup = configparser.ConfigParser()
    setup.read(ROOT / "setup.cfg", encoding="utf-8")
    for line in setup["options.extras_require"]["pi"].splitlines():
        if line.strip() and (requirement := Requirement(line)).name == "picamera2":
            return requirement
    raise LookupError(f"{ROOT / 'setup.cfg'}: no picamera2 in the pi extra")


def cached_wheel(folder: Path, requirement: Requirement) -> Path | None:
    """The newest wheel of ``requirement`` in ``folder`` whose version is in its range, or None."""
    wheels = []
    for path in folder.glob("*.whl"):
        name, version, _, _ = parse_wheel_filename(path.name)
        if name == requirement.name and requirement.specifier.contains(version, prereleases=True):
            wheels.append((version, path))
    return max(wheels)[1] if wheels else None


def download_picamera2_wheel(config: pytest.Config) -> Path:
    """The picamera2 wheel of :func:`picamera2_requirement`, from the pytest cache
    (``.pytest_cache/d/picamera2``) or downloaded there with this interpreter's pip (a line on
    the terminal says so).  Raises :class:`WheelUnavailable` when pip cannot get it."""
    requirement = picamera2_requirement()
    cache = config.cache.mkdir("picamera2") if config.cache else Path(tempfile.mkdtemp(prefix="picamera2-"))
    wheel = cached_wheel(cache, requirement)
    if wheel:
        return wheel
    terminal_line(
        config, f"downloading the picamera2 wheel ('{requirement}') into {cache} for the picamera2 tests"
    )
    # Into a folder of its own first, so that an interrupted download leaves no half wheel behind.
    with tempfile.TemporaryDirectory(dir=cache) as folder:
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet",
                   "--disable-pip-version-check", "--retries", "1", "--timeout", "20", str(requirement),
                   "-d", folder]  # fmt: skip
        result = subprocess.run(command, capture_output=True, text=True)
        downloaded = cached_wheel(Path(folder), requirement)
        if result.returncode != 0 or downloaded is None:
            errors = [line for line in result.stderr.splitlines() if line.strip()] or ["no wheel in range"]
            raise WheelUnavailable(
                f"cannot download the picamera2 wheel ('{requirement}': {errors[-1].strip()}); set "
                "PICAMERA2_WHEEL to the path of one (pip download --no-deps "
                f"'{requirement}' -d DIR where there is a network)"
            )
        wheel = cache / downloaded.name
        os.replace(downloaded, wheel)
    return wheel


class WheelUnavailable(Exception):
    """The picamera2 wheel could not be downloaded (its message says why and what to do)."""


def terminal_line(config: pytest.Config, line: str) -> None:
    """Write ``line`` to the terminal now, on a line of its own, whatever pytest is capturing."""
    capture = config.pluginmanager.getplugin("capturemanager")
    with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
        print(f"\n{line}", flush=True)
