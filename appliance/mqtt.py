"""MQTT telemetry: the appliance's state, each capture and the latest thumbnail pushed to a broker,
Home Assistant discovery, and commands (docs/mqtt.md).

Topics, under ``mqtt_topic_prefix`` (``<prefix>``; default ``appliance/<node id>``):

- ``<prefix>/availability``: ``online`` (retained) once connected; ``offline`` (retained) as the
  last will, which the broker publishes when the trap dies or its link does (within 1.5 times the
  keep-alive, MQTT 3.1.1 section 3.1.2.10), and from the appliance itself on a clean stop.
- ``<prefix>/state``: retained JSON (:func:`state_json`, from the same
  :class:`~appliance.status.Status` as the status page) on every (re)connection, every change of
  level and every ``mqtt_state_interval_s``.
- ``<prefix>/captures``: one JSON per capture (:func:`capture_event`), QoS 1, not retained.
- ``<prefix>/thumbnail``: the latest thumbnail's WebP bytes, retained (Home Assistant's MQTT
  ``image`` entity).
- ``<prefix>/command/capture``, ``.../protect`` (payload: a capture id), ``.../offload``: only
  with ``mqtt_commands``; done by the main loop as the status page's actions are.
- ``<discovery prefix>/<component>/<node id>/<object id>/config``: Home Assistant's MQTT
  discovery (https://www.home-assistant.io/integrations/mqtt/#mqtt-discovery), retained, one
  device with the entities of :func:`discovery_configs`.

Threads: the main loop only hands a capture over (:meth:`Telemetry.captured`, an append to a
bounded queue); the telemetry's own thread gathers the status and publishes, and paho-mqtt's
network thread does the socket I/O and reconnects.  So a broker that is away, slow or
black-holed never delays a capture.  While the broker is away, the state is kept as the latest
only and capture events wait in a queue of at most ``QUEUE_MAX``, the oldest dropped first (and
counted).  Nothing happens at import time; paho-mqtt is imported by :func:`make_client`, so that
an appliance without ``mqtt_host`` never loads it.
"""

import collections
import dataclasses
import json
import logging
import os
import re
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from appliance import __version__
from appliance.clocktrust import TRUSTED
from appliance.loop import Request
from appliance.store import CAPTURE_ID

if TYPE_CHECKING:
    import paho.mqtt.client as paho

log = logging.getLogger(__name__)

# Capture events kept while the broker is away; beyond it the oldest are dropped (and counted).
QUEUE_MAX = 1000
# Capture events handed to paho and not yet acknowledged by the broker (PUBACK), at most.
INFLIGHT_MAX = 20
# Seconds between two looks at the status for a change of level (the state is published on it).
LEVEL_CHECK_INTERVAL_S = 5.0
# Seconds a clean stop waits for the broker to take "offline" before it disconnects anyway.
STOP_TIMEOUT_S = 2.0
# Reconnection back-off, in seconds: paho-mqtt doubles the wait from the first to the second.
RECONNECT_MIN_S, RECONNECT_MAX_S = 1, 60
# Seconds a connection must last for the back-off to start again from RECONNECT_MIN_S: paho
# restarts it at each CONNACK, so a broker that drops each connection at once (a client of the
# same id, a publish its access list denies) would be reconnected to every second, for ever.
STABLE_S = 60
# Payloads of the commands without an argument: empty, or Home Assistant's button press.
PRESS = ("", "PRESS")
COMMANDS = ("capture", "protect", "offload")
# Commands received and not yet looked at, at most; beyond it the oldest are dropped (and counted).
COMMANDS_KEPT = 100
# Commands handed to the main loop and not yet done, at most (they wait before the triggers).
COMMANDS_WAITING_MAX = 10
_NODE_ID = re.compile(r"[^A-Za-z0-9_-]+")

# States of :class:`MqttStatus`.
OFF, CONNECTING, CONNECTED, DISCONNECTED = "off", "connecting", "connected", "disconnected"


def node_id(camera_id: str, host_name: str | None = None) -> str:
    """The trap's name in topics and Home Assistant's discovery: ``camera_id``, else the host
    name, with every run of characters other than ``A-Z a-z 0-9 _ -`` made one ``_`` (the node
    ids discovery allows)."""
    return _NODE_ID.sub("_", camera_id or host_name or socket.gethostname()).strip("_") or "trap"


@dataclass(frozen=True)
class MqttSettings:
    """How the telemetry connects and what it publishes (the ``mqtt_*`` settings).

    ``host``: the broker ("" turns MQTT off); ``port``: its TCP port; ``username``,
    ``password_file``: a file holding the password ("": none); ``tls``: "" (none), ``"system"``
    (verified with the system's CAs) or the path of a CA certificate file; ``topic_prefix``;
    ``discovery_prefix`` ("": no Home Assistant discovery); ``state_interval_s``; ``commands``:
    whether commands are taken; ``keepalive_s``: MQTT's keep-alive, in seconds; ``node_id``
    (:func:`node_id`); ``device_name``, ``model``: the device Home Assistant shows;
    ``page_url``: the status page as others reach it (``http://host:port``, no trailing slash),
    for the links in capture events and Home Assistant's device page.
    """

    host: str = ""
    port: int = 1883
    username: str = ""
    password_file: str = ""
    tls: str = ""
    topic_prefix: str = "appliance/trap"
    discovery_prefix: str = "homeassistant"
    state_interval_s: float = 60.0
    commands: bool = False
    keepalive_s: int = 60
    node_id: str = "trap"
    device_name: str = "Camera trap trap"
    model: str = "Raspberry Pi"
    page_url: str = "http://127.0.0.1:8080"

    @classmethod
    def from_config(cls, config) -> "MqttSettings":
        """From the ``mqtt_*`` settings (``mqtt_port`` 0: 8883 with TLS, else 1883; an empty
        ``mqtt_topic_prefix``: ``appliance/<node id>``), ``camera_id`` (the node id),
        ``camera_make``/``camera_model`` and ``web_url`` (``page_url``, when set)."""
        node = node_id(config.camera_id)
        return cls(
            host=config.mqtt_host,
            port=config.mqtt_port or (8883 if config.mqtt_tls else 1883),
            username=config.mqtt_username,
            password_file=config.mqtt_password_file,
            tls=config.mqtt_tls,
            topic_prefix=config.mqtt_topic_prefix or f"appliance/{node}",
            discovery_prefix=config.mqtt_discovery_prefix,
            state_interval_s=config.mqtt_state_interval_s,
            commands=config.mqtt_commands,
            keepalive_s=config.mqtt_keepalive_s,
            node_id=node,
            device_name=f"Camera trap {node}",
            model=" ".join(part for part in (config.camera_make, config.camera_model) if part),
            page_url=config.web_url.rstrip("/") or cls.page_url,
        )

    def topic(self, name: str) -> str:
        """``<topic_prefix>/<name>``."""
        return f"{self.topic_prefix}/{name}"


@dataclass(frozen=True)
class MqttStatus:
    """The telemetry's state, for the status page, ``/api/status`` (``mqtt``) and ``/metrics``.

    ``state``: ``"connecting"`` (before the first answer), ``"connected"`` or
    ``"disconnected"`` (``reason`` says why, and what to do when it is the config);
    ``broker``: ``"host:port"``; ``since``: when the state began (ISO 8601 UTC);
    ``queued``: capture events not yet acknowledged by the broker; ``dropped``: those dropped
    since start-up because the queue was full; ``published``: capture events the broker
    acknowledged since start-up; ``commands``: whether commands are taken;
    ``commands_ignored``: commands ignored since start-up: malformed, retained, arriving while
    the same command (or :data:`COMMANDS_WAITING_MAX` commands) still wait for the main loop, or
    beyond :data:`COMMANDS_KEPT` waiting for the telemetry's thread.
    """

    state: str
    broker: str
    reason: str
    since: str
    queued: int
    dropped: int
    published: int
    commands: bool
    commands_ignored: int


def state_json(status) -> dict:
    """The JSON of ``<prefix>/state`` from a :class:`~appliance.status.Status`: ``level``,
    ``problems`` (``{area: reason}``), ``captures`` (``total``, ``last_hour``, ``last_24h``),
    ``last_capture`` (``id``, ``seq``, ``captured_at``; null before the first), ``disk``
    (``free_bytes``, ``free_percent`` 0-100, ``hours_left``; null when unknown), ``cleanup``
    (its state), ``offload`` (``{target: {"state", "pending_captures"}}`` of the targets that are
    on), ``offload_pending`` (the most captures any target still lacks; null with none on),
    ``camera`` (its state), ``cpu_temperature_c``, ``under_voltage`` (now), ``clock_synchronised``,
    ``uptime_s`` (seconds) and ``version``; null where not known."""
    latest = status.latest[0] if status.latest else None
    system = status.system
    throttled = system.throttled if system else None
    offload = {t.target: {"state": t.state, "pending_captures": t.pending_captures} for t in status.offload}
    offload = {target: value for target, value in offload.items() if value["state"] != OFF}
    synced = (status.clock is None or status.clock.state == TRUSTED) and (
        system is None or system.clock_synced is not False
    )
    return {
        "level": status.level,
        "problems": status.problem_reasons(),
        "captures": {
            "total": status.captures.total,
            "last_hour": status.captures.last_hour,
            "last_24h": status.captures.last_24h,
        },
        "last_capture": {key: latest[key] for key in ("id", "seq", "captured_at")} if latest else None,
        "disk": {
            "free_bytes": status.disk.free_bytes,
            "free_percent": status.disk.free_percent,
            "hours_left": status.disk.hours_left,
        }
        if status.disk
        else None,
        "cleanup": status.cleanup.state if status.cleanup else "ok",
        "offload": offload,
        "offload_pending": max((v["pending_captures"] for v in offload.values()), default=None),
        "camera": status.camera.state if status.camera else None,
        "cpu_temperature_c": system.cpu_temperature_c if system else None,
        "under_voltage": throttled.under_voltage_now if throttled else None,
        "clock_synchronised": synced,
        "uptime_s": status.uptime_s,
        "version": status.version,
    }


def capture_event(row: dict, page_url: str) -> dict:
    """The JSON of ``<prefix>/captures`` for a stored capture (a row of the index): ``id``,
    ``seq``, ``captured_at`` (ISO 8601 with its offset), ``trigger``, ``event_id``, ``bytes``,
    and the absolute URLs of its ``page_url``, ``media_url`` and ``thumbnail_url`` (null without
    a thumbnail) on the status page."""
    thumbnail = f"{page_url}/thumbnails/{row['id']}.webp" if row.get("thumbnail_path") else None
    return {
        "id": row["id"],
        "seq": row["seq"],
        "captured_at": row["captured_at"],
        "trigger": row["trigger"],
        "event_id": row["event_id"],
        "bytes": row["bytes"],
        "page_url": f"{page_url}/captures/{row['id']}",
        "media_url": f"{page_url}/media/{row['id']}.jpg",
        "thumbnail_url": thumbnail,
    }


# Home Assistant's entities of the trap: (component, object id, config without the common keys).
# Units and device classes as Home Assistant documents them
# (https://www.home-assistant.io/integrations/sensor/#device-class,
# https://www.home-assistant.io/integrations/binary_sensor/#device-class).
_SENSORS = (
    ("sensor", "captures_24h", {
        "name": "Captures, last 24 h", "icon": "mdi:camera", "unit_of_measurement": "photos",
        "state_class": "measurement", "value_template": "{{ value_json.captures.last_24h }}",
    }),
    ("sensor", "last_capture", {
        "name": "Last capture", "device_class": "timestamp",
        "value_template": "{{ value_json.last_capture.captured_at if value_json.last_capture else 'None' }}",
    }),
    ("sensor", "disk_free", {
        "name": "Disk free", "icon": "mdi:harddisk", "unit_of_measurement": "%",
        "state_class": "measurement",
        "value_template": "{{ value_json.disk.free_percent if value_json.disk else 'None' }}",
    }),
    ("sensor", "hours_left", {
        "name": "Capturing left", "device_class": "duration", "unit_of_measurement": "h",
        "value_template": "{{ value_json.disk.hours_left if value_json.disk and value_json.disk.hours_left "
        "is not none else 'None' }}",
    }),
    ("sensor", "cpu_temperature", {
        "name": "CPU temperature", "device_class": "temperature", "unit_of_measurement": "°C",
        "state_class": "measurement", "entity_category": "diagnostic",
        "value_template": "{{ value_json.cpu_temperature_c if value_json.cpu_temperature_c is not none "
        "else 'None' }}",
    }),
    ("sensor", "offload_pending", {
        "name": "Photos not offloaded", "icon": "mdi:upload", "unit_of_measurement": "photos",
        "state_class": "measurement",
        "value_template": "{{ value_json.offload_pending if value_json.offload_pending is not none "
        "else 'None' }}",
    }),
    ("binary_sensor", "problem", {
        "name": "Problem", "device_class": "problem",
        "value_template": "{{ 'OFF' if value_json.level == 'ok' else 'ON' }}",
        "json_attributes_template": "{{ value_json.problems | tojson }}",
    }),
    ("binary_sensor", "clock_synchronised", {
        "name": "Clock synchronised", "icon": "mdi:clock-check", "entity_category": "diagnostic",
        "value_template": "{{ 'ON' if value_json.clock_synchronised else 'OFF' }}",
    }),
    ("binary_sensor", "under_voltage", {
        "name": "Under-voltage", "device_class": "problem", "entity_category": "diagnostic",
        "value_template": "{{ 'ON' if value_json.under_voltage else 'OFF' }}",
    }),
)  # fmt: skip
# With mqtt_commands only: (object id, name, command).
_BUTTONS = (("take_photo", "Take a test photo", "capture"), ("copy_to_usb", "Copy to USB now", "offload"))


def discovery_configs(settings: MqttSettings, *, commands: bool | None = None) -> dict[str, dict]:
    """``{topic: config}`` of Home Assistant's MQTT discovery for the trap (empty without a
    ``discovery_prefix``): the sensors and binary sensors of ``<prefix>/state``, an ``image`` of
    ``<prefix>/thumbnail`` and, with ``commands`` (default: ``settings.commands``), two buttons.
    Each config has ``unique_id`` (``<node id>_<object id>``), ``availability_topic``, the one
    ``device`` (identifiers and serial number: the node id; ``configuration_url``: the status
    page) and ``origin``."""
    if not settings.discovery_prefix:
        return {}
    commands = settings.commands if commands is None else commands
    device = {
        "identifiers": [f"camtrap_appliance_{settings.node_id}"],
        "name": settings.device_name,
        "manufacturer": "camtrap-appliance",
        "model": settings.model or "Raspberry Pi",
        "serial_number": settings.node_id,
        "sw_version": __version__,
        "configuration_url": f"{settings.page_url}/",
    }
    common = {
        "availability_topic": settings.topic("availability"),
        "device": device,
        "origin": {"name": "camtrap-appliance", "sw_version": __version__},
    }
    state = settings.topic("state")
    entities = [
        (component, object_id, {"state_topic": state, **config}
         | ({"json_attributes_topic": state} if "json_attributes_template" in config else {}))
        for component, object_id, config in _SENSORS
    ]  # fmt: skip
    image = {"name": "Latest photo", "image_topic": settings.topic("thumbnail"), "content_type": "image/webp"}
    entities.append(("image", "latest_photo", image))
    if commands:
        for object_id, name, command in _BUTTONS:
            config = {
                "name": name,
                "command_topic": settings.topic(f"command/{command}"),
                "payload_press": "PRESS",
            }
            entities.append(("button", object_id, config))
    return {
        f"{settings.discovery_prefix}/{component}/{settings.node_id}/{object_id}/config": {
            **config, "unique_id": f"{settings.node_id}_{object_id}", **common,
        }
        for component, object_id, config in entities
    }  # fmt: skip


def read_password(path: str) -> str:
    """The password in the file at ``path``: its first line, without its line ending.  Raises
    ``OSError`` when it cannot be read, ``ValueError`` when it is empty."""
    text = Path(path).read_text(encoding="utf-8")
    password = text.splitlines()[0] if text else ""
    if not password:
        raise ValueError(f"{path} is empty")
    return password


def make_client(settings: MqttSettings, client_id: str) -> "paho.Client":
    """A paho-mqtt client for ``settings`` (MQTT 3.1.1, clean session, the ``offline`` last
    will retained), not yet connected.  Raises ``ValueError`` naming the setting when the
    password file cannot be read (:func:`read_password`) or the CA file cannot be loaded."""
    import paho.mqtt.client as paho  # only when MQTT is on

    client = paho.Client(
        paho.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=paho.MQTTv311, clean_session=True
    )
    if settings.username:
        try:
            password = read_password(settings.password_file) if settings.password_file else None
        except (OSError, ValueError) as exc:
            raise ValueError(f"mqtt_password_file: {getattr(exc, 'strerror', None) or exc}") from None
        client.username_pw_set(settings.username, password)
    if settings.tls:
        try:
            client.tls_set(ca_certs=None if settings.tls == "system" else settings.tls)
        except OSError as exc:  # ssl.SSLError is one
            raise ValueError(f"mqtt_tls: {settings.tls}: {exc.strerror or exc}") from None
    client.will_set(settings.topic("availability"), "offline", qos=1, retain=True)
    client.reconnect_delay_set(RECONNECT_MIN_S, RECONNECT_MAX_S)
    return client


def _now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


class Telemetry:
    """The MQTT telemetry of a running appliance (see the module docstring); a context manager
    whose exit publishes ``offline`` and disconnects.

    :param settings: :class:`MqttSettings` (with ``host`` set).
    :param status: returns the :class:`~appliance.status.Status` now (called on the telemetry's
        own thread).
    :param submit: hands a :class:`~appliance.loop.Request` to the main loop (the commands).
    :param data_dir: the data directory (the latest thumbnail, read at the first connection).
    :param latest: returns the newest capture's index row, or None (the thumbnail to publish at
        the first connection).
    :param client_factory: ``client_factory(settings, client_id)`` makes the paho client
        (default :func:`make_client`).

    Nothing connects until :meth:`start`.  Every method is thread-safe.
    """

    def __init__(
        self,
        settings: MqttSettings,
        *,
        status: Callable[[], object],
        submit: Callable[[Request], None],
        data_dir: Path,
        latest: Callable[[], dict | None] = lambda: None,
        client_factory: Callable[[MqttSettings, str], "paho.Client"] = make_client,
    ):
        self.settings = settings
        self._status, self._submit, self._data_dir, self._latest = status, submit, Path(data_dir), latest
        self._client_factory = client_factory
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._events: collections.deque[bytes] = collections.deque()
        self._inflight: list[paho.MQTTMessageInfo] = []
        self._thumbnail: bytes | None = None
        self._thumbnail_due = False
        self._commands: collections.deque[tuple[str, bytes, bool]] = collections.deque()
        self._requests: list[tuple[str, Request]] = []
        self._ignored_logged: set[tuple[str, bool]] = set()
        self._announce = False
        self._connected = False
        self._state, self._reason, self._since = CONNECTING, "", _now_iso()
        self._dropped = self._published = self._ignored = 0
        self._level: str | None = None
        self._next_state = self._next_level_check = 0.0
        self._client: paho.Client | None = None
        self._off = False
        self._thread: threading.Thread | None = None
        self._connected_at: float | None = None
        self._backoff_s = RECONNECT_MIN_S

    def __enter__(self) -> "Telemetry":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    # -- called by other threads -------------------------------------------------------------

    def start(self, page_url: str | None = None) -> None:
        """Start connecting (in the background) and the telemetry's thread.  ``page_url``: the
        status page's address, once it listens (replaces ``settings.page_url``).  A password or CA
        file that cannot be read leaves it ``disconnected`` with the reason (logged and shown)."""
        if page_url:
            self.settings = dataclasses.replace(self.settings, page_url=page_url.rstrip("/"))
        settings = self.settings
        client_id = f"camtrap-{settings.node_id}-{os.getpid()}"
        try:
            client = self._client_factory(settings, client_id)
        except ValueError as exc:
            self._set_state(DISCONNECTED, f"{exc}; fix it and restart")
            log.error("MQTT off: %s", self._reason)
            self._off = True  # nothing is queued for a broker that is never tried
            return
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_connect_fail = self._on_connect_fail
        client.on_message = self._on_message
        client.connect_timeout = min(10.0, float(settings.keepalive_s))
        client.connect_async(settings.host, settings.port, keepalive=settings.keepalive_s)
        self._client = client
        client.loop_start()
        self._thread = threading.Thread(target=self._run, name="mqtt", daemon=True)
        self._thread.start()

    def captured(self, row: dict, thumbnail: bytes | None) -> None:
        """Hand a stored capture over for publishing (its event, and its thumbnail as the
        latest); never waits for the network.  Beyond :data:`QUEUE_MAX` waiting events, the
        oldest is dropped and counted.  Nothing when MQTT could not be set up (:meth:`start`)."""
        if self._off:
            return
        event = json.dumps(capture_event(row, self.settings.page_url)).encode()
        with self._lock:
            if len(self._events) >= QUEUE_MAX:
                self._events.popleft()
                self._dropped += 1
            self._events.append(event)
            if thumbnail is not None:
                self._thumbnail, self._thumbnail_due = thumbnail, True
        self._wake.set()

    def status(self) -> MqttStatus:
        """The state now (:class:`MqttStatus`)."""
        settings = self.settings
        with self._lock:
            return MqttStatus(
                state=self._state,
                broker=f"{settings.host}:{settings.port}",
                reason=self._reason,
                since=self._since,
                queued=len(self._events) + len(self._inflight),
                dropped=self._dropped,
                published=self._published,
                commands=settings.commands,
                commands_ignored=self._ignored,
            )

    def close(self) -> None:
        """Stop: publish ``offline`` (waiting at most :data:`STOP_TIMEOUT_S` for the broker),
        disconnect, and end both threads.  Capture events still queued are not sent."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        client, self._client = self._client, None
        if client is None:
            return
        if self._connected:
            info = client.publish(self.settings.topic("availability"), "offline", qos=1, retain=True)
            try:
                info.wait_for_publish(STOP_TIMEOUT_S)
            except (RuntimeError, ValueError) as exc:  # the link went meanwhile: the will says it
                log.info("MQTT: offline not published (%s); the broker's last will says it", exc)
        client.disconnect()
        client.loop_stop()
        log.info("MQTT: disconnected from %s:%d", self.settings.host, self.settings.port)

    # -- paho's network thread -----------------------------------------------------------------

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            hint = (
                " (check mqtt_username and mqtt_password_file)"
                if reason_code.value in (4, 5, 134, 135)
                else ""
            )
            self._disconnected(f"the broker refused the connection: {reason_code}{hint}")
            return
        if self.settings.commands:
            client.subscribe(self.settings.topic("command/+"), qos=1)
        with self._lock:
            self._connected, self._announce = True, True
        self._connected_at = time.monotonic()
        self._set_state(CONNECTED, "")
        log.info("MQTT: connected to %s:%d", self.settings.host, self.settings.port)
        self._wake.set()

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        connected_at, self._connected_at = self._connected_at, None
        if connected_at is not None:  # the first wait after a connection that ended (paho's own
            # doubling takes over from there)
            short = time.monotonic() - connected_at < STABLE_S
            self._backoff_s = min(2 * self._backoff_s, RECONNECT_MAX_S) if short else RECONNECT_MIN_S
            client.reconnect_delay_set(self._backoff_s, RECONNECT_MAX_S)
        keepalive = getattr(reason_code, "value", None) == 141  # "Keep alive timeout"
        with self._lock:
            refused = not self._connected and self._state == DISCONNECTED
        if self._stop.is_set() or (refused and not keepalive):
            return  # a refused connection ends so too: its reason is already there
        if keepalive:
            reason = f"no answer from the broker within the keep-alive ({self.settings.keepalive_s} s)"
        else:
            detail = (
                "" if getattr(reason_code, "value", None) == 128 else f" ({reason_code})"
            )  # "Unspecified"
            reason = f"the link to the broker was lost{detail}"
        self._disconnected(reason)

    def _on_connect_fail(self, client, userdata) -> None:
        self._disconnected(
            f"cannot connect to {self.settings.host}:{self.settings.port} (no broker there, a name that "
            "does not resolve, the network down{}); trying again".format(
                ", or TLS failed" if self.settings.tls else ""
            )
        )

    def _on_message(self, client, userdata, message) -> None:
        with self._lock:
            if len(self._commands) >= COMMANDS_KEPT:  # a flood: the telemetry's thread is behind
                self._commands.popleft()
                self._ignored += 1
            self._commands.append((message.topic, bytes(message.payload), bool(message.retain)))
        self._wake.set()

    def _disconnected(self, reason: str) -> None:
        with self._lock:
            was = self._connected
            self._connected = False
            changed = self._state != DISCONNECTED or self._reason != reason
        self._set_state(DISCONNECTED, reason)
        if changed:
            (log.warning if was or self._state == DISCONNECTED else log.info)("MQTT: %s", reason)

    def _set_state(self, state: str, reason: str) -> None:
        with self._lock:
            if (state, reason) != (self._state, self._reason):
                self._state, self._reason, self._since = state, reason, _now_iso()

    # -- the telemetry's own thread -------------------------------------------------------------

    def _run(self) -> None:
        wait, failed = 1.0, None
        while not self._stop.is_set():
            self._wake.wait(timeout=wait)
            self._wake.clear()
            if self._stop.is_set():
                break
            try:
                wait, failed = self._step(), None
            except Exception as exc:  # one failed step must not end the telemetry
                if repr(exc) != failed:  # logged once while it fails the same way
                    log.exception("MQTT: publishing failed; trying again every second")
                failed, wait = repr(exc), 1.0

    def _step(self) -> float:
        # One round; returns the seconds to wait before the next unless woken: short while
        # acknowledgements, queued events or commands are outstanding.
        client = self._client
        waiting = self._finish_requests()
        with self._lock:
            connected, announce = self._connected, self._announce
            self._announce = False
            commands = list(self._commands)
            self._commands.clear()
        if not connected or client is None:
            return 0.2 if waiting else 1.0
        now = time.monotonic()
        if announce:
            self._announce_to(client)
            now = time.monotonic()
            self._next_state = now  # the state follows at once
        for topic, payload, retained in commands:
            self._command(topic, payload, retained)
        busy = self._send_events(client)
        with self._lock:
            thumbnail, self._thumbnail_due = (self._thumbnail if self._thumbnail_due else None), False
        if thumbnail is not None:
            client.publish(self.settings.topic("thumbnail"), thumbnail, qos=1, retain=True)
        if now >= self._next_state or now >= self._next_level_check:
            self._publish_state(client, now)
        return 0.05 if busy else 0.2 if waiting else 1.0

    def _announce_to(self, client: "paho.Client") -> None:
        # On each (re)connection: a broker restarted without persistence has forgotten everything.
        client.publish(self.settings.topic("availability"), "online", qos=1, retain=True)
        configs = discovery_configs(self.settings)
        for topic in discovery_configs(self.settings, commands=True).keys() - configs.keys():
            client.publish(topic, b"", qos=1, retain=True)  # buttons of a run with mqtt_commands on
        for topic, config in configs.items():
            client.publish(topic, json.dumps(config), qos=1, retain=True)
        with self._lock:
            thumbnail = self._thumbnail
        if thumbnail is None:
            thumbnail = self._latest_thumbnail()
        if thumbnail is not None:
            client.publish(self.settings.topic("thumbnail"), thumbnail, qos=1, retain=True)

    def _latest_thumbnail(self) -> bytes | None:
        row = self._latest()
        if not row or not row.get("thumbnail_path"):
            return None
        try:
            return (self._data_dir / row["thumbnail_path"]).read_bytes()
        except OSError:  # deleted by cleanup meanwhile: the next capture brings one
            return None

    def _send_events(self, client: "paho.Client") -> bool:
        """Hand queued events to paho, at most :data:`INFLIGHT_MAX` unacknowledged; returns
        whether some are still queued or unacknowledged."""
        with self._lock:
            done = [info for info in self._inflight if info.is_published()]
            self._published += len(done)
            self._inflight = [info for info in self._inflight if not info.is_published()]
            room = INFLIGHT_MAX - len(self._inflight)
            batch = [self._events.popleft() for _ in range(min(room, len(self._events)))]
        from paho.mqtt.enums import MQTTErrorCode  # loaded already: the client is paho's

        for n, event in enumerate(batch):
            info = client.publish(self.settings.topic("captures"), event, qos=1)
            if info.rc == MQTTErrorCode.MQTT_ERR_NO_CONN:
                # paho closed its socket a moment before it told us: it keeps the message and
                # sends it once reconnected, yet its is_published() would raise for it ever
                # after (paho-mqtt 2.2), which would stop every event from then on.
                info.rc = MQTTErrorCode.MQTT_ERR_SUCCESS
            elif info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:  # not taken by paho: it waits for the next round
                with self._lock:
                    self._events.extendleft(reversed(batch[n:]))
                break
            with self._lock:
                self._inflight.append(info)
        with self._lock:
            return bool(self._inflight or self._events)

    def _publish_state(self, client: "paho.Client", now: float) -> None:
        status = self._status()
        self._next_level_check = now + min(LEVEL_CHECK_INTERVAL_S, self.settings.state_interval_s)
        if status.level == self._level and now < self._next_state:
            return
        self._level = status.level
        self._next_state = now + self.settings.state_interval_s
        payload = state_json(status)
        payload["mqtt"] = {"dropped": self.status().dropped}
        client.publish(self.settings.topic("state"), json.dumps(payload), qos=1, retain=True)

    def _command(self, topic: str, payload: bytes, retained: bool = False) -> None:
        name = topic.rpartition("/")[2]
        if not self.settings.commands:
            return  # not subscribed; a message left from before is not obeyed
        try:
            text = payload.decode("ascii").strip()
        except UnicodeDecodeError:
            text = None
        busy = None
        if retained:  # it would be done again at every reconnection
            problem = "a retained message: publish commands without retain"
        elif name not in COMMANDS:
            problem = f"unknown command {name!r} (commands: {', '.join(COMMANDS)})"
        elif text is None:
            problem = "the payload is not ASCII text"
        elif name == "protect" and not CAPTURE_ID.fullmatch(text):
            problem = "the payload must be a capture id (32 hexadecimal digits)"
        elif name != "protect" and text not in PRESS:
            problem = 'the payload must be empty or "PRESS"'
        elif busy := self._busy(name, text if name == "protect" else None):
            problem = busy
        else:
            request = Request(name, capture_id=text if name == "protect" else None)
            self._submit(request)
            with self._lock:
                self._requests.append((name, request))
            log.info("MQTT: command %s%s", name, f" {text}" if name == "protect" else "")
            return
        with self._lock:
            self._ignored += 1
        key = (name, problem == busy)
        if key not in self._ignored_logged:  # once per command and kind: a flood must not fill the log
            self._ignored_logged.add(key)
            log.warning("MQTT: ignored a command on %s: %s (more are counted, not logged)", topic, problem)

    def _busy(self, name: str, capture_id: str | None) -> str | None:
        # Why a command is not handed to the main loop now, if it is not: each waits in the
        # loop's queue before the triggers, so the same one is not queued twice, nor more than
        # COMMANDS_WAITING_MAX in all.
        with self._lock:
            waiting = [(n, r.capture_id) for n, r in self._requests if not r.done.is_set()]
        if (name, capture_id) in waiting:
            return "the same command still waits for the main loop"
        if len(waiting) >= COMMANDS_WAITING_MAX:
            return f"{COMMANDS_WAITING_MAX} commands already wait for the main loop"
        return None

    def _finish_requests(self) -> bool:
        # Logs the outcome of the commands the main loop has done; returns whether some wait.
        with self._lock:
            finished = [(name, r) for name, r in self._requests if r.done.is_set()]
            self._requests = [(name, r) for name, r in self._requests if not r.done.is_set()]
        for name, request in finished:
            if request.error is not None:
                log.warning("MQTT: command %s not done: %s", name, request.error)
            elif request.result:
                log.info("MQTT: command %s done: %s", name, ", ".join(request.result))
        with self._lock:
            return bool(self._requests)


def forget(settings: MqttSettings, *, timeout_s: float = 10.0) -> int:
    """Remove the trap from the broker: an empty retained message on every discovery config
    topic (buttons included; under ``homeassistant`` when ``discovery_prefix`` is empty, the
    default, which the trap may have announced itself under before), on ``state``,
    ``thumbnail`` and ``availability``, so that Home Assistant removes the device and the
    broker keeps nothing of it.  Returns the number of topics cleared.  Raises
    ``ConnectionError`` when the broker cannot be reached or refuses, and ``TimeoutError`` when
    it does not take the messages within ``timeout_s`` seconds."""
    settings = dataclasses.replace(settings, discovery_prefix=settings.discovery_prefix or "homeassistant")
    client = make_client(settings, f"camtrap-{settings.node_id}-forget-{os.getpid()}")
    client.will_clear()
    connected = threading.Event()
    answer: dict = {}

    def on_connect(client, userdata, flags, reason_code, properties):
        answer["reason"] = reason_code
        connected.set()

    client.on_connect = on_connect
    client.connect_timeout = timeout_s
    try:
        client.connect(settings.host, settings.port, keepalive=max(5, int(timeout_s)))
    except OSError as exc:
        raise ConnectionError(f"cannot connect to {settings.host}:{settings.port}: {exc}") from None
    client.loop_start()
    try:
        if not connected.wait(timeout_s):
            raise TimeoutError(f"no answer from {settings.host}:{settings.port} within {timeout_s:g} s")
        if answer["reason"].is_failure:
            raise ConnectionError(f"the broker refused the connection: {answer['reason']}")
        topics = [*discovery_configs(settings, commands=True)] + [
            settings.topic(name) for name in ("state", "thumbnail", "availability")
        ]
        infos = [client.publish(topic, b"", qos=1, retain=True) for topic in topics]
        deadline = time.monotonic() + timeout_s
        for info in infos:
            info.wait_for_publish(max(0.0, deadline - time.monotonic()))
            if not info.is_published():
                raise TimeoutError(f"the broker did not take the messages within {timeout_s:g} s")
        return len(topics)
    finally:
        client.disconnect()
        client.loop_stop()
