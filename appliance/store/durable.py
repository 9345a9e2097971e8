"""Durable file operations of the store: publishing a file (temporary name, fsync, rename, fsync
the folder), setting damaged files aside, and making a new database file, never through a
symlink (:mod:`appliance.datadir`)."""

import contextlib
import os
import sqlite3
import stat
from pathlib import Path

from appliance.datadir import DataDir, Folder, UnsafePath
from appliance.store.paths import DAMAGED_DIR


def publish(path: Path, data: bytes) -> None:
    """Durably write ``data`` to ``path``: temporary name, fsync, rename, fsync the folder (see
    :meth:`appliance.datadir.Folder.publish`).

    Either the whole new file is at ``path`` afterwards, or (on error or crash) the old state with
    at most a leftover ``.<name>.tmp``.  Raises ``OSError`` (``ENOSPC`` on a full disk).
    """
    with DataDir(path.parent).folder() as folder:
        folder.publish(path.name, data)


def set_aside(files: DataDir, rels: list[str]) -> list[Path]:
    """Move the damaged regular files at ``rels`` (relative to the data directory ``files``) into
    its ``damaged/`` folder, and return where they went.

    Names are kept, with ``.N`` inserted after the stem when taken; one N for the whole group, so a
    database set aside stays beside its WAL.  Nothing is ever deleted: the user may still rescue
    it.  Raises :class:`~appliance.datadir.UnsafePath` for one that is not a regular file (a
    symlink is never followed nor moved).
    """
    with files.folder() as root:
        if root.mkdir(DAMAGED_DIR):
            root.fsync()
    with files.folder(DAMAGED_DIR) as damaged:
        n = free_number(damaged, [rel.rpartition("/")[2] for rel in rels])
        for rel in rels:
            parent, _, name = rel.rpartition("/")
            with files.folder(parent) as folder:
                folder.move(name, damaged, numbered(name, n))
        damaged.fsync()
        for parent in {rel.rpartition("/")[0] for rel in rels}:
            with files.folder(parent) as folder:
                folder.fsync()
        return [damaged.path(numbered(rel.rpartition("/")[2], n)) for rel in rels]


def numbered(name: str, n: int) -> str:
    """``name`` with ``.n`` after its stem (``captures.2.db``), for the ``n``-th thing set aside
    under that name; ``name`` itself for the first."""
    stem, dot, rest = name.partition(".")
    return name if n == 1 else f"{stem}.{n}{dot}{rest}"


def free_number(folder: Folder, names: list[str]) -> int:
    """The lowest N for which no ``numbered(name, N)`` of ``names`` exists in ``folder``."""
    n = 1
    while True:
        for name in names:
            try:
                folder.lstat(numbered(name, n))
                break
            except FileNotFoundError:
                continue
        else:
            return n
        n += 1


def new_database(folder: Folder, name: str) -> sqlite3.Connection:
    """A new, empty SQLite database ``name`` in ``folder`` (replacing a leftover regular file),
    never reached through a symlink: the file is made with ``O_EXCL`` and ``O_NOFOLLOW`` (a
    symlink at the name is refused), and once SQLite has opened it by its path, which it must,
    the path is checked to still be that file.  Raises
    :class:`~appliance.datadir.UnsafePath` otherwise, having written nothing to it."""
    with contextlib.suppress(FileNotFoundError):
        folder.unlink(name)  # a leftover of a crash; a symlink raises UnsafePath and stays
    fd = folder.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:  # held open while checking, so that its inode number cannot be given to another file
        made = os.fstat(fd)
        connection = sqlite3.connect(folder.path(name))
        now = folder.lstat(name)
    finally:
        os.close(fd)
    if not stat.S_ISREG(now.st_mode) or (now.st_dev, now.st_ino) != (made.st_dev, made.st_ino):
        connection.close()
        raise UnsafePath(f"{folder.path(name)} was replaced while it was being made; not written")
    return connection
