"""The pages in a real browser: Debian's headless Chromium, driven by Selenium through chromedriver,
against the real command in simulation.  Checks what a unit test of the HTML cannot: the photos
actually decode and show, the strict Content-Security-Policy lets everything through (a violation
is a SEVERE console message), and nothing is wider than a phone's screen.  Screenshots are saved to
``$CI_ARTIFACTS`` (else the test's ``tmp_path``) and their paths printed in the log."""

import base64
import contextlib
import os
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


@pytest.fixture
def appliance(tmp_path, burst_dir, run_config):
    """The URL of the real command in simulation, once it holds at least 4 captures."""
    process = start(tmp_path / "data", run_config, "--replay", str(burst_dir), "--trigger-interval-s", "0.3")
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
    scroll_width = driver.execute_script("return document.documentElement.scrollWidth")
    assert scroll_width <= width, f"{driver.current_url}: {scroll_width} px wide in a {width} px viewport"


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
        for path, name in [("", "status"), ("captures", "captures")]:
            driver.get(appliance + path)
            assert_loaded(driver)
            assert assert_images_rendered(driver, ".grid img") >= 4
            assert_fits(driver, width)
            shots.append(screenshot(driver, artifacts / f"{name}-{size}.png"))
            errors += severe_messages(driver)

        driver.find_element(By.CSS_SELECTOR, ".grid a").click()
        WebDriverWait(driver, PAGE_LOAD_TIMEOUT_S).until(
            expected_conditions.url_matches(r"/captures/[0-9a-f]{32}$")
        )
        assert_loaded(driver)
        assert assert_images_rendered(driver, "img.photo") == 1
        assert_fits(driver, width)
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
