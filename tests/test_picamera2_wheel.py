"""The picamera2 wheel that the README's test command gets by itself (tests/picamera2_wheel.py and
the ``picamera2_wheel`` fixture of tests/conftest.py), in real pytest processes whose pip finds
packages in a local folder only."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

from picamera2_wheel import ROOT, picamera2_requirement

ONE_TEST = "tests/test_picamera2_contract.py::test_save_format_is_the_third_parameter"


def run_pytest(tmp_path: Path, links: Path, **env: str) -> subprocess.CompletedProcess:
    """One contract test in a pytest process of its own, with PICAMERA2_WHEEL and CI unset unless
    given, its cache in ``tmp_path / "cache"``, and pip finding packages in ``links`` only."""
    environ = {k: v for k, v in os.environ.items() if k not in ("PICAMERA2_WHEEL", "CI")}
    # COLUMNS: pytest cuts the summary lines to the terminal's width.
    environ |= {"PIP_NO_INDEX": "1", "PIP_FIND_LINKS": str(links), "COLUMNS": "1000"} | env
    command = [sys.executable, "-m", "pytest", ONE_TEST, "-ra", "-o", f"cache_dir={tmp_path / 'cache'}"]
    return subprocess.run(command, cwd=ROOT, env=environ, capture_output=True, text=True, timeout=120)


def test_the_wheel_is_downloaded_once_then_reused_from_the_pytest_cache(tmp_path, picamera2_wheel):
    links = tmp_path / "index"
    links.mkdir()
    shutil.copy(picamera2_wheel.filename, links)
    first = run_pytest(tmp_path, links)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "1 passed" in first.stdout
    [line] = [line for line in first.stdout.splitlines() if "downloading the picamera2 wheel" in line]
    assert f"'{picamera2_requirement()}'" in line and str(tmp_path / "cache") in line
    assert list((tmp_path / "cache").rglob("*.whl")) == [
        tmp_path / "cache" / "d" / "picamera2" / Path(picamera2_wheel.filename).name
    ]

    shutil.rmtree(links)  # the second run must not need pip at all
    links.mkdir()
    second = run_pytest(tmp_path, links)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "1 passed" in second.stdout and "downloading" not in second.stdout


def test_without_a_network_the_tests_skip_saying_in_one_line_how_to_fix_it(tmp_path):
    links = tmp_path / "empty"
    links.mkdir()
    result = run_pytest(tmp_path, links)
    assert result.returncode == 0, result.stdout + result.stderr
    [skip] = [line for line in result.stdout.splitlines() if line.startswith("SKIPPED")]
    assert "cannot download the picamera2 wheel" in skip and "No matching distribution" in skip
    assert "set PICAMERA2_WHEEL to the path of one" in skip
    assert not list((tmp_path / "cache").rglob("*.whl"))


def test_under_ci_a_missing_wheel_fails_rather_than_skips(tmp_path):
    links = tmp_path / "empty"
    links.mkdir()
    result = run_pytest(tmp_path, links, CI="true")
    assert result.returncode == 1, result.stdout + result.stderr
    [error] = [line for line in result.stdout.splitlines() if line.startswith("ERROR tests/")]
    assert "cannot download the picamera2 wheel" in error and "set PICAMERA2_WHEEL" in error


def test_a_picamera2_wheel_variable_naming_no_file_is_one_clear_error(tmp_path):
    result = run_pytest(tmp_path, tmp_path, PICAMERA2_WHEEL=str(tmp_path / "nowhere.whl"))
    assert result.returncode == 1, result.stdout + result.stderr
    [error] = [line for line in result.stdout.splitlines() if line.startswith("ERROR tests/")]
    assert f"PICAMERA2_WHEEL={tmp_path / 'nowhere.whl'}: no such file" in error
