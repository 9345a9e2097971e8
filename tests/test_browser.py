"""The pages in a real browser: Debian's headless Chromium, driven by Selenium through chromedriver,
against the real command in simulation.  Checks what a unit test of the HTML cannot: the photos
actually decode and show, the strict Content-Security-Policy lets everything through (a violation
is a SEVERE console message), and nothing is wider than a phone's screen.  Screenshots are saved to
``$CI_ARTIFACTS`` (else the test's ``tmp_path``) and their paths printed in the log."""

import base64
import contextlib
import datetime
import os
import re
import shutil
import signal
import sys
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.common.exceptions import TimeoutException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions
from selenium.webdriver.support.ui import WebDriverWait
from test_end_to_end import start, status_url, wait_for_captures

from appliance.store import CaptureStore

# Debian's names first (its chromium-driver package puts chromedriver on the PATH and in
# /usr/lib/chromium), then Ubuntu's and Raspberry Pi OS's older chromium-browser.
CHROMIUM = ("chromium", "chromium-browser")
CHROMEDRIVER = ("chromedriver", "/usr/lib/chromium/chromedriver", "/usr/lib/chromium-browser/chromedriver")
# Without the background-networking flags Chromium keeps trying to reach Google's hosts, which this
# closed network refuses; --no-sandbox because CI runs as root.
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--hide-scrollbars",
]  # fmt: skip
PAGE_LOAD_TIMEOUT_S = 20
IMAGES_TIMEOUT_S = 10
# True once every <img> matching the selector has finished, loaded or broken.  The grid's
# thumbnails are loading="lazy": those below the fold start only when scrolled to.
ALL_COMPLETE = """
const images = Array.from(document.querySelectorAll(arguments[0]));
images.forEach(img => { if (!img.complete) img.scrollIntoView(); });
return images.length > 0 && images.every(img => img.complete);
"""
NOT_RENDERED = """
return Array.from(document.querySelectorAll(arguments[0]))
  .filter(img => !(img.complete && img.naturalWidth > 0))
  .map(img => img.currentSrc || img.src);
"""


@pytest.fixture
def browser_paths() -> tuple[str, str]:
    """Paths of Chromium and its chromedriver (the first of :data:`CHROMIUM` and
    :data:`CHROMEDRIVER` found).  Skips without them, except under CI, where .ci/run must install
    them."""
    chromium = next(filter(None, map(shutil.which, CHROMIUM)), None)
    chromedriver = next(filter(None, map(shutil.which, CHROMEDRIVER)), None)
    if not (chromium and chromedriver):
        missing = " and ".join(
            name for name, path in (("chromium", chromium), ("chromedriver", chromedriver)) if not path
        )
        reason = f"{missing} not found: apt install chromium chromium-driver"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{reason}; under CI, .ci/run must install them", pytrace=False)
        pytest.skip(reason)
    return chromium, chromedriver


@pytest.fixture
def artifacts(tmp_path) -> Path:
    """Where screenshots go: ``$CI_ARTIFACTS`` when set, else ``tmp_path``."""
    folder = Path(os.environ["CI_ARTIFACTS"]) if os.environ.get("CI_ARTIFACTS") else tmp_path
    folder.mkdir(parents=True, exist_ok=True)
    return folder


# The trap's name and zone, as a user sets them: the titles and every time on the pages show them.
TRAP_CONFIG = 'camera_id = "trap-07"\ntimezone = "Pacific/Auckland"\n'
# A time as the pages show it in TRAP_CONFIG's zone (New Zealand's standard or daylight time).
LOCAL_TIME = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d(:\d\d)? NZ[SD]T")


@pytest.fixture
def appliance(tmp_path, burst_dir, run_config):
    """The URL of the real command in simulation (TRAP_CONFIG), once it holds at least 4 captures."""
    config = tmp_path / "trap-config.toml"
    config.write_text(run_config.read_text() + TRAP_CONFIG)
    # A week of free space as the appliance samples it with a trusted clock (this machine's clock
    # may not be, and the plot would then say "No samples yet"): falling by 0.2 GB an hour.
    store = CaptureStore(tmp_path / "data")
    try:
        now = datetime.datetime.now(datetime.UTC)
        for hours in range(7 * 24, 0, -1):
            at = now - datetime.timedelta(hours=hours)
            store.record_disk_sample(
                at, free_bytes=int(60e9 - (7 * 24 - hours) * 0.2e9), total_bytes=64_000_000_000
            )
    finally:
        store.close()
    process = start(tmp_path / "data", config, "--replay", str(burst_dir), "--trigger-interval-s", "0.3")
    try:
        url = status_url(process)
        wait_for_captures(url, 4)
        yield url
    finally:
        process.send_signal(signal.SIGTERM)
        process.communicate(timeout=15)


def new_chromium(browser_paths, tmp_path, width: int, height: int):
    chromium, chromedriver = browser_paths
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path / 'chromium-profile'}")
    options.add_argument(f"--window-size={width},{height}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(executable_path=chromedriver))
    driver.set_page_load_timeout(PAGE_LOAD_TIMEOUT_S)
    # A phone's layout viewport (the page's meta viewport applies), not just a narrow window.
    driver.execute_cdp_cmd(
        "Emulation.setDeviceMetricsOverride",
        {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": width < 600},
    )
    return driver


def assert_loaded(driver) -> None:
    status = driver.execute_script("return performance.getEntriesByType('navigation')[0].responseStatus")
    assert status == 200, f"{driver.current_url}: HTTP {status}"


def assert_images_rendered(driver, selector: str) -> int:
    """Waits for every image matching ``selector`` to finish and asserts each decoded (natural
    width > 0); returns how many there are."""
    with contextlib.suppress(TimeoutException):  # the assertion below names the images
        WebDriverWait(driver, IMAGES_TIMEOUT_S, poll_frequency=0.1).until(
            lambda d: d.execute_script(ALL_COMPLETE, selector)
        )
    missing = driver.execute_script(NOT_RENDERED, selector)
    count = driver.execute_script("return document.querySelectorAll(arguments[0]).length", selector)
    assert count and not missing, f"{driver.current_url}: {count} {selector}, not rendered: {missing}"
    driver.execute_script("window.scrollTo(0, 0)")
    return count


def assert_fits(driver, width: int) -> None:
    """No horizontal scrolling: the page is no wider than the window (``width`` px)."""
    scroll_width, inner_width = driver.execute_script(
        "return [document.documentElement.scrollWidth, window.innerWidth]"
    )
    assert inner_width == width, f"the window is {inner_width} px wide, not {width}"
    assert scroll_width <= inner_width, (
        f"{driver.current_url}: {scroll_width} px wide in a {inner_width} px window"
    )


def assert_trap_and_local_times(driver, page: str) -> None:
    """The title names the page and the trap, and every time shown is in the trap's zone."""
    assert driver.title == f"{page} · trap-07", driver.title
    times = [element.text for element in driver.find_elements(By.TAG_NAME, "time")]
    assert times and all(LOCAL_TIME.fullmatch(text) for text in times), times


def screenshot(driver, path: Path) -> Path:
    """The whole page, not only the viewport, as a PNG at ``path``."""
    width, height = driver.execute_script(
        "return [document.documentElement.clientWidth, document.documentElement.scrollHeight]"
    )
    shot = driver.execute_cdp_cmd(
        "Page.captureScreenshot",
        {"format": "png", "captureBeyondViewport": True,
         "clip": {"x": 0, "y": 0, "width": width, "height": height, "scale": 1}},
    )  # fmt: skip
    path.write_bytes(base64.b64decode(shot["data"]))
    return path


def severe_messages(driver) -> list[str]:
    """The console's SEVERE messages since the last call (CSP violations, failed loads, errors)."""
    return [entry["message"] for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]


@pytest.mark.parametrize(
    "width, height", [pytest.param(360, 800, id="phone"), pytest.param(1280, 900, id="desktop")]
)
def test_pages_show_their_photos_fit_the_screen_and_log_no_console_errors(
    browser_paths, appliance, artifacts, tmp_path, capsys, record_property, width, height
):
    size = f"{width}x{height}"
    shots, errors = [], []
    driver = new_chromium(browser_paths, tmp_path, width, height)
    try:
        for path, name, title in [("", "status", "Status"), ("captures", "captures", "Captures")]:
            driver.get(appliance + path)
            assert_loaded(driver)
            assert assert_images_rendered(driver, ".grid img") >= 4
            assert_fits(driver, width)
            assert_trap_and_local_times(driver, title)
            shots.append(screenshot(driver, artifacts / f"{name}-{size}.png"))
            errors += severe_messages(driver)

        driver.find_element(By.CSS_SELECTOR, ".grid a").click()
        WebDriverWait(driver, PAGE_LOAD_TIMEOUT_S).until(
            expected_conditions.url_matches(r"/captures/[0-9a-f]{32}$")
        )
        assert_loaded(driver)
        assert assert_images_rendered(driver, "img.photo") == 1
        assert_fits(driver, width)
        assert_trap_and_local_times(driver, driver.find_element(By.TAG_NAME, "h1").text)
        assert driver.find_element(By.TAG_NAME, "h1").text.startswith("Capture #")
        shots.append(screenshot(driver, artifacts / f"capture-{size}.png"))
        errors += severe_messages(driver)
    finally:
        driver.quit()
        # Printed past pytest's capture, so the paths are in the log whether the test passes or not.
        with capsys.disabled():
            for shot in shots:
                sys.stdout.write(f"\nscreenshot: {shot}")
            sys.stdout.write("\n")
        record_property("screenshots", " ".join(map(str, shots)))
    assert not errors, f"SEVERE console messages at {size}: {errors}"
