"""The web server: waitress serving the app from its own threads, bounded against slow and hostile
clients (see :class:`WebServer`)."""

import logging
import os
import socket
import threading
import time
from pathlib import Path

import waitress
from waitress import wasyncore
from waitress.channel import HTTPChannel
from waitress.task import ErrorTask

from appliance.web.plugins import NO_STORE, SECURITY_HEADERS

log = logging.getLogger(__name__)

# Request bodies (the login form, empty action POSTs) are tiny; anything bigger is refused (413).
MAX_BODY_BYTES = 16 << 10
# The request line and headers together; past this, 431.
MAX_HEADER_BYTES = 16 << 10
# A connection that sends nothing for this long, between requests or within one, is closed.
SOCKET_TIMEOUT_S = 5
# A request's head and body must have arrived this long after its first byte, or its connection is
# closed: a client trickling bytes holds a connection at most this long.  16 KiB in 10 s is 13 kbit/s.
REQUEST_TIMEOUT_S = 10
# Open connections at most; past it, new ones wait in the listen backlog.  Well under the 1024 file
# descriptors a service gets by default (systemd's LimitNOFILE soft limit).
CONNECTION_LIMIT = 500
# An answer is buffered up to this much per connection (in memory); then its thread waits for the
# client to read.  A client that reads nothing for SEND_TIMEOUT_S is dropped by the kernel.
OUTBUF_BYTES = 1 << 20
SEND_TIMEOUT_S = 30


class _ErrorTask(ErrorTask):
    """waitress's own answer to a request it refused before the app saw it (400 malformed, 413
    body too large, 431 headers too large, 501 a transfer coding other than chunked), with the
    headers every answer of ours carries.  Relies on waitress 3: ``ErrorTask.execute`` extends
    ``Task.response_headers``, a list sent with the answer's first write, which it makes itself."""

    def execute(self):
        self.response_headers.extend([*SECURITY_HEADERS, ("Cache-Control", NO_STORE)])
        super().execute()


class _Channel(HTTPChannel):
    """waitress's connection, with :class:`_ErrorTask` and a deadline for each request to arrive.
    Relies on waitress 3's ``HTTPChannel``: ``error_task_class``; ``received(data)``, called by the
    server's loop with each chunk read; ``request``, the request being received (None between
    requests); and ``will_close``, which has the loop close the connection."""

    error_task_class = _ErrorTask
    request_started = 0.0  # time.monotonic() when the request being received began

    def received(self, data):
        now = time.monotonic()
        if self.request is None:
            self.request_started = now
        elif now - self.request_started > REQUEST_TIMEOUT_S:
            self.will_close = True  # a trickle: closed, without an answer it would not read
            return False
        return super().received(data)


def listen(host: str, port: int) -> socket.socket:
    """A TCP socket bound to ``host``:``port`` and listening, for :class:`WebServer` to serve
    (``port`` 0: a free port, which ``getsockname()`` tells).  One address, even for a name that
    has several, so that there is one port to tell.  Raises ``OSError`` when it cannot be bound:
    ``errno.EADDRINUSE`` (the port is in use), ``EADDRNOTAVAIL`` (``host`` is none of this
    machine's addresses), ``EACCES`` (a port below 1024 without the privilege), or
    ``socket.gaierror`` for a name that does not resolve."""
    family, _, _, _, address = socket.getaddrinfo(
        host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.create_server(address, family=family)
    try:
        if hasattr(socket, "TCP_USER_TIMEOUT"):  # Linux; accepted connections inherit it
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, SEND_TIMEOUT_S * 1000)
    except BaseException:
        sock.close()
        raise
    return sock


def port_holder(port: int) -> str | None:
    """Which process listens on TCP ``port``, as ``"process 1234 (python3)"``, for the message of a
    port in use; None when it cannot be told (not Linux, a process this user may not look into, or
    one gone meanwhile).  Reads ``/proc/net/tcp`` and ``tcp6`` for the listening socket's inode,
    then each process's ``/proc/PID/fd`` for that socket (proc(5)): about 50 ms with 91 processes
    on a 2-core development machine, on the error path only."""
    sockets = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            # sl local_address rem_address st ... inode: st 0A is TCP_LISTEN; the port is in hex.
            fields = row.split()
            if len(fields) > 9 and fields[3] == "0A" and int(fields[1].rpartition(":")[2], 16) == port:
                sockets.add(f"socket:[{fields[9]}]")
    if not sockets:
        return None
    for process in Path("/proc").iterdir():
        if not process.name.isdigit():
            continue
        try:
            if any(os.readlink(fd) in sockets for fd in (process / "fd").iterdir()):
                return f"process {process.name} ({(process / 'comm').read_text().strip()})"
        except OSError:  # gone, or not ours to look into
            continue
    return None


class WebServer:
    """Serves ``app`` with waitress on ``host``:``port`` from a background thread (``host`` "":
    every interface).  ``port`` 0 picks a free port; :attr:`port` tells which.  ``threads``:
    requests served at once.

    Slow and hostile clients are bounded so that the page keeps answering:

    - waitress reads requests and writes answers for every connection in one thread (an event
      loop over non-blocking sockets); only a request that has wholly arrived takes one of the
      ``threads``.  A client that sends slowly, or nothing, costs a connection, never a thread: with
      100 connections trickling a header byte a second, or 100 silent ones, ``GET /`` still answers
      in milliseconds (tests/test_web_server.py).
    - At most :data:`CONNECTION_LIMIT` (500) connections are open at once; past it, new ones wait in
      the listen backlog until one closes.
    - A connection that sends nothing for :data:`SOCKET_TIMEOUT_S` (5 s) is closed (checked every
      second), and one whose request has not wholly arrived :data:`REQUEST_TIMEOUT_S` (10 s) after
      its first byte is closed at its next byte: a trickling client holds a connection that long.
    - Headers over :data:`MAX_HEADER_BYTES` (16 KiB) are a 431, bodies over :data:`MAX_BODY_BYTES`
      (16 KiB) a 413, a malformed request a 400, a transfer coding other than chunked a 501:
      answered by waitress itself, with the security headers and ``Cache-Control: no-store``.
    - An answer is buffered up to :data:`OUTBUF_BYTES` (1 MiB) per connection, in memory; then its
      thread waits for the client to read.  A client that reads nothing for
      :data:`SEND_TIMEOUT_S` (30 s) is dropped by the kernel (``TCP_USER_TIMEOUT``), which frees
      the thread and ends a ZIP download's snapshot of the index.

    ``sock``: a listening socket bound by the caller to serve instead of binding ``host`` and
    ``port`` (:func:`listen`, which ``appliance run`` calls before it opens anything, or the Unix
    socket of :mod:`appliance.control`); the server owns it from then on (:meth:`stop` closes it).
    For a Unix socket, :attr:`host`, :attr:`port` and :attr:`url` are None, and the send timeout
    is the kernel's.

    Raises ``OSError`` when the address cannot be bound (e.g. the port is in use).
    """

    def __init__(
        self, app, host: str = "", port: int = 0, threads: int = 16, *, sock: socket.socket | None = None
    ):
        # Bound before the server is built, so that a busy port fails at start-up.
        if sock is None:
            sock = listen(host, port)
        self.host = self.port = None
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            self.host, self.port = sock.getsockname()[:2]
        self._map: dict = {}
        try:
            self._server = waitress.create_server(
                app,
                map=self._map,
                sockets=[sock],
                threads=threads,
                connection_limit=CONNECTION_LIMIT,
                channel_timeout=SOCKET_TIMEOUT_S,
                cleanup_interval=1,
                max_request_header_size=MAX_HEADER_BYTES,
                max_request_body_size=MAX_BODY_BYTES,
                outbuf_high_watermark=OUTBUF_BYTES,
                outbuf_overflow=4 * OUTBUF_BYTES,  # above the watermark: answers never go to disk
                asyncore_use_poll=True,  # select() cannot watch file descriptors past 1023
                ident="camtrap-appliance",
                expose_tracebacks=False,
                log_socket_errors=False,  # a client that goes away is not the appliance's error
            )
        except BaseException:
            sock.close()
            raise
        # waitress's server makes each accepted connection with its channel_class; none is accepted
        # before the loop runs, below.
        self._server.channel_class = _Channel
        self._thread = threading.Thread(target=self._server.run, name="web", daemon=True)
        self._thread.start()

    @property
    def url(self) -> str | None:
        """The URL to open on this machine (None for a socket given as ``sock``)."""
        if self.port is None:
            return None
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::", "") else self.host
        if ":" in host:  # an IPv6 address: in brackets, or the port reads as part of it (RFC 3986)
            host = f"[{host}]"
        return f"http://{host}:{self.port}/"

    def stop(self) -> None:
        """Close the listening socket and every connection (a download in progress ends), then
        stop the threads (waiting up to 5 s for requests being served)."""
        # Closed by the loop's own thread, between two turns: the map is the loop's alone.
        try:
            self._server.trigger.pull_trigger(lambda: wasyncore.close_all(self._map))
        except OSError as exc:  # the loop's wake-up pipe is gone (seen once in CI): close from here
            log.warning("web: stopping without the server loop's wake-up pipe: %s", exc)
            wasyncore.close_all(self._map, ignore_all=True)
        self._thread.join(timeout=10)
        self._server.task_dispatcher.shutdown()
