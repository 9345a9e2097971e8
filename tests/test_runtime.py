"""The runtime object (appliance/runtime.py), built in this process in simulation: its reload
applies what the settings' reload rule says, and nothing a part does not read is called live."""

import dataclasses
import datetime
import time

import pytest
import requests

from appliance import config as config_module
from appliance import control
from appliance.config import Config
from appliance.exc import ControlError, Stopped
from appliance.loop import Request
from appliance.runtime import Appliance
from appliance.web.actions import ACTION_TIMEOUT_S
from boot.systemd import Notifier


@pytest.fixture
def appliance(tmp_path):
    config = Config(
        data_dir=str(tmp_path / "data"),
        simulate=True,
        simulate_trigger_interval_s=3600,
        web_host="127.0.0.1",
        web_port=0,
        trigger_cooldown_s=0,
    )
    with Appliance(config, notifier=Notifier({})) as running:
        yield running


class Reading:
    """A config that records which settings are read from it."""

    def __init__(self, config: Config):
        self._config, self.read = config, set()

    def __getattr__(self, name):
        self.read.add(name)
        return getattr(self._config, name)


def test_every_live_setting_is_read_by_some_part_that_reload_configures():
    reading = Reading(Config())
    for _, settings in Appliance.LIVE_PARTS:
        settings.from_config(reading)
    live = config_module.settings_by_reload(config_module.LIVE)
    assert live - reading.read == set(), "live settings that no part's from_config reads"


def test_a_reload_applies_live_settings_to_the_parts_and_reports_those_that_take_a_restart(appliance):
    old = appliance.config
    new = dataclasses.replace(
        old, burst_count=3, trigger_cooldown_s=7.5, flash_pre_delay_s=0.2, headroom_hours=6,
        timelapse_interval_s=600, active_windows=["19:00-06:00"], web_port=8099, jpeg_quality=70,
        location_name="Oak ridge",
    )  # fmt: skip
    done = appliance.reload(new)
    assert done.restart == {"web_port", "jpeg_quality"}
    assert done.applied == {
        "burst_count", "trigger_cooldown_s", "flash_pre_delay_s", "headroom_hours",
        "timelapse_interval_s", "active_windows", "location_name",
    }  # fmt: skip
    assert appliance.loop.settings.burst_count == 3
    assert appliance.gate.settings.cooldown_s == 7.5 and appliance.gate.settings.captures_per_event == 3
    assert appliance.lights.settings.flash_pre_delay_s == 0.2
    assert appliance.cleanup.policy.headroom_hours == 6
    assert appliance.timelapse.interval_s == 600
    assert not appliance.timelapse.windows.contains(datetime.time(12, 0))
    # Restart settings keep their running value; the export reads the new deployment settings.
    assert appliance.config.web_port == old.web_port and appliance.config.jpeg_quality == old.jpeg_quality
    assert appliance.current_config().location_name == "Oak ridge"
    assert requests.get(appliance.server.url + "api/status", timeout=5).ok  # still serving


def test_a_reload_valid_alone_but_not_with_the_running_restart_settings_changes_nothing(tmp_path):
    config = Config(
        data_dir=str(tmp_path), simulate=True, web_host="127.0.0.1", web_port=0,
        simulate_trigger_interval_s=3600, camera_exposure_time_us=5_000_000, capture_timeout_s=11,
    )  # fmt: skip
    # A shorter exposure (restart) with a shorter timeout (live): the timeout alone, beside the
    # running 5 s exposure, is too short.
    new = dataclasses.replace(config, camera_exposure_time_us=0, capture_timeout_s=3, burst_count=2)
    with Appliance(config, notifier=Notifier({})) as appliance:
        before = appliance.loop.settings
        with pytest.raises(
            config_module.ConfigError,
            match="with the settings that take a restart unchanged, capture_timeout_s",
        ):
            appliance.reload(new)
        assert appliance.loop.settings is before and appliance.config is config


def test_the_jobs_are_listed_in_one_place_and_scheduled_from_it(appliance):
    names = [job.name for job in appliance.jobs()]
    assert names[:5] == ["cleanup", "WAL checkpoint", "camera recovery", "clock check", "timelapse"]
    assert len(appliance.scheduler.get_jobs()) == len(names)


def test_the_uptime_counts_from_the_start_it_is_given(tmp_path):
    config = Config(data_dir=str(tmp_path), simulate=True, web_host="127.0.0.1", web_port=0)
    started = time.monotonic() - 100  # preflight began 100 s ago
    with Appliance(config, notifier=Notifier({}), started_monotonic=started) as appliance:
        assert appliance.status.collect().uptime_s >= 100


def test_actions_asked_when_the_main_loop_has_stopped_are_answered_at_once_not_left_waiting(appliance):
    # One waiting in the queue when the loop stops, one asked after (through the control socket,
    # as `appliance protect` asks while the appliance closes): neither is done, both are told so
    # at once, instead of holding a server thread ACTION_TIMEOUT_S and the shutdown with it.
    queued = Request("protect", "0" * 32)
    appliance.events.put(queued)
    appliance.loop.request_stop("test over")
    appliance.run()
    assert queued.done.is_set() and isinstance(queued.error, Stopped)
    client = control.connect(appliance.data_dir)
    started = time.monotonic()
    with pytest.raises(ControlError, match="^the appliance is stopping: nothing done"):
        client.protect("0" * 32, True)
    assert time.monotonic() - started < ACTION_TIMEOUT_S / 3
