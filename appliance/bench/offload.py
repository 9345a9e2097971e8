"""Offload to a USB stick (issue 18): :func:`appliance.offload.copy_run` (write, fsync, rename,
read back and hash each photo, then the Camtrap DP tables and SHA256SUMS) against a bare copy of
the same photos to the same stick (write and fsync each), measured in the same run.

The stick is a FAT32 image (``mkfs.vfat -F 32``) mounted by the FUSE driver ``fusefat``, since the
kernels this runs on may have no vfat module: the figures are then fusefat's, not a Pi's USB
port's, and say so.  Without mkfs.vfat, fusefat, /dev/fuse or root, the figure is ``n/a`` with why.
"""

import dataclasses
import datetime
import os
import shutil
import subprocess
import time
from pathlib import Path

from appliance import config as config_module
from appliance.bench import plan
from appliance.bench.measuring import _progress
from appliance.exc import ApplianceError
from appliance.offload import CHUNK_BYTES, copy_run
from appliance.store import CaptureStore, IndexReader
from hw.clock import SystemClock
from hw.usb import find_stick, why_not

LABEL = "TRAPDATA"
# Seconds fusefat may take to mount or unmount the image.
MOUNT_TIMEOUT_S = 20


def _missing() -> str | None:
    missing = [cmd for cmd in ("mkfs.vfat", "fusefat", "fusermount") if shutil.which(cmd) is None]
    if not os.path.exists("/dev/fuse"):
        missing.append("/dev/fuse")
    if os.geteuid() != 0:
        missing.append("root")
    return f"needs {', '.join(missing)} (Debian: dosfstools, fusefat, fuse)" if missing else None


def _bare_copy(reader: IndexReader, data_dir: Path, folder: Path) -> None:
    """Each photo written to ``folder`` and fsynced, nothing else: the floor of a copy."""
    folder.mkdir()
    for row in reader.latest(plan.OFFLOAD_PHOTOS):
        with open(data_dir / row["media_path"], "rb") as src:
            fd = os.open(folder / f"{row['id']}.jpg", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                while chunk := src.read(CHUNK_BYTES):
                    os.write(fd, chunk)
                os.fsync(fd)
            finally:
                os.close(fd)


def offload_figures(scratch: Path, photo: bytes) -> dict:
    """``offload``: :data:`plan.OFFLOAD_PHOTOS` distinct copies of ``photo`` offloaded to a FAT32
    image under ``scratch``, twice, and copied bare twice (order ABBA, so that a busy moment
    weighs on both alike).  ``{"photos", "stick": "FAT32 image by fusefat", "offload_mb_per_s",
    "bare_mb_per_s", "ratio"}`` (ratio: offload throughput / bare throughput, verification
    included), or ``{"ratio": None, "na": why}`` when the tools are missing."""
    why = _missing()
    if why:
        return {"offload": {"ratio": None, "na": why}}
    store = CaptureStore(scratch / "store")
    try:
        clock = SystemClock()
        for n in range(plan.OFFLOAD_PHOTOS):
            store.add(photo + n.to_bytes(4, "big"), None, timestamp=clock.now(), trigger="motion")
    finally:
        store.close()
    reader = IndexReader(scratch / "store")
    total = plan.OFFLOAD_PHOTOS * (len(photo) + 4)
    image, mount_point = scratch / "stick.img", scratch / "usb"
    with open(image, "wb") as f:  # four copies of the photos, and room for FAT's own
        f.truncate(max(64 << 20, total * 4 + (total >> 2)))
    mount_point.mkdir()
    try:
        subprocess.run(["mkfs.vfat", "-F", "32", "-n", LABEL, str(image)], check=True, capture_output=True,
                       timeout=MOUNT_TIMEOUT_S)  # fmt: skip
    except (OSError, subprocess.SubprocessError) as exc:
        return {"offload": {"ratio": None, "na": f"mkfs.vfat failed: {exc}"}}
    daemon = subprocess.Popen(
        ["fusefat", "-f", "-o", f"rw+,fsname={image}", str(image), str(mount_point)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + MOUNT_TIMEOUT_S
        while not os.path.ismount(mount_point):
            if daemon.poll() is not None or time.monotonic() > deadline:
                return {"offload": {"ratio": None, "na": "fusefat did not mount the image"}}
            time.sleep(0.02)
        stick = find_stick(mount_point, LABEL, scratch)
        if stick is None:
            return {"offload": {"ratio": None, "na": why_not(mount_point, LABEL, scratch)}}
        config = dataclasses.replace(config_module.load(), latitude=51.496, longitude=4.774)
        seconds = {"bare": 0.0, "offload": 0.0}
        for n, step in enumerate(("bare", "offload", "offload", "bare")):
            _progress(f"offload: {plan.OFFLOAD_PHOTOS} photos to a FAT32 image, {step}")
            started = time.perf_counter()
            if step == "bare":
                _bare_copy(reader, scratch / "store", mount_point / f"bare{n}")
            else:
                start = datetime.datetime(2026, 1, 1 + n, tzinfo=datetime.UTC).isoformat()
                result = copy_run(stick, reader, scratch / "store", target=f"bench-{n}",
                                  deployment=dataclasses.replace(config, deployment_start=start),
                                  record=lambda capture_id, sha: None)  # fmt: skip
                if result.reason or result.copied != plan.OFFLOAD_PHOTOS:
                    raise ApplianceError(f"bench: offload copied {result.copied}: {result.reason}")
            seconds[step] += time.perf_counter() - started
    finally:
        subprocess.run(["fusermount", "-u", str(mount_point)], capture_output=True, timeout=MOUNT_TIMEOUT_S)
        try:
            daemon.wait(timeout=MOUNT_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            daemon.kill()
            daemon.wait()
    mb = 2 * total / 1e6
    return {
        "offload": {
            "photos": plan.OFFLOAD_PHOTOS,
            "stick": "FAT32 image by fusefat",
            "offload_mb_per_s": round(mb / seconds["offload"], 1),
            "bare_mb_per_s": round(mb / seconds["bare"], 1),
            "ratio": round(seconds["bare"] / seconds["offload"], 2),
        }
    }
