"""Telling systemd how the service is doing: the ``sd_notify(3)`` protocol, without a compiled
dependency (it is one datagram on a Unix socket).

systemd passes the socket in ``$NOTIFY_SOCKET`` (a path, or ``@name`` for the abstract namespace)
to a ``Type=notify`` service, and the watchdog period in ``$WATCHDOG_USEC`` (microseconds) when
the unit sets ``WatchdogSec=``.  Without ``$NOTIFY_SOCKET`` every method does nothing, so the same
code runs by hand and under systemd.  Messages (``READY=1``, ``STATUS=...``, ``WATCHDOG=1``,
``STOPPING=1``) are those of ``sd_notify(3)``.
"""

import logging
import os
import socket

log = logging.getLogger(__name__)


class Notifier:
    """Sends state changes to systemd.  ``environ``: where ``NOTIFY_SOCKET``, ``WATCHDOG_USEC``
    and ``WATCHDOG_PID`` are read (default: the process environment).

    :attr:`watchdog_interval_s` is half the watchdog period (as ``sd_watchdog_enabled(3)``
    advises), or None when systemd expects no keep-alive from this process.  Sending never raises:
    a failure (no listener, or a full queue: the message is dropped) is logged once and the
    appliance goes on.
    """

    def __init__(self, environ=None):
        environ = os.environ if environ is None else environ
        address = environ.get("NOTIFY_SOCKET", "")
        self._address = "\0" + address[1:] if address.startswith("@") else address
        self._socket: socket.socket | None = None
        self._warned = False
        self.watchdog_interval_s: float | None = None
        usec, pid = environ.get("WATCHDOG_USEC", ""), environ.get("WATCHDOG_PID", "")
        if self._address and usec.isdigit() and int(usec) > 0 and pid in ("", str(os.getpid())):
            self.watchdog_interval_s = int(usec) / 1e6 / 2

    @property
    def enabled(self) -> bool:
        return bool(self._address)

    def notify(self, *fields: str) -> None:
        """Send ``fields`` (``"KEY=value"`` strings) in one message; nothing without a socket."""
        if not self._address:
            return
        try:
            if self._socket is None:
                # Non-blocking: a datagram socket whose reader lags blocks the sender once its
                # queue is full, and the main loop must never wait on systemd.
                self._socket = socket.socket(
                    socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK
                )
            self._socket.sendto("\n".join(fields).encode(), self._address)
        except OSError as exc:
            if not self._warned:
                log.warning("cannot notify systemd at %s: %s", self._address.replace("\0", "@"), exc)
                self._warned = True

    def ready(self, status: str) -> None:
        """The service is up: ``READY=1`` with a ``STATUS=`` line."""
        self.notify("READY=1", f"STATUS={status}")

    def status(self, status: str) -> None:
        """A one-line summary for ``systemctl status``."""
        self.notify(f"STATUS={status}")

    def watchdog(self) -> None:
        """Keep-alive: the main loop is making progress."""
        self.notify("WATCHDOG=1")

    def stopping(self, status: str = "stopping") -> None:
        self.notify("STOPPING=1", f"STATUS={status}")

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None
