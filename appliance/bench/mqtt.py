"""MQTT telemetry beside capturing (issue 20): trigger to acknowledgement with the telemetry's
hand-off on the main loop, with the broker up and with the broker black-holed, each against MQTT
off, measured in the same run.

The presses are :mod:`~appliance.bench.latency`'s (a gpiozero ``MockFactory`` pin, the real
:class:`~appliance.loop.MainLoop`, the camera's own time taken off), made three ways that take
turns in blocks of :data:`plan.MQTT_BLOCK`, round after round, so that a busy moment weighs on
all alike:

- ``off``: no ``on_captured`` hook, as with ``mqtt_host`` unset;
- ``broker_up``: a real :class:`~appliance.mqtt.Telemetry` connected to a real mosquitto that the
  bench starts on a free port of 127.0.0.1 (a throw-away config in the scratch folder);
- ``black_holed``: a Telemetry pointed at a TCP socket on 127.0.0.1 that listens and never
  accepts: the kernel completes the handshake and nothing ever answers, so paho-mqtt waits for a
  CONNACK, gives up after the keep-alive (:data:`BLACK_HOLED_KEEPALIVE_S`) and connects again,
  all during the run.

Both telemetries run for the whole run, as in ``appliance run``: what they do by themselves (the
state every few seconds, paho's reconnections) weighs on every way alike; what a capture sets off
(the hand-off on the main loop, then the event and the thumbnail published by the telemetry's
and paho's threads while the next press is captured) weighs on its own way only.  The presses
follow each other at once, so a hand-off that waited would show in the next press's latency.
Before each block, the bench waits until the main loop has handed the last capture over (a
hand-off ends on the loop after the acknowledgement) and the broker has acknowledged every event,
then :data:`SETTLE_QUIET_S` more, so that what a block set off weighs on no other way.

The events the broker delivered are counted by a paho subscriber with a persistent session
(subscribed before the run, disconnected during it, so that counting costs nothing while the
presses are timed, and reconnected after it to receive what the broker kept).  Without
mosquitto the figure is ``n/a`` saying so; the broker is stopped however the bench ends.
"""

import contextlib
import json
import logging
import os
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path

import paho.mqtt.client as paho

from appliance.bench import plan
from appliance.bench.latency import _presses
from appliance.bench.measuring import _percentiles, _progress
from appliance.bench.remote import _free_port
from appliance.exc import ApplianceError
from appliance.loop import MainLoop, Request
from appliance.mqtt import CONNECTED, MqttSettings, Telemetry
from appliance.status import StatusCollector
from appliance.store import CaptureStore, IndexReader

MODES = ("off", "broker_up", "black_holed")
WARM_UP = "warm-up"
NEEDS = "mosquitto (apt install mosquitto)"
# Where Debian puts the broker, outside an ordinary user's PATH.
SBIN = ("/usr/sbin", "/usr/local/sbin")
# The black-holed telemetry's keep-alive, in seconds: short, so that paho gives up on the CONNACK
# and connects again during the run.
BLACK_HOLED_KEEPALIVE_S = 5
# Seconds mosquitto may take to listen, the telemetry to connect to it, the broker to acknowledge
# a block's events and to deliver them all to the counting subscriber; and to end once asked to.
START_TIMEOUT_S = 10
SETTLE_TIMEOUT_S = 10
DELIVERY_TIMEOUT_S = 10
STOP_TIMEOUT_S = 5
# Seconds the bench waits after the broker acknowledged a block's events, for the rest of the
# telemetry's round (the thumbnail, the state) to end before another way's block.
SETTLE_QUIET_S = 0.1


def _mosquitto() -> str | None:
    """The ``mosquitto`` program: the first on ``PATH``, else in :data:`SBIN`; None when there
    is none."""
    return shutil.which("mosquitto") or shutil.which("mosquitto", path=os.pathsep.join(SBIN))


def press_count(captures: int) -> int:
    """Presses of each way for a run of ``captures`` (``--captures``): a tenth of them, at most
    :data:`plan.MQTT_PRESSES`, in whole blocks of :data:`plan.MQTT_BLOCK` (at least one)."""
    presses = min(plan.MQTT_PRESSES, captures // 10)
    return max(1, -(-presses // plan.MQTT_BLOCK)) * plan.MQTT_BLOCK


def mqtt_figures(data_dir: Path, photo_dir: Path, presses: int) -> dict:
    """``presses`` presses of each way (a multiple of :data:`plan.MQTT_BLOCK`; see the module
    docstring) into a store in ``data_dir`` with the photo in ``photo_dir``.

    Returns ``mqtt_presses`` (each way's), ``mqtt_latency_ms`` (``{way: {"p50", "p99"}}``, trigger
    to acknowledgement minus the camera's time, for the ways of :data:`MODES`),
    ``mqtt_latency_ratio`` (``{"broker_up", "black_holed"}``: that way's p99 over ``off``'s),
    ``mqtt_delivered``: the distinct capture events the broker delivered on ``<prefix>/captures``
    (equal to ``mqtt_presses``), and ``mqtt_black_holed``: ``{"state", "reason"}`` of that
    telemetry at the end and ``"connected"``, whether it was ever seen connected (false).
    Without mosquitto, or when it does not start: ``mqtt_latency_ms`` None, the ratios None and
    ``mqtt_na`` saying why.  Raises :class:`ApplianceError` when a press is not acknowledged,
    the telemetry does not connect to mosquitto, the broker does not take or deliver every
    event, or the black-holed telemetry connects."""
    binary = _mosquitto()
    if binary is None:
        return _na(f"needs {NEEDS}")
    if presses % plan.MQTT_BLOCK:
        raise ValueError(f"presses must be a multiple of {plan.MQTT_BLOCK}, not {presses}")
    store_dir = data_dir / "store"
    CaptureStore(store_dir).close()  # the index exists before the telemetry reads the status
    status = StatusCollector(IndexReader(store_dir), mode="simulation", started_monotonic=time.monotonic())
    with contextlib.ExitStack() as stack:
        # The black-holed telemetry warns of each lost connection, by design: the figure says it.
        quiet = logging.getLogger("appliance.mqtt")
        stack.callback(quiet.setLevel, quiet.level)
        quiet.setLevel(logging.ERROR)
        port, why = stack.enter_context(_broker(binary, data_dir))
        if why:
            return _na(why)
        hole = stack.enter_context(_black_hole())
        up_settings = MqttSettings(host="127.0.0.1", port=port, topic_prefix="bench/up", node_id="bench-up")
        counter = _Counter(port, up_settings.topic("captures"))
        stack.callback(counter.close)
        counter.subscribe()

        def telemetry(settings: MqttSettings) -> Telemetry:
            part = Telemetry(settings, status=status.collect, submit=_refuse, data_dir=store_dir)
            stack.callback(part.close)
            part.start()
            return part

        holed = telemetry(
            MqttSettings(
                host="127.0.0.1", port=hole, topic_prefix="bench/holed", node_id="bench-holed",
                keepalive_s=BLACK_HOLED_KEEPALIVE_S,
            )
        )  # fmt: skip
        up = telemetry(up_settings)
        _wait(
            lambda: up.status().state == CONNECTED,
            START_TIMEOUT_S,
            "MQTT: the telemetry to connect to mosquitto",
        )
        # The first press of a run is slow (the first photo read, the first thumbnail): not timed.
        ways = [WARM_UP] + [
            way for _ in range(presses // plan.MQTT_BLOCK) for way in MODES for _ in range(plan.MQTT_BLOCK)
        ]
        handed = [0]  # hand-offs done, counted on the main loop's thread

        def counted(hook):
            def hand_over(row: dict, thumbnail: bytes | None) -> None:
                hook(row, thumbnail)
                handed[0] += 1

            return hand_over

        hooks = {
            WARM_UP: None,
            "off": None,
            "broker_up": counted(up.captured),
            "black_holed": counted(holed.captured),
        }
        holed_states: set[str] = set()

        def before_press(i: int, loop: MainLoop) -> None:
            if i and ways[i] != ways[i - 1]:  # what a block set off weighs on it alone
                hooked = sum(hooks[way] is not None for way in ways[:i])
                _wait(lambda: handed[0] == hooked, SETTLE_TIMEOUT_S, "the main loop to hand the capture over")
                _wait(
                    lambda: up.status().queued == 0, SETTLE_TIMEOUT_S, "the broker to acknowledge the events"
                )
                # The rest of the telemetry's round (the thumbnail, the state); before every block,
                # so that each way's first press follows the same pause.
                time.sleep(SETTLE_QUIET_S)
            loop.on_captured = hooks[ways[i]]
            holed_states.add(holed.status().state)

        latency = _presses(
            data_dir,
            photo_dir,
            len(ways),
            before_press=before_press,
            bare=False,
            label="MQTT: trigger to ack",
        )[0]
        _wait(
            lambda: up.status().published == presses, SETTLE_TIMEOUT_S, "the broker to acknowledge the events"
        )
        _progress("MQTT: counting the events the broker delivered")
        delivered = counter.collect(presses, DELIVERY_TIMEOUT_S)
        holed_status = holed.status()
        holed_states.add(holed_status.state)
    _progress("")
    if delivered != presses:
        raise ApplianceError(f"bench: MQTT: the broker delivered {delivered} of {presses} capture events")
    if CONNECTED in holed_states:
        raise ApplianceError(
            "bench: MQTT: the black-holed telemetry connected: something answered on its port"
        )
    ms = {way: _percentiles([s for s, w in zip(latency, ways, strict=True) if w == way]) for way in MODES}
    return {
        "mqtt_presses": presses,
        "mqtt_latency_ms": ms,
        "mqtt_latency_ratio": {way: round(ms[way]["p99"] / ms["off"]["p99"], 2) for way in MODES[1:]},
        "mqtt_delivered": delivered,
        "mqtt_black_holed": {"state": holed_status.state, "reason": holed_status.reason, "connected": False},
    }


def _na(why: str) -> dict:
    return {
        "mqtt_latency_ms": None,
        "mqtt_latency_ratio": dict.fromkeys(MODES[1:]),
        "mqtt_na": why,
    }


def _refuse(request: Request) -> None:
    raise ApplianceError(f"bench: MQTT: no commands are taken here, not {request.action}")


def _wait(done, timeout_s: float, what: str) -> None:
    """Poll ``done()`` every 5 ms; raise :class:`ApplianceError` naming ``what`` after
    ``timeout_s`` seconds."""
    deadline = time.monotonic() + timeout_s
    while not done():
        if time.monotonic() > deadline:
            raise ApplianceError(f"bench: waited {timeout_s} s for {what}")
        time.sleep(0.005)


@contextlib.contextmanager
def _broker(binary: str, scratch: Path):
    """mosquitto on a free port of 127.0.0.1 (anonymous, in memory only, its log in
    ``scratch``); yields ``(port, None)`` once it takes connections, or ``(None, why)`` when it
    exited or did not listen within :data:`START_TIMEOUT_S`; stops it however the block ends."""
    port = _free_port()
    config = scratch / "mosquitto.conf"
    # A persistent session keeps every event for the counting subscriber while it is away.
    config.write_text(
        f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
        "max_queued_messages 0\nlog_dest stderr\n"
    )
    log_path = scratch / "mosquitto.log"
    with open(log_path, "wb") as log:
        broker = subprocess.Popen(
            [binary, "-c", str(config)], stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
        )
    try:
        yield _wait_listening(broker, port, log_path)
    finally:
        broker.terminate()
        try:
            broker.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            broker.kill()
            broker.wait()


def _wait_listening(broker: subprocess.Popen, port: int, log_path: Path) -> tuple[int | None, str | None]:
    deadline = time.monotonic() + START_TIMEOUT_S
    while broker.poll() is None:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return port, None
        except OSError:
            if time.monotonic() > deadline:
                return None, f"mosquitto did not listen on 127.0.0.1:{port} in {START_TIMEOUT_S} s"
            time.sleep(0.05)
    said = log_path.read_text(errors="replace").strip().splitlines()[-1:]
    return None, f"mosquitto exited with status {broker.returncode}: {''.join(said)}"


@contextlib.contextmanager
def _black_hole():
    """A TCP socket listening on a free port of 127.0.0.1 that never accepts: connections
    complete in the kernel's backlog and nothing reads them.  Yields the port."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(64)
        yield sock.getsockname()[1]


class _Counter:
    """A paho subscriber to ``topic`` with a persistent session at the broker on ``port``."""

    CLIENT_ID = "camtrap-bench-counter"

    def __init__(self, port: int, topic: str):
        self._port, self._topic = port, topic
        self._client: paho.Client | None = None
        self._ids: set[str] = set()
        self._lock = threading.Lock()

    def _connect(self, on_connect, on_subscribe=None) -> paho.Client:
        client = paho.Client(
            paho.CallbackAPIVersion.VERSION2, client_id=self.CLIENT_ID, protocol=paho.MQTTv311,
            clean_session=False,
        )  # fmt: skip
        client.on_connect, client.on_subscribe, client.on_message = on_connect, on_subscribe, self._on_message
        self._client = client
        client.connect("127.0.0.1", self._port, keepalive=60)
        client.loop_start()
        return client

    def subscribe(self) -> None:
        """Subscribe (QoS 1), then disconnect: the broker keeps the events meanwhile."""
        subscribed = threading.Event()
        self._connect(lambda client, *_: client.subscribe(self._topic, qos=1), lambda *_: subscribed.set())
        if not subscribed.wait(START_TIMEOUT_S):
            raise ApplianceError(
                f"bench: MQTT: mosquitto did not confirm the subscription in {START_TIMEOUT_S} s"
            )
        self.close()

    def collect(self, expected: int, timeout_s: float) -> int:
        """Reconnect and receive what the broker kept until ``expected`` distinct capture events
        came, or ``timeout_s`` seconds passed; returns how many came."""
        self._connect(lambda *_: None)
        with contextlib.suppress(ApplianceError):
            _wait(lambda: self._count() >= expected, timeout_s, "the capture events")
        return self._count()

    def _count(self) -> int:
        with self._lock:
            return len(self._ids)

    def _on_message(self, client, userdata, message) -> None:
        event = json.loads(message.payload)  # at least once: a repeat has the same id
        with self._lock:
            self._ids.add(event["id"])

    def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            client.disconnect()
            client.loop_stop()
