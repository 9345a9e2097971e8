"""The on-device tier: real camera, real pins.  Runs only on a Raspberry Pi with
``APPLIANCE_DEVICE_TESTS=1`` (and the wiring of docs/install.md's table); skipped with the reason
elsewhere, as gpiozero's ``tests/test_real_pins.py`` does."""

import os

import pytest


def pytest_collection_modifyitems(config, items):
    if os.environ.get("APPLIANCE_DEVICE_TESTS") == "1":
        return
    skip = pytest.mark.skip(reason="on-device test: set APPLIANCE_DEVICE_TESTS=1 on a Raspberry Pi to run it")
    for item in items:
        if "tests/device/" in item.nodeid:
            item.add_marker(skip)
