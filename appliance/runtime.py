"""The running appliance: one object that owns every long-lived part of ``appliance run``.

:class:`Appliance` builds the parts from one :class:`~appliance.config.Config` (the store and its
start-up check, the clock, cleanup, the camera, the lights, the triggers, the web server, the main
loop), holds the list of periodic jobs in one place (:meth:`Appliance.jobs`), applies a reloaded
config part by part (:meth:`Appliance.reload`), and closes everything in reverse order when its
``with`` block ends.  ``appliance run`` (:func:`appliance.cli.run`) is preflight, this object,
signals and :meth:`Appliance.run`; tests build it in-process the same way.
"""

import contextlib
import dataclasses
import datetime
import logging
import queue
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import schedule

from appliance import config as config_module
from appliance.activity import DISK_SAMPLE_INTERVAL_S, sample_disk
from appliance.cleanup import Cleanup, Policy
from appliance.clocktrust import DISTRUSTED, TrustedClock
from appliance.control import ControlChannel
from appliance.exc import ConfigError, Stopped
from appliance.loop import Health, LoopSettings, MainLoop, Request, guarded
from appliance.mqtt import MqttSettings, Telemetry
from appliance.offloader import Offloader, OffloadSettings, Uploader, UploadSettings
from appliance.reconcile import STEP_INTERVAL_S, FullCheck, open_store
from appliance.status import StatusCollector
from appliance.store import CHECKPOINT_INTERVAL_S, IndexReader
from appliance.web import WebDeps, WebServer, make_app
from boot.systemd import Notifier
from hw.camera import Picamera2Camera, RecoveringCamera, SimulatedCamera, camera_controls
from hw.lights import Lights, LightsSettings
from hw.system import Probes
from hw.triggers import (
    GateSettings,
    SimulatedTriggerSource,
    Timelapse,
    TimelapseSettings,
    TriggerEvent,
    TriggerGate,
    Triggers,
    make_pin_factory,
)

log = logging.getLogger("appliance")

# Seconds between two readings of the clock between captures (a jump is noticed within this).
CLOCK_CHECK_INTERVAL_S = 10
# Seconds between two STATUS= lines to systemd (shown by systemctl status).
STATUS_INTERVAL_S = 30
# Seconds between two switchings of the UV light by the active windows.
UV_CHECK_INTERVAL_S = 10


@dataclass(frozen=True)
class Job:
    """A periodic job of the main loop's scheduler: ``run()`` every ``interval_s`` seconds; a
    failure is logged under ``name`` and the job runs again at its next time
    (:func:`~appliance.loop.guarded`)."""

    name: str
    interval_s: float
    run: Callable[[], object]


@dataclass(frozen=True)
class Reload:
    """What a reload did: ``applied``, the names of the changed settings now in effect (those
    whose reload rule is ``live`` or ``export``); ``restart``, those that changed but keep their
    running value until a restart."""

    applied: frozenset[str]
    restart: frozenset[str]


class Appliance:
    """Every long-lived part of ``appliance run``, built from ``config``; a context manager whose
    exit closes the parts in reverse order (the lights off, the camera closed, the web server
    stopped, the store closed last but one).

    :param config: the settings (:class:`~appliance.config.Config`), the data directory already
        checked by preflight.
    :param notifier: systemd's notification socket (None: a disabled one, as outside systemd).
    :param read_config: reads the config files again on SIGHUP (None: no reload).
    :param started_monotonic: :func:`time.monotonic` when the start began, preflight included
        (for the uptime; None: now).
    :param listener: the status page's listening socket, bound already (by ``appliance run``,
        before it opens anything, so that a port in use is found first), closed with the other
        parts; None: bind ``web_listen_host``:``web_port`` here.

    Raises, closing what was opened: :class:`~appliance.exc.ApplianceError` (the store cannot be
    opened), :class:`~hw.exc.HardwareError` and gpiozero's errors (camera, pins), ``OSError`` (the
    web port cannot be bound), and whatever a signal handler raises during start-up.
    """

    # The parts whose settings change while running: the attribute, and the frozen settings class
    # whose ``from_config(config)`` reads its settings.  :meth:`reload` is one line per part.
    LIVE_PARTS = (
        ("gate", GateSettings),
        ("loop", LoopSettings),
        ("timelapse", TimelapseSettings),
        ("lights", LightsSettings),
        ("cleanup", Policy),
        ("offloader", OffloadSettings),
        ("uploader", UploadSettings),
    )

    def __init__(
        self,
        config: config_module.Config,
        *,
        notifier: Notifier | None = None,
        read_config: Callable[[], config_module.Config] | None = None,
        started_monotonic: float | None = None,
        listener: socket.socket | None = None,
    ):
        self.config = config
        self.started = time.monotonic() if started_monotonic is None else started_monotonic
        self.mode = "simulation" if config.simulate else "hardware"
        self.data_dir = Path(config.data_dir)
        self.events: queue.Queue = queue.Queue()
        # Whether actions (Requests from the web page and the control socket) are still taken;
        # the lock keeps one from being queued between the main loop's end and their refusal.
        self._taking_actions, self._actions_lock = True, threading.Lock()
        self.notifier = notifier or Notifier({})
        self.store_closed: bool | None = None  # whether the store closed cleanly, once it has
        self._read_config = read_config
        self._listener = listener
        self._stack = contextlib.ExitStack()
        try:
            self._build()
        except BaseException:
            self._stack.close()
            raise

    def __enter__(self) -> "Appliance":
        return self

    def __exit__(self, *exc_info) -> None:
        self._stack.close()

    def current_config(self) -> config_module.Config:
        """The config in effect: the one given, or the last one :meth:`reload` applied."""
        return self.config

    def _build(self) -> None:
        config, stack = self.config, self._stack
        if self._listener is not None:  # closed on every way out (the server's stop closes it too)
            stack.callback(self._listener.close)
        self.notifier.status("checking the capture store")
        self.store, self.reconciliation = open_store(
            self.data_dir, thumbnail_max_px=config.thumbnail_max_px, beside=True
        )
        stack.callback(self._close_store)
        log.log(
            logging.WARNING if self.reconciliation.needs_attention else logging.INFO,
            "capture store: %s",
            self.reconciliation.summary(),
        )
        self.health = Health()
        self.clock = TrustedClock(
            anchor=self.store.clock_anchor(),
            record_anchor=self.store.set_clock_anchor,
            gap_accepted=self._clock_gap_accepted,
        )
        self.clock.now()  # its state, for the log and the page from the start
        if self.clock.status().state == DISTRUSTED:  # unsynchronised: the preflight check said so
            log.warning("clock: %s", self.clock.status().reason)
        self.cleanup = Cleanup(
            self.store, Policy.from_config(config), interval_s=config.cleanup_interval_s, clock=self.clock
        )
        self.reader = IndexReader(self.data_dir)
        self.offloader = Offloader(
            self.reader, self.data_dir, OffloadSettings.from_config(config), submit=self._submit,
            config=self.current_config,
        )  # fmt: skip
        stack.callback(self.offloader.close)  # before the store closes: a run under way stops
        self.uploader = Uploader(
            self.reader, self.data_dir, UploadSettings.from_config(config), submit=self._submit,
            config=self.current_config,
        )  # fmt: skip
        stack.callback(self.uploader.close)
        pin_factory = make_pin_factory(config.simulate)
        self.gate = TriggerGate(GateSettings.from_config(config))
        self.lights = Lights(LightsSettings.from_config(config), pin_factory=pin_factory)
        stack.callback(self.lights.close)  # off on every way out, a crash included
        self.camera = RecoveringCamera(lambda: make_camera(config), max_failures=config.camera_max_failures)
        stack.callback(self.camera.close)
        self.probes = Probes(self.data_dir)
        self.mqtt = None
        if config.mqtt_host:  # started once every part is built (the status page's URL known)
            self.mqtt = Telemetry(
                MqttSettings.from_config(config), status=lambda: self.status.collect(), submit=self._submit,
                data_dir=self.data_dir, latest=self._latest_row,
            )  # fmt: skip
        self.status = StatusCollector(
            self.reader,
            mode=self.mode,
            started_monotonic=self.started,
            health=self.health,
            reconciliation=self.reconciliation,
            cleanup=self.cleanup,
            camera=self.camera,
            gate=self.gate,
            probes=self.probes,
            lights=self.lights,
            clock=self.clock,
            offloader=self.offloader,
            uploader=self.uploader,
            mqtt=self.mqtt,
        )
        self.server = WebServer(self._web_app(), config.web_listen_host, config.web_port, sock=self._listener)
        stack.callback(self.server.stop)
        self.scheduler = schedule.Scheduler()
        self.loop = MainLoop(
            events=self.events,
            camera=self.camera,
            store=self.store,
            scheduler=self.scheduler,
            settings=LoopSettings.from_config(config),
            clock=self.clock,
            health=self.health,
            cleanup=self.cleanup,
            notifier=self.notifier,
            lights=self.lights,
        )
        if self._read_config is not None:
            self.loop.on_reload = self._reread
        self.loop.on_offload = self.offloader.start
        if self.mqtt is not None:
            self.loop.on_captured = self.mqtt.captured
        self.loop.delete_offloaded = lambda: self.offloader.settings.delete_after
        self.triggers = Triggers(
            self.events,
            button_pin=config.button_pin or None,
            motion_pin=config.motion_pin or None,
            bounce_time_s=config.button_bounce_time_s or None,
            gate=self.gate,
            hold_time_s=config.button_hold_time_s,
            when_held=self._hold_action(config.button_hold_action),
            pin_factory=pin_factory,
        )
        stack.callback(self.triggers.close)
        self.timelapse = Timelapse(self.events, TimelapseSettings.from_config(config), gate=self.gate)
        self.full_check = None
        if self.reconciliation.full_check_due:
            # In short steps between captures: capturing starts now, the check ends a little later.
            self.full_check = FullCheck(
                self.store, self.reconciliation, config.thumbnail_max_px, busy=self._busy
            )
            stack.callback(self.full_check.close)
        for job in self.jobs():
            self.scheduler.every(job.interval_s).seconds.do(guarded(job.name, job.run))
        if config.simulate:
            source = SimulatedTriggerSource(self.triggers, config.simulate_trigger_interval_s)
            source.start()
            stack.callback(source.stop)
        if self.mqtt is not None:
            self.mqtt.start(page_url=self._page_url())
            stack.callback(self.mqtt.close)  # "offline" once the loop has stopped
        # Registered last, so closed first: no command is taken once the parts start closing.
        self.control = stack.enter_context(
            ControlChannel(self.data_dir, self._submit, offload_status=self._offload_json)
        )
        # Before the first capture (and before the status page is announced), not a second later.
        guarded("cleanup", self.cleanup.tick)()
        guarded("disk sample", self._sample_disk)()  # the status page's plot has a point at once
        if config.uv_pin:
            guarded("UV light", self._switch_uv)()

    def jobs(self) -> list[Job]:
        """The periodic jobs of the main loop's scheduler, all of them."""
        jobs = [
            # Every second: the tick itself keeps the interval on the monotonic clock, and goes
            # on deleting in short slices while a run is under way.
            Job("cleanup", 1, self.cleanup.tick),
            Job("WAL checkpoint", CHECKPOINT_INTERVAL_S, self.store.checkpoint),
            Job("camera recovery", 1, self.camera.recover),
            Job("clock check", CLOCK_CHECK_INTERVAL_S, self.clock.tick),
            Job("timelapse", 1, self.timelapse.tick),
            Job("disk sample", DISK_SAMPLE_INTERVAL_S, self._sample_disk),
            # Every second: the offloader keeps offload_check_interval_s itself (a reload changes it).
            Job("USB offload", 1, self.offloader.tick),
            # Every second: the uploader keeps offload_interval_s and its back-off itself.
            Job("remote offload", 1, self.uploader.tick),
        ]
        if self.config.uv_pin:
            jobs.append(Job("UV light", UV_CHECK_INTERVAL_S, self._switch_uv))
        if self.notifier.enabled:
            jobs.append(Job("systemd status", STATUS_INTERVAL_S, self._send_status))
        if self.full_check is not None:
            jobs.append(Job("full check", STEP_INTERVAL_S, self.full_check.step))
        return jobs

    def run(self, duration_s: float | None = None) -> None:
        """Run the main loop until a stop request or ``duration_s`` seconds, telling systemd
        ``READY=1`` at the start and ``STOPPING=1`` at the end.  Raises what stopped the loop on
        its own (a damaged or vanished index, a camera that failed too often), so that systemd
        restarts the appliance."""
        self.notifier.ready(self.status.systemd_line())
        try:
            self.loop.run(duration_s)
        finally:
            self._refuse_actions()
            self.notifier.stopping()
        if self.loop.fatal is not None:
            raise self.loop.fatal

    def reload(self, new: config_module.Config) -> Reload:
        """Apply ``new``: every part in :data:`LIVE_PARTS` takes its settings from it; settings
        whose reload rule is ``restart`` keep their running value (:attr:`Reload.restart` names
        those that changed).  Raises :class:`~appliance.exc.ConfigError` (nothing applied) when
        ``new`` with those settings kept is not a valid config."""
        old = self.config
        changed = {f.name for f in config_module.settings() if getattr(new, f.name) != getattr(old, f.name)}
        restart = changed & config_module.settings_by_reload(config_module.RESTART)
        try:
            running = dataclasses.replace(new, **{name: getattr(old, name) for name in restart})
        except ConfigError as exc:  # valid alone (it was loaded), but not beside the running ones
            raise ConfigError(f"with the settings that take a restart unchanged, {exc}") from None
        settings = [(getattr(self, part), kind.from_config(running)) for part, kind in self.LIVE_PARTS]
        for part, part_settings in settings:
            part.configure(part_settings)
        self.config = running
        return Reload(frozenset(changed - restart), frozenset(restart))

    def _reread(self) -> None:
        # SIGHUP, run by the main loop between captures: a bad config is logged and ignored.
        try:
            done = self.reload(self._read_config())
        except ConfigError as exc:
            log.error("config not reloaded, keeping the running one: %s", exc)
            return
        log.info("config reloaded: %s", ", ".join(sorted(done.applied)) or "nothing changed")
        if done.restart:
            log.warning("config: %s changed, which takes a restart", ", ".join(sorted(done.restart)))

    def _offload_json(self) -> dict:
        return self.offloader.status().to_json()

    def _send_status(self) -> None:
        self.notifier.status(self.status.systemd_line())

    def _submit(self, request: Request) -> None:
        # Hands an action to the main loop, or, once it has stopped, answers it at once: nothing
        # else would, and its asker would hold a server thread (and the shutdown) until its timeout.
        with self._actions_lock:
            if self._taking_actions:
                self.events.put(request)
                return
        self._refuse(request)

    def _refuse_actions(self) -> None:
        with self._actions_lock:
            self._taking_actions = False
            left = []
            while True:
                try:
                    left.append(self.events.get_nowait())
                except queue.Empty:
                    break
        for event in left:
            if isinstance(event, Request):
                self._refuse(event)

    @staticmethod
    def _refuse(request: Request) -> None:
        request.error = Stopped("the appliance is stopping: nothing done; ask again once it runs")
        request.done.set()

    def _web_app(self):
        deps = WebDeps(
            self.reader,
            self.status.collect,
            submit=self._submit,
            token=self.config.web_token,
            config=self.current_config,  # the reloaded one after a SIGHUP
        )
        return make_app(deps)

    def _page_url(self) -> str:
        # web_url, else the address the page listens on when it is one, else the host's mDNS name.
        if self.config.web_url:
            return self.config.web_url
        if self.server.host in ("0.0.0.0", "::", "", None):
            return f"http://{socket.gethostname()}.local:{self.server.port}"
        return self.server.url

    def _latest_row(self) -> dict | None:
        rows = self.reader.latest(1)
        return rows[0] if rows else None

    def _clock_gap_accepted(self, gap_s: float) -> None:
        # Had the clock been behind before, every capture would now look older than it is.
        days = self.config.max_capture_age_days
        if days and gap_s > days * 86400:
            self.store.set_expiry_floor()
            log.warning(
                "clock: %.0f days ahead of the last time the appliance ran, more than "
                "max_capture_age_days; the captures from before are deleted by age only once "
                "newer ones are", gap_s / 86400,
            )  # fmt: skip

    def _hold_action(self, name: str) -> Callable[[], None] | None:
        # Called on a gpiozero thread: each only hands work over to the main loop.
        return {
            "none": None,
            "test_shot": lambda: self.events.put(TriggerEvent("manual", time.monotonic())),
            "shutdown": lambda: self.loop.request_stop("button held: clean stop; the data is safe"),
            "offload": lambda: self._submit(Request("offload")),
        }[name]

    def _busy(self) -> bool:
        return not self.events.empty()  # a trigger waits: the full check yields to it

    def _sample_disk(self) -> None:
        sample_disk(self.store, self.clock.now)

    def _switch_uv(self) -> None:
        self.lights.set_uv(self.timelapse.windows.contains(datetime.datetime.now().time()))

    def _close_store(self) -> None:
        self.store_closed = self.store.close()


def make_camera(config: config_module.Config):
    """The camera ``config`` asks for: a :class:`~hw.camera.SimulatedCamera` (synthetic scenes, or
    replaying ``simulate_replay_dir``) in simulation, else a :class:`~hw.camera.Picamera2Camera`.
    Raises :class:`~hw.exc.CameraError` when the camera cannot be opened."""
    size = config.camera_size_px if any(config.camera_size_px) else None
    if config.simulate:
        return SimulatedCamera(
            replay_dir=Path(config.simulate_replay_dir) if config.simulate_replay_dir else None,
            size_px=size or (1280, 960),
            lores_size_px=config.camera_lores_size_px,
            jpeg_quality=config.jpeg_quality,
        )
    return Picamera2Camera(
        size_px=size,
        lores_size_px=config.camera_lores_size_px,
        jpeg_quality=config.jpeg_quality,
        controls=camera_controls(
            exposure_time_us=config.camera_exposure_time_us,
            analogue_gain=config.camera_analogue_gain,
            awb_mode=config.camera_awb_mode,
        ),
        autofocus=config.camera_autofocus,
    )
