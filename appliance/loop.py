"""The main loop: one thread that turns trigger events into stored captures and runs scheduled jobs.

Everything that writes (camera, store, cleanup) happens here, in order, so nothing needs a lock.
The loop waits on the trigger queue with a timeout taken from its private ``schedule.Scheduler``;
a stop request (a signal, or the end of ``duration_s``) lets the capture in flight finish first.
"""

import contextlib
import dataclasses
import datetime
import logging
import math
import queue
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import schedule

from appliance import exif, thumbnails
from appliance.cleanup import Cleanup
from appliance.exc import NoStick, NotCaptured, OffloadMismatch, StoreError, UnknownCapture
from appliance.store import CaptureStore, CorruptDatabaseError, IndexGoneError, new_id
from boot.systemd import Notifier
from hw.camera import Camera
from hw.clock import SystemClock
from hw.exc import CameraError, CameraFailed
from hw.lights import Lights
from hw.triggers import TriggerEvent

log = logging.getLogger(__name__)

# Longest wait on the queue: bounds how long a stop request waits when nothing happens.
MAX_WAIT_S = 0.5
# Failures that no retry can mend: the loop stops and the process exits 1 for systemd to restart it
# (a damaged index is rebuilt at the next start, an index removed under the running appliance is
# checked; a camera that failed too often is opened afresh).
FATAL = (CorruptDatabaseError, IndexGoneError, CameraFailed)
# A wall clock that moves this much more or less than the monotonic clock between two iterations
# has jumped (NTP's first sync on a Pi without a real-time clock, or a manual change).
CLOCK_JUMP_S = 60.0


@dataclass
class Request:
    """An action asked for by another thread (the web server), done by the main loop, which alone
    writes: ``action`` is ``"capture"`` (a test shot, trigger ``manual``), ``"protect"`` or
    ``"unprotect"`` (``capture_id``), ``"offload"`` (start a copy run to the USB stick now) or
    ``"offloaded"`` (record that ``capture_id`` has a verified copy, of SHA-256 ``sha256``, on
    ``target``; with ``offload_delete_after``, the capture is then deleted from the card, as
    cleanup deletes, unless protected).  The asker waits on :attr:`done`, then reads
    :attr:`result` (the ids captured; None for the others) or :attr:`error`, the exception that
    stopped it: :class:`~appliance.exc.UnknownCapture` (no capture has that id),
    :class:`~appliance.exc.NoStick` (no stick to offload to),
    :class:`~appliance.exc.OffloadMismatch` (the copy's SHA-256 is not the capture's),
    :class:`~appliance.exc.NotCaptured` (the test shot was not stored), the
    :class:`~appliance.exc.StoreError` or ``sqlite3.Error`` the store raised, or
    :class:`~appliance.exc.Stopped` (the loop had stopped: the appliance answers it)."""

    action: str
    capture_id: str | None = None
    target: str | None = None
    sha256: str | None = None
    done: threading.Event = field(default_factory=threading.Event)
    result: list[str] | None = None
    error: Exception | None = None


def guarded(name: str, job: Callable[[], object]) -> Callable[[], object]:
    """Wrap a scheduled job so that its failure is logged and cannot stop the other jobs.  What
    the job returns is passed on (``schedule.CancelJob`` ends a job)."""

    def run() -> object:
        try:
            return job()
        except FATAL:
            raise  # not the job's failure: the loop stops and the process is restarted
        except Exception:
            log.exception("scheduled job %s failed; it will run again at its next time", name)
            return None

    return run


class Health:
    """The problems the appliance has right now, ``{area: one-line reason}``, for the status page.

    Written by the main loop, read by the web threads; every method is thread-safe.
    """

    def __init__(self):
        self._lock = threading.Lock()
        self._problems: dict[str, str] = {}

    def set(self, area: str, reason: str) -> None:
        with self._lock:
            self._problems[area] = reason

    def clear(self, area: str) -> None:
        with self._lock:
            self._problems.pop(area, None)

    def problems(self) -> dict[str, str]:
        with self._lock:
            return dict(self._problems)


@dataclass(frozen=True)
class LoopSettings:
    """What the main loop does with each trigger.

    ``capture_timeout_s``: seconds a capture may take; ``thumbnail_max_px``: longest thumbnail
    edge; ``identity``: the EXIF make, model and serial written into photos the camera takes (an
    empty model: the camera's own; replayed photos are stored as they are); ``burst_count``,
    ``burst_interval_s``: photos per trigger and seconds from the start of one to the next.
    """

    capture_timeout_s: float = 10.0
    thumbnail_max_px: int = 320
    identity: exif.Identity = exif.Identity("Raspberry Pi", "")
    burst_count: int = 1
    burst_interval_s: float = 0.5

    @classmethod
    def from_config(cls, config) -> "LoopSettings":
        """From the settings of the same names, and ``camera_make``, ``camera_model``,
        ``camera_id`` for the identity."""
        return cls(
            capture_timeout_s=config.capture_timeout_s,
            thumbnail_max_px=config.thumbnail_max_px,
            identity=exif.Identity(config.camera_make, config.camera_model, config.camera_id),
            burst_count=config.burst_count,
            burst_interval_s=config.burst_interval_s,
        )


class MainLoop:
    """Captures on each :class:`~hw.triggers.TriggerEvent` from ``events``, does each
    :class:`Request` put there, and runs ``scheduler``.  The photos of a burst share an
    ``event_id``.

    :param events: the queue the triggers and the web server put work on.
    :param camera: a :class:`~hw.camera.Camera`.
    :param store: the writer of the capture store (:class:`~appliance.store.CaptureStore`).
    :param scheduler: the periodic jobs, run between captures.
    :param settings: :class:`LoopSettings`; :meth:`configure` swaps them.
    :param clock: where timestamps come from (default: the system clock).
    :param health: where failures are reported for the status page.
    :param cleanup: the :class:`~appliance.cleanup.Cleanup` that may pause capturing for space.
    :param notifier: systemd, sent ``WATCHDOG=1`` from the loop itself at its
        :attr:`~boot.systemd.Notifier.watchdog_interval_s`, so that a wedged capture (or job)
        stops the keep-alives and systemd restarts the service.
    :param lights: the flash, on during each capture.
    """

    def __init__(
        self,
        *,
        events: "queue.Queue[TriggerEvent]",
        camera: Camera,
        store: CaptureStore,
        scheduler: schedule.Scheduler,
        settings: LoopSettings = LoopSettings(),
        clock: SystemClock | None = None,
        health: Health | None = None,
        cleanup: Cleanup | None = None,
        notifier: Notifier | None = None,
        lights: Lights | None = None,
    ):
        self._events = events
        self._camera = camera
        self._store = store
        self._scheduler = scheduler
        self.configure(settings)
        self._clock = clock or SystemClock()
        self.health = health or Health()
        self._cleanup = cleanup
        self._notifier = notifier
        self._lights = lights
        self.fatal: Exception | None = None  # why the loop stopped on its own, if it did
        self._stop_reason: str | None = None
        self._reload_requested = False
        self._next_ping = -math.inf
        self.on_reload: Callable[[], None] | None = None  # run by the loop after request_reload()
        # Starts a copy run to the USB stick (a Request "offload"); raises NoStick when none is there.
        self.on_offload: Callable[[], None] | None = None
        # offload_delete_after (as now, a reload included): a capture recorded as offloaded is
        # deleted from the card.
        self.delete_offloaded: Callable[[], bool] = lambda: False
        # Told of each stored capture (its index row and thumbnail, or None): the MQTT
        # telemetry's hand-off, which must not wait (appliance.mqtt.Telemetry.captured).
        self.on_captured: Callable[[dict, bytes | None], None] | None = None

    def configure(self, settings: LoopSettings) -> None:
        """Take ``settings`` from the next capture on (a config reload)."""
        self.settings = settings
        self._identity = dataclasses.replace(
            settings.identity, model=settings.identity.model or self._camera.model
        )

    def request_stop(self, reason: str) -> None:
        """Ask the loop to stop after the capture in flight.  Safe to call from a signal handler:
        it only sets an attribute, which the loop reads at least every :data:`MAX_WAIT_S` s."""
        self._stop_reason = reason

    def request_reload(self) -> None:
        """Ask the loop to run :attr:`on_reload` between captures.  Safe to call from a signal
        handler, as :meth:`request_stop`."""
        self._reload_requested = True

    def run(self, duration_s: float | None = None) -> None:
        """Run until :meth:`request_stop` or, when given, ``duration_s`` seconds have passed.
        Returns at once if a stop was requested before; may be called again after a timed run."""
        deadline = None if duration_s is None else time.monotonic() + duration_s
        last_wall, last_mono = time.time(), time.monotonic()
        while True:
            now = time.monotonic()
            if self._stop_reason is not None:
                reason = self._stop_reason
                break
            if deadline is not None and now >= deadline:
                reason = f"--duration-s {duration_s} elapsed"
                break
            wait = MAX_WAIT_S
            if self._scheduler.idle_seconds is not None:
                wait = min(wait, max(0.0, self._scheduler.idle_seconds))
            if deadline is not None:
                wait = min(wait, deadline - now)
            wait = min(wait, self._keepalive(now))
            try:
                event = self._events.get(timeout=wait)
            except queue.Empty:
                pass
            else:
                if isinstance(event, Request):
                    self._handle(event)
                else:
                    self.burst(event)
            wall, mono = time.time(), time.monotonic()
            if abs((wall - last_wall) - (mono - last_mono)) > CLOCK_JUMP_S:
                self._clock_jumped(wall - last_wall - (mono - last_mono))
            last_wall, last_mono = wall, mono
            if self._reload_requested:
                self._reload_requested = False
                if self.on_reload is not None:
                    guarded("config reload", self.on_reload)()
            try:
                self._scheduler.run_pending()
            except FATAL as exc:
                self._stop_fatal(exc)
        log.info("stopping: %s", reason)

    def _stop_fatal(self, exc: Exception) -> None:
        # Every capture would fail the same way: stop, so that the restart rebuilds the index or
        # opens the camera afresh.
        if isinstance(exc, CorruptDatabaseError):
            self.health.set("storage", str(exc))
            reason = "the index is damaged; a restart rebuilds it"
        elif isinstance(exc, IndexGoneError):
            self.health.set("storage", str(exc))
            reason = "the index file was removed or replaced; a restart checks the store"
        else:
            self.health.set("camera", str(exc))
            reason = "the camera failed; a restart opens it afresh"
        self.fatal = exc
        self.request_stop(reason)

    def _handle(self, request: Request) -> None:
        try:
            if request.action == "capture":
                request.result = [row["id"] for row in self.burst(TriggerEvent("manual", time.monotonic()))]
                if not request.result:
                    request.error = NotCaptured("the capture failed; see the status page")
            elif request.action == "offloaded":
                self._offloaded(request)
            elif request.action == "offload":
                if self.on_offload is None:
                    raise NoStick("offload_usb_path is not set")
                self.on_offload()
            else:
                self._store.set_protected(request.capture_id, request.action == "protect")
        except (UnknownCapture, NoStick, OffloadMismatch) as exc:
            request.error = exc
        except (StoreError, sqlite3.Error) as exc:
            log.error("%s asked from the status page failed: %s", request.action, exc)
            request.error = exc
            if isinstance(exc, FATAL):
                self._stop_fatal(exc)
        finally:
            request.done.set()

    def _offloaded(self, request: Request) -> None:
        at = datetime.datetime.now(datetime.UTC)
        self._store.record_offloaded(request.capture_id, request.target, request.sha256, at)
        if self.delete_offloaded():
            self._store.delete_unless_protected(request.capture_id)

    def _keepalive(self, now: float) -> float:
        """Send ``WATCHDOG=1`` when due; returns the seconds until the next is due (inf: never).
        Called only by this thread between steps, so a step that hangs stops the keep-alives."""
        interval = self._notifier.watchdog_interval_s if self._notifier else None
        if interval is None:
            return math.inf
        if now >= self._next_ping:
            self._notifier.watchdog()
            self._next_ping = now + interval
        return max(0.0, self._next_ping - now)

    def _pause(self, seconds: float) -> None:
        # Between the photos of a burst: keep-alives go on, a stop request cuts it short.
        end = time.monotonic() + seconds
        while self._stop_reason is None and (now := time.monotonic()) < end:
            time.sleep(min(end - now, MAX_WAIT_S, self._keepalive(now)))

    def burst(self, event: TriggerEvent) -> list[dict]:
        """Capture ``burst_count`` photos for ``event``, one every ``burst_interval_s`` seconds,
        under one new ``event_id``; returns the stored rows.  A failed capture or a stop request
        ends the burst early."""
        event_id, rows = new_id(), []
        started = time.monotonic()
        for index in range(self.settings.burst_count):
            if index:
                self._pause(started + index * self.settings.burst_interval_s - time.monotonic())
                if self._stop_reason is not None:
                    break
            self._keepalive(time.monotonic())  # captures slower than the interval get no pause
            row = self.capture(event, event_id=event_id)
            if row is None:
                break
            rows.append(row)
        return rows

    def _clock_jumped(self, jump_s: float) -> None:
        # schedule keeps next-run times on the wall clock: after a jump back by a year its jobs
        # would wait a year.  Make them due now; running them sets fresh next-run times.
        log.warning("wall clock jumped by %+.0f s; rescheduling jobs", jump_s)
        for job in self._scheduler.get_jobs():
            job.next_run = datetime.datetime.now()

    def capture(self, event: TriggerEvent, event_id: str | None = None) -> dict | None:
        """Capture (with the flash), tag, make the thumbnail and store, for one trigger event.

        Returns the stored index row, or None when the capture failed (the reason is logged and
        reported to :attr:`health`, and the loop goes on, except after a fatal failure, which
        stops it).  Nothing is captured while ``cleanup`` says capturing is paused for space.
        ``event_id``: see :meth:`~appliance.store.CaptureStore.add`.
        """
        if self._cleanup is not None and self._cleanup.capture_pause():
            return None  # logged once by the cleanup, and shown on the status page
        try:
            flash = self._lights is not None and self._camera.ready()  # none for a recovering camera
            with self._lights.flash() if flash else contextlib.nullcontext():
                shot = self._camera.capture(self.settings.capture_timeout_s)
        except CameraFailed as exc:
            log.error("capture for %s trigger failed: %s", event.source, exc)
            self._stop_fatal(exc)
            return None
        except CameraError as exc:
            log.error("capture for %s trigger failed: %s", event.source, exc)
            self.health.set("camera", f"the last capture failed: {exc}")
            return None
        self.health.clear("camera")
        timestamp = self._clock.now()
        jpeg, metadata = shot.jpeg, dict(shot.metadata)
        if shot.replayed_from is None:
            fields = exif.describe(timestamp.wall, self._identity, shot.metadata)
            try:
                jpeg = exif.embed(jpeg, fields)
                metadata["exif"] = fields
            except ValueError as exc:
                log.warning("capture for %s trigger stored without EXIF: %s", event.source, exc)
        try:
            thumbnail = thumbnails.make(jpeg, shot.frame, self.settings.thumbnail_max_px)
        except (OSError, ValueError) as exc:
            log.warning("capture for %s trigger has no thumbnail: %s", event.source, exc)
            thumbnail = None
        try:
            row = self._store.add(
                jpeg,
                thumbnail,
                timestamp=timestamp,
                trigger=event.source,
                metadata=metadata,
                event_id=event_id,
            )
        except (CorruptDatabaseError, IndexGoneError) as exc:
            log.error("capture for %s trigger: %s", event.source, exc)
            self._stop_fatal(exc)
            return None
        except StoreError as exc:
            log.error("capture for %s trigger lost: %s", event.source, exc)
            self.health.set("storage", f"the last capture could not be stored: {exc}")
            return None
        self.health.clear("storage")
        if self._cleanup is not None:
            self._cleanup.captured()
        if self.on_captured is not None:
            self.on_captured(row, thumbnail)
        log.info(
            "capture %d (%s, %s, %d bytes) stored %.0f ms after the trigger",
            row["seq"],
            row["id"],
            event.source,
            row["bytes"],
            (time.monotonic() - event.monotonic_s) * 1000,
        )
        return row
