"""USB sticks for tests: real FAT32, exFAT and ext4 filesystems in image files, mounted at a given
mount point, pulled out, remounted read-only, and always cleaned up.

The kernel of the machines the tests run on may lack the ``vfat`` and ``exfat`` modules (the one
this was written on has ext4 only), so each filesystem is mounted the way that works without them:

- ``vfat`` (FAT32): ``mkfs.vfat -F 32`` (dosfstools), mounted by the FUSE driver ``fusefat -o rw+``
  (fusefat) from the image file itself, with ``fsname=<image>`` so that ``findmnt`` and ``blkid``
  see the image (and its label) as the mount's source, as they see ``/dev/sda1`` on a Pi;
- ``exfat``: ``mkfs.exfat`` (exfatprogs), attached with ``losetup`` and mounted by
  ``mount.exfat-fuse`` (exfat-fuse, which needs a block device);
- ``ext4``: ``mkfs.ext4`` (e2fsprogs), attached with ``losetup`` and mounted by the kernel.

The FUSE drivers run in the foreground as children of the test (``-f``; ``-d`` for exfat-fuse,
which has no plain foreground option), so :meth:`Stick.pull` can end the very process that serves
the stick: every later call on it fails (``ENOTCONN``), as on a stick pulled out of its socket.

Everything needs root (mount, losetup, /dev/fuse).  :func:`missing_tools` says what is not
installed; ``.ci/run`` installs the Debian packages.
"""

import os
import shutil
import subprocess
import time
from pathlib import Path

FSTYPES = ("vfat", "exfat", "ext4")
# The command each filesystem needs, and the Debian package that has it.
TOOLS = {
    "vfat": {"mkfs.vfat": "dosfstools", "fusefat": "fusefat", "fusermount": "fuse"},
    "exfat": {"mkfs.exfat": "exfatprogs", "mount.exfat-fuse": "exfat-fuse", "losetup": "mount",
              "fusermount": "fuse"},
    "ext4": {"mkfs.ext4": "e2fsprogs", "losetup": "mount"},
}  # fmt: skip
# Seconds a command or a FUSE mount may take before the fixture gives up.
TIMEOUT_S = 20


class StickError(Exception):
    """A stick could not be made, mounted or taken away (the message says which command failed)."""


def missing_tools(fstype: str) -> list[str]:
    """The commands ``fstype`` needs that are not installed, as ``"command (package)"``; also
    ``/dev/fuse`` and root when they are missing."""
    missing = [f"{cmd} ({pkg})" for cmd, pkg in TOOLS[fstype].items() if shutil.which(cmd) is None]
    if fstype != "ext4" and not os.path.exists("/dev/fuse"):
        missing.append("/dev/fuse")
    if os.geteuid() != 0:
        missing.append("root")
    return missing


def _run(*args: str) -> str:
    try:
        result = subprocess.run(args, capture_output=True, text=True, timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise StickError(f"{' '.join(args)}: no answer in {TIMEOUT_S} s") from None
    if result.returncode != 0:
        raise StickError(f"{' '.join(args)}: {result.stderr.strip() or result.stdout.strip()}")
    return result.stdout.strip()


class Stick:
    """A filesystem of ``fstype`` (:data:`FSTYPES`) in ``image`` (``size_bytes`` long, labelled
    ``label``), made by :meth:`make` and mounted at ``mount_point`` by :meth:`mount`."""

    def __init__(self, image: Path, mount_point: Path, fstype: str, size_bytes: int, label: str):
        self.image, self.mount_point, self.fstype = image, mount_point, fstype
        self.size_bytes, self.label = size_bytes, label
        self.loop: str | None = None  # /dev/loopN while attached (exfat, ext4)
        self.daemon: subprocess.Popen | None = None  # the FUSE driver while mounted (vfat, exfat)

    def make(self) -> "Stick":
        self.image.parent.mkdir(parents=True, exist_ok=True)
        with open(self.image, "wb") as f:
            f.truncate(self.size_bytes)
        if self.fstype == "vfat":
            _run("mkfs.vfat", "-F", "32", "-n", self.label, str(self.image))
        elif self.fstype == "exfat":
            # Its default boundary alignment (1 MiB) leaves no room in an image of a few MiB.
            small = ["-b", "4096"] if self.size_bytes < 16 << 20 else []
            _run("mkfs.exfat", *small, "-L", self.label, str(self.image))
        else:
            _run("mkfs.ext4", "-q", "-F", "-L", self.label, str(self.image))
        return self

    @property
    def mounted(self) -> bool:
        return os.path.ismount(self.mount_point)

    def mount(self, *, read_only: bool = False) -> "Stick":
        """Mount the image at :attr:`mount_point` (made when missing); returns self."""
        self.mount_point.mkdir(parents=True, exist_ok=True)
        if self.fstype == "vfat":
            mode = "ro" if read_only else "rw+"
            # fsname: the mount's source is the image, whose label blkid reads (as a Pi's /dev/sda1).
            self._start_daemon("fusefat", "-f", "-o", f"{mode},fsname={self.image}", str(self.image))
            return self
        if self.loop is None:
            self.loop = _run("losetup", "--find", "--show", str(self.image))
        if self.fstype == "exfat":
            self._start_daemon("mount.exfat-fuse", "-d", "-o", "ro" if read_only else "rw", self.loop)
        else:
            _run("mount", "-t", "ext4", "-o", "ro" if read_only else "rw", self.loop, str(self.mount_point))
        return self

    def _start_daemon(self, *args: str) -> None:
        self.daemon = subprocess.Popen(
            [*args, str(self.mount_point)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + TIMEOUT_S
        while not self.mounted:
            if self.daemon.poll() is not None or time.monotonic() > deadline:
                self._stop_daemon()
                raise StickError(f"{args[0]} did not mount {self.image} at {self.mount_point}")
            time.sleep(0.02)

    def _stop_daemon(self) -> None:
        if self.daemon is not None:
            if self.daemon.poll() is None:
                self.daemon.kill()
            self.daemon.wait(timeout=TIMEOUT_S)
            self.daemon = None

    def unmount(self) -> None:
        """Unmount cleanly (everything written reaches the image) and detach the loop device."""
        if self.mounted:
            if self.daemon is not None:
                _run("fusermount", "-u", str(self.mount_point))
                self.daemon.wait(timeout=TIMEOUT_S)
                self.daemon = None
            else:
                _run("umount", str(self.mount_point))
        self._stop_daemon()
        self._detach()

    def _detach(self) -> None:
        if self.loop is not None:
            subprocess.run(["losetup", "-d", self.loop], capture_output=True, timeout=TIMEOUT_S)
            self.loop = None

    def pull(self) -> None:
        """Take the stick away as a hand pulling it out would: a lazy unmount (the mount point is
        empty at once, whatever still has files open on it), then the FUSE driver killed (every
        later call on an open file fails with ENOTCONN) and the loop device detached."""
        if self.mounted:
            lazy = ["fusermount", "-u", "-z"] if self.daemon is not None else ["umount", "-l"]
            subprocess.run([*lazy, str(self.mount_point)], capture_output=True, timeout=TIMEOUT_S)
        self._stop_daemon()
        self._detach()

    def remount_read_only(self) -> "Stick":
        """Unmount and mount again read-only (as a stick with its write-protect switch on)."""
        self.unmount()
        return self.mount(read_only=True)

    def files(self) -> dict[str, bytes]:
        """Every regular file under the mount point: path relative to it -> contents (the
        volume-label entry fusefat shows as a file left out)."""
        found = {}
        for path in sorted(self.mount_point.rglob("*")):
            if path.is_file() and not (self.fstype == "vfat" and path.parent == self.mount_point
                                       and path.name == self.label):  # fmt: skip
                found[str(path.relative_to(self.mount_point))] = path.read_bytes()
        return found

    def cleanup(self) -> None:
        """Unmount and detach whatever is still there, without raising (fixture teardown)."""
        try:
            self.unmount()
        except (StickError, OSError, subprocess.SubprocessError):
            self.pull()


class Sticks:
    """Makes sticks under ``folder`` and cleans them all up in :meth:`cleanup`."""

    def __init__(self, folder: Path):
        self.folder, self.made = folder, []

    def __call__(
        self,
        fstype: str = "vfat",
        *,
        size_bytes: int = 64 << 20,
        label: str = "TRAPDATA",
        mount_point: Path | None = None,
        mount: bool = True,
    ) -> Stick:
        """A new stick of ``fstype`` (:data:`FSTYPES`), ``size_bytes`` long (FAT32 needs at least
        33 MiB, exFAT and ext4 a few MiB), labelled ``label``, mounted at ``mount_point`` (default:
        a new folder) unless ``mount`` is false.  Raises :class:`StickError`."""
        n = len(self.made)
        mount_point = mount_point or self.folder / f"mnt{n}"
        stick = Stick(self.folder / f"stick{n}.{fstype}.img", mount_point, fstype, size_bytes, label)
        self.made.append(stick)
        stick.make()
        return stick.mount() if mount else stick

    def cleanup(self) -> None:
        for stick in reversed(self.made):
            stick.cleanup()
