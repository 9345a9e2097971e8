"""rclone, the program that copies to a remote (S3-compatible object storage, SFTP, WebDAV, a NAS's
folder...) and reports what the remote holds: run as a subprocess, never through a shell, with a
bounded time and bounded output, in an environment of its own, and with what it says filtered of
the credentials in its config file.

The appliance uses Debian's ``rclone`` package (``apt install rclone``: 1.60 on Debian 12 and
Raspberry Pi OS); every flag used here is in rclone 1.60 (https://rclone.org/flags/).  Credentials
live only in the rclone config file (``offload_rclone_config``): the environment rclone runs in
holds no ``AWS_*`` or ``RCLONE_*`` variable of the appliance's, so what the config file says is
what rclone does.

Every failure is a :class:`~appliance.exc.RemoteTrouble` whose ``kind`` (:data:`KINDS`) tells what
went wrong as the page, ``/api/status`` and ``/metrics`` show it, and whose message is one line
with the credentials replaced by ``***``.  Nothing here runs at import time.
"""

import contextlib
import dataclasses
import json
import logging
import os
import re
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterable
from pathlib import Path

from appliance.exc import RemoteTrouble

log = logging.getLogger(__name__)

# What went wrong, as RemoteTrouble.kind gives it.
UNREACHABLE = "unreachable"
CREDENTIALS = "credentials refused"
NO_BUCKET = "no bucket"
TIMEOUT = "timed out"
FULL = "full"
NOT_CONFIGURED = "not configured"
NOT_INSTALLED = "rclone missing"
STOPPED = "stopped"
FAILED = "failed"
KINDS = (UNREACHABLE, CREDENTIALS, NO_BUCKET, TIMEOUT, FULL, NOT_CONFIGURED, NOT_INSTALLED, STOPPED, FAILED)

# What rclone's messages say for each kind (lower case), tried in this order: the server's own
# answers first (it was reached), then timeouts, then the link.  S3's error codes are from
# https://docs.aws.amazon.com/AmazonS3/latest/API/ErrorResponses.html; the others are Go's
# net package's and rclone's own words.
_SIGNS = (
    (NOT_CONFIGURED, ("didn't find section in config file", "config file not found", "unknown backend")),
    (
        CREDENTIALS,
        (
            "invalidaccesskeyid",
            "signaturedoesnotmatch",
            "accessdenied",
            "access denied",
            "invalidtoken",
            "expiredtoken",
            "unauthorized",
            "forbidden",
            "status code: 401",
            "status code: 403",
            "unable to authenticate",
            "permission denied",
        ),
    ),
    (NO_BUCKET, ("nosuchbucket", "bucket does not exist", "directory not found", "no such bucket")),
    (
        FULL,
        (
            "quotaexceeded",
            "quota exceeded",
            "no space left",
            "insufficient storage",
            "status code: 507",
            "storagefull",
            "disk quota",
            "entitytoolarge",
            # rclone's local backend before it writes a file (it preallocates the whole file).
            "file too big for remaining disk space",
        ),
    ),
    (TIMEOUT, ("i/o timeout", "deadline exceeded", "timeout awaiting", "handshake timeout", "timed out")),
    (
        UNREACHABLE,
        (
            "connection refused",
            "no such host",
            "network is unreachable",
            "no route to host",
            "connection reset",
            "broken pipe",
            "eof",
            "server misbehaving",
            "dial tcp",
        ),
    ),
)
# Keys of an rclone config section whose values are secrets (https://rclone.org/docs/#configure:
# "pass", "password", "secret_access_key", "token", "key", "sas_url", "client_secret"...).
_SECRET_KEY = re.compile(r"(secret|pass|token|key|auth|credential|sas_url|session)", re.IGNORECASE)
# Secrets that may appear in a message whatever the config says (signed URLs, S3's headers).
_SIGNED = re.compile(r"((?:X-Amz-)?(?:Credential|Signature|Security-Token)=)[^&\s,]+", re.IGNORECASE)
# The start of each of rclone's log records: "2026/12/03 16:57:00 ERROR : ".
_STAMP = re.compile(r"^\d{4}/\d\d/\d\d \d\d:\d\d:\d\d (?:\w+ *: )?")
# What S3 errors add that says nothing to a person ("status code: 403, request id: X, host id: Y").
_NOISE = re.compile(r",? *request id: *[^,\s]*,? *(host id: *\S*)?", re.IGNORECASE)
# What rclone puts before an error it repeats ("a.jpg: Failed to copy: ", "Attempt 1/1 failed
# with 2 errors and: ", "Failed to copy with 2 errors: last error was: ").
_REPEATED = re.compile(r"^(?:.*?: )?(?:Failed to \w+(?: with \d+ errors?: last error was)?|Attempt \d+/\d+ "
                       r"failed with \d+ errors? and): ")  # fmt: skip
# Bytes kept of what rclone prints: a hashsum of a batch is a few tens of kB, the tables a few MB.
MAX_STDOUT_BYTES = 64 << 20
STDERR_LINES = 4
LINE_MAX_CHARS = 300
# Network timeouts given to rclone (--contimeout, --timeout: no data for this long ends a transfer).
CONNECT_TIMEOUT_S = 15
IO_TIMEOUT_S = 60


@dataclasses.dataclass(frozen=True)
class Features:
    """What a remote can do, as ``rclone backend features`` says: ``hashes``, the hash types it
    reports without downloading (lower case, ``("md5",)`` on S3; ``()`` on WebDAV servers without
    them); ``bucket_based``: an object store (an upload appears whole or not at all); ``move``:
    it can move a file on the server (a rename)."""

    hashes: tuple[str, ...]
    bucket_based: bool
    move: bool


class Rclone:
    """rclone with one config file.

    :param config_path: the rclone config file (``offload_rclone_config``); "" for rclone's own
        default (``~/.config/rclone/rclone.conf`` of the appliance's user).
    :param bwlimit: rclone's ``--bwlimit`` (``"1M"``, ``"512k:off"``, a timetable); "" none.
    :param binary: the rclone program.
    :param connect_timeout_s: seconds to wait for a connection (``--contimeout``).
    :param io_timeout_s: seconds without data that end a transfer (``--timeout``): a link that
        stalls mid-file fails after this long.
    """

    def __init__(
        self,
        config_path: str = "",
        *,
        bwlimit: str = "",
        binary: str = "rclone",
        connect_timeout_s: float = CONNECT_TIMEOUT_S,
        io_timeout_s: float = IO_TIMEOUT_S,
    ):
        self.config_path, self.bwlimit, self.binary = config_path, bwlimit, binary
        self.connect_timeout_s, self.io_timeout_s = connect_timeout_s, io_timeout_s

    def _argv(self, args: list[str]) -> list[str]:
        argv = [self.binary, "--ask-password=false", "--contimeout", f"{self.connect_timeout_s:g}s"]
        argv += ["--timeout", f"{self.io_timeout_s:g}s", "--low-level-retries", "2", "--retries", "1"]
        # A bucket that is not there is a state to report, not one to make: rclone would otherwise
        # create a misspelt bucket and upload into it, where nobody looks.
        argv.append("--s3-no-check-bucket")
        if self.config_path:
            argv += ["--config", self.config_path]
        if self.bwlimit:
            argv += ["--bwlimit", self.bwlimit]
        return argv + args

    def _env(self) -> dict[str, str]:
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8"}
        for name in ("HOME", "TMPDIR", "TZ"):
            if name in os.environ:
                env[name] = os.environ[name]
        return env

    def run(
        self,
        args: list[str],
        *,
        timeout_s: float,
        stop: threading.Event | None = None,
    ) -> bytes:
        """Run ``rclone <args>`` (with the config file, the timeouts and ``bwlimit``); returns what
        it printed on stdout (at most :data:`MAX_STDOUT_BYTES`).  Ended after ``timeout_s`` seconds,
        or as soon as ``stop`` is set.  Raises :class:`RemoteTrouble`: of kind :data:`TIMEOUT` when
        it ran out of time, :data:`STOPPED` when stopped, :data:`NOT_INSTALLED` without rclone,
        else by what rclone said (:func:`classify`), with its last lines, filtered, as the
        message."""
        argv = self._argv(args)
        with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
            try:
                process = subprocess.Popen(
                    argv, stdin=subprocess.DEVNULL, stdout=out, stderr=err, env=self._env()
                )
            except FileNotFoundError:
                raise RemoteTrouble(
                    NOT_INSTALLED, f"{self.binary} is not installed: apt install rclone"
                ) from None
            except OSError as exc:  # not executable, say
                raise RemoteTrouble(NOT_INSTALLED, f"{self.binary} cannot be run ({exc.strerror})") from None
            deadline = time.monotonic() + timeout_s
            ended = None
            try:
                while process.poll() is None:
                    if stop is not None and stop.is_set():
                        ended = STOPPED
                        break
                    if time.monotonic() > deadline:
                        ended = TIMEOUT
                        break
                    if _link_lost(err.fileno()):
                        ended = "link lost"
                        break
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        process.wait(0.1)
            finally:
                if process.poll() is None:
                    process.kill()
                    process.wait()
            if ended == "link lost":  # what rclone said so far is the reason
                err.seek(0)
                said = err.read(1 << 20).decode("utf-8", errors="replace")
                raise RemoteTrouble(classify(said), self._message(args[0], -9, said))
            if ended == STOPPED:
                raise RemoteTrouble(STOPPED, "stopped")
            if ended == TIMEOUT:
                raise RemoteTrouble(TIMEOUT, f"rclone {args[0]} took longer than {timeout_s:.0f} s")
            if process.returncode != 0:
                err.seek(0)
                said = err.read(1 << 20).decode("utf-8", errors="replace")
                raise RemoteTrouble(classify(said), self._message(args[0], process.returncode, said))
            if out.tell() > MAX_STDOUT_BYTES:
                raise RemoteTrouble(FAILED, f"rclone {args[0]} printed more than {MAX_STDOUT_BYTES} bytes")
            out.seek(0)
            return out.read()

    def _message(self, command: str, status: int, said: str) -> str:
        # rclone's log records begin "2026/12/03 16:57:00 ERROR : "; the words after are what
        # matter.  A failed request's record goes on over more lines, and the reason is there
        # ("RequestError: send request failed" / "caused by: ... connection refused").
        records: list[str] = []
        for line in said.splitlines():
            line = line.strip()
            stamp = _STAMP.match(line)
            if stamp or not records:
                records.append(line[stamp.end() :] if stamp else line)
            elif line:
                records[-1] += " " + line
        records = [_NOISE.sub("", record).strip() for record in records if record.strip()]
        wanted = [r for r in records if "error" in r.lower() or "failed" in r.lower()] or records
        # rclone says the same error for each file, each try and at the end: the last one says it.
        distinct: dict[str, str] = {}
        for record in reversed(wanted):
            distinct.setdefault(_REPEATED.sub("", record), record)
        wanted = list(reversed(distinct.values()))
        # Filtered before being cut: a secret cut in two would no longer be found whole.
        text = "; ".join(self.redact(record)[:LINE_MAX_CHARS] for record in wanted[-STDERR_LINES:])
        return self.redact(f"rclone {command} failed (exit status {status}): {text or 'no message'}")

    def redact(self, text: str) -> str:
        """``text`` with every secret value of the config file, and any signature or credential
        of a signed URL, replaced by ``***``.  The file is read at each call: rclone reads it
        at each run, so a key pair replaced in it while the appliance runs is the one in use."""
        for secret in sorted(config_secrets(self.config_path), key=len, reverse=True):
            text = text.replace(secret, "***")
        return _SIGNED.sub(r"\1***", text)

    def features(
        self, remote: str, *, timeout_s: float = 60, stop: threading.Event | None = None
    ) -> Features:
        """What ``remote`` can do (see :class:`Features`).  Raises :class:`RemoteTrouble`."""
        said = self.run(["backend", "features", remote], timeout_s=timeout_s, stop=stop)
        try:
            answer = json.loads(said)
            flags = answer.get("Features") or {}
            hashes = tuple(h.lower() for h in answer.get("Hashes") or ())
        except (ValueError, AttributeError, TypeError):
            raise RemoteTrouble(FAILED, "rclone backend features gave no JSON") from None
        return Features(hashes, bool(flags.get("BucketBased")), bool(flags.get("Move")))

    def copy(
        self,
        source: str | Path,
        destination: str,
        names: Iterable[str],
        *,
        timeout_s: float,
        check_destination: bool = False,
        stop: threading.Event | None = None,
    ) -> None:
        """Copy the files ``names`` (relative to ``source``, a local folder or a remote path) to
        ``destination`` (a folder: ``remote:bucket/a/media``), following symbolic links
        (``--copy-links``).  ``check_destination`` False: each is sent whatever the destination
        holds (``--no-check-dest``: no request per file beforehand).  Raises
        :class:`RemoteTrouble`."""
        with _listing(names) as listing:
            args = ["copy", "--files-from-raw", listing, "--copy-links", "--no-traverse"]
            if not check_destination:
                args.append("--no-check-dest")
            self.run([*args, os.fspath(source), destination], timeout_s=timeout_s, stop=stop)

    def move(
        self,
        source: str,
        destination: str,
        names: Iterable[str],
        *,
        timeout_s: float,
        stop: threading.Event | None = None,
    ) -> None:
        """Move the files ``names`` from the folder ``source`` to the folder ``destination`` on the
        same remote (a rename on the server where it can), each replacing whatever the destination
        holds under its name.  Raises :class:`RemoteTrouble`."""
        with _listing(names) as listing:
            # --ignore-times: without it, a file of the same size there (and the same time, or a
            # backend without times such as WebDAV) counts as the same: rclone deletes the source
            # and keeps the old file.
            args = ["move", "--files-from-raw", listing, "--no-traverse", "--ignore-times"]
            self.run([*args, source, destination], timeout_s=timeout_s, stop=stop)

    def hashes(
        self,
        folder: str,
        hash_type: str,
        names: Iterable[str],
        *,
        download: bool = False,
        listing: bool = False,
        timeout_s: float,
        stop: threading.Event | None = None,
    ) -> dict[str, str]:
        """The ``hash_type`` (``"md5"``, ``"sha1"``, ``"sha256"``) hash of each of ``names`` in
        ``folder`` as the remote reports it (``rclone hashsum``), or, with ``download``, as
        computed from the bytes read back from it (``--download``).  Names the remote does not
        have, or has no hash for, are left out.  With ``listing``, the hashes come from one
        listing of ``folder`` (not below it) rather than a request per name: on an object store,
        where a listing of up to 1,000 objects is one request that carries each one's MD5, the
        cheaper way while the folder is small.  Raises :class:`RemoteTrouble`."""
        wanted = set(names)
        with _listing(wanted) as listed:
            args = ["hashsum", hash_type.upper()]
            args += ["--max-depth", "1"] if listing else ["--files-from-raw", listed, "--no-traverse"]
            if download:
                args.append("--download")
            try:
                said = self.run([*args, folder], timeout_s=timeout_s, stop=stop)
            except RemoteTrouble as trouble:
                # rclone exits non-zero when a listed file is missing: the ones it found count.
                if trouble.kind != FAILED:
                    raise
                said = b""
        found = {}
        for line in said.decode("utf-8", errors="replace").splitlines():
            digest, _, name = line.partition("  ")
            if name in wanted and re.fullmatch(r"[0-9a-f]{16,}", digest):
                found[name] = digest
        return found

    def cat(self, path: str, *, timeout_s: float, stop: threading.Event | None = None) -> bytes | None:
        """The bytes of the file ``path`` on the remote; None when there is none (or it is empty).  Raises
        :class:`RemoteTrouble`."""
        try:
            said = self.run(["cat", path], timeout_s=timeout_s, stop=stop)
        except RemoteTrouble as trouble:
            if trouble.kind in (NO_BUCKET, FAILED):
                return None
            raise
        return said or None  # rclone cat of a missing object prints nothing and exits 0


def _link_lost(fd: int) -> bool:
    """Whether rclone, still running, has given up on a file for a timeout or a lost link (an
    ``ERROR`` record, written once its low-level retries are spent): the other files of the call
    would each wait out the same timeouts, hours on a batch, so the call is ended at once and the
    run tried again later.  ``fd``: rclone's stderr file, read without moving the offset it
    shares with rclone."""
    size = os.fstat(fd).st_size
    if not size:
        return False
    said = os.pread(fd, min(size, 1 << 20), 0).decode("utf-8", errors="replace")
    return " ERROR : " in said and classify(said) in (TIMEOUT, UNREACHABLE)


@contextlib.contextmanager
def _listing(names: Iterable[str]):
    """A temporary file of ``names``, one per line, for ``--files-from-raw``."""
    with tempfile.NamedTemporaryFile("w", prefix="appliance-rclone-", suffix=".txt") as listing:
        for name in names:
            if "\n" in name:
                raise ValueError(f"a file name with a newline: {name!r}")
            listing.write(name + "\n")
        listing.flush()
        yield listing.name


def classify(said: str) -> str:
    """The :data:`KINDS` entry that what rclone printed on stderr (``said``) means; :data:`FAILED`
    when none fits."""
    lowered = said.lower()
    for kind, signs in _SIGNS:
        if any(sign in lowered for sign in signs):
            return kind
    return FAILED


def config_secrets(config_path: str) -> set[str]:
    """The secret values in the rclone config file ``config_path`` ("": rclone's default): each
    ``key = value`` whose key names a secret (``secret_access_key``, ``pass``, ``token``...), and
    each ``access_key_id``; not the switches among them (``env_auth = false``), whose words are
    in messages for other reasons.  An unreadable or missing file gives none."""
    path = Path(config_path or default_config_path())
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return set()
    found = set()
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        value = value.strip()
        if sep and _SECRET_KEY.search(key) and len(value) >= 4 and value.lower() not in ("true", "false"):
            found.add(value)
    return found


def default_config_path() -> Path:
    """Where rclone looks for its config file without ``--config``
    (https://rclone.org/docs/#config-config-file): ``$XDG_CONFIG_HOME/rclone/rclone.conf``, else
    ``~/.config/rclone/rclone.conf``."""
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(base, "rclone", "rclone.conf")
