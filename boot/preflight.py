"""Preflight checks: find what would make the appliance fail, or fail silently, before it captures.

Each check returns a :class:`Check` with a level and a one-line reason: ``ok``; ``note``, worth
knowing but needing no action; ``warning``, needing a look or an action; ``fatal``, the appliance
cannot run.  ``appliance run`` refuses to start when any check is fatal; ``appliance check`` prints
them all as a table and exits 1 for a warning, never for a note.  No check raises.
"""

import os
import shutil
import ssl
import tempfile
from dataclasses import dataclass
from pathlib import Path

from PIL import features

from hw.camera import attached_cameras
from hw.exc import CameraError
from hw.system import clock_synced

OK, NOTE, WARNING, FATAL = "ok", "note", "warning", "fatal"


@dataclass(frozen=True)
class Check:
    """The outcome of one check: ``name``, ``level`` (:data:`OK`, :data:`NOTE`, :data:`WARNING` or
    :data:`FATAL`) and a one-line ``reason``."""

    name: str
    level: str
    reason: str


def check_webp() -> Check:
    """Thumbnails are WebP: Pillow must have been built with libwebp."""
    if features.check("webp"):
        return Check("webp", OK, f"Pillow has WebP (libwebp {features.version('webp')})")
    return Check("webp", FATAL, "Pillow was built without WebP support; install libwebp and reinstall Pillow")


def mount_point(path: Path) -> Path:
    """The mount point of the filesystem holding ``path`` (or, for a path not yet created, the
    nearest existing parent)."""
    path = Path(os.path.realpath(path))  # a symlink counts where it points
    while not path.exists():
        path = path.parent
    while not os.path.ismount(path):
        path = path.parent
    return path


def check_mount(data_dir: Path, data_mount: str) -> Check:
    """The data directory is on the filesystem mounted at ``data_mount`` (e.g. a USB disk at
    ``/mnt/usb``).  Fatal when that mount is missing: the data would go to the SD card's root
    filesystem instead, and fill it.  Without ``data_mount``, says where the data goes."""
    where = mount_point(data_dir)
    if not data_mount:
        on = "the root filesystem" if where == Path("/") else f"the filesystem mounted at {where}"
        return Check("data_mount", OK, f"{data_dir} is on {on}")
    if not os.path.ismount(data_mount):
        return Check(
            "data_mount",
            FATAL,
            f"{data_mount} is not mounted: {data_dir} would be written to {where} instead",
        )
    if where != Path(os.path.realpath(data_mount)):
        return Check("data_mount", FATAL, f"{data_dir} is on {where}, not on the data_mount {data_mount}")
    return Check("data_mount", OK, f"{data_dir} is on the filesystem mounted at {data_mount}")


def check_data_dir(data_dir: Path) -> Check:
    """The data directory exists (or can be created) and a file in it can be written and fsynced."""
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=data_dir, prefix=".preflight-") as probe:
            probe.write(b"x")
            probe.flush()
            os.fsync(probe.fileno())
    except (FileExistsError, NotADirectoryError):
        return Check(
            "data_dir", FATAL, f"{data_dir} is a file, or inside one, not a folder: set data_dir to a folder"
        )
    except OSError as exc:
        return Check("data_dir", FATAL, f"{data_dir} is not writable: {exc.strerror or exc}")
    return Check("data_dir", OK, f"{data_dir.resolve()} is writable")


def check_free_space(data_dir: Path, min_free_bytes: int) -> Check:
    """Free space above the floor below which capturing pauses (``capture_min_free_bytes``); a
    warning only: cleanup frees space and capturing resumes by itself."""
    free = shutil.disk_usage(data_dir).free
    if free < min_free_bytes:
        return Check(
            "free_space",
            WARNING,
            f"{free / 1e6:.0f} MB free, below the {min_free_bytes / 1e6:.0f} MB floor: capturing pauses "
            "until cleanup frees space",
        )
    return Check("free_space", OK, f"{free / 1e9:.1f} GB free")


def check_clock(simulate: bool = False) -> Check:
    """The system clock is synchronised; a warning only: captures still run, flagged.  In
    simulation a note: the machine's clock is not a trap's to fix (a container often cannot say
    whether it is synchronised), and the captures are flagged all the same."""
    synced = clock_synced()
    if synced:
        return Check("clock", OK, "synchronised")
    level, why = (
        (NOTE, "; nothing to do in simulation")
        if simulate
        else (WARNING, " (connect the trap to a network once, or fit a real-time clock module)")
    )
    if synced is None:
        return Check("clock", level, f"its state cannot be read: photo times may be wrong{why}")
    return Check(
        "clock", level, f"not set (no network time or GPS yet): photo times may be wrong until it is{why}"
    )


def check_camera(simulate: bool) -> Check:
    """A camera is attached (on hardware; libcamera's list, without opening it)."""
    if simulate:
        return Check("camera", OK, "simulated")
    try:
        cameras = attached_cameras()
    except CameraError as exc:
        return Check("camera", FATAL, str(exc))
    if not cameras:
        return Check(
            "camera", FATAL, "no camera detected: check the ribbon cable, then rpicam-hello --list-cameras"
        )
    return Check(
        "camera", OK, ", ".join(f"{c.get('Model', '?')} (camera {c.get('Num', '?')})" for c in cameras)
    )


def check_rclone(remote: str, config_path: Path, binary: str = "rclone") -> Check:
    """The remote offload can run: rclone is installed and, for a remote of its config file
    (``"fleet:bucket/"``, not a local folder), ``config_path`` exists, defines the remote, and is
    readable by its owner and group root alone: its credentials are secrets, so a config file that
    the group or anyone may read is a warning (``chmod 600``)."""
    if shutil.which(binary) is None:
        return Check(
            "remote offload", WARNING, "offload_remote is set and rclone is not installed: apt install rclone"
        )
    if remote.startswith("/"):
        return Check("remote offload", OK, f"rclone, to the folder {remote}")
    name = remote.partition(":")[0]
    try:
        info = os.stat(config_path)
        text = Path(config_path).read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        return Check(
            "remote offload",
            WARNING,
            f"the rclone config file {config_path} cannot be read ({exc.strerror}): "
            "set offload_rclone_config",
        )
    if info.st_mode & 0o044:
        return Check(
            "remote offload",
            WARNING,
            f"the rclone config file {config_path} holds credentials and is readable by "
            f"{'anyone' if info.st_mode & 0o004 else 'its group'} (mode {info.st_mode & 0o777:o}): "
            f"chmod 600 {config_path}",
        )
    if f"[{name}]" not in (line.strip() for line in text.splitlines()):
        return Check(
            "remote offload", WARNING, f"the rclone config file {config_path} has no remote [{name}]"
        )
    return Check("remote offload", OK, f"rclone, remote [{name}] of {config_path}")


def check_mqtt(password_file: str, tls: str) -> Check:
    """MQTT can connect as configured: the password file (when one is set) can be read, is not
    empty, and is readable by its owner alone (it is a secret: readable by the group or anyone is
    a warning, ``chmod 600``), and a TLS CA file (when one is set) can be read.  A warning, not a
    refusal: capturing goes on without MQTT, and the status page says why it is not connected."""
    for key, path in (
        ("mqtt_password_file", password_file),
        ("mqtt_tls", tls if tls.startswith("/") else ""),
    ):
        if not path:
            continue
        try:
            info = os.stat(path)
            empty = not Path(path).read_bytes().strip()
        except OSError as exc:
            return Check("mqtt", WARNING, f"{key}: {path} cannot be read ({exc.strerror}): MQTT stays off")
        if key == "mqtt_tls":
            try:
                ssl.create_default_context(cafile=path)
            except ssl.SSLError as exc:
                return Check(
                    "mqtt",
                    WARNING,
                    f"{key}: {path} is not a PEM CA certificate ({exc.reason}): MQTT stays off",
                )
        if key == "mqtt_password_file" and empty:
            return Check("mqtt", WARNING, f"{key}: {path} is empty: write the password on its first line")
        if key == "mqtt_password_file" and info.st_mode & 0o044:
            return Check(
                "mqtt",
                WARNING,
                f"{key}: {path} holds a password and is readable by "
                f"{'anyone' if info.st_mode & 0o004 else 'its group'} (mode {info.st_mode & 0o777:o}): "
                f"chmod 600 {path}",
            )
    return Check(
        "mqtt", OK, "password and CA files readable" if password_file or tls else "no password, no TLS"
    )


def preflight(
    data_dir: Path, *, data_mount: str = "", min_free_bytes: int = 0, simulate: bool = True
) -> list[Check]:
    """Run every check for an appliance storing into ``data_dir``; never raises.  When the mount
    check is fatal, the data directory is not created (it would be created in the wrong place)."""
    data_dir = Path(data_dir)
    checks = [check_webp(), check_mount(data_dir, data_mount)]
    if checks[-1].level != FATAL:
        checks.append(check_data_dir(data_dir))
        if checks[-1].level != FATAL:
            checks.append(check_free_space(data_dir, min_free_bytes))
    return checks + [check_clock(simulate), check_camera(simulate)]
