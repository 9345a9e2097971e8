"""The ``appliance`` command: ``appliance run`` starts the appliance, ``appliance check`` checks
and repairs the data directory, ``appliance cleanup`` applies the disk-space policy now,
``appliance protect``/``unprotect`` keep captures from cleanup or not and ``appliance capture``
takes a test shot (through the running appliance when it runs, :mod:`appliance.control`),
``appliance export camtrap-dp`` writes a Camtrap DP data package, ``appliance fleet merge`` makes
one of the packages many traps offloaded, ``appliance import`` indexes a folder of photos from
elsewhere, and ``appliance config`` prints or checks config files.

``run`` is preflight, the running appliance (:class:`~appliance.runtime.Appliance`, which builds
and closes the parts), signals and the main loop; the other commands open what they need.

What each command takes is :mod:`appliance.arguments`.  Exit status, the same rule for every command
(each one's ``--help`` ends with its own, :data:`~appliance.arguments.EXIT_STATUS`): 0 ok; 1
warnings, or done in part, or a failure of the machine (no camera, GPIO unavailable, the data disk
unusable or not mounted, the status page's port in use: what systemd restarts ``run`` for, since it
can mend itself); 2 refused, for a mistake in what was given (a bad config or command line, a data
directory that is a file, a replay folder without a photo, a file or folder argument that is not
what it must be), which no restart can mend (systemd/appliance.service:
``RestartPreventExitStatus=2``).  Each refusal is one line on standard error, ``appliance: ...``,
saying what is wrong and what to do.
The commands that only read or change an existing store (``protect``, ``unprotect``,
``capture``, ``cleanup``, ``clock --trust``, ``export``) never create one: without ``captures.db``
in the data directory they say which folder they searched and exit 2.
"""

import contextlib
import datetime
import errno
import logging
import signal
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path

from gpiozero.exc import GPIOZeroError

from appliance import config as config_module
from appliance import control, mqtt, rclone
from appliance.arguments import parser
from appliance.cleanup import Cleanup, Policy
from appliance.clocktrust import DISTRUSTED, TOLERANCE_S, TRUSTED, UNSYNCHRONISED, TrustedClock
from appliance.exc import (
    ApplianceError,
    ConfigError,
    ControlError,
    ExportError,
    MergeFailed,
    MergeRefused,
    NoStick,
    RemoteTrouble,
    StoreError,
    StoreInUse,
    UnknownCapture,
)
from appliance.export import export_camtrap_dp
from appliance.fleet import merge
from appliance.importer import import_photos
from appliance.loop import MainLoop
from appliance.offload import copy_run, target_name
from appliance.offloader import OffloadSettings
from appliance.rclone import NO_BUCKET, NOT_CONFIGURED, Rclone
from appliance.reconcile import open_store
from appliance.runtime import Appliance
from appliance.store import DB_NAME, IndexReader, unsafe_layout
from appliance.web import listen, port_holder
from boot.journal import configure_logging
from boot.preflight import FATAL, OK, WARNING, Check, check_mqtt, check_rclone, preflight
from boot.systemd import Notifier
from hw.clock import SystemClock
from hw.exc import HardwareError, UnsupportedCameraSize
from hw.usb import find_stick, why_not

log = logging.getLogger("appliance")

# The installed service's data directory (the --data-dir of systemd/appliance.service), named in
# the hint of a command run on a folder that holds no store.
SERVICE_DATA_DIR = "/var/lib/appliance"
# The commands that only read or change an existing store, and so never create one.
STORE_COMMANDS = ("protect", "unprotect", "capture", "cleanup", "export", "offload")


def _load_config(args) -> config_module.Config:
    overrides = {"data_dir": args.data_dir, "simulate": getattr(args, "simulate", None)}
    if args.command == "run":
        overrides |= {
            "simulate": True if args.replay else args.simulate,
            "simulate_replay_dir": args.replay,
            "simulate_trigger_interval_s": args.trigger_interval_s,
            "web_host": args.host,
            "web_port": args.port,
        }
    paths = args.config or config_module.default_paths()
    config = config_module.load(
        paths, **{key: value for key, value in overrides.items() if value is not None}
    )
    if args.command in ("run", "check", "cleanup"):  # the commands that may delete
        config_module.check_filesystem(config, paths)
    return config


def config_command(args) -> int:
    """``appliance config``: print the commented defaults, or check files (each named with
    ``ok`` or its error).  Returns 0, or 2 when a file is bad."""
    if args.print_defaults:
        print(config_module.defaults_file())
        return 0
    paths = args.check or config_module.default_paths()
    if not paths:
        print("no config file: built-in defaults (looked for "
              f"{', '.join(map(str, config_module.DEFAULT_PATHS))})")  # fmt: skip
        return 0
    status = 0
    for path in paths:
        try:
            config_module.check_filesystem(config_module.load(path), path)
        except ConfigError as exc:
            print(f"appliance: config error: {exc}", file=sys.stderr)
            status = 2
        else:
            print(f"{path}: ok")
    if status == 0 and len(paths) > 1:  # each file may be fine and the two together not
        try:
            config_module.check_filesystem(config_module.load(paths), paths)
        except ConfigError as exc:
            print(f"appliance: config error: {exc}", file=sys.stderr)
            return 2
        print(f"{' + '.join(map(str, paths))}: ok together")
    return status


def _listen(host: str, port: int) -> socket.socket | None:
    """The status page's listening socket on ``host``:``port``, bound before ``run`` opens
    anything; None, with the reason and what to do on standard error, when it cannot be bound."""
    try:
        return listen(host, port)
    except OSError as exc:
        print(f"appliance: the status page cannot listen on {host}:{port}: {_bind_problem(exc, port)}",
              file=sys.stderr)  # fmt: skip
        return None


def _bind_problem(exc: OSError, port: int) -> str:
    """What is wrong when binding the status page's port failed with ``exc``, and what to do."""
    if exc.errno == errno.EADDRINUSE:
        holder = port_holder(port)
        return (
            f"the port is in use{f' by {holder}' if holder else ''}: stop that program, or choose "
            "another port with --port or web_port (0: any free port)"
        )
    if exc.errno == errno.EADDRNOTAVAIL:
        return 'that is no address of this machine: set web_host (--host) to one of its addresses, or ""'
    if exc.errno == errno.EACCES:
        return "a port below 1024 needs privileges: choose 1024 or above with --port or web_port"
    if isinstance(exc, socket.gaierror):
        return f"{exc.strerror}: set web_host (--host) to an IP address"
    return f"{exc.strerror or exc}: check web_host and web_port (--host, --port)"


def _preflight(config: config_module.Config) -> list[Check]:
    checks = preflight(
        Path(config.data_dir),
        data_mount=config.data_mount,
        min_free_bytes=config.capture_min_free_bytes,
        simulate=config.simulate,
    )
    if not any(check.level == FATAL for check in checks):
        checks.append(_check_layout(Path(config.data_dir)))
    if config.offload_remote:
        rclone_config = config.offload_rclone_config or rclone.default_config_path()
        checks.append(check_rclone(config.offload_remote, Path(rclone_config)))
    if config.mqtt_host:
        checks.append(check_mqtt(config.mqtt_password_file, config.mqtt_tls))
    return checks


def _check_layout(data_dir: Path) -> Check:
    """The data directory is a closed world: no symlink (nor a file) where a folder of its layout
    or a shard folder belongs, nor at the names of the index and its files."""
    unsafe = unsafe_layout(data_dir)
    if not unsafe:
        return Check("data layout", OK, "no symlink inside the data directory")
    names = ", ".join(unsafe[:5]) + (f" and {len(unsafe) - 5} more" if len(unsafe) > 5 else "")
    return Check(
        "data layout",
        FATAL,
        f"{names} in {data_dir} would lead out of it (a symlink, or a file where a folder belongs): "
        "move them out of the data directory (to keep the data elsewhere, set data_dir to that place)",
    )


class _Stopped(BaseException):
    """SIGTERM or SIGINT while the appliance starts: unwinds the start-up, closing what was opened
    (a BaseException, so that no handler of ours takes it for a failure)."""


class _Stopping:
    """The SIGTERM and SIGINT handler of ``appliance run``: until :attr:`loop` is set (start-up),
    raises :class:`_Stopped` once; then asks the loop to stop after the capture in flight."""

    def __init__(self):
        self.loop: MainLoop | None = None
        self._raised = False

    def __call__(self, signum, frame) -> None:
        reason = signal.strsignal(signum)
        if self.loop is not None:
            self.loop.request_stop(reason)
        elif not self._raised:
            self._raised = True
            raise _Stopped(reason)


@contextlib.contextmanager
def _stop_signals(stopping: _Stopping):
    """SIGTERM and SIGINT handled by ``stopping`` and SIGHUP ignored within the block, the
    handlers before it afterwards (for a caller in the same process)."""
    previous = {signum: signal.getsignal(signum) for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
    signal.signal(signal.SIGTERM, stopping)
    signal.signal(signal.SIGINT, stopping)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def run(
    config: config_module.Config,
    duration_s: float | None = None,
    reload_config: Callable[[], config_module.Config] | None = None,
    *,
    stopping: _Stopping | None = None,
) -> int:
    """Run the appliance with ``config`` until a signal or ``duration_s`` seconds.

    Binds the status page's port first, before anything is opened, then runs preflight.

    Returns 0 after a clean stop, also when SIGTERM or SIGINT comes during start-up (preflight,
    the store's check, opening the camera: what was opened is closed, and the next start goes on
    from there); 1 when the port cannot be bound (in use, say: another program may let it go,
    so systemd tries again), when a preflight check is fatal, or when the capture store could not
    be closed.
    Start-up failures of the parts raise (:class:`ApplianceError`, :class:`HardwareError`, gpiozero
    errors, ``OSError``), and so does a damaged or vanished index found while running
    (:class:`~appliance.store.CorruptDatabaseError`, :class:`~appliance.store.IndexGoneError`,
    after the loop has stopped), so that systemd restarts the appliance and it checks the store.

    SIGHUP calls ``reload_config()`` and applies it (:meth:`Appliance.reload`); a bad config is
    logged and ignored.  A SIGHUP during start-up is ignored: the config has just been read.
    ``stopping``: the signal handler :func:`main` installed before reading the config, if it did.
    """
    stopping, started = stopping or _Stopping(), time.monotonic()
    with _stop_signals(stopping), contextlib.closing(Notifier()) as notifier:
        try:
            listener = _listen(config.web_listen_host, config.web_port)
            if listener is None:
                return 1
            with contextlib.closing(listener):  # the web server closes it too, once it has it
                checks = _preflight(config)
                for check in checks:
                    level = {FATAL: logging.ERROR, WARNING: logging.WARNING}.get(check.level, logging.INFO)
                    log.log(level, "preflight %s: %s", check.name, check.reason)
                if any(check.level == FATAL for check in checks):
                    return 1
                with Appliance(
                    config,
                    notifier=notifier,
                    read_config=reload_config,
                    started_monotonic=started,
                    listener=listener,
                ) as appliance:
                    if reload_config is not None:
                        signal.signal(signal.SIGHUP, lambda num, frame: appliance.loop.request_reload())
                    stopping.loop = appliance.loop
                    url, mode, data_dir = appliance.server.url, appliance.mode, appliance.data_dir
                    print(f"Status page: {url} ({mode}, data in {data_dir})", flush=True)
                    appliance.run(duration_s)
        except _Stopped as exc:
            log.info("stopped during start-up (%s); the next start goes on from there", exc)
            return 0
    if not appliance.store_closed:
        log.error(
            "stopped, but the capture store was not closed cleanly (see above); the next start checks it"
        )
        return 1
    log.info("stopped cleanly")
    return 0


def check(config: config_module.Config) -> int:
    """``appliance check``: the preflight checks, then a full reconciliation of the capture store.

    Prints one line per check (level, name, reason) and returns 0 when each is ok or a note (in
    simulation, an unsynchronised clock: :func:`boot.preflight.check_clock`), 1 when any warns, 2
    when any is fatal.  Never run it beside a running appliance: the store's lock refuses.
    """
    data_dir = Path(config.data_dir)
    checks = _preflight(config)
    if not any(c.level == FATAL for c in checks):
        checks.append(_check_store(data_dir, config.thumbnail_max_px))
    width = max(len(c.name) for c in checks)
    for c in checks:
        print(f"{c.level:<8} {c.name:<{width}}  {c.reason}")
    levels = {c.level for c in checks}
    return 2 if FATAL in levels else 1 if WARNING in levels else 0


def cleanup(config: config_module.Config, *, dry_run: bool) -> int:
    """``appliance cleanup``: print the policy's verdict now and what it deletes (or, with
    ``dry_run``, would delete): count, bytes, oldest and newest capture.  Returns 0.  Raises
    :class:`~appliance.exc.StoreError` while the appliance runs (the store's lock)."""
    store, _ = open_store(Path(config.data_dir), thumbnail_max_px=config.thumbnail_max_px)
    try:
        work = Cleanup(store, Policy.from_config(config))
        plan = work.plan()
        decision = plan["decision"]
        print(f"free space: {decision.reason or 'enough'} (cleaning starts below "
              f"{decision.start_bytes} bytes, stops at {decision.stop_bytes} bytes)")  # fmt: skip
        verb = "would delete" if dry_run else "deleting"
        print(f"{verb} {plan['count']} captures, {plan['bytes']} bytes")
        for which in ("oldest", "newest"):
            if plan[which]:
                print(
                    f"  {which}: seq {plan[which]['seq']}, {plan[which]['captured_at']}, {plan[which]['id']}"
                )
        if not dry_run and plan["count"]:
            for run in work.run_all():
                print(
                    f"deleted {run['deleted']} captures ({run['reason']}), freed {run['bytes_freed']} bytes"
                )
    finally:
        store.close()
    return 0


def clock_command(config: config_module.Config, *, trust: bool) -> int:
    """``appliance clock``: print the wall clock, whether the kernel says it is synchronised, the
    last moment the appliance trusted it, and the verdict (:mod:`appliance.clocktrust`).  Returns 0
    when it is trusted, 1 when not.  With ``trust`` (the clock is right and the history is not):
    make now the anchor and mark the captures stamped after now (beyond the tolerance) as of
    doubtful time, and set the expiry floor (their ages are not vouched for: they are deleted by
    age only once newer captures are); returns 0, or 1 when the kernel does not say the clock is
    synchronised.  Raises :class:`~appliance.exc.StoreError` while the appliance runs (the
    store's lock) with ``trust``."""
    data_dir = Path(config.data_dir)
    if trust:
        store, _ = open_store(data_dir, thumbnail_max_px=config.thumbnail_max_px)
        try:
            stamp = SystemClock().now()
            if not stamp.clock_synced:
                print(
                    "appliance: clock: not synchronised (no NTP or GPS yet): nothing to trust",
                    file=sys.stderr,
                )
                return 1
            doubtful = store.mark_time_doubtful(stamp.wall + datetime.timedelta(seconds=TOLERANCE_S))
            store.set_clock_anchor(stamp)
            store.set_expiry_floor()  # the ages of the captures so far are not vouched for
        finally:
            store.close()
        print(f"clock trusted from {stamp.wall:%Y-%m-%d %H:%M:%S} UTC; {doubtful} captures stamped after "
              "now marked as of doubtful time; the captures so far are deleted by age only once "
              "newer ones are")  # fmt: skip
        return 0
    anchor = IndexReader(data_dir).clock_anchor() if (data_dir / DB_NAME).is_file() else None
    clock = TrustedClock(anchor=anchor)
    stamp = clock.now()
    status = clock.status()
    local = stamp.wall.astimezone()
    print(f"wall clock:   {stamp.wall:%Y-%m-%d %H:%M:%S} UTC ({local:%H:%M %Z} here)")
    print(
        f"last trusted: {anchor.wall:%Y-%m-%d %H:%M:%S} UTC"
        if anchor
        else "last trusted: never (a new store)"
    )
    verdict = {
        TRUSTED: "trusted",
        UNSYNCHRONISED: "not synchronised (no NTP or GPS yet): new photos are marked as of doubtful time, "
        "and none is deleted by age",
        DISTRUSTED: f"not trusted: {status.reason}",
    }[status.state]
    print(f"verdict:      {verdict}")
    return 0 if status.state == TRUSTED else 1


def protect(config: config_module.Config, refs: list[str | int], protected: bool) -> int:
    """``appliance protect`` / ``unprotect``: mark captures as kept from automatic cleanup, or
    not.  ``refs``: ids (str) and numbers (int, the pages' ``#seq``), as the command line gives
    them (:mod:`appliance.arguments`).

    When an appliance runs on the data directory, it is asked through its control socket
    (:mod:`appliance.control`); otherwise the store is changed directly.  Prints one line per
    capture, in the order given: ``#3 <id>: protected``, ``#9: no such capture``.  Returns 0 when
    every capture was marked; 1 when some were not (unknown, or the appliance could not do it
    now; the others are still marked), or when a process holds the store and no appliance answers
    on its control socket (nothing done); 2 when refused: the control socket refuses this user
    (nothing done).  (Bad ids and a data directory without a store are refused before, with 2.)
    """
    data_dir, verb = Path(config.data_dir).absolute(), "protected" if protected else "unprotected"
    command = "protect" if protected else "unprotect"
    try:
        client = control.connect(data_dir)
    except ControlError as exc:
        print(f"appliance: {command}: {exc}", file=sys.stderr)
        return 2
    with contextlib.ExitStack() as stack:
        if client is not None:
            mark = client.protect
        else:
            if (store := _open_beside(command, data_dir, config)) is None:
                return 1
            stack.callback(store.close)
            mark = store.set_protected
        reader, failed = IndexReader(data_dir), 0
        for ref in refs:
            row = reader.by_seq(ref) if isinstance(ref, int) else reader.get(ref)
            outcome = "no such capture"
            if row is not None:
                try:
                    mark(row["id"], protected)
                    outcome = verb
                except UnknownCapture:  # deleted since it was read
                    row = None
                except ControlError as exc:
                    outcome = f"not {verb}: {exc}"
            print(f"{_label(ref, row)}: {outcome}")
            failed += outcome != verb
    return 1 if failed else 0


def capture_command(config: config_module.Config) -> int:
    """``appliance capture``: a test shot by the running appliance (trigger ``manual``,
    ``burst_count`` photos), asked through its control socket (:mod:`appliance.control`); prints
    ``#12 <id>: captured`` for each photo stored.  Returns 0 when stored; 1 when not (the camera
    failed, capturing is paused for space, the appliance was busy or stopped before answering:
    the reason on standard error); 2 when refused: no appliance answers on the data directory (a
    test shot needs it and its camera) or its control socket refuses this user."""
    data_dir = Path(config.data_dir).absolute()  # named in messages
    try:
        client = control.connect(data_dir)
    except ControlError as exc:
        print(f"appliance: capture: {exc}", file=sys.stderr)
        return 2
    if client is None:
        print(f"appliance: capture: no appliance answers on {data_dir / control.SOCKET_NAME}: a test "
              "shot needs the running appliance and its camera; start it (sudo systemctl start "
              f"appliance, or appliance run --data-dir {data_dir})", file=sys.stderr)  # fmt: skip
        return 2
    try:
        ids = client.capture()
    except ControlError as exc:
        print(f"appliance: capture: not captured: {exc}", file=sys.stderr)
        return 1
    reader = IndexReader(data_dir)
    for capture_id in ids:
        print(f"{_label(capture_id, reader.get(capture_id))}: captured")
    return 0


def offload_command(config: config_module.Config, *, dry_run: bool) -> int:
    """``appliance offload``: copy what the USB stick lacks to it, each copy checked (see
    :mod:`appliance.offloader`), through the running appliance (asked on its control socket,
    then followed) or, when none runs, on the store directly as its one writer; a progress line
    on a terminal.  With ``dry_run``, say which stick and how much would be copied.  Returns as
    ``EXIT_STATUS["offload"]`` says."""
    data_dir = Path(config.data_dir).absolute()
    settings, reader = OffloadSettings.from_config(config), IndexReader(data_dir)
    stick = None
    if settings.usb_path:
        stick = find_stick(Path(settings.usb_path), settings.usb_label, data_dir)
    if stick is None:
        why = (
            why_not(Path(settings.usb_path), settings.usb_label, data_dir)
            if settings.usb_path
            else ("offload_usb_path is not set: set it to the stick's mount point (docs/operating.md)")
        )
        print(f"appliance: offload: no stick to write: {why}", file=sys.stderr)
        return 2
    target = target_name(stick)
    pending, pending_bytes = reader.offload_pending(target)
    free = f"{stick.free_bytes / 1e9:.1f} GB free" if stick.free_bytes >= 0 else "free space not told"
    print(f"{stick.path} ({stick.label}, {stick.fstype}, {free}): "
          f"{pending} captures, {pending_bytes / 1e6:.1f} MB to copy")  # fmt: skip
    if dry_run:
        return 0
    progress = _tty_progress(lambda done, total: f"copying: {done}/{total} captures")
    try:
        client = control.connect(data_dir)
    except ControlError as exc:
        print(f"appliance: offload: {exc}", file=sys.stderr)
        return 2
    if client is not None:
        try:
            client.offload()
            while (state := client.offload_status())["state"] == "copying":
                if progress and pending:
                    progress(max(0, pending - state["pending_captures"]), pending)
                time.sleep(0.5)
        except (ControlError, NoStick) as exc:
            print(f"appliance: offload: {exc}", file=sys.stderr)
            return 2 if isinstance(exc, NoStick) else 1
        run = state["last_run"] or {}
        result = (run.get("copied", 0), run.get("bytes", 0), run.get("skipped", 0), run.get("errors", []),
                  run.get("reason"), state["safe_to_remove"])  # fmt: skip
    else:
        if (store := _open_beside("offload", data_dir, config)) is None:
            return 1
        try:

            def record(capture_id: str, sha256: str) -> None:
                store.record_offloaded(capture_id, target, sha256, datetime.datetime.now(datetime.UTC))

            done = copy_run(stick, reader, data_dir, target=target, deployment=config, record=record,
                            progress=progress and (lambda n, total, _bytes: progress(n, total)))  # fmt: skip
        finally:
            store.close()
        result = (done.copied, done.bytes, done.skipped, done.errors, done.reason, done.safe_to_remove)
    copied, copied_bytes, skipped, errors, reason, safe = result
    for error in errors:
        print(f"error    {error}")
    print(f"{stick.path}: {copied} captures copied ({copied_bytes} bytes), {skipped} already there"
          f"{'; ended: ' + reason if reason else ''}; "
          f"{'safe to remove' if safe else 'NOT safe to remove yet'}")  # fmt: skip
    return 0 if safe and not reason and not errors else 1


def _label(ref: str | int, row: dict | None = None) -> str:
    """A capture as the commands name it: ``#3 <id>`` when its row is known, else as given."""
    if row is not None:
        return f"#{row['seq']} {row['id']}"
    return f"#{ref}" if isinstance(ref, int) else ref


def _open_beside(command: str, data_dir: Path, config: config_module.Config):
    """The capture store of ``data_dir``, opened by ``command`` when no appliance answered on its
    control socket; None, with the reason on standard error, when a process holds it all the
    same (an appliance starting or stopping, say)."""
    try:
        return open_store(data_dir, thumbnail_max_px=config.thumbnail_max_px)[0]
    except StoreInUse as exc:
        print(
            f"appliance: {command}: {data_dir} is in use by process {exc.holder}, which does not answer "
            f"on {data_dir / control.SOCKET_NAME}: an appliance starting or stopping (try again in a "
            "moment), one running without its control channel (its log says why) or of an older "
            "version, or another command; nothing done",
            file=sys.stderr,
        )
        return None


def _no_store(args, config: config_module.Config) -> str | None:
    """Why the command ``args`` cannot run on the data directory of ``config`` (it has no
    ``captures.db``), naming the folder searched and how to point at the right one; None when the
    store is there or the command may create it."""
    data_dir = Path(config.data_dir)
    wanted = args.command in STORE_COMMANDS or (args.command == "clock" and args.trust)
    if not wanted or (data_dir / DB_NAME).is_file():
        return None
    files = [args.config] if args.config else config_module.default_paths()
    if args.data_dir:
        source = "the folder given with --data-dir"
    elif config.data_dir != config_module.Config().data_dir:
        source = f"data_dir in {' + '.join(map(str, files))}"
    else:
        source = f"data_dir is not set, so {config.data_dir} in the current folder"
    where = " + ".join(map(str, files or config_module.DEFAULT_PATHS[:1]))
    return (
        f"no capture store in {data_dir.absolute()} (no {DB_NAME} there; {source}): give the "
        f"appliance's data directory with --data-dir DIR (the installed service's is "
        f"{SERVICE_DATA_DIR}), or set data_dir in {where}; nothing was created"
    )


def export(config: config_module.Config, args) -> int:
    """``appliance export camtrap-dp``: write the package and print a one-line summary.  Returns
    0, or 2 (with the reason on standard error) for an :class:`~appliance.exc.ExportError`."""
    progress = _tty_progress(lambda done, total: f"exporting: {done}/{total} captures", every=100)
    try:
        summary = export_camtrap_dp(
            config,
            IndexReader(Path(config.data_dir)),
            args.outdir,
            since=args.since,
            until=args.until,
            media=args.media,
            progress=progress,
        )
    except ExportError as exc:
        print(f"appliance: export: {exc}", file=sys.stderr)
        return 2
    skipped = (
        f", {summary['skipped']} left out (deleted meanwhile or unreadable: see the log)"
        if summary["skipped"]
        else ""
    )
    print(
        f"{args.outdir}: {summary['captures']} captures, {summary['events']} events, "
        f"{summary['bytes']} bytes of media{skipped}"
    )
    return 0


# What to do when a remote cannot be read, by RemoteTrouble.kind (appliance.rclone.KINDS).
_REMOTE_FIX = {
    "unreachable": "check the address (endpoint) in the rclone config and the network, then run this again",
    "credentials refused": "check the key in the rclone config, and that it may list and read the bucket",
    "no bucket": "check the bucket and path after the remote's name (rclone lsd REMOTE: lists them)",
    "timed out": "the remote is slow or the link stalled: run this again",
    "not configured": "name a remote of the rclone config (rclone listremotes), or give --rclone-config PATH",
    "rclone missing": "install it: apt install rclone",
}


def mqtt_forget(config: config_module.Config) -> int:
    """``appliance mqtt forget``: clear the trap's retained messages on the broker
    (:func:`appliance.mqtt.forget`), so that Home Assistant removes its device.  Returns 0 done,
    1 when the broker could not be reached or took too long, 2 without ``mqtt_host``."""
    if not config.mqtt_host:
        print("appliance: mqtt forget: mqtt_host is not set: set it to the broker the trap published to",
              file=sys.stderr)  # fmt: skip
        return 2
    settings = mqtt.MqttSettings.from_config(config)
    try:
        cleared = mqtt.forget(settings)
    except ValueError as exc:  # the password or CA file
        print(f"appliance: mqtt forget: {exc}", file=sys.stderr)
        return 2
    except (ConnectionError, TimeoutError) as exc:
        print(
            f"appliance: mqtt forget: {exc}: check mqtt_host, mqtt_port and the credentials", file=sys.stderr
        )
        return 1
    print(
        f"{settings.device_name} forgotten: {cleared} retained topics cleared on "
        f"{settings.host}:{settings.port}"
    )
    return 0


def fleet_command(args) -> int:
    """``appliance fleet merge``: merge the deployment folders under a folder or remote into one
    package (:func:`appliance.fleet.merge`) and print a one-line summary, and a line per note.
    Returns 0, 1 (a remote that cannot be read, photos missing or differing, writing failed) or 2
    (refused), as ``EXIT_STATUS["fleet merge"]`` says; nothing is written unless 0."""
    if args.rclone_config and not Path(args.rclone_config).is_file():
        print(f"appliance: fleet merge: --rclone-config {args.rclone_config}: no such file: name the "
              "rclone config file that holds the remote", file=sys.stderr)  # fmt: skip
        return 2
    tty = sys.stderr.isatty()
    stages = {"reading": "deployment folders read", "copying": "photos copied"}

    def progress(stage: str, done: int, total: int) -> None:
        if tty and (done == total or done % 10 == 0):
            end = "\n" if done == total else ""
            print(f"\r{stages[stage]}: {done}/{total}", end=end, file=sys.stderr, flush=True)

    try:
        summary = merge(
            args.source,
            args.outdir,
            media=args.media,
            since=args.since,
            until=args.until,
            rclone=Rclone(args.rclone_config or ""),
            progress=progress,
        )
    except MergeRefused as exc:
        print(f"appliance: fleet merge: {exc}", file=sys.stderr)
        return 2
    except MergeFailed as exc:
        for line in exc.problems:
            print(f"appliance: fleet merge: {line}", file=sys.stderr)
        print(f"appliance: fleet merge: {exc}: nothing written to {args.outdir}; copy those photos again "
              "from the trap or its stick, or merge with --media none", file=sys.stderr)  # fmt: skip
        return 1
    except RemoteTrouble as exc:
        fix = _REMOTE_FIX.get(exc.kind, "run this again; rclone's words above say what failed")
        print(f"appliance: fleet merge: {args.source}: {exc.kind}: {exc}: {fix}", file=sys.stderr)
        return 2 if exc.kind in (NOT_CONFIGURED, NO_BUCKET) else 1
    except OSError as exc:  # writing the package failed (nothing left of it)
        print(f"appliance: fleet merge: writing {args.outdir} failed: {exc}", file=sys.stderr)
        return 1
    for note in summary.notes:
        print(f"note: {note}")
    print(
        f"{args.outdir}: {summary.deployments} deployments from {summary.folders} folders, {summary.media} "
        f"photos ({summary.photos} {'linked' if args.media == 'link' else 'copied'}, {summary.bytes} bytes), "
        f"{summary.observations} observations"
    )
    return 0


def import_command(config: config_module.Config, args) -> int:
    """``appliance import``: import (or with ``--dry-run`` only look at) the photos of a folder,
    listing each skipped file with its reason, then a summary.  Ctrl-C (or SIGTERM) ends it after
    the photo being stored.  Returns 0, 1 when it stopped early, 2 when DIR is not a folder."""
    if not args.folder.is_dir():
        what = "is not a folder" if args.folder.exists() else "no such folder"
        print(f"appliance: import: {args.folder}: {what}: name the folder that holds the photos",
              file=sys.stderr)  # fmt: skip
        return 2
    data_dir = Path(config.data_dir)
    interrupted = []
    options = {
        "trigger": args.trigger,
        "convert": config.import_convert,
        "jpeg_quality": config.jpeg_quality,
        "thumbnail_max_px": config.thumbnail_max_px,
        "assume": args.utc_offset or "local",
        "min_free_bytes": config.capture_min_free_bytes,
        "progress": _tty_progress(lambda done, total: f"importing: {done}/{total} files", every=10),
        "stop_requested": lambda: bool(interrupted),
    }
    with contextlib.ExitStack() as stack:
        for signum in (signal.SIGINT, signal.SIGTERM):
            previous = signal.signal(signum, lambda signum, frame: interrupted.append(signum))
            stack.callback(signal.signal, signum, previous)
        store = None
        if not args.dry_run:
            try:
                store, _ = open_store(data_dir, thumbnail_max_px=config.thumbnail_max_px)
            except StoreError as exc:  # the appliance runs (the store's lock), most likely
                print(f"appliance: import: {exc}", file=sys.stderr)
                return 1
            stack.callback(store.close)
        summary = import_photos(args.folder, IndexReader(data_dir), store, **options)
    for path, reason in summary.skipped:
        print(f"skipped  {path}: {reason}")
    for path, note in summary.notes:
        print(f"note     {path}: {note}")
    verb = "would import" if args.dry_run else "imported"
    print(
        f"{args.folder}: {verb} {summary.imported} photos, {summary.duplicates} duplicates, "
        f"{len(summary.skipped)} skipped, of {summary.files} files"
    )
    if summary.stopped:
        print(f"appliance: import: {summary.stopped}", file=sys.stderr)
        return 1
    return 0


def _tty_progress(describe: Callable[[int, int], str], every: int = 1) -> Callable[[int, int], None] | None:
    """A ``progress(done, total)`` that rewrites one line of standard error with ``describe(done,
    total)`` every ``every`` steps and at the end; None when standard error is not a terminal."""
    if not sys.stderr.isatty():
        return None

    def progress(done: int, total: int) -> None:
        if done == total or done % every == 0:
            end = "\n" if done == total else ""
            print(f"\r{describe(done, total)}", end=end, file=sys.stderr, flush=True)

    return progress


def _check_store(data_dir: Path, thumbnail_max_px: int) -> Check:
    progress = _tty_progress(lambda done, total: f"checking the photos: {done * 100 // total:3d} %")
    try:
        store, report = open_store(data_dir, thumbnail_max_px=thumbnail_max_px, full=True, progress=progress)
    except (ApplianceError, OSError) as exc:
        return Check("capture store", FATAL, str(exc))
    try:
        total = store.db["captures"].count
    finally:
        store.close()
    reason = f"{total} captures; {report.summary()}"
    if report.stray:
        reason += f" (unknown: {', '.join(report.stray[:3])}{' ...' if len(report.stray) > 3 else ''})"
    return Check("capture store", WARNING if report.needs_attention else OK, reason)


def main(
    argv: list[str] | None = None, *, early: list[int] | None = None, handlers: dict | None = None
) -> int:
    """Entry point of the ``appliance`` command.  Returns the exit status.

    ``early`` and ``handlers``, from :mod:`appliance.__main__`: the signals that came while the
    modules were imported (the list goes on growing until the command's own handlers are in
    place), and the handlers to put back for commands other than ``run``.  ``run`` puts its own in
    place before it reads the config, so that a SIGTERM at any moment of its start-up exits 0.
    """
    try:
        args = parser().parse_args(argv)
    except SystemExit as exc:  # argparse has printed the usage and the reason
        return exc.code
    if args.command != "run":
        for signum, handler in (handlers or {}).items():
            signal.signal(signum, handler)
        if early:
            print(f"appliance: stopped by {signal.strsignal(early[0])} while starting", file=sys.stderr)
            return 0
        return _command(args)
    stopping = _Stopping()
    with _stop_signals(stopping):
        try:
            if early:
                raise _Stopped(signal.strsignal(early[0]))
            return _command(args, stopping)
        except _Stopped as exc:
            print(f"appliance: stopped by {exc} while starting", file=sys.stderr)
            return 0


def _command(args, stopping: _Stopping | None = None) -> int:
    if args.command == "bench":
        configure_logging("WARNING")
        from appliance.bench import main as bench_main  # a big module, for this command alone

        return bench_main(
            args.data_dir, args.json, photo=args.photo, captures=args.captures, quick=args.quick
        )
    if args.command == "config":
        return config_command(args)
    if args.command == "fleet":  # reads no config: it runs on any computer, on many traps' packages
        configure_logging("WARNING")
        return fleet_command(args)
    configure_logging(args.log_level)
    try:
        config = _load_config(args)
    except ConfigError as exc:
        print(f"appliance: config error: {exc}", file=sys.stderr)
        return 2
    log.info("config: %s", args.config or ", ".join(map(str, config_module.default_paths())) or "defaults")
    if args.command == "check":
        return check(config)
    if args.command == "mqtt":
        return mqtt_forget(config)
    if reason := _no_store(args, config):
        print(f"appliance: {args.command}: {reason}", file=sys.stderr)
        return 2
    try:
        if args.command == "cleanup":
            return cleanup(config, dry_run=args.dry_run)
        if args.command == "export":
            return export(config, args)
        if args.command == "import":
            return import_command(config, args)
        if args.command == "clock":
            return clock_command(config, trust=args.trust)
        if args.command in ("protect", "unprotect"):
            return protect(config, args.ids, args.command == "protect")
        if args.command == "capture":
            return capture_command(config)
        if args.command == "offload":
            return offload_command(config, dry_run=args.dry_run)
        return run(
            config, duration_s=args.duration_s, reload_config=lambda: _load_config(args), stopping=stopping
        )
    except UnsupportedCameraSize as exc:  # a setting the camera cannot honour: exit 2, as a bad config
        key = "camera_size_px" if exc.stream == "main" else "camera_lores_size_px"
        source = args.config or " + ".join(map(str, config_module.default_paths())) or "defaults"
        print(
            f"appliance: config error: {source}: {key}: {list(exc.size_px)} is too large: {exc}",
            file=sys.stderr,
        )
        return 2
    except StoreInUse as exc:  # the appliance runs, most likely: one line, with what to do
        print(f"appliance: {args.command}: {exc.args[0].removesuffix(' (one writer at a time)')} "
              "(sudo systemctl stop appliance), then run this again", file=sys.stderr)  # fmt: skip
        return 1
    except (ApplianceError, HardwareError, GPIOZeroError, OSError) as exc:
        log.error("stopped on error: %s", exc)
        return 1
