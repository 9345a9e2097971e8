"""The USB stick the photos are offloaded to: a filesystem mounted at a configured mount point.

A stick is used only when all of these hold (:func:`why_not` says which does not):

- something is mounted at the path (``os.path.ismount``); mounting is the system's job (the
  installer's udev rule and systemd mount, see systemd/README.md), never this module's;
- it is not the data directory's own filesystem (``st_dev`` differs), so a mount point that is
  really a folder of the SD card is never "offloaded" to;
- its filesystem label is the configured one (``offload_usb_label``, e.g. ``TRAPDATA``; compared
  without regard to case, as FAT keeps labels in capitals), so a random stick is never written.

The label and the filesystem's UUID come from ``findmnt``.  A FUSE mount (fusefat, exfat-fuse: the
tests use them where the kernel has no vfat or exfat module) reports neither when its source is
not a device or an image file, so they are then read from the mount's source with ``blkid -o value
-s LABEL SOURCE``; a FUSE mount whose source names no device or image (fusefat without ``-o
fsname=IMAGE``) has no label and is not used.  Commands run without a shell and with a timeout of
:data:`COMMAND_TIMEOUT_S`.  Nothing is read at import time.
"""

import json
import logging
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

# Seconds findmnt or blkid may take (a stick that hangs must not hang the caller).
COMMAND_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class UsbStick:
    """A stick found by :func:`find_stick`.

    ``path``: its mount point.  ``label``: its filesystem label.  ``fstype``: the filesystem as the
    mount table names it (``vfat``, ``exfat``, ``ext4``; ``fuse``/``fuseblk`` for FUSE drivers).
    ``free_bytes``: room left for an unprivileged writer when found, in bytes, or -1 where the
    filesystem does not report it (fusefat reports 0 blocks).  ``uuid``: its filesystem UUID
    (``"8B11-8772"`` on FAT and exFAT), ``""`` when unknown.  ``dev``: the mount's ``st_dev``,
    which tells whether the same mount is still there.  ``read_only``: mounted read-only.
    """

    path: Path
    label: str
    fstype: str
    free_bytes: int
    uuid: str = ""
    dev: int = 0
    read_only: bool = False


def _command(args: list[str]) -> str | None:
    """The stripped output of ``args``, or None (logged at DEBUG) when it fails or times out."""
    try:
        result = subprocess.run(args, capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired) as exc:
        log.debug("%s: %s", args[0], exc)
        return None
    if result.returncode != 0:
        log.debug("%s: exit status %s: %s", " ".join(args), result.returncode, result.stderr.strip())
        return None
    return result.stdout.strip()


def _mount_info(path: Path) -> dict | None:
    """``{"source", "fstype", "label", "uuid"}`` of the mount at ``path`` (label and uuid ``""``
    when unknown), or None when findmnt cannot say."""
    text = _command(["findmnt", "-J", "--mountpoint", str(path), "-o", "SOURCE,FSTYPE,LABEL,UUID"])
    try:
        found = json.loads(text)["filesystems"][0] if text else None
    except (ValueError, KeyError, IndexError, TypeError):
        found = None
    if not isinstance(found, dict):
        return None
    info = {key: found.get(key) or "" for key in ("source", "fstype", "label", "uuid")}
    if info["source"].startswith("/"):  # a FUSE mount's source: read its label from it
        for key in ("label", "uuid"):
            if not info[key]:
                info[key] = _command(["blkid", "-o", "value", "-s", key.upper(), info["source"]]) or ""
    return info


def _examine(path: Path, label: str, data_dir: Path) -> tuple[UsbStick | None, str]:
    path = Path(path)
    try:
        if not os.path.ismount(path):
            return None, f"nothing is mounted at {path}"
        dev = os.stat(path).st_dev
        if dev == os.stat(data_dir).st_dev:
            return None, f"{path} is on the data directory's own filesystem, not a stick"
        info = _mount_info(path)
        if info is None:
            return None, f"cannot read the mount table for {path} (findmnt)"
        if info["label"].casefold() != label.casefold():
            found = repr(info["label"]) if info["label"] else "no label"
            return None, f"the stick at {path} has {found}, not {label!r}: label it {label} to use it"
        stats = os.statvfs(path)
    except OSError as exc:  # the stick went away while we looked, or an I/O error
        return None, f"{path}: {exc.strerror or exc}"
    free = stats.f_bavail * stats.f_frsize if stats.f_blocks else -1
    read_only = bool(stats.f_flag & os.ST_RDONLY)
    stick = UsbStick(path, info["label"], info["fstype"], free, info["uuid"], dev, read_only)
    return stick, ""


def find_stick(path: Path, label: str, data_dir: Path) -> UsbStick | None:
    """The stick mounted at ``path`` with filesystem label ``label`` (case ignored) that is not
    ``data_dir``'s filesystem, or None (never an exception) when there is none; :func:`why_not`
    says why.  Costs a ``stat`` when nothing is mounted; ``findmnt`` (and for a FUSE mount
    ``blkid``) when something is."""
    return _examine(path, label, data_dir)[0]


def why_not(path: Path, label: str, data_dir: Path) -> str:
    """Why :func:`find_stick` finds no stick at ``path``, in one line (``"nothing is mounted at
    /media/appliance-usb"``, a wrong label, the data directory's own filesystem), or ``""`` when
    it finds one."""
    return _examine(path, label, data_dir)[1]
