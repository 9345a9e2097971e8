"""Logging to stderr in the form journald wants when systemd runs the appliance.

Under systemd, stderr goes to the journal, which stamps each line itself and reads a ``<N>``
prefix as its syslog priority (``sd-daemon(3)``: ``<3>`` error ... ``<7>`` debug), so that
``journalctl -p warning`` works.  systemd says so by setting ``$JOURNAL_STREAM`` to the device and
inode of that stream (``systemd.exec(5)``); when it matches stderr, lines are
``<N>logger: message``.  Otherwise (a terminal, a test) they carry a timestamp and the level name.
"""

import logging
import os
import sys

# Python logging levels to syslog priorities (sd-daemon(3), syslog(3)).
PRIORITIES = {logging.CRITICAL: 2, logging.ERROR: 3, logging.WARNING: 4, logging.INFO: 6, logging.DEBUG: 7}


class JournalFormatter(logging.Formatter):
    """``<priority>logger: message``; a traceback's lines follow at the same priority."""

    def __init__(self):
        super().__init__("%(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        priority = PRIORITIES.get(record.levelno, 3 if record.levelno > logging.ERROR else 7)
        return "\n".join(f"<{priority}>{line}" for line in super().format(record).splitlines())


def to_journal(stream=None, environ=None) -> bool:
    """Whether ``stream`` (default: stderr) is the journal stream systemd named in
    ``$JOURNAL_STREAM`` (``"<device>:<inode>"``)."""
    stream = sys.stderr if stream is None else stream
    environ = os.environ if environ is None else environ
    try:
        device, inode = (int(part) for part in environ["JOURNAL_STREAM"].split(":"))
        stat = os.fstat(stream.fileno())
    except (KeyError, ValueError, OSError, AttributeError):
        return False
    return (stat.st_dev, stat.st_ino) == (device, inode)


def configure_logging(level: str, stream=None, environ=None) -> None:
    """Log at ``level`` (``"DEBUG"`` ... ``"ERROR"``) to ``stream`` (default: stderr), for the
    journal when systemd runs us (see the module docstring), else with timestamps."""
    stream = sys.stderr if stream is None else stream
    handler = logging.StreamHandler(stream)
    if to_journal(stream, environ):
        handler.setFormatter(JournalFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=level, handlers=[handler])  # a no-op where logging is set up already
