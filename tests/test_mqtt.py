"""MQTT telemetry (appliance/mqtt.py) against a real Mosquitto on 127.0.0.1 (tests/mqtt_broker.py):
what a simulated trap puts on the broker, Home Assistant's discovery configs, the last will on a
SIGKILL and the appliance's own "offline" on a SIGTERM, a broker that goes away and comes back, a
port that never answers, a wrong password, TLS, commands, and no secret anywhere."""

import io
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import jinja2
import pytest
import requests
from mqtt_broker import Subscriber
from PIL import Image

from appliance import mqtt
from appliance.config import Config
from appliance.loop import Request
from appliance.runtime import Appliance
from boot.preflight import OK, WARNING, check_mqtt
from boot.systemd import Notifier

PREFIX = "appliance/trap"
DISCOVERY = "homeassistant"


def trap_config(tmp_path: Path, broker, **settings) -> Config:
    """A simulated trap publishing to ``broker`` as ``appliance/trap``."""
    values = dict(
        data_dir=str(tmp_path / "data"),
        simulate=True,
        simulate_trigger_interval_s=0.3,
        trigger_cooldown_s=0,
        max_captures_per_minute=0,
        web_host="127.0.0.1",
        web_port=0,
        camera_id="trap",
        mqtt_host=broker.host,
        mqtt_port=broker.port,
        mqtt_state_interval_s=5,
    )
    return Config(**(values | settings))


class Running:
    """An :class:`Appliance` built and run on a thread of its own (the store's writer must stay on
    the thread that opened it), until :meth:`stop`."""

    def __init__(self, config: Config):
        self.appliance: Appliance | None = None
        self._built, self._error = threading.Event(), None
        self.thread = threading.Thread(target=self._main, args=(config,), daemon=True)
        self.thread.start()
        if not self._built.wait(30) or self._error is not None:
            raise AssertionError(f"the appliance did not start: {self._error}")

    def _main(self, config: Config) -> None:
        try:
            with Appliance(config, notifier=Notifier({})) as appliance:
                self.appliance = appliance
                self._built.set()
                appliance.run()
        except BaseException as exc:
            self._error = exc
            self._built.set()
            raise

    def api(self) -> dict:
        return requests.get(self.appliance.server.url + "api/status", timeout=5).json()

    def page(self) -> str:
        return requests.get(self.appliance.server.url, timeout=5).text

    def captures(self) -> list[dict]:
        return list(reversed(self.appliance.reader.latest(100_000)))

    def wait(self, predicate, timeout_s: float = 15, what: str = "condition"):
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if value := predicate():
                return value
            time.sleep(0.1)
        raise AssertionError(f"{what} not met within {timeout_s} s")

    def stop(self) -> None:
        self.appliance.loop.request_stop("test over")
        self.thread.join(timeout=15)
        assert not self.thread.is_alive(), "the appliance did not stop"

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.stop()


def capture_events(subscriber) -> dict[str, dict]:
    """The capture events received, by capture id (QoS 1 may deliver one twice)."""
    return {m.json()["id"]: m.json() for m in list(subscriber.messages) if m.topic == f"{PREFIX}/captures"}


def test_a_simulated_trap_announces_itself_publishes_its_state_each_capture_and_the_thumbnail(
    tmp_path, mqtt_broker
):
    config = trap_config(tmp_path, mqtt_broker, simulate_trigger_interval_s=3600)
    with Subscriber(mqtt_broker) as watcher, Running(config) as trap:
        online = watcher.wait_for(lambda m: m.topic == f"{PREFIX}/availability")
        assert online.payload == b"online"
        for _ in range(5):  # test shots, as the page's button takes them: then nothing changes
            shot = Request("capture")
            trap.appliance.events.put(shot)
            assert shot.done.wait(10) and shot.error is None
        stored = trap.captures()
        api = trap.api()
        # The state that follows the last capture matches /api/status, from the same Status.
        state = watcher.wait_for(
            lambda m: m.topic == f"{PREFIX}/state" and m.json()["captures"]["total"] == len(stored),
            timeout_s=10,
        ).json()
        assert state["level"] == api["level"] and state["problems"] == api["problems"]
        assert state["captures"] == {k: api["captures"][k] for k in ("total", "last_hour", "last_24h")}
        assert state["last_capture"] == {k: api["latest"][0][k] for k in ("id", "seq", "captured_at")}
        assert state["disk"]["free_percent"] == pytest.approx(api["disk"]["free_percent"], abs=0.5)
        assert state["camera"] == api["camera"]["state"] and state["cleanup"] == api["cleanup"]["state"]
        assert state["version"] == api["version"] and state["clock_synchronised"] is False  # simulation
        assert (
            api["mqtt"]["state"] == "connected" and api["mqtt"]["broker"] == f"127.0.0.1:{mqtt_broker.port}"
        )
        # One event per stored capture, with its id and seq, and links that the page serves.
        watcher.wait_for(lambda m: len(capture_events(watcher)) >= len(stored), timeout_s=10)
        events = capture_events(watcher)
        assert [(row["id"], row["seq"]) for row in stored] == [(e["id"], e["seq"]) for e in events.values()]
        last = events[stored[-1]["id"]]
        assert last["captured_at"] == stored[-1]["captured_at"] and last["captured_at"].endswith("+00:00")
        assert last["trigger"] == "manual" and last["event_id"] == stored[-1]["event_id"]
        assert requests.get(last["media_url"], timeout=5).content[:2] == b"\xff\xd8"
        # The latest thumbnail, a WebP of the last capture (retained: see below).
        webp = requests.get(last["thumbnail_url"], timeout=5).content
        watcher.wait_for(lambda m: m.topic == f"{PREFIX}/thumbnail" and m.payload == webp)
        assert Image.open(io.BytesIO(webp)).format == "WEBP"
    # Discovery: a retained config per entity, read back by a new subscriber as Home Assistant would.
    with Subscriber(mqtt_broker, [f"{DISCOVERY}/#", f"{PREFIX}/#"]) as ha:
        ha.wait_for(lambda m: m.topic.endswith("/latest_photo/config"))
        ha.wait_for(lambda m: m.topic == f"{PREFIX}/availability" and m.payload == b"offline")
        ha.wait_for(lambda m: m.topic == f"{PREFIX}/thumbnail" and m.payload == webp)
        configs = {m.topic: m.json() for m in ha.messages if m.topic.startswith(DISCOVERY)}
        assert all(m.retain for m in ha.messages)
    expected = {
        "sensor": {
            "captures_24h",
            "last_capture",
            "disk_free",
            "hours_left",
            "cpu_temperature",
            "offload_pending",
        },
        "binary_sensor": {"problem", "clock_synchronised", "under_voltage"},
        "image": {"latest_photo"},
    }
    assert set(configs) == {
        f"{DISCOVERY}/{c}/trap/{o}/config" for c, objects in expected.items() for o in objects
    }
    for topic, config in configs.items():
        component, object_id = topic.split("/")[1], topic.split("/")[3]
        assert config["unique_id"] == f"trap_{object_id}"
        assert config["availability_topic"] == f"{PREFIX}/availability"
        assert config["device"]["serial_number"] == "trap" and config["device"]["identifiers"]
        assert config["device"]["configuration_url"].startswith("http://127.0.0.1:")
        if component == "image":
            assert config["image_topic"] == f"{PREFIX}/thumbnail" and config["content_type"] == "image/webp"
        else:
            assert config["state_topic"] == f"{PREFIX}/state" and "value_json" in config["value_template"]
    # Each value template, rendered as Home Assistant renders it (Jinja2), on the last state.
    values = {
        topic.split("/")[3]: jinja2.Environment()
        .from_string(config["value_template"])
        .render(value_json=state)
        for topic, config in configs.items()
        if "value_template" in config
    }
    assert values["captures_24h"] == "5" and values["last_capture"] == stored[-1]["captured_at"]
    assert float(values["disk_free"]) == state["disk"]["free_percent"] and values["hours_left"] != ""
    assert values["problem"] == "ON" and values["clock_synchronised"] == "OFF"  # simulation: no NTP
    assert values["under_voltage"] == "OFF" and values["offload_pending"] == "None"
    units = {topic.split("/")[3]: config.get("unit_of_measurement") for topic, config in configs.items()}
    assert units["cpu_temperature"] == "°C" and units["disk_free"] == "%" and units["hours_left"] == "h"
    assert configs[f"{DISCOVERY}/sensor/trap/last_capture/config"]["device_class"] == "timestamp"
    assert configs[f"{DISCOVERY}/binary_sensor/trap/problem/config"]["device_class"] == "problem"


def run_trap(tmp_path: Path, broker, **settings) -> subprocess.Popen:
    """``appliance run`` of a simulated trap in its own process, once it has connected."""
    lines = [f"{key} = {json.dumps(value)}" for key, value in settings.items()]
    config = tmp_path / "trap.toml"
    config.write_text(
        "\n".join(
            [
                f'data_dir = "{tmp_path / "data"}"',
                "simulate = true",
                "simulate_trigger_interval_s = 1.0",
                'camera_id = "trap"',
                "web_port = 0",
                f'mqtt_host = "{broker.host}"',
                f"mqtt_port = {broker.port}",
                *lines,
            ]
        )  # fmt: skip
        + "\n"
    )
    return subprocess.Popen(
        [sys.executable, "-m", "appliance", "run", "--config", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_a_killed_trap_is_announced_offline_by_the_broker_within_the_keepalive(tmp_path, mqtt_broker):
    with Subscriber(mqtt_broker, [f"{PREFIX}/availability", f"{PREFIX}/captures"]) as watcher:
        process = run_trap(tmp_path, mqtt_broker, mqtt_keepalive_s=5)
        try:
            watcher.wait_for(lambda m: m.payload == b"online", timeout_s=20)
            watcher.wait_for(lambda m: m.topic.endswith("/captures"), timeout_s=10)
            os.kill(process.pid, signal.SIGKILL)
            killed = time.monotonic()
            offline = watcher.wait_for(lambda m: m.payload == b"offline", timeout_s=15)
        finally:
            process.kill()
            process.wait()
    # MQTT 3.1.1 section 3.1.2.10: the broker gives up after 1.5 keep-alives and sends the will.
    assert offline.received_monotonic - killed <= 1.5 * 5 + 1


def test_a_stopped_trap_says_offline_itself_at_once(tmp_path, mqtt_broker):
    with Subscriber(mqtt_broker, [f"{PREFIX}/availability"]) as watcher:
        process = run_trap(tmp_path, mqtt_broker, mqtt_keepalive_s=600)
        try:
            watcher.wait_for(lambda m: m.payload == b"online", timeout_s=20)
            process.send_signal(signal.SIGTERM)
            stopped = time.monotonic()
            offline = watcher.wait_for(lambda m: m.payload == b"offline", timeout_s=10)
            assert process.wait(timeout=15) == 0
        finally:
            process.kill()
    assert offline.received_monotonic - stopped < 5  # long before 1.5 x 600 s
    with Subscriber(mqtt_broker, [f"{PREFIX}/availability"]) as later:  # and kept for those to come
        assert later.wait_for(lambda m: m.retain).payload == b"offline"
    assert "disconnected from" in process.stderr.read()


def test_the_broker_away_for_30_s_capturing_goes_on_and_the_queued_events_follow(
    tmp_path, mqtt_broker, monkeypatch
):
    monkeypatch.setattr(mqtt, "QUEUE_MAX", 40)  # so that 30 s of captures overflow it
    monkeypatch.setattr(mqtt, "RECONNECT_MAX_S", 4)  # tries at most 4 s apart: back soon after the broker
    config = trap_config(tmp_path, mqtt_broker, simulate_trigger_interval_s=0.25, mqtt_keepalive_s=5)
    with Subscriber(mqtt_broker) as watcher, Running(config) as trap:
        watcher.wait_for(lambda m: m.topic.endswith("/captures"))
        mqtt_broker.stop()
        down_seq = trap.captures()[-1]["seq"]
        trap.wait(lambda: trap.api()["mqtt"]["state"] == "disconnected", timeout_s=10, what="disconnected")
        assert "mqtt" in trap.api()["problems"] and "not connected to the broker" in trap.page()
        time.sleep(30)
        during = [row for row in trap.captures() if row["seq"] > down_seq]
        assert len(during) >= 60  # about 4 a second: capturing went on at its pace
        assert trap.api()["mqtt"]["dropped"] > 0
        watcher.messages.clear()
        mqtt_broker.start()
        trap.wait(lambda: trap.api()["mqtt"]["state"] == "connected", timeout_s=90, what="reconnected")
        watcher.wait_for(
            lambda m: m.topic == f"{PREFIX}/availability" and m.payload == b"online", timeout_s=30
        )
        watcher.wait_for(lambda m: m.topic == f"{PREFIX}/state")
        watcher.wait_for(lambda m: m.topic == f"{DISCOVERY}/image/trap/latest_photo/config")
        up_seq = trap.captures()[-1]["seq"]
        # Once nothing waits, every capture up to up_seq has been delivered or dropped.
        status = trap.wait(
            lambda: (s := trap.api()["mqtt"])["queued"] == 0 and s, timeout_s=30, what="the queue drained"
        )
        stored = {row["id"]: row["seq"] for row in trap.captures() if row["seq"] <= up_seq}
        events = capture_events(watcher)
    # Every capture of the outage was delivered after it, or dropped (the oldest) and counted.
    outage = sorted(seq for seq in stored.values() if seq > down_seq)
    missing = sorted(seq for capture_id, seq in stored.items() if seq > down_seq and capture_id not in events)
    assert 0 < len(missing) <= status["dropped"]
    assert missing == outage[: len(missing)]  # the oldest went first
    assert len(outage) - len(missing) >= mqtt.QUEUE_MAX


def test_a_port_that_never_answers_leaves_capturing_alone_and_the_page_says_why(tmp_path):
    with socket.socket() as black_hole:
        black_hole.bind(("127.0.0.1", 0))
        black_hole.listen(8)  # the kernel completes the handshake; nothing ever reads or answers

        class Hole:
            host, port = "127.0.0.1", black_hole.getsockname()[1]

        with Running(trap_config(tmp_path, Hole, mqtt_keepalive_s=5)) as trap:
            first = len(trap.captures())
            trap.wait(lambda: trap.api()["mqtt"]["state"] == "disconnected", timeout_s=15, what="given up")
            assert len(trap.captures()) >= first + 10
            api = trap.api()
            assert "no answer from the broker within the keep-alive (5 s)" in api["problems"]["mqtt"]
            assert api["level"] != "error" and "no answer from the broker" in trap.page()
            assert api["mqtt"]["queued"] > 0  # kept for when it answers
            assert trap.appliance.status.systemd_line().endswith("; MQTT disconnected")  # systemctl status


def test_a_wrong_password_is_shown_with_the_fix_and_never_logged(tmp_path, mqtt_broker_auth, caplog):
    wrong = mqtt_broker_auth.password_file("trap", tmp_path / "wrong.pw")
    wrong.write_text("not-the-password\n")
    config = trap_config(tmp_path, mqtt_broker_auth, mqtt_username="trap", mqtt_password_file=str(wrong))
    caplog.set_level(logging.DEBUG)
    with Running(config) as trap:
        trap.wait(lambda: trap.api()["mqtt"]["state"] == "disconnected", what="refused")
        reason = trap.api()["problems"]["mqtt"]
        assert "refused the connection" in reason and "check mqtt_username and mqtt_password_file" in reason
        trap.wait(lambda: len(trap.captures()) >= 3, what="captures")
    assert "not-the-password" not in caplog.text and "refused the connection" in caplog.text


def test_a_password_file_that_cannot_be_read_leaves_mqtt_off_and_the_page_says_which_setting(
    tmp_path, mqtt_broker
):
    missing = tmp_path / "nowhere.pw"
    config = trap_config(tmp_path, mqtt_broker, mqtt_username="trap", mqtt_password_file=str(missing))
    with Running(config) as trap:
        reason = trap.api()["problems"]["mqtt"]
        assert "mqtt_password_file: No such file or directory; fix it and restart" in reason
        trap.wait(lambda: len(trap.captures()) >= 2, what="captures")
        assert trap.api()["mqtt"]["queued"] == 0  # nothing kept for a broker never tried


def test_with_the_right_password_no_secret_reaches_a_log_line_a_payload_or_the_api(
    tmp_path, mqtt_broker_auth, caplog
):
    password = mqtt_broker_auth.users["trap"]
    secret = mqtt_broker_auth.password_file("trap", tmp_path / "trap.pw")
    config = trap_config(tmp_path, mqtt_broker_auth, mqtt_username="trap", mqtt_password_file=str(secret))
    caplog.set_level(logging.DEBUG)
    with Subscriber(mqtt_broker_auth, user="watcher") as watcher, Running(config) as trap:
        watcher.wait_for(lambda m: m.topic == f"{PREFIX}/state")
        watcher.wait_for(lambda m: m.topic == f"{PREFIX}/captures")
        api = json.dumps(trap.api())
        page = trap.page()
    assert api.count('"connected"') and password not in api and password not in page
    assert password not in caplog.text
    assert not [m.topic for m in watcher.messages if password.encode() in m.payload]


def test_tls_verified_against_the_brokers_ca_and_refused_without_it(tmp_path, mqtt_broker_tls):
    trusted = trap_config(tmp_path, mqtt_broker_tls, mqtt_tls=str(mqtt_broker_tls.ca_path))
    with Running(trusted) as trap:
        trap.wait(lambda: trap.api()["mqtt"]["state"] == "connected", what="connected over TLS")
    untrusted = trap_config(tmp_path, mqtt_broker_tls, mqtt_tls="system")  # a self-signed CA: not trusted
    with Running(untrusted) as trap:
        trap.wait(lambda: trap.api()["mqtt"]["state"] == "disconnected", what="refused")
        assert "TLS failed" in trap.api()["problems"]["mqtt"]


def test_commands_take_a_photo_protect_and_offload_and_a_malformed_one_is_logged_once(
    tmp_path, mqtt_broker, caplog
):
    config = trap_config(tmp_path, mqtt_broker, simulate_trigger_interval_s=3600, mqtt_commands=True)
    caplog.set_level(logging.INFO, logger="appliance.mqtt")
    with Subscriber(mqtt_broker, topics=()) as earlier:  # retained: it would be done at each reconnection
        earlier.publish(f"{PREFIX}/command/capture", "PRESS", retain=True)
    with Subscriber(mqtt_broker) as broker, Running(config) as trap:
        broker.wait_for(lambda m: m.topic.endswith("/button/trap/take_photo/config"))
        broker.publish(f"{PREFIX}/command/capture", "PRESS")
        [photo] = trap.wait(lambda: trap.captures(), what="the test photo")
        assert photo["trigger"] == "manual"
        broker.publish(f"{PREFIX}/command/protect", photo["id"])
        trap.wait(lambda: trap.appliance.reader.get(photo["id"])["protected"], what="protected")
        broker.publish(f"{PREFIX}/command/offload", "")
        for payload in ("x" * 40, "PRESS", "\xff"):
            broker.publish(f"{PREFIX}/command/protect", payload)
        broker.publish(f"{PREFIX}/command/delete", "PRESS")
        trap.wait(lambda: trap.api()["mqtt"]["commands_ignored"] == 5, what="5 ignored")
        trap.wait(lambda: "command offload not done" in caplog.text, what="offload answered")
        assert len(trap.captures()) == 1
    assert "offload_usb_path is not set" in caplog.text  # the loop's answer, as the page's button gets
    ignored = [r for r in caplog.records if "ignored a command" in r.getMessage()]
    assert [r.getMessage().split(" on ")[1].split(":")[0] for r in ignored] == [
        f"{PREFIX}/command/capture",
        f"{PREFIX}/command/protect",
        f"{PREFIX}/command/delete",
    ]


def test_commands_are_off_by_default_and_no_button_is_announced(tmp_path, mqtt_broker):
    config = trap_config(tmp_path, mqtt_broker, simulate_trigger_interval_s=3600)
    button = f"{DISCOVERY}/button/trap/take_photo/config"
    with Subscriber(mqtt_broker, topics=()) as earlier:  # left by a run with mqtt_commands on
        earlier.publish(button, json.dumps({"command_topic": f"{PREFIX}/command/capture"}), retain=True)
    with Subscriber(mqtt_broker) as broker, Running(config) as trap:
        broker.wait_for(lambda m: m.topic == button and m.payload == b"")  # Home Assistant removes it
        broker.wait_for(lambda m: m.topic.endswith("/latest_photo/config"))
        broker.publish(f"{PREFIX}/command/capture", "PRESS")
        time.sleep(1.5)
        assert trap.captures() == [] and trap.api()["mqtt"]["commands"] is False
    with Subscriber(mqtt_broker) as later:
        later.wait_for(lambda m: m.topic.endswith("/latest_photo/config"))
        assert not [m.topic for m in later.messages if "/button/" in m.topic]


def test_forget_clears_every_retained_message_of_the_trap(tmp_path, mqtt_broker):
    config = trap_config(tmp_path, mqtt_broker, mqtt_commands=True)
    with Subscriber(mqtt_broker) as broker, Running(config):
        broker.wait_for(lambda m: m.topic.endswith("/thumbnail"))
    toml = tmp_path / "forget.toml"
    toml.write_text(f'camera_id = "trap"\nmqtt_host = "127.0.0.1"\nmqtt_port = {mqtt_broker.port}\n')
    done = subprocess.run(
        [sys.executable, "-m", "appliance", "mqtt", "forget", "--config", str(toml)],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "Camera trap trap forgotten: 15 retained topics cleared" in done.stdout
    with Subscriber(mqtt_broker) as later:
        time.sleep(1)
        assert [m.topic for m in later.messages if m.payload] == []


def test_forget_without_a_broker_says_so(tmp_path):
    toml = tmp_path / "forget.toml"
    toml.write_text('mqtt_host = "127.0.0.1"\nmqtt_port = 1\n')
    done = subprocess.run(
        [sys.executable, "-m", "appliance", "mqtt", "forget", "--config", str(toml)],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert done.returncode == 1 and "cannot connect to 127.0.0.1:1" in done.stderr
    toml.write_text("")
    done = subprocess.run(
        [sys.executable, "-m", "appliance", "mqtt", "forget", "--config", str(toml)],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert done.returncode == 2 and "mqtt_host is not set" in done.stderr


def test_a_bad_mqtt_setting_stops_start_up_naming_the_file_and_the_key(tmp_path):
    toml = tmp_path / "bad.toml"
    for line, key in (
        ('mqtt_topic_prefix = "traps/#"', "mqtt_topic_prefix"),
        ('mqtt_host = "mqtt://broker"', "mqtt_host"),
        ('mqtt_tls = "ca.pem"', "mqtt_tls"),
        ('mqtt_password_file = "/etc/appliance/mqtt.pw"', "mqtt_password_file"),
    ):
        toml.write_text(f"simulate = true\n{line}\n")
        done = subprocess.run(
            [sys.executable, "-m", "appliance", "run", "--config", str(toml)],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        assert done.returncode == 2 and str(toml) in done.stderr and key in done.stderr, done.stderr


def test_preflight_warns_of_a_password_file_others_may_read(tmp_path):
    secret = tmp_path / "mqtt.pw"
    secret.write_text("s3cret\n")
    secret.chmod(0o600)
    assert check_mqtt(str(secret), "").level == OK
    secret.chmod(0o644)
    check = check_mqtt(str(secret), "")
    assert check.level == WARNING and f"chmod 600 {secret}" in check.reason and "s3cret" not in check.reason
    assert check_mqtt(str(tmp_path / "missing"), "").level == WARNING
    not_a_certificate = tmp_path / "ca.pem"
    not_a_certificate.write_text("hello\n")
    check = check_mqtt("", str(not_a_certificate))
    assert check.level == WARNING and "is not a PEM CA certificate" in check.reason


def test_events_published_just_as_the_link_drops_are_delivered_after_it_comes_back(
    tmp_path, mqtt_broker, monkeypatch
):
    # paho closes its socket, then tells the telemetry: an event handed over in between is kept
    # by paho and sent once reconnected, but its is_published() raises ever after.  A Pi whose
    # CPU is busy widens that moment; here the news comes a second late.
    import paho.mqtt.client as paho

    real = paho.Client

    class SlowToNotice(real):
        @property
        def on_disconnect(self):
            return real.on_disconnect.fget(self)

        @on_disconnect.setter
        def on_disconnect(self, callback):
            def late(*args):
                time.sleep(1)
                callback(*args)

            real.on_disconnect.fset(self, late)

    monkeypatch.setattr(paho, "Client", SlowToNotice)
    config = trap_config(tmp_path, mqtt_broker, simulate_trigger_interval_s=0.1)
    with Running(config) as trap:
        trap.wait(lambda: trap.api()["mqtt"]["published"] >= 3, what="events delivered")
        mqtt_broker.stop()
        trap.wait(lambda: trap.api()["mqtt"]["state"] == "disconnected", what="disconnected")
        mqtt_broker.start()
        trap.wait(lambda: trap.api()["mqtt"]["state"] == "connected", what="reconnected")
        # Every event of the outage delivered: nothing stays queued for ever.
        mark = trap.api()["mqtt"]["published"] + 5
        status = trap.wait(
            lambda: (s := trap.api()["mqtt"])["published"] >= mark and s["queued"] < 5 and s,
            what="events flowing again",
        )
    assert status["dropped"] == 0


def test_a_flood_of_commands_is_not_queued_before_the_triggers_nor_logged_line_by_line(
    tmp_path, mqtt_broker, caplog
):
    # Each command the main loop has not done yet would wait in its queue, before real triggers:
    # a command arriving while the same one still waits is ignored and counted instead.
    config = trap_config(tmp_path, mqtt_broker, simulate_trigger_interval_s=3600, mqtt_commands=True)
    caplog.set_level(logging.INFO, logger="appliance.mqtt")
    with Subscriber(mqtt_broker, topics=()) as broker, Running(config) as trap:
        trap.wait(lambda: trap.api()["mqtt"]["state"] == "connected", what="connected")
        for _ in range(300):
            broker.publish(f"{PREFIX}/command/capture", "PRESS", qos=0)
        broker.publish(f"{PREFIX}/command/offload", "PRESS")  # in order after the flood: all in
        trap.wait(lambda: trap.api()["mqtt"]["commands_ignored"] >= 250, what="the flood ignored")
        time.sleep(1)
        assert len(trap.captures()) <= 20 and trap.appliance.events.qsize() <= 2
    assert len(caplog.records) < 60
    assert [r.getMessage() for r in caplog.records if "still waits" in r.getMessage()] == [
        "MQTT: ignored a command on appliance/trap/command/capture: the same command still waits for "
        "the main loop (more are counted, not logged)"
    ]


def test_a_broker_that_drops_each_connection_at_once_is_not_stormed_with_reconnections(tmp_path):
    # As a broker does that kicks a client out for a publish its access list denies, or for a
    # second client of the same id: paho waits 1 s after each, since each connection succeeded.
    connections = []
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(8)
        server.settimeout(0.2)

        def serve():
            while not done.is_set():
                try:
                    conn, _ = server.accept()
                except TimeoutError:
                    continue
                with conn:
                    connections.append(time.monotonic())
                    conn.recv(4096)  # CONNECT
                    conn.sendall(b"\x20\x02\x00\x00")  # CONNACK, accepted
                    time.sleep(0.05)

        class Dropping:
            host, port = "127.0.0.1", server.getsockname()[1]

        done = threading.Event()
        serving = threading.Thread(target=serve, daemon=True)
        serving.start()
        try:
            with Running(trap_config(tmp_path, Dropping, simulate_trigger_interval_s=3600)) as trap:
                trap.wait(lambda: connections, what="a first connection")
                time.sleep(4)
                assert "the link to the broker was lost" in trap.api()["problems"]["mqtt"]
        finally:
            done.set()
            serving.join()
    first = connections[0]
    assert len([t for t in connections if t - first < 4]) <= 2  # not one a second: 2 s, 4 s, 8 s...
