"""Preflight checks: find what would make the appliance fail before it starts capturing.

Each check returns a :class:`Check` with a level (``ok``, ``warning`` or ``fatal``) and a one-line
reason.  ``appliance run`` refuses to start when any check is fatal.
"""

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from PIL import features

OK, WARNING, FATAL = "ok", "warning", "fatal"


@dataclass(frozen=True)
class Check:
    """The outcome of one check: ``name``, ``level`` (:data:`OK`, :data:`WARNING` or
    :data:`FATAL`) and a one-line ``reason``."""

    name: str
    level: str
    reason: str


def check_webp() -> Check:
    """Thumbnails are WebP: Pillow must have been built with libwebp."""
    if features.check("webp"):
        return Check("webp", OK, f"Pillow has WebP (libwebp {features.version('webp')})")
    return Check("webp", FATAL, "Pillow was built without WebP support; install libwebp and reinstall Pillow")


def check_data_dir(data_dir: Path) -> Check:
    """The data directory exists (or can be created) and a file in it can be written and fsynced."""
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=data_dir, prefix=".preflight-") as probe:
            probe.write(b"x")
            probe.flush()
            os.fsync(probe.fileno())
    except OSError as exc:
        return Check("data_dir", FATAL, f"{data_dir} is not writable: {exc.strerror or exc}")
    return Check("data_dir", OK, f"{data_dir.resolve()} is writable")


def preflight(data_dir: Path) -> list[Check]:
    """Run every check for an appliance storing into ``data_dir``; never raises."""
    return [check_webp(), check_data_dir(Path(data_dir))]
