"""The data directory as a closed world: no symlink inside it leads anywhere.

A shard folder replaced by a symlink to ``/home``, a photo's name linked to ``/etc/shadow``, a
temporary name linked to a file elsewhere: with plain paths, the store would write, the check
would delete and the web would serve outside the data directory.  So every file inside it is
reached through directory file descriptors, one path component at a time, each opened with
``O_NOFOLLOW`` (``openat(2)``): a symlink or a non-folder on the way raises :class:`UnsafePath`
instead of being followed, and files are read, written, renamed and removed relative to their
folder's descriptor (``dir_fd=``), so nothing can swap a component after it was checked.  Only
the data directory itself may be a symlink: that one the user chose (``data_dir``).

Files are removed, renamed or served only when they are regular files; a symlink at a name we
use is left alone (and reported) except at our own temporary names, whose entry is replaced:
removing a symlink's entry never touches what it points to.

Paths inside the data directory are given as relative strings with ``/`` separators
(``"media/ab/<id>.jpg"``), as the index stores them.
"""

import contextlib
import errno
import os
import re
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from appliance.exc import StoreError

_FOLDER_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_NOT_FOLLOWED = (errno.ELOOP, errno.ENOTDIR, errno.EMLINK)


class UnsafePath(StoreError):
    """A path inside the data directory goes through a symlink or a non-folder, or ends at
    something that is not a regular file where one is needed.  Nothing was done to it."""


def temp_name(name: str) -> str:
    """The name :meth:`Folder.publish` writes ``name`` under until it is complete:
    ``.<name>.tmp``."""
    return f".{name}.tmp"


# Every name temp_name gives, and only those: how cleanup and reconciliation know a write that a
# crash left unfinished.
TEMP_NAME = re.compile(r"\..+\.tmp")


def _check_name(name: str) -> str:
    if not name or name in (".", "..") or "/" in name or "\0" in name:
        raise ValueError(f"not a file name: {name!r}")
    return name


class Folder:
    """A folder inside the data directory, open as a directory file descriptor (``fd``); ``rel``
    is its path relative to the data directory, for messages.  Every method takes a plain name
    (no ``/``) in this folder and never follows a symlink.  Raises ``OSError`` as the system calls
    do, and :class:`UnsafePath` where a regular file is needed and something else is there."""

    def __init__(self, fd: int, rel: str, root: Path):
        self.fd, self.rel, self._root = fd, rel, root

    def path(self, name: str = "") -> Path:
        """The path of ``name`` in this folder, for messages and logs only."""
        return self._root / self.rel / name if self.rel else self._root / name

    def lstat(self, name: str) -> os.stat_result:
        """``lstat`` of ``name`` (a symlink is described, not followed).  Raises
        ``FileNotFoundError`` when there is none."""
        return os.stat(_check_name(name), dir_fd=self.fd, follow_symlinks=False)

    def regular_size(self, name: str) -> int | None:
        """The size in bytes of the regular file ``name``, or None when there is none.  Raises
        :class:`UnsafePath` when something else (a symlink, a folder) has that name."""
        try:
            st = self.lstat(name)
        except FileNotFoundError:
            return None
        if not stat.S_ISREG(st.st_mode):
            raise UnsafePath(f"{self.path(name)} is not a regular file; left alone")
        return st.st_size

    def entries(self) -> list[os.DirEntry]:
        """The entries of this folder (``os.scandir``; ``entry.name``, ``entry.is_file(
        follow_symlinks=False)`` and ``entry.stat(follow_symlinks=False)`` are what to use)."""
        with os.scandir(self.fd) as it:
            return list(it)

    def open(self, name: str, flags: int = os.O_RDONLY, mode: int = 0o644) -> int:
        """``openat`` of ``name`` with ``O_NOFOLLOW`` added: a file descriptor.  Raises
        :class:`UnsafePath` when ``name`` is a symlink."""
        try:
            return os.open(_check_name(name), flags | os.O_NOFOLLOW | os.O_CLOEXEC, mode, dir_fd=self.fd)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise UnsafePath(f"{self.path(name)} is a symlink; not followed") from None
            raise

    def open_read(self, name: str) -> BinaryIO:
        """The regular file ``name`` open for reading (a binary file object).  Raises
        ``FileNotFoundError``, or :class:`UnsafePath` for a symlink, a FIFO or a folder (a FIFO is
        opened non-blocking, so it cannot hang the caller)."""
        fd = self.open(name, os.O_RDONLY | os.O_NONBLOCK)
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise UnsafePath(f"{self.path(name)} is not a regular file; not read")
            os.set_blocking(fd, True)
            return os.fdopen(fd, "rb")
        except BaseException:
            os.close(fd)
            raise

    def read_bytes(self, name: str) -> bytes:
        """The content of the regular file ``name`` (see :meth:`open_read`)."""
        with self.open_read(name) as f:
            return f.read()

    def unlink(self, name: str) -> os.stat_result:
        """Remove the regular file ``name``; returns its ``lstat`` (``st_size``: the bytes it
        held; ``st_blocks * 512``: the room it took).  Raises ``FileNotFoundError`` when there is
        none and :class:`UnsafePath` when it is not a regular file (then it stays)."""
        if self.regular_size(name) is None:
            raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), str(self.path(name)))
        st = self.lstat(name)
        os.unlink(name, dir_fd=self.fd)
        return st

    def mkdir(self, name: str) -> bool:
        """Make the folder ``name`` unless it exists; True when it was made.  Raises
        :class:`UnsafePath` when something other than a folder has the name."""
        try:
            os.mkdir(_check_name(name), 0o755, dir_fd=self.fd)
            return True
        except FileExistsError:
            if not stat.S_ISDIR(self.lstat(name).st_mode):
                raise UnsafePath(f"{self.path(name)} is not a folder") from None
            return False

    def fsync(self) -> None:
        """Make this folder's entries durable (``fsync`` of the folder)."""
        os.fsync(self.fd)

    def publish(self, name: str, data: bytes, *, sync_folder: bool = True) -> int:
        """Durably write ``data`` as ``name``: write it under :func:`temp_name`, fsync, rename
        over ``name``, fsync the folder (unless ``sync_folder`` is False: the caller fsyncs it
        once for several files, before anything relies on them).  Returns the room the file takes
        on the filesystem, in bytes (its blocks: at least ``len(data)``).

        Either the whole new file is at ``name`` afterwards, or (on error or crash) the old state
        with at most a leftover temporary file.  A leftover (or a symlink) at the temporary name
        is replaced, never followed; a symlink at ``name`` is replaced by the file.  Raises
        ``OSError`` (``ENOSPC`` on a full disk).
        """
        tmp = temp_name(_check_name(name))
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
        try:
            fd = self.open(tmp, flags)
        except FileExistsError:  # left by a crash, or planted: its entry goes, never its target
            os.unlink(tmp, dir_fd=self.fd)
            fd = self.open(tmp, flags)
        try:
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                os.fsync(fd)
                allocated = os.fstat(fd).st_blocks * 512
            finally:
                os.close(fd)
            os.replace(tmp, name, src_dir_fd=self.fd, dst_dir_fd=self.fd)
        except Exception:  # an error, not a signal: a dying process leaves the temp to reconciliation
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=self.fd)
            raise
        if sync_folder:
            self.fsync()
        return allocated

    def move(self, name: str, to: "Folder", new_name: str) -> None:
        """Rename the regular file ``name`` to ``new_name`` in the folder ``to`` (not durable
        until both folders are fsynced).  Raises :class:`UnsafePath` when ``name`` is not a
        regular file."""
        if self.regular_size(name) is None:
            raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), str(self.path(name)))
        os.replace(name, _check_name(new_name), src_dir_fd=self.fd, dst_dir_fd=to.fd)


class DataDir:
    """The data directory at ``root`` (which may itself be a symlink), reached only through
    :class:`Folder` objects.  Nothing is opened until a method is called; each call opens what
    it needs and closes it again, so an instance may be shared by threads."""

    def __init__(self, root: Path):
        self.root = Path(root)

    @contextlib.contextmanager
    def folder(self, rel: str = "") -> Iterator[Folder]:
        """The folder ``rel`` (``""``: the data directory itself, ``"media/ab"``...), open for the
        ``with`` block.  Raises ``FileNotFoundError`` when a component is missing, and
        :class:`UnsafePath` when one is a symlink or not a folder."""
        fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            for part in rel.split("/") if rel else ():
                try:
                    inner = os.open(_check_name(part), _FOLDER_FLAGS, dir_fd=fd)
                except OSError as exc:
                    if exc.errno not in _NOT_FOLLOWED:
                        raise
                    raise UnsafePath(
                        f"{self.root / rel} is not a folder inside the data directory ({part} is a "
                        "symlink or a file); not followed"
                    ) from None
                os.close(fd)
                fd = inner
            yield Folder(fd, rel, self.root)
        finally:
            os.close(fd)

    def open_read(self, rel: str) -> BinaryIO:
        """The regular file at ``rel`` open for reading (see :meth:`Folder.open_read`)."""
        parent, _, name = rel.rpartition("/")
        with self.folder(parent) as folder:
            return folder.open_read(name)

    def read_bytes(self, rel: str) -> bytes:
        """The content of the regular file at ``rel`` (see :meth:`Folder.open_read`)."""
        with self.open_read(rel) as f:
            return f.read()

    def publish(self, rel: str, data: bytes) -> int:
        """:meth:`Folder.publish` of ``data`` at ``rel``."""
        parent, _, name = rel.rpartition("/")
        with self.folder(parent) as folder:
            return folder.publish(name, data)

    def regular_size(self, rel: str) -> int | None:
        """:meth:`Folder.regular_size` of ``rel``; None also when its folder is missing."""
        parent, _, name = rel.rpartition("/")
        try:
            with self.folder(parent) as folder:
                return folder.regular_size(name)
        except FileNotFoundError:
            return None

    def unsafe_entries(self, folders: tuple[str, ...], names: frozenset[str] | None = None) -> list[str]:
        """The entries that would lead out of the data directory, as relative paths: each of
        ``folders`` that is a symlink or not a folder, and in each of them, the entries whose
        name is in ``names`` (None: every entry) that are not real folders.  Missing ones are
        fine (they are made when needed)."""
        unsafe = []
        for rel in folders:
            try:
                with self.folder(rel) as folder:
                    for entry in folder.entries():
                        if (names is None or entry.name in names) and not entry.is_dir(follow_symlinks=False):
                            unsafe.append(f"{rel}/{entry.name}" if rel else entry.name)
            except FileNotFoundError:
                continue
            except UnsafePath:
                unsafe.append(rel)
        return unsafe
