"""A real S3 server for tests: moto in server mode (``python -m moto.server``, from the ``test``
extra's ``moto[server]``) on 127.0.0.1, speaking S3 over HTTP as object storage does, and checking
every request's signature against an IAM access key of its own.

- Credentials: the server starts with moto's authentication off, creates an IAM user allowed
  ``s3:*`` with one access key (:attr:`S3Server.credentials`), then turns authentication on
  (``POST /moto-api/reset-auth`` with 0: moto's ``INITIAL_NO_AUTH_ACTION_COUNT`` set to "no
  unauthenticated action left"; see moto's docs/iam.rst).  From then on a request signed with
  another key id is refused with ``InvalidAccessKeyId``, one signed with a wrong secret with
  ``SignatureDoesNotMatch``.  moto's random generator is seeded first (``/moto-api/seed``), so
  the key pair is the same at every start: a restarted server accepts the configs written before.
- :meth:`S3Server.pause` stops the process (SIGSTOP): the kernel still accepts connections and
  buffers what is sent, but nothing answers, as on a link that stalls mid-transfer.
- Requests are counted from the server's access log (werkzeug's, one line a request on stderr,
  written as the answer starts): :meth:`S3Server.requests`.

Nothing happens at import time; :class:`S3Server` starts nothing until :meth:`S3Server.start`.
"""

import dataclasses
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

# Seconds the server may take to answer at start (importing moto takes about half a second).
START_TIMEOUT_S = 20
STOP_TIMEOUT_S = 5
REGION = "us-east-1"
USER = "camera-trap"
SEED = 19
# One line of werkzeug's access log: '127.0.0.1 - - [03/Dec/2026 17:02:41] "PUT /b1/x HTTP/1.1" 200 -'
# (colours around the request line when the status is not 200).
_ACCESS = re.compile(r'\] "(?:\x1b\[[0-9;]*m)*([A-Z]+) (\S+) HTTP/[0-9.]+(?:\x1b\[[0-9;]*m)*" (\d{3}) ')


class S3ServerError(Exception):
    """The server could not be started or set up (the message says which step failed)."""


@dataclasses.dataclass(frozen=True)
class Credentials:
    access_key_id: str
    secret_access_key: str


@dataclasses.dataclass(frozen=True)
class Request:
    """One request the server answered: ``method`` ("PUT"), ``path`` (percent-decoded, with the
    query: ``"/bucket/a/b.jpg"``), ``status`` (HTTP status code)."""

    method: str
    path: str
    status: int


def free_port() -> int:
    """A TCP port of 127.0.0.1 that nothing listens on (now)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class S3Server:
    """moto's S3 on ``127.0.0.1:port`` (``port`` 0: a free one, kept across :meth:`stop` and
    :meth:`start`), its log in ``folder / "moto.log"``.

    moto keeps everything in memory: :meth:`stop` loses every bucket and object, and the access
    log starts again empty; a new :meth:`start` recreates the same IAM user and access key
    (:attr:`credentials`), so rclone configs written before still work, on an empty server.
    """

    def __init__(self, folder: Path, *, port: int = 0):
        self.folder, self.port = Path(folder), port or free_port()
        self.log_path = self.folder / "moto.log"
        self.process: subprocess.Popen | None = None
        self.paused = False
        self.credentials: Credentials | None = None

    @property
    def endpoint(self) -> str:
        """The server's URL: ``http://127.0.0.1:PORT``."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self) -> "S3Server":
        """Start the server (on the same port as before), wait until it answers, create the IAM
        key and turn authentication on.  Raises :class:`S3ServerError`."""
        if self.running:
            return self
        self.folder.mkdir(parents=True, exist_ok=True)
        # Not the test's AWS_* variables (this machine sets AWS_CA_BUNDLE): moto reads some.
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "MOTO_"))}
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env,
            )  # fmt: skip
        self.paused = False
        try:
            self._wait_until_answering()
            self._post("/moto-api/seed?a=" + str(SEED), b"")
            credentials = self._create_key()
            if self.credentials is not None and credentials != self.credentials:
                raise S3ServerError("moto gave another access key after a restart (its seed did not hold)")
            self.credentials = credentials
            self._post("/moto-api/reset-auth", b"0")
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_until_answering(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if self.process.poll() is not None:
                raise S3ServerError(f"moto.server exited with status {self.process.returncode}: "
                                    f"{self.log_path.read_text(errors='replace')[-2000:]}")  # fmt: skip
            try:
                with urllib.request.urlopen(self.endpoint + "/moto-api/", timeout=1):
                    return
            except (OSError, urllib.error.URLError):
                if time.monotonic() > deadline:
                    raise S3ServerError(f"moto.server did not answer on {self.endpoint} in "
                                        f"{START_TIMEOUT_S} s") from None  # fmt: skip
                time.sleep(0.05)

    def _post(self, path: str, body: bytes) -> None:
        request = urllib.request.Request(
            self.endpoint + path, data=body, method="POST", headers={"Content-Type": "text/plain"}
        )
        try:
            with urllib.request.urlopen(request, timeout=10):
                pass
        except (OSError, urllib.error.URLError) as exc:
            raise S3ServerError(f"POST {path}: {exc}") from None

    def _client(self, service: str, credentials: Credentials | None = None):
        import boto3  # comes with moto; imported here, when a server is wanted

        credentials = credentials or Credentials("setup", "setup-secret")
        return boto3.session.Session().client(
            service,
            endpoint_url=self.endpoint,
            region_name=REGION,
            aws_access_key_id=credentials.access_key_id,
            aws_secret_access_key=credentials.secret_access_key,
            config=_boto_config(),
        )

    def _create_key(self) -> Credentials:
        iam = self._client("iam")
        iam.create_user(UserName=USER)
        policy = {
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}],
        }
        iam.put_user_policy(UserName=USER, PolicyName="s3", PolicyDocument=json.dumps(policy))
        key = iam.create_access_key(UserName=USER)["AccessKey"]
        return Credentials(key["AccessKeyId"], key["SecretAccessKey"])

    def make_bucket(self, name: str) -> str:
        """Create the bucket ``name`` (3 to 63 characters: lower-case letters, digits, hyphens);
        returns ``name``."""
        self._client("s3", self.credentials).create_bucket(Bucket=name)
        return name

    def rclone_config(
        self,
        path: Path,
        *,
        remote: str = "fleet",
        access_key: str | None = None,
        secret: str | None = None,
        endpoint: str | None = None,
    ) -> Path:
        """Write an rclone config file at ``path`` (mode 0600) whose section ``remote`` is this
        server, with :attr:`credentials` unless ``access_key`` or ``secret`` say otherwise, and
        this server's :attr:`endpoint` unless ``endpoint`` does; returns ``path``."""
        path = Path(path)
        section = (
            f"[{remote}]\ntype = s3\nprovider = Other\n"
            f"access_key_id = {access_key or self.credentials.access_key_id}\n"
            f"secret_access_key = {secret or self.credentials.secret_access_key}\n"
            f"endpoint = {endpoint or self.endpoint}\nregion = {REGION}\nforce_path_style = true\n"
        )
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with open(fd, "w") as f:
            f.write(section)
        os.chmod(path, 0o600)
        return path

    def requests(self, method: str | None = None, prefix: str = "") -> list[Request]:
        """The requests answered since the last :meth:`start`, oldest first: those of ``method``
        (any when None) whose path starts with ``prefix`` (``"/bucket/media/"``)."""
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return []
        found = []
        for match in _ACCESS.finditer(text):
            request = Request(match[1], match[2], int(match[3]))
            if (method is None or request.method == method) and request.path.startswith(prefix):
                found.append(request)
        return found

    def pause(self) -> None:
        """Stop the server's process (SIGSTOP): connections are still accepted by the kernel,
        nothing is answered, a transfer under way stalls."""
        os.kill(self.process.pid, signal.SIGSTOP)
        self.paused = True

    def resume(self) -> None:
        """Let a paused server go on (SIGCONT)."""
        if self.running:
            os.kill(self.process.pid, signal.SIGCONT)
        self.paused = False

    def stop(self) -> None:
        """Stop the server (whatever it holds is lost: see the class); nothing when stopped."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.resume()
            self.process.terminate()
            try:
                self.process.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process, self.paused = None, False

    def __enter__(self) -> "S3Server":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def _boto_config():
    from botocore.config import Config

    # Path-style addressing (no bucket-name host to resolve); one try: a failure is the test's to see.
    return Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1})
