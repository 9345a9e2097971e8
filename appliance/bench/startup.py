"""Start-up (issue 8): from process start to ``READY=1`` of a real ``appliance run --simulate``,
with an empty index and with a large one.
"""

import contextlib
import datetime
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from appliance.bench import plan
from appliance.bench.measuring import _progress
from appliance.exc import ApplianceError
from appliance.store import CaptureStore, IndexReader

STARTUP_TIMEOUT_S = 120.0
# Config for the start-up runs: cleanup, timelapse and simulated triggers all out of the way.
STARTUP_CONFIG = """\
trigger_cooldown_s = 0
max_captures_per_minute = 0
cleanup_start_free_percent = 0
cleanup_start_free_bytes = 0
cleanup_stop_free_percent = 0
cleanup_stop_free_bytes = 0
headroom_hours = 0
capture_min_free_bytes = 0
cleanup_interval_s = 3600
simulate_trigger_interval_s = 3600
"""


def _start_to_ready(data_dir: Path, config: Path, notify: socket.socket, address: str) -> float:
    """Seconds from starting ``appliance run --simulate`` on ``data_dir`` to its ``READY=1`` on
    ``notify``; then stops it with SIGTERM.  Raises :class:`ApplianceError` when it exits first,
    is not ready within :data:`STARTUP_TIMEOUT_S`, or does not stop cleanly."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WATCHDOG_")} | {"NOTIFY_SOCKET": address}
    command = [
        sys.executable,
        "-m",
        "appliance",
        "run",
        "--simulate",
        "--port",
        "0",
        "--host",
        "127.0.0.1",
        "--data-dir",
        str(data_dir),
        "--config",
        str(config),
        "--log-level",
        "WARNING",
    ]
    with contextlib.suppress(TimeoutError):
        while notify.recv(4096):
            pass  # what an earlier run sent after its READY
    started = time.monotonic()
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        while True:
            if time.monotonic() - started > STARTUP_TIMEOUT_S:
                raise ApplianceError(f"bench: appliance run was not ready within {STARTUP_TIMEOUT_S} s")
            try:
                message = notify.recv(4096).decode()
            except TimeoutError:
                if process.poll() is not None:
                    raise ApplianceError(
                        f"bench: appliance run exited {process.returncode} before READY=1: "
                        f"{process.communicate()[1][-2000:]}"
                    ) from None
                continue
            if "READY=1" in message.split("\n"):
                ready = time.monotonic() - started
                break
        process.send_signal(signal.SIGTERM)
        stderr = process.communicate(timeout=60)[1]
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    if process.returncode != 0:
        raise ApplianceError(f"bench: appliance run exited {process.returncode} on SIGTERM: {stderr[-2000:]}")
    return ready


def startup_figures(data_dir: Path, full: Path) -> dict:
    """Seconds from process start to ``READY=1`` of a real ``appliance run --simulate`` (its own
    notify socket, port 0, cleanup and simulated triggers out of the way), :data:`plan.STARTUP_RUNS`
    times each with an empty index (made in ``data_dir``) and with the index in ``full``, both
    after a clean shutdown, interleaved.  Returns ``startup_s`` (``{"empty", "full"}``: medians),
    ``startup_index_size`` (the captures in ``full``) and ``startup_ratio`` (full / empty)."""
    empty = data_dir / "empty"
    CaptureStore(empty).close()
    size = IndexReader(full).counts(datetime.datetime.now(datetime.UTC))["total"]
    config = data_dir / "appliance.toml"
    config.write_text(STARTUP_CONFIG)
    times = {"empty": [], "full": []}
    # The socket's path must fit in sun_path (108 bytes), whatever the length of --data-dir.
    with (
        tempfile.TemporaryDirectory(prefix="appliance-bench-") as short,
        socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify,
    ):
        address = os.path.join(short, "notify")
        notify.bind(address)
        notify.settimeout(0.05)
        for run in range(plan.STARTUP_RUNS):
            for name in ("empty", "full") if run % 2 == 0 else ("full", "empty"):
                _progress(f"start-up: run {run + 1} of {plan.STARTUP_RUNS}, {name} index")
                times[name].append(
                    _start_to_ready(empty if name == "empty" else full, config, notify, address)
                )
    _progress("")
    seconds = {name: round(statistics.median(values), 3) for name, values in times.items()}
    return {
        "startup_s": seconds,
        "startup_index_size": size,
        "startup_ratio": round(seconds["full"] / seconds["empty"], 2),
    }
