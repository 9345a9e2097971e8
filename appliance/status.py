"""One status contract: the state of every part, gathered by one collector, read by the status page,
``/api/status``, ``/healthz``, ``/metrics`` and systemd's ``STATUS=`` line.

Each part tells its state with a ``status()`` method that returns a frozen dataclass:
:class:`~hw.camera.CameraStatus`, :class:`~hw.triggers.GateStatus`, :class:`~hw.system.SystemStatus`,
:class:`~appliance.cleanup.CleanupStatus`, :class:`~appliance.clocktrust.ClockStatus`, and a copy
of the store's :class:`~appliance.reconcile.Reconciliation`.  :class:`StatusCollector` reads them,
the main loop's :class:`~appliance.loop.Health`, the index and the disk into one :class:`Status`,
whose problems and level are decided here and nowhere else.  :meth:`Status.to_json` is the JSON
of ``/api/status`` (docs/web-api.md); :meth:`Status.systemd_line` the line ``systemctl status``
shows.
"""

import dataclasses
import datetime
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from appliance import __version__
from appliance.cleanup import Cleanup, CleanupStatus, free_percent
from appliance.clocktrust import DISTRUSTED, TRUSTED, UNSYNCHRONISED, ClockStatus, TrustedClock
from appliance.loop import Health
from appliance.mqtt import DISCONNECTED, MqttStatus, Telemetry
from appliance.offloader import ERROR, REMOTE_FAILURES, Offloader, OffloadStatus, Uploader
from appliance.reconcile import Reconciliation
from appliance.store import IndexReader
from hw import system
from hw.camera import CameraStatus, RecoveringCamera
from hw.clock import boot_id
from hw.lights import Lights
from hw.system import Probes, SystemStatus
from hw.triggers import GateStatus, TriggerGate

# Captures in Status.latest (the status page's grid, /api/status "latest").
LATEST_COUNT = 12
# Said to a naturalist at the trap: what is wrong, what it means for the photos, what to do.
UNSYNCHRONISED_REASON = (
    "not set (no network time or GPS yet): photo times may be wrong. Connect the trap to a network "
    "once, or fit a real-time clock module."
)


@dataclass(frozen=True)
class Problem:
    """Something wrong now: ``area`` (``"camera"``, ``"storage"``, ``"space"``, ``"power and
    temperature"``, ``"clock"``, ``"offload"``, ``"upload"`` or ``"mqtt"``), ``reason`` (one line,
    for a person) and
    ``stops_capturing``:
    whether the appliance is not capturing because of it (a red banner, ``/healthz`` 503), or
    only warns (a yellow banner, ``/healthz`` still 200)."""

    area: str
    reason: str
    stops_capturing: bool


@dataclass(frozen=True)
class CaptureCounts:
    """Captures in the index (``total``), those of the last hour and of the last 24 h, and the
    bytes of the last hour's (see :meth:`~appliance.store.IndexReader.counts`)."""

    total: int
    last_hour: int
    last_24h: int
    bytes_last_hour: int


@dataclass(frozen=True)
class Disk:
    """The data directory's filesystem: its size and free space in bytes, the free space as a
    percentage (0-100, one decimal), and ``hours_left``: hours of capturing at the last hour's
    rate before free space reaches the floor where capturing pauses (None without a capture in
    the last hour)."""

    total_bytes: int
    free_bytes: int
    free_percent: float
    hours_left: float | None


@dataclass(frozen=True)
class Status:
    """The appliance's state at one moment, as :meth:`StatusCollector.collect` gathered it.

    ``version``, ``mode`` (``"simulation"`` or ``"hardware"``), ``problems`` (in the order they
    were found), ``startup_check`` (what the store's check at start-up did), ``cleanup`` and
    ``last_cleanup_run`` (the index's row of it, a dict), ``uptime_s`` (seconds, one decimal),
    ``captures``, ``disk`` (None when unknown), the hardware parts' states, ``uv_light_on``,
    ``clock``, ``latest`` (the newest captures as :func:`capture_json` gives them, newest first)
    ``actions`` (whether the web page takes actions: set by the web app, which alone knows) and
    ``offload``, one :class:`~appliance.offloader.OffloadStatus` per offload target (none when the
    offloader is not running), and ``mqtt``, the :class:`~appliance.mqtt.MqttStatus` (None
    without ``mqtt_host``).
    A part that is not running is None.
    """

    version: str
    mode: str
    problems: tuple[Problem, ...]
    startup_check: Reconciliation | None
    cleanup: CleanupStatus | None
    last_cleanup_run: dict | None
    uptime_s: float
    captures: CaptureCounts
    disk: Disk | None
    camera: CameraStatus | None = None
    triggers: GateStatus | None = None
    system: SystemStatus | None = None
    uv_light_on: bool | None = None
    clock: ClockStatus | None = None
    latest: tuple[dict, ...] = ()
    actions: bool = False
    offload: tuple[OffloadStatus, ...] = ()
    mqtt: MqttStatus | None = None

    @property
    def level(self) -> str:
        """``"error"`` when a problem stops capturing, ``"warning"`` when there are only others,
        else ``"ok"``: the banner's colour, and ``/healthz`` 503 for ``"error"``."""
        if any(problem.stops_capturing for problem in self.problems):
            return "error"
        return "warning" if self.problems else "ok"

    def problem_reasons(self) -> dict[str, str]:
        """``{area: reason}`` of every problem, in order (as ``/api/status`` and ``/healthz`` give them)."""
        return {problem.area: problem.reason for problem in self.problems}

    def to_json(self) -> dict:
        """The JSON of ``/api/status`` (docs/web-api.md): the fields above, ``level`` after
        ``mode``, ``problems`` as ``{area: reason}``, ``startup_check`` with its ``repairs``,
        ``cleanup`` with its ``last_run``; the key of a hardware part that is not running is left
        out (``startup_check`` is null)."""
        check = self.startup_check
        out = {
            "version": self.version,
            "mode": self.mode,
            "level": self.level,
            "problems": self.problem_reasons(),
            "startup_check": _plain(check) | {"repairs": check.repairs} if check is not None else None,
            "cleanup": (_plain(self.cleanup) if self.cleanup else {}) | {"last_run": self.last_cleanup_run},
            "uptime_s": self.uptime_s,
            "captures": _plain(self.captures),
            "disk": _plain(self.disk),
            "actions": self.actions,
        }
        for key in ("camera", "triggers", "system", "uv_light_on", "clock", "mqtt"):
            if getattr(self, key) is not None:
                out[key] = _plain(getattr(self, key))
        out["offload"] = [target.to_json() for target in self.offload]
        out["latest"] = list(self.latest)
        return out

    def systemd_line(self) -> str:
        """One line for systemd's ``STATUS=`` (shown by ``systemctl status``): captures of the last
        24 h and in all, free space in GB, the cleanup's state, and each offload target's
        state but ``"off"`` (with "safe to remove" when it is), and MQTT's state when it is not
        connected."""
        return _systemd_line(self.captures, self.disk, self.cleanup, self.offload, self.mqtt)


def _systemd_line(
    captures: "CaptureCounts",
    disk: "Disk | None",
    cleanup: CleanupStatus | None,
    offload: tuple[OffloadStatus, ...] = (),
    mqtt: MqttStatus | None = None,
) -> str:
    free = f"{disk.free_bytes / 1e9:.1f} GB free" if disk else "free space unknown"
    line = (
        f"{captures.last_24h} captures in the last 24 h, {captures.total} in all; "
        f"{free}; cleanup {cleanup.state if cleanup else 'ok'}"
    )
    for target in offload:
        if target.state != "off":
            line += f"; {target.target} {target.state}{', safe to remove' if target.safe_to_remove else ''}"
    if mqtt is not None and mqtt.state != "connected":
        line += f"; MQTT {mqtt.state}"
    return line


def _plain(value):
    """``value`` with its dataclasses as dicts and its tuples as lists, for JSON."""
    if dataclasses.is_dataclass(value):
        return {field.name: _plain(getattr(value, field.name)) for field in dataclasses.fields(value)}
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    return value


def capture_json(row: dict, *, full: bool = False) -> dict:
    """A capture (a row of the index) as the API gives it (docs/web-api.md); ``full`` adds
    its ``sha256`` and its ``metadata`` (parsed)."""
    out = {
        "id": row["id"],
        "seq": row["seq"],
        "captured_at": row["captured_at"],
        "clock_synced": bool(row["clock_synced"]),
        "recovered": bool(row["recovered"]),
        "trigger": row["trigger"],
        "capture_method": row["capture_method"],
        "event_id": row["event_id"],
        "bytes": row["bytes"],
        "width": row["width"],
        "height": row["height"],
        "protected": bool(row["protected"]),
        "page_url": f"/captures/{row['id']}",
        "media_url": f"/media/{row['id']}.jpg",
        "thumbnail_url": f"/thumbnails/{row['id']}.webp" if row["thumbnail_path"] else None,
    }
    if full:
        out["sha256"] = row["sha256"]
        out["metadata"] = json.loads(row["metadata"] or "{}")
    return out


class StatusCollector:
    """Gathers the state of every part into one :class:`Status` (:meth:`collect`), for the status
    page, the JSON API, ``/healthz``, ``/metrics`` and systemd.  Safe to call from any thread: it
    only reads (the index through its own read-only connections, the parts through their
    thread-safe ``status()``).

    :param reader: the index (:class:`~appliance.store.IndexReader`): counts, newest captures,
        last cleanup run.
    :param mode: ``"simulation"`` or ``"hardware"``.
    :param started_monotonic: :func:`time.monotonic` at start-up, for the uptime.
    :param health: the main loop's :class:`~appliance.loop.Health`.  It reports only what made a
        capture fail (the camera, the store), so each of its problems stops capturing.
    :param reconciliation: what the store's check at start-up did, updated by a full check
        running beside capturing.
    :param cleanup: the :class:`~appliance.cleanup.Cleanup`; capturing paused for space is a
        problem (``"space"``) that stops capturing.
    :param camera: the :class:`~hw.camera.RecoveringCamera`; a camera not ``"ok"`` stops
        capturing.
    :param gate: the :class:`~hw.triggers.TriggerGate` (triggers suppressed).
    :param probes: the :class:`~hw.system.Probes`; throttling or a hot CPU is a warning
        (``"power and temperature"``), and so is a clock the kernel says is not synchronised.
    :param lights: the :class:`~hw.lights.Lights` (whether the UV light is on).
    :param clock: the :class:`~appliance.clocktrust.TrustedClock`; a clock not trusted is a
        warning (``"clock"``), and captures are then counted by time since boot.
    :param offloader: the :class:`~appliance.offloader.Offloader`; a copy run that ended in an
        error is a warning (``"offload"``).
    :param uploader: the :class:`~appliance.offloader.Uploader`; an upload run that failed (the
        remote unreachable, a credential refused...) is a warning (``"upload"``).
    :param mqtt: the :class:`~appliance.mqtt.Telemetry`; not connected to the broker (after a
        first try) is a warning (``"mqtt"``).
    :param disk_usage: ``disk_usage(path)`` as :func:`hw.system.disk_usage` (None when unknown),
        for the data directory's filesystem.
    :param monotonic: the clock of the uptime, in seconds (for tests).

    Every part but ``reader`` may be None (not running): it is then absent from the status.
    :meth:`collect` raises ``sqlite3.Error`` when the index cannot be read.
    """

    def __init__(
        self,
        reader: IndexReader,
        *,
        mode: str,
        started_monotonic: float,
        health: Health | None = None,
        reconciliation: Reconciliation | None = None,
        cleanup: Cleanup | None = None,
        camera: RecoveringCamera | None = None,
        gate: TriggerGate | None = None,
        probes: Probes | None = None,
        lights: Lights | None = None,
        clock: TrustedClock | None = None,
        offloader: Offloader | None = None,
        uploader: Uploader | None = None,
        mqtt: Telemetry | None = None,
        disk_usage: Callable[[Path], object] = system.disk_usage,
        monotonic: Callable[[], float] = time.monotonic,
    ):
        self._reader = reader
        self._mode = mode
        self._started = started_monotonic
        self._health = health or Health()
        self._reconciliation = reconciliation
        self._cleanup = cleanup
        self._camera = camera
        self._gate = gate
        self._probes = probes
        self._lights = lights
        self._clock = clock
        self._offloader = offloader
        self._uploader = uploader
        self._mqtt = mqtt
        self._disk_usage = disk_usage
        self._monotonic = monotonic

    def collect(self) -> Status:
        """The state now (see :class:`Status`)."""
        cleanup = self._cleanup.status() if self._cleanup else None
        camera = self._camera.status() if self._camera else None
        probed = self._probes.status() if self._probes else None
        clock = self._clock.status() if self._clock else None
        counts = self._counts(clock, synced=probed is None or probed.clock_synced is not False)
        offload = self._offload()
        mqtt = self._mqtt.status() if self._mqtt else None
        return Status(
            version=__version__,
            mode=self._mode,
            problems=self._problems(cleanup, camera, probed, clock, offload, mqtt),
            startup_check=self._reconciliation.status() if self._reconciliation else None,
            cleanup=cleanup,
            last_cleanup_run=self._reader.last_cleanup_run(),
            uptime_s=round(self._monotonic() - self._started, 1),
            captures=counts,
            disk=self._disk(counts, cleanup),
            camera=camera,
            triggers=self._gate.status() if self._gate else None,
            system=probed,
            uv_light_on=self._lights.uv_on if self._lights else None,
            clock=clock,
            latest=tuple(capture_json(row) for row in self._reader.latest(LATEST_COUNT)),
            offload=offload,
            mqtt=mqtt,
        )

    def systemd_line(self) -> str:
        """:meth:`Status.systemd_line` of the state now, reading only the counts, the disk and
        the cleanup: it runs on the main loop, which must not wait for the probes (a subprocess)
        nor read the newest captures."""
        cleanup = self._cleanup.status() if self._cleanup else None
        counts = self._counts(self._clock.status() if self._clock else None, synced=True)
        offload = self._offload()
        mqtt = self._mqtt.status() if self._mqtt else None
        return _systemd_line(counts, self._disk(counts, cleanup), cleanup, offload, mqtt)

    def _offload(self) -> tuple[OffloadStatus, ...]:
        return tuple(part.status() for part in (self._offloader, self._uploader) if part is not None)

    def _counts(self, clock: ClockStatus | None, *, synced: bool) -> CaptureCounts:
        # Counted by time since boot while the wall clock cannot be trusted (appliance.clocktrust).
        trusted = synced and (clock is None or clock.state == TRUSTED)
        boot = None if trusted else (boot_id(), time.clock_gettime(time.CLOCK_BOOTTIME))
        return CaptureCounts(**self._reader.counts(datetime.datetime.now(datetime.UTC), boot=boot))

    def _problems(
        self,
        cleanup: CleanupStatus | None,
        camera: CameraStatus | None,
        probed: SystemStatus | None,
        clock: ClockStatus | None,
        offload: tuple[OffloadStatus, ...] = (),
        mqtt: MqttStatus | None = None,
    ) -> tuple[Problem, ...]:
        # By area, in the order found; a later finding of the same area replaces the reason.
        found = {area: Problem(area, reason, True) for area, reason in self._health.problems().items()}
        if cleanup is not None and cleanup.state == "paused":
            found["space"] = Problem("space", cleanup.reason, True)
        if camera is not None and camera.state != "ok":
            reason = f"{camera.state} after {camera.failures} failures: {camera.last_error}"
            found["camera"] = Problem("camera", reason, True)
        if probed is not None and probed.problems:
            area = "power and temperature"
            found[area] = Problem(area, ", ".join(probed.problems), False)
        if clock is not None and clock.state == DISTRUSTED:
            found["clock"] = Problem("clock", clock.reason, False)
        elif (probed is not None and probed.clock_synced is False) or (
            clock is not None and clock.state == UNSYNCHRONISED
        ):
            found["clock"] = Problem("clock", UNSYNCHRONISED_REASON, False)
        for target in offload:
            if target.state == ERROR:
                reason = f"the last copy to the {target.target.upper()} stick ended early: {target.reason}"
                found["offload"] = Problem("offload", reason, False)
            elif target.state in REMOTE_FAILURES:
                reason = f"the upload to {target.remote} failed ({target.state}): {target.reason}"
                found["upload"] = Problem("upload", reason, False)
        if mqtt is not None and mqtt.state == DISCONNECTED:
            found["mqtt"] = Problem(
                "mqtt", f"not connected to the broker {mqtt.broker}: {mqtt.reason}", False
            )
        return tuple(found.values())

    def _disk(self, counts: CaptureCounts, cleanup: CleanupStatus | None) -> Disk | None:
        usage = self._disk_usage(self._reader.data_dir)
        if usage is None:
            return None
        floor = cleanup.capture_min_free_bytes if cleanup else 0
        rate = counts.bytes_last_hour
        return Disk(
            total_bytes=usage.total,
            free_bytes=usage.free,
            free_percent=round(free_percent(usage), 1),
            hours_left=round(max(0, usage.free - floor) / rate, 1) if rate else None,
        )
