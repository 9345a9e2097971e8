"""The control channel: commands beside the running appliance.

``appliance protect``, ``unprotect`` and ``capture`` run while the appliance does: they ask it
through a Unix socket in its data directory, :data:`SOCKET_NAME`, and the main loop, which alone
writes, does the work.  The running appliance serves the channel (:class:`ControlChannel`): a Bottle
app with the action routes of the web API alone (``POST /api/capture``, ``POST
/api/captures/<id>/protect`` and ``/unprotect``, handled by the same
:class:`~appliance.web.actions.Actions`, which hands a :class:`~appliance.loop.Request` to the
loop's queue and waits), served by waitress (:class:`~appliance.web.server.WebServer`) on the
socket.  The commands are its clients (:func:`connect`, :class:`ControlClient`).

Who may ask: the socket file's mode, :data:`SOCKET_MODE` (0600), set before it is bound, so that
no moment passes with a wider one: only the appliance's user and root can connect, and no token is
needed.  The socket is reached through a descriptor of the data directory
(``/proc/self/fd/<fd>/control.sock``), whatever the length of the data directory's path (the
kernel takes at most 107 bytes for a socket's path).  A socket file left by a killed appliance is
replaced at the next start, and a client that finds one nobody listens on (connection refused)
takes it as "not running"; a clean stop removes it.
"""

import contextlib
import http.client
import json
import logging
import os
import socket
import stat
from collections.abc import Callable
from pathlib import Path

import bottle

from appliance.datadir import DataDir
from appliance.exc import ControlError, NoStick, UnknownCapture
from appliance.loop import Request
from appliance.web.actions import ACTION_TIMEOUT_S, Actions
from appliance.web.app import ERROR_CODES, plain_error
from appliance.web.server import WebServer

log = logging.getLogger(__name__)

# The socket's name in the data directory.  Not one of the store's names: reconciliation and the
# layout check (appliance.store.unsafe_layout) look only at those, and leave it alone.
SOCKET_NAME = "control.sock"
# Read and write for its owner (the appliance's user) alone; root passes any mode.
SOCKET_MODE = 0o600
# Seconds a command waits for the answer: the main loop has ACTION_TIMEOUT_S to do the action.
CLIENT_TIMEOUT_S = ACTION_TIMEOUT_S + 5
# Requests served at once (each waits for the main loop, which does one at a time).
THREADS = 2


def routes(actions: Actions, offload_status: Callable[[], dict]) -> list[tuple[str, str, Callable]]:
    """Every route of the control app: ``(method, path, handler)``, the web API's actions, and
    ``GET /api/offload``, the USB target's state as ``/api/status`` gives it under ``offload``
    (``appliance offload`` follows a run with it)."""
    return [
        ("POST", "/api/capture", actions.capture),
        ("POST", "/api/captures/<capture_id>/<verb:re:protect|unprotect>", actions.protect),
        ("POST", "/api/offload", actions.offload),
        ("GET", "/api/offload", offload_status),
    ]


def _no_offloader() -> dict:
    raise bottle.HTTPError(404, "this appliance has no offload")


def make_app(
    submit: Callable[[Request], None], offload_status: Callable[[], dict] = _no_offloader
) -> bottle.Bottle:
    """The control app, a WSGI callable: the routes of :func:`routes` over ``submit`` (the main
    loop's queue's ``put``) and ``offload_status``, every error in plain text (``"<code>
    <reason>\\n"``)."""
    app = bottle.Bottle()
    for method, path, handler in routes(Actions(submit), offload_status):
        app.route(path, method, handler)
    for code in ERROR_CODES:
        app.error(code)(plain_error)
    return app


def _address(root_fd: int) -> str:
    # The data directory through its descriptor: a short path however deep the folder is.
    return f"/proc/self/fd/{root_fd}/{SOCKET_NAME}"


class ControlChannel:
    """The control channel of the running appliance: :func:`make_app` over ``submit`` served on
    ``data_dir/control.sock`` (mode :data:`SOCKET_MODE`) from waitress's threads.  A context
    manager; :meth:`close` stops it and removes the socket file.

    A socket file already there (left by a killed appliance: the store's lock says no other
    appliance runs on ``data_dir``) is replaced, and so is a symlink at the name (its entry, never
    what it points to).  When the socket cannot be made (something else has its name, or the
    data directory's filesystem has no sockets, as FAT and exFAT), the reason is logged, the
    appliance runs on without the channel (:attr:`path` is None) and the commands say so.
    """

    def __init__(
        self,
        data_dir: Path,
        submit: Callable[[Request], None],
        *,
        threads: int = THREADS,
        offload_status: Callable[[], dict] = _no_offloader,
    ):
        self.path: Path | None = None
        self._files = DataDir(data_dir)
        self._server = None
        try:
            sock, self._inode = self._bind()
        except OSError as exc:
            log.warning(
                "control channel off (%s); appliance protect, unprotect and capture need the appliance "
                "stopped meanwhile",
                exc,
            )
            return
        try:
            self._server = WebServer(make_app(submit, offload_status), threads=threads, sock=sock)
        except BaseException:
            sock.close()
            self._remove()
            raise
        self.path = Path(data_dir) / SOCKET_NAME
        log.info("control channel on %s", self.path)

    def _bind(self) -> tuple[socket.socket, int]:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            # Linux gives a socket file the mode of the socket's inode (less the umask): set before
            # bind(), the file is never more open than this, not even for a moment.
            os.fchmod(sock.fileno(), SOCKET_MODE)
            with self._files.folder() as root:
                try:
                    kind = stat.S_IFMT(root.lstat(SOCKET_NAME).st_mode)
                except FileNotFoundError:
                    pass
                else:
                    if kind not in (stat.S_IFSOCK, stat.S_IFLNK):
                        raise ControlError(f"{root.path(SOCKET_NAME)} is not a socket; move it away")
                    os.unlink(SOCKET_NAME, dir_fd=root.fd)  # a killed appliance's (the store's lock is ours)
                try:
                    sock.bind(_address(root.fd))
                except OSError as exc:  # named by its real path, not the descriptor's
                    raise ControlError(f"cannot make {root.path(SOCKET_NAME)}: {exc.strerror}") from exc
                inode = root.lstat(SOCKET_NAME).st_ino
            sock.listen()
        except BaseException:
            sock.close()
            raise
        return sock, inode

    def _remove(self) -> None:
        # Only the file this channel bound: never one that replaced it.
        with contextlib.suppress(OSError), self._files.folder() as root:
            if root.lstat(SOCKET_NAME).st_ino == self._inode:
                os.unlink(SOCKET_NAME, dir_fd=root.fd)

    def __enter__(self) -> "ControlChannel":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def close(self) -> None:
        """Stop taking requests (a command waiting for its answer is cut off), then remove the
        socket file."""
        if self._server is not None:
            self._server.stop()
            self._server = None
            self._remove()


class _Connection(http.client.HTTPConnection):
    """An HTTP connection to the control socket of the data directory ``files``."""

    def __init__(self, files: DataDir, timeout_s: float):
        super().__init__("localhost", timeout=timeout_s)
        self._files = files

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(self.timeout)
            with self._files.folder() as root:
                sock.connect(_address(root.fd))
        except BaseException:
            sock.close()
            raise
        self.sock = sock


class ControlClient:
    """Asks the appliance running on ``data_dir`` through its control socket (see
    :func:`connect`, which says whether one runs).  ``timeout_s``: seconds to wait for each
    answer.  Each method raises :class:`~appliance.exc.ControlError` when the appliance refuses
    this user, cannot do it now (busy, the camera failed, capturing paused for space), or stops or
    breaks off before answering; the message says which."""

    def __init__(self, data_dir: Path, timeout_s: float = CLIENT_TIMEOUT_S):
        self.data_dir = Path(data_dir)
        self.path = self.data_dir / SOCKET_NAME
        self._files = DataDir(self.data_dir)
        self._timeout_s = timeout_s

    def capture(self) -> list[str]:
        """A test shot (trigger ``manual``; ``burst_count`` photos): the ids of the captures
        stored, in order.  Raises :class:`ControlError` when none was stored."""
        status, body = self._post("/api/capture")
        if status != 200:
            raise _refused(status, body)
        return json.loads(body)["captured"]

    def protect(self, capture_id: str, protected: bool) -> None:
        """Mark the capture ``capture_id`` (32 hex characters) as kept from cleanup, or not.
        Raises :class:`~appliance.exc.UnknownCapture` when the appliance has no such capture."""
        status, body = self._post(f"/api/captures/{capture_id}/{'protect' if protected else 'unprotect'}")
        if status == 404:
            raise UnknownCapture(capture_id)
        if status != 200:
            raise _refused(status, body)

    def offload(self) -> None:
        """Start a copy run to the USB stick (nothing new when one is under way).  Raises
        :class:`~appliance.exc.NoStick` with the reason when there is no stick to write."""
        status, body = self._post("/api/offload")
        if status == 409:
            raise NoStick(_refused(status, body).args[0])
        if status != 200:
            raise _refused(status, body)

    def offload_status(self) -> dict:
        """The USB target's state, as ``/api/status`` gives it under ``offload``."""
        status, body = self._post("/api/offload", method="GET")
        if status != 200:
            raise _refused(status, body)
        return json.loads(body)

    def _post(self, path: str, method: str = "POST") -> tuple[int, str]:
        connection = _Connection(self._files, self._timeout_s)
        try:
            try:
                connection.request(method, path)
            except OSError as exc:
                raise _connect_error(self.path, exc) from exc
            try:
                response = connection.getresponse()
                return response.status, response.read().decode("utf-8", "replace")
            except (OSError, http.client.HTTPException) as exc:
                raise ControlError(
                    f"the appliance did not answer ({exc}): it stopped or broke off; the status page "
                    "or a second try tells whether it was done"
                ) from exc
        finally:
            connection.close()


def _refused(status: int, body: str) -> ControlError:
    # The app answers errors as "<code> <reason>\n" (appliance.web.app.plain_error).
    reason = body.strip().removeprefix(str(status)).strip()
    return ControlError(reason or http.client.responses.get(status, str(status)))


def _connect_error(path: Path, exc: OSError) -> ControlError:
    if isinstance(exc, PermissionError):
        return ControlError(
            f"{path}: permission denied: only root and the appliance's user may ask it (sudo, or "
            "sudo -u <the service's user>)"
        )
    if isinstance(exc, ConnectionRefusedError | FileNotFoundError):
        return ControlError(f"the appliance stopped ({path} answers no more)")
    return ControlError(f"{path}: {exc}")


def connect(data_dir: Path) -> ControlClient | None:
    """A :class:`ControlClient` for the appliance running on ``data_dir``, or None when none
    answers there: no socket (not running, or starting, or a version without the channel), or a
    socket nobody listens on (left by a killed appliance: connection refused).  Raises
    :class:`~appliance.exc.ControlError` when the socket refuses this user (its mode, 0600), or
    cannot be reached for another reason (the message names it)."""
    client = ControlClient(data_dir)
    probe = _Connection(DataDir(data_dir), timeout_s=5)
    try:
        probe.connect()
    except (ConnectionRefusedError, FileNotFoundError):
        return None
    except OSError as exc:
        raise _connect_error(client.path, exc) from exc
    finally:
        probe.close()
    return client
