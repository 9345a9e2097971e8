"""The offload in the running appliance: to a USB stick (:class:`Offloader`: looks for a stick,
copies beside capturing) and to an rclone remote (:class:`Uploader`: uploads within the upload
windows, backs off when the remote fails), and how far each got.

:class:`Offloader` is a part of :class:`~appliance.runtime.Appliance`.  Its :meth:`~Offloader.tick`
runs on the main loop's scheduler every second: every ``offload_check_interval_s`` it looks at
``offload_usb_path`` (:func:`hw.usb.find_stick`), and when a stick with the label appears there
(and ``offload_usb_auto``), starts a copy run.  The run (:func:`appliance.offload.copy_run`) goes
on a worker thread of its own, so that captures go on being taken and the watchdog fed; it reads
the index through its own read-only connections and writes nothing to the store: each verified
copy is handed to the main loop as a :class:`~appliance.loop.Request` ``"offloaded"``, and the
loop alone records it (:meth:`~appliance.store.CaptureStore.record_offloaded`), deleting the
capture from the card after it when ``offload_delete_after`` asks.

:meth:`Offloader.status` gives the :class:`OffloadStatus` the status page, ``/api/status``,
``/metrics`` and systemd's ``STATUS=`` show (:mod:`appliance.status`).

:class:`Uploader` does the same for ``offload_remote`` (:func:`appliance.upload.upload_run`):
every ``offload_interval_s``, within ``offload_windows``, it uploads what the remote lacks on a
worker thread; a failed run (the remote unreachable, a credential refused...) is a state of its
own with the reason, and the next try waits 15 s, then twice as long each time, up to
``offload_retry_max_s``.
"""

import dataclasses
import datetime
import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from appliance import rclone as rc
from appliance.exc import NoStick
from appliance.loop import Request
from appliance.offload import CopyResult, copy_run, target_name
from appliance.store import IndexReader
from appliance.upload import UploadResult, remote_target, upload_run
from hw.triggers import ActiveWindows
from hw.usb import UsbStick, find_stick, why_not

log = logging.getLogger(__name__)

# The kind of target, as the status, the API and the metrics name it; in the store, each stick is a
# target of its own, "usb-<filesystem UUID>" (appliance.offload.target_name).
USB = "usb"
REMOTE = "remote"
TARGETS = (USB, REMOTE)
# Seconds the end of a run waits for the main loop to record its last verified copies: past them,
# the run ends without "safe to remove" (the copies left unrecorded are checked again next time).
RECORD_WAIT_S = 30.0
# The states of a target, as the page, the API and the metrics give them.
OFF, NO_STICK, READY, COPYING, DONE, ERROR = "off", "no stick", "ready", "copying", "done", "error"
# The remote's own: outside offload_windows, an upload under way; a failed one is in the state
# of its kind (appliance.rclone.KINDS: "unreachable", "credentials refused", "no bucket"...).
WAITING, UPLOADING = "waiting", "uploading"
REMOTE_FAILURES = tuple(kind for kind in rc.KINDS if kind != rc.STOPPED)
STATES = (OFF, NO_STICK, READY, COPYING, DONE, ERROR, WAITING, UPLOADING, *REMOTE_FAILURES)
# The first wait after a failed upload; each further failure doubles it, up to offload_retry_max_s.
RETRY_FIRST_S = 15.0


@dataclass(frozen=True)
class OffloadSettings:
    """The offload settings (``offload_*``, see docs/configuration.md): ``usb_path``, the mount
    point ("" off); ``usb_label``, the label a stick must carry; ``auto``, start when one appears;
    ``delete_after``, delete verified captures from the card; ``check_interval_s``, seconds
    between two looks for a stick."""

    usb_path: str = ""
    usb_label: str = "TRAPDATA"
    auto: bool = True
    delete_after: bool = False
    check_interval_s: float = 5.0

    @classmethod
    def from_config(cls, config) -> "OffloadSettings":
        return cls(
            usb_path=config.offload_usb_path,
            usb_label=config.offload_usb_label,
            auto=config.offload_usb_auto,
            delete_after=config.offload_delete_after,
            check_interval_s=config.offload_check_interval_s,
        )


@dataclass(frozen=True)
class OffloadRun:
    """A copy run's result: when it started and ended (ISO 8601 UTC; ``finished_at`` None while
    under way), captures ``copied`` and their ``bytes``, ``skipped`` (already on the stick),
    ``errors`` (one line each), ``reason`` (why it ended early; None when it finished) and
    ``safe_to_remove``: every file and table on the stick written, fsynced and closed, and every
    verified copy recorded."""

    started_at: str
    finished_at: str | None
    copied: int
    bytes: int
    skipped: int
    errors: tuple[str, ...]
    reason: str | None
    safe_to_remove: bool


@dataclass(frozen=True)
class OffloadStatus:
    """One target's state (:data:`STATES`): ``"off"`` (no ``offload_usb_path``), ``"no stick"``
    (``reason`` says why the mount point is not used), ``"ready"`` (a stick is there and nothing
    was copied to it yet: ``offload_usb_auto`` is off), ``"copying"``, ``"done"`` (the last run
    finished; the stick is still there) or ``"error"`` (it ended early: ``reason``).

    ``pending_captures``, ``pending_bytes``: what is not yet on the stick in use (or the last one
    seen; before any, every capture: each stick is a target of its own); ``rate_bytes_per_s``
    and ``seconds_left``: of the run under way (None otherwise, or before its first copy);
    ``stick``: ``{"path", "label", "fstype", "free_bytes"}`` of the stick in use (None without
    one); ``last_run``: the last :class:`OffloadRun` (None before the first); ``safe_to_remove``:
    the stick may be pulled out now (only after a run ended with everything on it closed).

    The remote target (``target`` ``"remote"``) is ``"off"`` (no ``offload_remote``),
    ``"ready"`` (before its first run), ``"waiting"`` (outside ``offload_windows``),
    ``"uploading"``, ``"done"`` (all uploaded, or the last run finished) or the kind of the
    trouble that ended the last run (:data:`REMOTE_FAILURES`: ``"unreachable"``,
    ``"credentials refused"``, ``"no bucket"``, ``"timed out"``, ``"full"``, ``"not
    configured"``, ``"rclone missing"``, ``"failed"``),
    with ``reason``; ``remote``: ``offload_remote``; ``next_try_at``: when the next run may
    start (ISO 8601 UTC; None while one is under way or it is off); ``stick`` None and
    ``safe_to_remove`` False.
    """

    target: str
    state: str
    reason: str
    pending_captures: int
    pending_bytes: int
    rate_bytes_per_s: float | None
    seconds_left: float | None
    stick: dict | None
    last_run: OffloadRun | None
    safe_to_remove: bool
    remote: str | None = None
    next_try_at: str | None = None

    def to_json(self) -> dict:
        """As ``/api/status`` gives it under ``offload``: the fields above (``errors`` a list)."""
        return json.loads(json.dumps(dataclasses.asdict(self)))


def _now() -> str:
    return _iso(datetime.datetime.now(datetime.UTC))


def _iso(moment: datetime.datetime) -> str:
    return moment.isoformat(timespec="seconds").replace("+00:00", "Z")


def _recorder(target: str, submit: Callable[[Request], None]):
    """A run's ``record``: each verified copy handed to the main loop as a Request
    ``"offloaded"``; and the list of those requests, for :func:`_await_records`."""
    requests: list[Request] = []

    def record(capture_id: str, sha256: str) -> None:
        request = Request("offloaded", capture_id, target=target, sha256=sha256)
        requests.append(request)
        submit(request)

    return record, requests


def _await_records(requests: list[Request], errors: list[str]) -> bool:
    """Wait up to :data:`RECORD_WAIT_S` for the main loop to record ``requests``; a line is
    added to ``errors`` for each that failed and one for those still waiting.  Returns whether
    all were recorded."""
    unrecorded = failed = 0
    deadline = time.monotonic() + RECORD_WAIT_S
    for request in requests:  # the loop takes them in order: the last done, all are
        if not request.done.wait(max(0.0, deadline - time.monotonic())):
            unrecorded += 1
        elif request.error is not None:
            failed += 1
            errors.append(f"{request.capture_id}: not recorded: {request.error}")
    if unrecorded:
        errors.append(f"{unrecorded} verified copies not recorded yet (the appliance was busy)")
    return not unrecorded and not failed


class Offloader:
    """The USB offload of the running appliance (see the module docstring).

    :param reader: the index, read for what is pending (by the worker and by :meth:`status`).
    :param data_dir: the data directory (its own filesystem is never taken for a stick).
    :param settings: :class:`OffloadSettings`; :meth:`configure` swaps them.
    :param submit: hands a :class:`~appliance.loop.Request` to the main loop (the appliance's
        ``_submit``): each verified copy goes that way to be recorded.
    :param config: returns the config in effect, which names the deployment whose Camtrap DP
        tables are written on the stick.
    :param monotonic: as :func:`time.monotonic` (injected for tests).

    Thread-safe: :meth:`tick` and :meth:`start` run on the main loop, :meth:`status` on any
    thread, the copy on a worker thread of its own.
    """

    def __init__(
        self,
        reader: IndexReader,
        data_dir: Path,
        settings: OffloadSettings,
        *,
        submit: Callable[[Request], None],
        config: Callable[[], object],
        monotonic: Callable[[], float] = time.monotonic,
    ):
        self._reader = reader
        self._data_dir = Path(data_dir)
        self.settings = settings
        self._submit = submit
        self._config = config
        self._monotonic = monotonic
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._worker: threading.Thread | None = None
        self._next_check = monotonic()
        self._stick: UsbStick | None = None
        self._why_not = ""
        self._seen: tuple | None = None  # the stick last found, so that auto-start is once per stick
        self._last_run: OffloadRun | None = None
        self._last_target = USB  # the store's target of the last stick seen (none yet: all pending)
        self._progress: tuple[float, int] | None = None  # (monotonic start, bytes copied so far)

    def configure(self, settings: OffloadSettings) -> None:
        """Take ``settings`` from the next look for a stick on (a config reload)."""
        with self._lock:
            self.settings = settings
            self._next_check = self._monotonic()

    def tick(self) -> None:
        """For the scheduler, every second: look for a stick when due, and start a run when one
        with the label has appeared since the last look (``auto``)."""
        now = self._monotonic()
        if now < self._next_check:
            return
        self._next_check = now + self.settings.check_interval_s
        stick = self._look()
        if stick is None or self.copying:
            return
        identity = (str(stick.path), stick.uuid, stick.dev)
        appeared, self._seen = identity != self._seen, identity
        if appeared and self.settings.auto:
            log.info("USB stick %s (%s, %s) found: copying", stick.path, stick.label, stick.fstype)
            self._start(stick)

    def start(self) -> None:
        """Start a copy run now (a "Copy to USB now", ``appliance offload``, a button hold);
        nothing when one is under way.  Raises :class:`~appliance.exc.NoStick` with the reason
        when no suitable stick is mounted at ``offload_usb_path`` (or it is "")."""
        if self.copying:
            return
        stick = self._look()
        if stick is None:
            log.warning("USB offload asked for, and not started: %s", self._why_not)
            raise NoStick(self._why_not)
        self._seen = (str(stick.path), stick.uuid, stick.dev)
        self._start(stick)

    @property
    def copying(self) -> bool:
        """Whether a run is under way."""
        worker = self._worker
        return worker is not None and worker.is_alive()

    def _look(self) -> UsbStick | None:
        settings = self.settings
        if not settings.usb_path:
            stick, reason = None, "offload_usb_path is not set"
        else:
            path = Path(settings.usb_path)
            stick = find_stick(path, settings.usb_label, self._data_dir)
            reason = "" if stick is not None else why_not(path, settings.usb_label, self._data_dir)
        with self._lock:
            if stick is None and self._stick is not None:
                log.info("USB stick gone from %s: %s", settings.usb_path, reason)
            self._stick, self._why_not = stick, reason
            if stick is not None:
                self._last_target = target_name(stick)
            if stick is None:
                self._seen = None
        return stick

    def _start(self, stick: UsbStick) -> None:
        self._stop.clear()
        with self._lock:
            self._last_run = OffloadRun(_now(), None, 0, 0, 0, (), None, False)
            self._progress = (self._monotonic(), 0)
        self._worker = threading.Thread(target=self._work, args=(stick,), name="offload", daemon=True)
        self._worker.start()

    def _work(self, stick: UsbStick) -> None:
        started_at, target = self._last_run.started_at, target_name(stick)
        record, requests = _recorder(target, self._submit)

        try:
            result = copy_run(
                stick,
                self._reader,
                self._data_dir,
                target=target,
                deployment=self._config(),
                record=record,
                stop=self._stop.is_set,
                progress=self._on_progress,
            )
        except Exception as exc:  # a bug, not the stick: said on the page rather than lost on a thread
            log.exception("USB offload failed")
            result = CopyResult(0, 0, 0, [f"the copy failed: {exc}"], f"the copy failed: {exc}", False)
        errors = list(result.errors)
        # Safe to remove once every verified copy is recorded, as OffloadRun says: one that is not
        # (busy, or its record failed) is copied or verified again by the next run.
        safe = _await_records(requests, errors) and result.safe_to_remove
        run = OffloadRun(
            started_at,
            _now(),
            result.copied,
            result.bytes,
            result.skipped,
            tuple(errors),
            result.reason,
            safe,
        )
        with self._lock:
            self._last_run, self._progress = run, None
        log.log(
            logging.INFO if result.reason is None and not errors else logging.WARNING,
            "USB offload to %s: %d copied (%d bytes), %d already there%s%s%s",
            stick.path,
            result.copied,
            result.bytes,
            result.skipped,
            f", {len(errors)} errors (first: {errors[0]})" if errors else "",
            f"; ended: {result.reason}" if result.reason else "",
            "; safe to remove" if safe else "",
        )

    def _on_progress(self, done: int, total: int, copied_bytes: int) -> None:
        with self._lock:
            if self._progress is not None:
                self._progress = (self._progress[0], copied_bytes)

    def status(self) -> OffloadStatus:
        """The USB target's state now (see :class:`OffloadStatus`).  Raises ``sqlite3.Error``
        when the index cannot be read."""
        with self._lock:
            stick, why, last, progress = self._stick, self._why_not, self._last_run, self._progress
            enabled, target = bool(self.settings.usb_path), self._last_target
        copying = self.copying and last is not None and last.finished_at is None
        pending, pending_bytes = self._reader.offload_pending(target)
        rate = left = None
        if copying and progress is not None:
            elapsed = self._monotonic() - progress[0]
            if progress[1] and elapsed > 0:
                rate = progress[1] / elapsed
                left = pending_bytes / rate
        if not enabled:
            state, reason = OFF, "offload_usb_path is not set"
        elif copying:
            state, reason = COPYING, ""
        elif stick is None:
            state, reason = NO_STICK, why
        elif last is None:
            state, reason = READY, ""
        elif last is not None and last.finished_at is not None and (last.reason or last.errors):
            state, reason = ERROR, last.reason or last.errors[0]
        else:
            state, reason = DONE, ""
        safe = state == DONE and last is not None and last.safe_to_remove
        return OffloadStatus(
            target=USB,
            state=state,
            reason=reason,
            pending_captures=pending,
            pending_bytes=pending_bytes,
            rate_bytes_per_s=round(rate, 1) if rate is not None else None,
            seconds_left=round(left, 1) if left is not None else None,
            stick=dataclasses.asdict(stick) | {"path": str(stick.path)} if stick is not None else None,
            last_run=last,
            safe_to_remove=safe,
        )

    def close(self, timeout_s: float = 10.0) -> None:
        """Ask a run under way to stop after the file in flight, and wait for it up to
        ``timeout_s`` seconds (the stick is left as a pulled one would be: its tables those of the
        last finished run)."""
        self._stop.set()
        worker = self._worker
        if worker is not None:
            worker.join(timeout_s)


@dataclass(frozen=True)
class UploadSettings:
    """The remote offload settings (see docs/configuration.md): ``remote`` (``offload_remote``,
    "" off), ``rclone_config``, ``bwlimit``, ``windows`` (local times of day, as
    :class:`~hw.triggers.ActiveWindows` takes them; none: always), ``interval_s`` and
    ``retry_max_s``, ``io_timeout_s`` (seconds).  Raises ``ValueError`` for a bad window."""

    remote: str = ""
    rclone_config: str = ""
    bwlimit: str = ""
    windows: tuple[str, ...] = ()
    interval_s: float = 300.0
    retry_max_s: float = 1800.0
    io_timeout_s: float = rc.IO_TIMEOUT_S

    def __post_init__(self):
        ActiveWindows(self.windows)

    @classmethod
    def from_config(cls, config) -> "UploadSettings":
        return cls(
            remote=config.offload_remote,
            rclone_config=config.offload_rclone_config,
            bwlimit=config.offload_bwlimit,
            windows=tuple(config.offload_windows),
            interval_s=config.offload_interval_s,
            retry_max_s=config.offload_retry_max_s,
            io_timeout_s=config.offload_io_timeout_s,
        )


class Uploader:
    """The remote offload of the running appliance (see the module docstring).

    :param reader: the index, read for what is pending (by the worker and by :meth:`status`).
    :param data_dir: the data directory (only read).
    :param settings: :class:`UploadSettings`; :meth:`configure` swaps them.
    :param submit: hands a :class:`~appliance.loop.Request` to the main loop: each verified
        upload goes that way to be recorded.
    :param config: returns the config in effect, which names the deployment.
    :param monotonic: as :func:`time.monotonic`; ``local_time``: the local time of day now (both
        injected for tests).

    Thread-safe: :meth:`tick` runs on the main loop, :meth:`status` on any thread, the upload
    on a worker thread of its own.
    """

    def __init__(
        self,
        reader: IndexReader,
        data_dir: Path,
        settings: UploadSettings,
        *,
        submit: Callable[[Request], None],
        config: Callable[[], object],
        monotonic: Callable[[], float] = time.monotonic,
        local_time: Callable[[], datetime.time] = lambda: datetime.datetime.now().time(),
    ):
        self._reader = reader
        self._data_dir = Path(data_dir)
        self.settings = settings
        self._windows = ActiveWindows(settings.windows)
        self._submit = submit
        self._config = config
        self._monotonic = monotonic
        self._local_time = local_time
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._worker: threading.Thread | None = None
        self._next_try = monotonic()
        self._failures = 0
        self._trouble: tuple[str, str] | None = None  # (kind, reason) of the last failed run
        self._last_run: OffloadRun | None = None
        self._progress: tuple[float, int] | None = None

    def configure(self, settings: UploadSettings) -> None:
        """Take ``settings`` from now on (a config reload); a changed remote is tried at once."""
        with self._lock:
            if (
                settings.remote != self.settings.remote
                or settings.rclone_config != self.settings.rclone_config
            ):
                self._next_try, self._failures, self._trouble = self._monotonic(), 0, None
            self.settings, self._windows = settings, ActiveWindows(settings.windows)

    @property
    def uploading(self) -> bool:
        """Whether a run is under way."""
        worker = self._worker
        return worker is not None and worker.is_alive()

    def _in_window(self) -> bool:
        return self._windows.contains(self._local_time())

    def tick(self) -> None:
        """For the scheduler, every second: stop a run when its window closes; start one when
        due, within a window, and something is pending."""
        settings = self.settings
        if not settings.remote:
            return
        if self.uploading:
            if not self._in_window():
                log.info("upload to %s: the upload window closed, stopping", settings.remote)
                self._stop.set()
            return
        if self._monotonic() < self._next_try or not self._in_window():
            return
        pending, _ = self._reader.offload_pending(remote_target(settings.remote))
        if not pending:
            with self._lock:
                self._next_try = self._monotonic() + settings.interval_s
            return
        self.start()

    def start(self) -> None:
        """Start an upload run now (nothing when one is under way, or no remote is set)."""
        settings = self.settings
        if not settings.remote or self.uploading:
            return
        self._stop.clear()
        with self._lock:
            self._last_run = OffloadRun(_now(), None, 0, 0, 0, (), None, False)
            self._progress = (self._monotonic(), 0)
        self._worker = threading.Thread(target=self._work, args=(settings,), name="upload", daemon=True)
        self._worker.start()

    def _work(self, settings: UploadSettings) -> None:
        started_at, target = self._last_run.started_at, remote_target(settings.remote)
        record, requests = _recorder(target, self._submit)
        remote = rc.Rclone(
            settings.rclone_config, bwlimit=settings.bwlimit, io_timeout_s=settings.io_timeout_s
        )
        try:
            result = upload_run(
                remote,
                settings.remote,
                self._reader,
                self._data_dir,
                target=target,
                deployment=self._config(),
                record=record,
                stop=self._stop,
                progress=self._on_progress,
            )
        except Exception as exc:  # a bug, not the remote: said on the page rather than lost on a thread
            log.exception("upload failed")
            result = UploadResult(errors=[f"the upload failed: {exc}"], reason=f"the upload failed: {exc}")
            result.kind = rc.FAILED
        errors = list(result.errors)
        _await_records(requests, errors)
        run = OffloadRun(
            started_at,
            _now(),
            result.copied,
            result.bytes,
            result.skipped,
            tuple(errors),
            result.reason,
            False,
        )
        failed = result.kind not in (None, rc.STOPPED)
        with self._lock:
            self._last_run, self._progress = run, None
            if failed:
                self._failures += 1
                wait = min(settings.retry_max_s, RETRY_FIRST_S * 2 ** (self._failures - 1))
                self._trouble = (result.kind, result.reason or result.kind)
            else:
                self._failures, self._trouble = 0, None
                wait = settings.interval_s if result.kind is None else 0.0
            self._next_try = self._monotonic() + wait
        log.log(
            logging.WARNING if failed or errors else logging.INFO,
            "upload to %s: %d sent and verified (%d bytes), %d already there%s%s%s",
            settings.remote,
            result.copied,
            result.bytes,
            result.skipped,
            f", {len(errors)} errors (first: {errors[0]})" if errors else "",
            f"; ended: {result.reason}" if result.reason else "",
            f"; next try in {wait:.0f} s" if failed else "",
        )

    def _on_progress(self, done: int, total: int, sent_bytes: int) -> None:
        with self._lock:
            if self._progress is not None:
                self._progress = (self._progress[0], sent_bytes)

    def status(self) -> OffloadStatus:
        """The remote target's state now (see :class:`OffloadStatus`).  Raises
        ``sqlite3.Error`` when the index cannot be read."""
        with self._lock:
            settings, last, progress = self.settings, self._last_run, self._progress
            trouble, next_try = self._trouble, self._next_try
        uploading = self.uploading and last is not None and last.finished_at is None
        pending, pending_bytes = self._reader.offload_pending(remote_target(settings.remote))
        rate = left = None
        if uploading and progress is not None:
            elapsed = self._monotonic() - progress[0]
            if progress[1] and elapsed > 0:
                rate = progress[1] / elapsed
                left = pending_bytes / rate
        next_try_at = None
        if not settings.remote:
            state, reason = OFF, "offload_remote is not set"
        elif uploading:
            state, reason = UPLOADING, ""
        elif trouble is not None:
            state, reason = trouble
        elif not self._in_window():
            state, reason = WAITING, f"uploads are allowed {', '.join(settings.windows)} (local time)"
        else:
            state, reason = DONE if last is not None or not pending else READY, ""
        if settings.remote and not uploading:
            seconds = max(0.0, next_try - self._monotonic())
            next_try_at = _iso(datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=seconds))
        return OffloadStatus(
            target=REMOTE,
            state=state,
            reason=reason,
            pending_captures=pending,
            pending_bytes=pending_bytes,
            rate_bytes_per_s=round(rate, 1) if rate is not None else None,
            seconds_left=round(left, 1) if left is not None else None,
            stick=None,
            last_run=last,
            safe_to_remove=False,
            remote=settings.remote or None,
            next_try_at=next_try_at,
        )

    def close(self, timeout_s: float = 10.0) -> None:
        """Stop a run under way (the rclone call in flight is ended; what it was sending is sent
        again next time) and wait for it up to ``timeout_s`` seconds."""
        self._stop.set()
        worker = self._worker
        if worker is not None:
            worker.join(timeout_s)
