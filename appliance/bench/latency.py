"""Trigger to acknowledgement (issues 8 and 15): a mock pin pressed with the real main loop
capturing, against a bare durable write after each press; idle, and while a full check
recovers photos beside capturing.
"""

import contextlib
import os
import queue
import threading
import time
from collections.abc import Callable
from pathlib import Path

import schedule
from gpiozero.pins.mock import MockFactory

from appliance import config as config_module
from appliance.bench import plan
from appliance.bench.measuring import _percentiles, _progress
from appliance.bench.photo import synthetic_photo
from appliance.exc import ApplianceError
from appliance.loop import LoopSettings, MainLoop
from appliance.reconcile import STEP_INTERVAL_S, FullCheck, Reconciliation
from appliance.store import CaptureStore, publish
from hw.camera import SimulatedCamera
from hw.triggers import Triggers


class _TimedCamera(SimulatedCamera):
    """A simulated camera that records how long each capture took (its own time, taken off)."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.capture_s: list[float] = []

    def capture(self, timeout_s: float):
        started = time.monotonic()
        try:
            return super().capture(timeout_s)
        finally:
            self.capture_s.append(time.monotonic() - started)


class _AcknowledgingStore(CaptureStore):
    """The store, recording when each capture was acknowledged (its commit returned)."""

    def __init__(self, data_dir: Path):
        super().__init__(data_dir)
        self.acknowledged: queue.Queue[tuple[float, dict]] = queue.Queue()

    def add(self, *args, **kwargs) -> dict:
        row = super().add(*args, **kwargs)
        self.acknowledged.put((time.monotonic(), row))
        return row


def latency_figures(data_dir: Path, photo_dir: Path, triggers: int) -> dict:
    """Press a button on a gpiozero ``MockFactory`` pin ``triggers`` times, one at a time, with the
    real :class:`~appliance.loop.MainLoop` capturing from a simulated camera replaying the photo in
    ``photo_dir`` (``capture_time_s`` 0) into a store in ``data_dir``; after each acknowledgement,
    publish the same bytes once bare.

    Returns ``latency_ms``: p50 and p99 of the trigger (the pin's edge) to the acknowledgement
    minus the camera's own time, of the camera's time and of the bare writes; and
    ``latency_ratio`` (``{"p50", "p99"}``): each percentile of the first over the same percentile
    of the bare writes.  Raises :class:`ApplianceError` when a press is not acknowledged in time.
    """
    latency, camera_s, bare, _ = _presses(data_dir, photo_dir, triggers)
    ms = {"acknowledged": _percentiles(latency), "camera": _percentiles(camera_s), "bare": _percentiles(bare)}
    return {
        "latency_triggers": triggers,
        "latency_ms": ms,
        "latency_ratio": {p: round(ms["acknowledged"][p] / ms["bare"][p], 2) for p in ("p50", "p99")},
    }


def recovery_figures(data_dir: Path, photo_dir: Path, triggers: int, idle_ms: dict) -> dict:
    """The same presses as :func:`latency_figures`, while a full check recovers
    :data:`plan.RECOVERY_PHOTOS` photos found without their rows (a lost index), beside capturing as
    ``appliance run`` does it (:class:`~appliance.reconcile.FullCheck`, a step every
    :data:`~appliance.reconcile.STEP_INTERVAL_S`).  The photos are :data:`plan.RECOVERY_PHOTO_PX` JPEGs,
    so that 25,000 fit any card.

    Returns ``recovery_latency_ms`` (p50 and p99 of trigger to acknowledgement minus the camera's
    time), ``recovery_latency_ratio``: its p99 over ``idle_ms``'s (the same figure without a
    recovery, from :func:`latency_figures`), ``recovery_progress``: the share of the check done by
    the last press (it must still be under way, or the figure means nothing), and
    ``recovery_photos_per_s``: how fast the check went meanwhile."""
    jpeg = synthetic_photo(plan.RECOVERY_PHOTO_PX)
    media = data_dir / "store" / "media"
    for i in range(plan.RECOVERY_PHOTOS):
        if i % 1000 == 0:
            _progress(f"recovery: planting photos without rows, {i:,} of {plan.RECOVERY_PHOTOS:,}")
        capture_id = os.urandom(16).hex()
        (media / capture_id[:2]).mkdir(parents=True, exist_ok=True)
        (media / capture_id[:2] / f"{capture_id}.jpg").write_bytes(jpeg)
    started = time.monotonic()
    latency, _, _, progress = _presses(data_dir, photo_dir, triggers, recover=True)
    elapsed = time.monotonic() - started
    ms = _percentiles(latency)
    return {
        "recovery_photos": plan.RECOVERY_PHOTOS,
        "recovery_latency_ms": ms,
        "recovery_latency_ratio": round(ms["p99"] / idle_ms["p99"], 2),
        "recovery_progress": round(progress, 3),
        "recovery_photos_per_s": round(progress * plan.RECOVERY_PHOTOS / elapsed, 1),
    }


def _presses(
    data_dir: Path,
    photo_dir: Path,
    triggers: int,
    *,
    recover: bool = False,
    before_press: Callable[[int, MainLoop], None] | None = None,
    bare: bool = True,
    label: str = "trigger to acknowledgement",
) -> tuple:
    """The presses of :func:`latency_figures`; with ``recover``, a full check of the store runs
    beside them.  ``before_press(i, loop)``, when given, runs on the presser's thread before press
    ``i`` (from 0), while the loop waits for it (to set ``loop.on_captured``, say); without
    ``bare``, no bare write follows a press.  ``label`` heads the progress line.  Returns
    ``(latencies, camera times, bare writes, full check progress)``, each list in seconds."""
    defaults = config_module.load()
    jpeg = next(photo_dir.iterdir()).read_bytes()
    camera = _TimedCamera(replay_dir=photo_dir, lores_size_px=defaults.camera_lores_size_px)
    limit_dir = data_dir / "limit"
    limit_dir.mkdir()
    events: queue.Queue = queue.Queue()
    latency, bare_s = [], []
    failed: list[ApplianceError] = []
    loop_ended = threading.Event()

    def press(pin, store: _AcknowledgingStore, loop: MainLoop) -> None:
        # On a thread of its own, as a real pin's edge comes on gpiozero's: the loop has the main one.
        try:
            for i in range(triggers):
                _progress(f"{label}: {i + 1} of {triggers}")
                if before_press is not None:
                    before_press(i, loop)
                edge = time.monotonic()
                pin.drive_low()
                deadline = edge + defaults.capture_timeout_s + 30
                while True:
                    try:
                        acknowledged, row = store.acknowledged.get(timeout=0.5)
                        break
                    except queue.Empty:
                        if loop_ended.is_set() or time.monotonic() > deadline:
                            raise ApplianceError(
                                f"bench: press {i + 1} was not acknowledged: {loop.health.problems()}"
                            ) from None
                pin.drive_high()
                latency.append(acknowledged - edge - camera.capture_s[-1])
                if row["bytes"] != len(jpeg):
                    raise ApplianceError("bench: the stored photo is not the one written bare")
                if bare:
                    path = limit_dir / f"{i:06d}.jpg"
                    started = time.perf_counter()
                    publish(path, jpeg)
                    bare_s.append(time.perf_counter() - started)
                    path.unlink()
                if not recover:  # room on a small card; a full check would take the rows for lost
                    (store.data_dir / row["media_path"]).unlink()
                    (store.data_dir / row["thumbnail_path"]).unlink()
        except (ApplianceError, OSError) as exc:
            failed.append(ApplianceError(f"bench: trigger to acknowledgement: {exc}"))
        finally:
            loop.request_stop("bench done")

    with contextlib.ExitStack() as stack:
        store = _AcknowledgingStore(data_dir / "store")
        stack.callback(store.close)
        pin_factory = MockFactory()
        stack.callback(pin_factory.close)
        buttons = Triggers(
            events,
            button_pin=defaults.button_pin,
            motion_pin=None,
            bounce_time_s=None,
            pin_factory=pin_factory,
        )
        stack.callback(buttons.close)
        scheduler = schedule.Scheduler()
        loop = MainLoop(
            events=events,
            camera=camera,
            store=store,
            scheduler=scheduler,
            settings=LoopSettings.from_config(defaults),
        )
        report = Reconciliation()
        if recover:
            check = FullCheck(store, report, defaults.thumbnail_max_px, busy=lambda: not events.empty())
            stack.callback(check.close)
            scheduler.every(STEP_INTERVAL_S).seconds.do(check.step)
        presser = threading.Thread(target=press, args=(buttons.button.pin, store, loop), name="bench-presses")
        presser.start()
        try:
            loop.run()
        finally:
            loop_ended.set()
            presser.join()
    if failed:
        raise failed[0]
    _progress("")
    return latency, camera.capture_s, bare_s, report.full_check_progress or 0.0
