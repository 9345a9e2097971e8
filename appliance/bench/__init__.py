"""``appliance bench``: figures for the capture store, each against a baseline measured in the same
run, so that they mean the same on a busy CI machine and on a Pi.

Cleanup (issue 4): the time to choose a batch of the oldest unprotected captures in an index of
1,000, 100,000 and 1,000,000 captures (it must not grow with the index; the three indexes are
timed in turn, round after round, and the least time of each kept), and the time to delete
10,000 captures through the store against bare ``os.unlink`` of the same number of files of the
same sizes.

Web (issue 6): p50 and p99 latency of ``/``, ``/api/status`` and two ``/api/captures?before=``
pages (one in the middle of the index, one at its oldest end), served by the real
:class:`~appliance.web.WebServer` and asked over HTTP keep-alive, with an index of 1,000 and of
1,000,000 captures; the figure is the ratio of the p50s, which must not grow with the index size.

The capture path (issue 8), with one photo (``--photo``, or a synthetic 12 MP one):

- Durable ingest: captures acknowledged per second through the real :class:`CaptureStore` (the
  thumbnail from the camera's small frame, both files published, the index row committed) against
  the limit, the same JPEG bytes published alone (write, fsync, rename, folder fsync), in
  alternating rounds so that a busy moment weighs on both alike.  Memory: the peak RSS over that
  run and the RSS growth from an early capture to the last.
- Thumbnails: the store's way from the small frame and from the JPEG (a DCT-scaled decode), against
  the naive way (a full decode, ``thumbnail()``, Pillow's default WebP effort) and against the bare
  reduced-size decode.
- Trigger to acknowledgement: a real gpiozero ``MockFactory`` pin pressed, the real
  :class:`~appliance.loop.MainLoop` capturing from a :class:`~hw.camera.SimulatedCamera` replaying the
  photo; the camera's own time is taken off, and the rest compared with one bare durable write of
  the same bytes after each trigger.  Then the same presses while a full check recovers 25,000
  photos without rows beside capturing (issue 15), against the idle figure.
- MQTT telemetry (issue 20): the same presses with the telemetry's hand-off on the main loop, to a
  real mosquitto on 127.0.0.1 and to a black-holed broker, each against MQTT off, taking turns.
- Start-up: from process start to ``READY=1`` of a real ``appliance run --simulate``, with an empty
  index and with the web figures' index of 1,000,000 captures, each after a clean shutdown.
- Field figures for the card under the data directory: captures per minute the storage sustains
  with this photo, and hours of capturing until cleanup would start.

Import and export (issue 9), with :data:`plan.TRANSFER_PHOTOS` distinct copies of the photo:

- ``appliance import`` of a folder of them, against the bare way to store such files (read each,
  make its thumbnail from the JPEG, :meth:`CaptureStore.add`): what identifying, EXIF, the
  duplicate lookup and the checks add.
- The streamed Camtrap DP ZIP of those captures, against reading the same photos and computing
  their CRC-32, which every ZIP writer must; and the peak of Python's allocations while streaming
  (``tracemalloc``), which must not depend on the size of the package.

Offload (issues 18 and 19), with distinct copies of the photo: the verified copy to a USB stick
(a FAT32 image) against a bare copy to it (:mod:`~appliance.bench.offload`), and the verified
upload to an rclone remote (moto's S3 on 127.0.0.1) against a bare ``rclone copy`` to it
(:mod:`~appliance.bench.remote`).

One module per concept: :mod:`~appliance.bench.plan` (how much is measured, and the targets),
:mod:`~appliance.bench.cleanup`, :mod:`~appliance.bench.web`, :mod:`~appliance.bench.ingest`
(ingest, thumbnails, field figures), :mod:`~appliance.bench.latency` (idle and recovering),
:mod:`~appliance.bench.mqtt`, :mod:`~appliance.bench.startup`, :mod:`~appliance.bench.transfer`,
:mod:`~appliance.bench.offload`, :mod:`~appliance.bench.remote`, what they share
(:mod:`~appliance.bench.measuring`, :mod:`~appliance.bench.photo`, :mod:`~appliance.bench.index`)
and :mod:`~appliance.bench.report` (verdicts and the table).  This one runs them in order
(:func:`measure`) and is the command (:func:`main`).  Importing it touches no disk.
"""

import json
import shutil
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

from appliance.bench import plan
from appliance.bench.cleanup import cleanup_figures
from appliance.bench.index import RECENT_CAPTURES
from appliance.bench.index import _grow_index as _grow_index  # the tests build indexes with it
from appliance.bench.ingest import field_figures, ingest_figures, thumbnail_figures
from appliance.bench.latency import latency_figures, recovery_figures
from appliance.bench.measuring import _progress
from appliance.bench.mqtt import mqtt_figures, press_count
from appliance.bench.offload import offload_figures
from appliance.bench.photo import synthetic_photo
from appliance.bench.remote import remote_offload_figures
from appliance.bench.report import print_table, verdict, verdicts
from appliance.bench.startup import startup_figures
from appliance.bench.transfer import transfer_figures
from appliance.bench.web import web_figures, web_routes
from appliance.exc import ApplianceError
from hw.camera import first_replayable

# The names appliance.bench had as one module.  The sizes and targets are in plan only: set there,
# they reach every figure; a copy here would take a test's setting and silently ignore it.
__all__ = [
    "RECENT_CAPTURES",
    "cleanup_figures",
    "field_figures",
    "ingest_figures",
    "latency_figures",
    "offload_figures",
    "main",
    "measure",
    "mqtt_figures",
    "plan",
    "print_table",
    "recovery_figures",
    "remote_offload_figures",
    "startup_figures",
    "synthetic_photo",
    "thumbnail_figures",
    "transfer_figures",
    "verdict",
    "verdicts",
    "web_figures",
    "web_routes",
]


def measure(data_dir: Path, photo: bytes, captures: int) -> dict:
    """Every figure, measured in scratch folders under ``data_dir`` (removed afterwards)."""
    figures: dict = {}
    with tempfile.TemporaryDirectory(dir=data_dir, prefix="appliance-bench-") as scratch:
        photo_dir = Path(scratch) / "photo"
        photo_dir.mkdir()
        (photo_dir / "photo.jpg").write_bytes(photo)
        # First, while the process is small: the peak RSS is the capture path's, not the big indexes'.
        (Path(scratch) / "ingest").mkdir()
        figures |= ingest_figures(Path(scratch) / "ingest", photo_dir, captures)
        shutil.rmtree(Path(scratch) / "ingest")
        figures |= thumbnail_figures(photo_dir)
        (Path(scratch) / "latency").mkdir()
        figures |= latency_figures(
            Path(scratch) / "latency", photo_dir, min(plan.LATENCY_TRIGGERS, captures // 20)
        )
        shutil.rmtree(Path(scratch) / "latency")
        (Path(scratch) / "recovery").mkdir()
        figures |= recovery_figures(
            Path(scratch) / "recovery",
            photo_dir,
            min(plan.LATENCY_TRIGGERS, captures // 20),
            figures["latency_ms"]["acknowledged"],
        )
        shutil.rmtree(Path(scratch) / "recovery")
        (Path(scratch) / "mqtt").mkdir()
        figures |= mqtt_figures(Path(scratch) / "mqtt", photo_dir, press_count(captures))
        shutil.rmtree(Path(scratch) / "mqtt")
    figures["field"] = field_figures(data_dir, figures["ingest"])
    with tempfile.TemporaryDirectory(dir=data_dir, prefix="appliance-bench-") as scratch:
        figures |= transfer_figures(Path(scratch), photo)
    with tempfile.TemporaryDirectory(dir=data_dir, prefix="appliance-bench-") as scratch:
        figures |= offload_figures(Path(scratch), photo)
    with tempfile.TemporaryDirectory(dir=data_dir, prefix="appliance-bench-") as scratch:
        figures |= remote_offload_figures(Path(scratch), photo)
    with tempfile.TemporaryDirectory(dir=data_dir, prefix="appliance-bench-") as scratch:
        figures |= cleanup_figures(Path(scratch))
    with tempfile.TemporaryDirectory(dir=data_dir, prefix="appliance-bench-") as scratch:
        figures |= web_figures(Path(scratch))
        # The web's largest index, closed cleanly by now: building another would take half a minute.
        (Path(scratch) / "startup").mkdir()
        figures |= startup_figures(Path(scratch) / "startup", Path(scratch) / str(plan.INDEX_SIZES[-1]))
    figures["verdicts"] = verdicts(figures)
    return figures


def main(
    data_dir: str | None,
    as_json: bool,
    *,
    photo: str | None = None,
    captures: int = plan.CAPTURES,
    quick: bool = False,
) -> int:
    """``appliance bench``: measure in ``data_dir`` (default: the temporary folder; created, with
    its parents, when missing) with the JPEG at ``photo`` (default: :func:`synthetic_photo`) and
    ``captures`` captures; print the figures as a table, or as one JSON object.  ``quick``: with
    the smaller indexes of :data:`plan.QUICK` (the figures say ``"quick": true``).  Returns 0
    whatever the verdicts (a measurement, not a test), 1 when the benchmark itself failed, 2 for
    a bad argument: too few captures, a ``photo`` that is not a JPEG the simulated camera can
    replay, a ``data_dir`` that cannot be made a folder."""
    if captures < plan.MIN_CAPTURES:
        print(f"appliance: bench: --captures must be at least {plan.MIN_CAPTURES}", file=sys.stderr)
        return 2
    folder = Path(data_dir or tempfile.gettempdir())
    problem = _photo_problem(photo) if photo is not None else None
    try:
        if not problem:
            folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        problem = (
            f"--data-dir {data_dir}: cannot be made a folder ({exc.strerror or exc}): name a folder "
            "this user can write to"
        )
    if problem:
        print(f"appliance: bench: {problem}", file=sys.stderr)
        return 2
    try:
        if photo is None:
            _progress("making a synthetic 12 MP photo")
            jpeg, photo_name = synthetic_photo(), "synthetic photo (jpeg_quality 90)"
        else:
            jpeg, photo_name = Path(photo).read_bytes(), photo
        started = time.monotonic()
        full = {name: getattr(plan, name) for name in plan.QUICK}
        try:
            for name, value in plan.QUICK.items() if quick else ():
                setattr(plan, name, value)
            figures = measure(folder, jpeg, captures)
        finally:  # for a caller in the same process
            for name, value in full.items():
                setattr(plan, name, value)
    except (ApplianceError, OSError, sqlite3.Error) as exc:
        _progress("")
        print(f"appliance: bench: failed: {exc}", file=sys.stderr)
        return 1
    figures["quick"] = quick
    figures["photo"] = photo_name
    figures["bench_s"] = round(time.monotonic() - started, 1)
    if as_json:
        print(json.dumps(figures))
        return 0
    print_table(figures, photo_name)
    return 0


def _photo_problem(photo: str) -> str | None:
    """What is wrong with ``--photo``, in a line that says what to do, or None."""
    path = Path(photo)
    if not path.is_file():
        return f"--photo {photo}: {'is not a file' if path.exists() else 'no such file'}: name a JPEG photo"
    if first_replayable([path]) is None:
        return f"--photo {photo}: not a JPEG that can be decoded: name a JPEG photo"
    return None
