"""Offload to an rclone remote (issue 19): :func:`appliance.upload.upload_run` (each photo read
and hashed on the card, sent with ``rclone copy``, verified by the remote's own hash, then the
Camtrap DP tables and SHA256SUMS uploaded and verified) against one bare ``rclone copy`` of the
same photos to the same server, measured in the same run.

The server is moto's S3 (``moto_server``, from ``pip install 'moto[server]'``, the ``test``
extra) on 127.0.0.1, so the figure is what the protocol costs on top of rclone's own copy where
the link costs nothing: on a real link the transfer weighs more and the protocol's round trips
less, or more when the link's latency is high.  moto keeps small objects in memory and larger
ones in temporary files; each run's folder is purged after it is timed.  Without
``moto_server`` or ``rclone`` the figure is ``n/a`` with why.
"""

import contextlib
import dataclasses
import datetime
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

from appliance import config as config_module
from appliance.bench import plan
from appliance.bench.measuring import _progress
from appliance.exc import ApplianceError
from appliance.rclone import Rclone
from appliance.store import CaptureStore, IndexReader
from appliance.upload import remote_target, upload_run
from hw.clock import SystemClock

SERVER = "moto (S3) on 127.0.0.1"
REMOTE, BUCKET = "fleet", "bench"
# What each missing program is and how to get it.
NEEDS = {
    "moto_server": "moto_server (pip install 'moto[server]')",
    "rclone": "rclone (apt install rclone)",
}
# Seconds moto may take to answer after it starts (importing moto takes about a second), and to
# end once asked to.
START_TIMEOUT_S = 30
STOP_TIMEOUT_S = 5
# Backstop on one rclone call of the bench; a failing one ends much sooner.
RCLONE_TIMEOUT_S = 600


def _moto_server() -> str | None:
    """The ``moto_server`` program: the one installed beside this Python (a venv's), else the
    first on ``PATH``; None when there is none."""
    beside = Path(sys.executable).parent / "moto_server"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which("moto_server")


def _missing() -> str | None:
    found = {"moto_server": _moto_server(), "rclone": shutil.which("rclone")}
    missing = [NEEDS[name] for name, path in found.items() if path is None]
    return f"needs {' and '.join(missing)}" if missing else None


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def _moto(scratch: Path):
    """moto's S3 server on a free port of 127.0.0.1, its log in ``scratch``; yields ``(endpoint,
    None)`` (``"http://127.0.0.1:PORT"``) once it answers, or ``(None, why)`` when it exited or
    did not answer within :data:`START_TIMEOUT_S`; stops it however the block ends (Ctrl-C
    included)."""
    port = _free_port()
    endpoint = f"http://127.0.0.1:{port}"
    log_path = scratch / "moto.log"
    # Not this process's AWS_* variables (an AWS_CA_BUNDLE, say): moto reads some of them.
    env = {name: value for name, value in os.environ.items() if not name.startswith(("AWS_", "MOTO_"))}
    with open(log_path, "wb") as log:
        server = subprocess.Popen(
            [_moto_server(), "-H", "127.0.0.1", "-p", str(port)],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env,
        )  # fmt: skip
    try:
        yield _wait_answering(server, endpoint, log_path)
    finally:
        server.terminate()
        try:
            server.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def _wait_answering(server: subprocess.Popen, endpoint: str, log_path: Path) -> tuple[str | None, str | None]:
    deadline = time.monotonic() + START_TIMEOUT_S
    while server.poll() is None:
        try:
            with urllib.request.urlopen(endpoint + "/moto-api/", timeout=1):
                return endpoint, None
        except (OSError, urllib.error.URLError):
            if time.monotonic() > deadline:
                return None, f"moto_server did not answer on {endpoint} in {START_TIMEOUT_S} s"
            time.sleep(0.05)
    said = log_path.read_text(errors="replace").strip().splitlines()[-1:]
    return None, f"moto_server exited with status {server.returncode}: {''.join(said)}"


def _rclone_config(path: Path, endpoint: str) -> Path:
    """An rclone config file at ``path`` (mode 0600) whose remote :data:`REMOTE` is the server."""
    section = (
        f"[{REMOTE}]\ntype = s3\nprovider = Other\naccess_key_id = bench\n"
        f"secret_access_key = bench-secret\nendpoint = {endpoint}\nregion = us-east-1\n"
        "force_path_style = true\n"
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with open(fd, "w") as f:
        f.write(section)
    return path


def _make_bucket(endpoint: str, name: str) -> None:
    """Create the bucket ``name`` (rclone makes none: the appliance runs it with
    ``--s3-no-check-bucket``); moto, left with its authentication off, takes an unsigned PUT."""
    with urllib.request.urlopen(urllib.request.Request(f"{endpoint}/{name}", method="PUT"), timeout=30):
        pass


def photo_count(photo_bytes: int) -> int:
    """How many copies of a photo of ``photo_bytes`` bytes the figure sends each run:
    :data:`plan.REMOTE_OFFLOAD_PHOTOS`, fewer when they would weigh more than
    :data:`plan.REMOTE_OFFLOAD_BYTES` (at least one)."""
    return max(1, min(plan.REMOTE_OFFLOAD_PHOTOS, plan.REMOTE_OFFLOAD_BYTES // max(photo_bytes, 1)))


def remote_offload_figures(scratch: Path, photo: bytes) -> dict:
    """``remote_offload``: :func:`photo_count` distinct copies of ``photo`` uploaded with
    :func:`~appliance.upload.upload_run` to moto's S3 on 127.0.0.1, twice, each time to a folder
    of its own (so that all are sent), and copied twice with one bare ``rclone copy`` of a folder
    holding the same photos (rclone's defaults, the appliance's rclone flags), in the order ABBA
    so that a busy moment weighs on both alike.  ``{"photos", "server": "moto (S3) on
    127.0.0.1", "offload_mb_per_s", "bare_mb_per_s", "ratio"}`` (ratio: offload throughput /
    bare throughput, verification and tables included), or ``{"ratio": None, "na": why}`` when
    moto_server or rclone is missing or the server does not start.  Raises ApplianceError when
    an upload or a copy fails."""
    why = _missing()
    if why:
        return {"remote_offload": {"ratio": None, "na": why}}
    photos = photo_count(len(photo) + 4)
    _progress(f"remote offload: storing {photos} photos")
    store = CaptureStore(scratch / "store")
    try:
        clock = SystemClock()
        for n in range(photos):
            store.add(photo + n.to_bytes(4, "big"), None, timestamp=clock.now(), trigger="motion")
    finally:
        store.close()
    reader = IndexReader(scratch / "store")
    flat = scratch / "photos"  # the same files, by hard links: rclone copy takes a folder
    flat.mkdir()
    for row in reader.latest(photos):
        os.link(scratch / "store" / row["media_path"], flat / f"{row['id']}.jpg")
    total = photos * (len(photo) + 4)
    config = dataclasses.replace(config_module.load(), latitude=51.496, longitude=4.774)
    with _moto(scratch) as (endpoint, why):
        if why:
            return {"remote_offload": {"ratio": None, "na": why}}
        remote = Rclone(str(_rclone_config(scratch / "rclone.conf", endpoint)), binary=shutil.which("rclone"))
        _make_bucket(endpoint, BUCKET)
        seconds = {"bare": 0.0, "offload": 0.0}
        for n, step in enumerate(("bare", "offload", "offload", "bare")):
            _progress(f"remote offload: {photos} photos to {SERVER}, {step}")
            folder = f"{REMOTE}:{BUCKET}/{'bare' if step == 'bare' else 'ours'}-{n}/"
            started = time.perf_counter()
            if step == "bare":
                remote.run(["copy", str(flat), folder], timeout_s=RCLONE_TIMEOUT_S)
            else:
                _upload(remote, folder, reader, scratch / "store", config, n, photos)
            seconds[step] += time.perf_counter() - started
            remote.run(["purge", folder], timeout_s=RCLONE_TIMEOUT_S)  # moto's memory back
    mb = 2 * total / 1e6
    return {
        "remote_offload": {
            "photos": photos,
            "server": SERVER,
            "offload_mb_per_s": round(mb / seconds["offload"], 1),
            "bare_mb_per_s": round(mb / seconds["bare"], 1),
            "ratio": round(seconds["bare"] / seconds["offload"], 2),
        }
    }


def _upload(
    remote: Rclone, folder: str, reader: IndexReader, data_dir: Path, config, n: int, photos: int
) -> None:
    """One whole :func:`~appliance.upload.upload_run` of every capture to ``folder``, a target of
    its own.  Raises ApplianceError unless all were sent, verified and listed in the tables."""
    start = datetime.datetime(2026, 1, 1 + n, tzinfo=datetime.UTC).isoformat()
    result = upload_run(
        remote, folder, reader, data_dir, target=remote_target(folder),
        deployment=dataclasses.replace(config, deployment_start=start),
        record=lambda capture_id, sha: None, stop=threading.Event(),
    )  # fmt: skip
    if result.reason or result.errors or result.copied != photos:
        problem = result.reason or "; ".join(result.errors) or "some were not sent"
        raise ApplianceError(f"bench: remote offload uploaded {result.copied} of {photos}: {problem}")
