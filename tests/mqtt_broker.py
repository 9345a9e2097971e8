"""A real MQTT broker for tests: Debian's Mosquitto (2.0, ``apt install mosquitto``) on 127.0.0.1,
with its config, password file, ACL, persistence file and log in a folder of the test's, and a
real paho-mqtt client (:class:`Subscriber`) that records what the broker delivers.

What is real:

- The broker is the ``mosquitto`` program a Pi's owner would run, started with a config file of our
  own (:meth:`Broker.config`): ``listener PORT 127.0.0.1``, ``persistence true`` in the folder (so
  :meth:`Broker.stop` and :meth:`Broker.start` on the same port keep the retained messages:
  mosquitto saves its database when it exits on SIGTERM, not on SIGKILL), and its log in
  ``folder / "mosquitto.log"`` (every packet: ``log_type all``).
- Run as root, mosquitto drops its privileges to the user "mosquitto" before it opens its log and
  persistence files, and that user cannot enter pytest's folders (mode 0700, root's): the config
  says ``user root``, which keeps the privileges.  Run as another user it ignores the line.
- ``auth=True``: ``allow_anonymous false``, a password file made by ``mosquitto_passwd -b``
  (hashed, as mosquitto's docs say to make one) and an ACL (:data:`ACL`): "trap" reads and writes
  ``appliance/trap/#`` and ``homeassistant/#``, "watcher" reads everything, "other" may only write
  ``appliance/other/#``.  Passwords are random, kept across restarts (:attr:`Broker.users`).
- ``tls=True``: a throw-away CA and a server certificate for the IP address 127.0.0.1 (an IP
  subjectAltName, which clients check), made with the ``cryptography`` package (installed with
  ``moto[server]`` of the ``test`` extra), once per broker; the listener takes TLS only.  Clients
  verify it against :attr:`Broker.ca_path`; without that CA the handshake fails.
- :class:`Subscriber` is paho-mqtt 2.x (``CallbackAPIVersion.VERSION2``), its network thread
  started with ``loop_start``, subscribed at QoS 2 (so a message's ``qos`` is the one it was
  published with).  It reconnects and subscribes again when the broker comes back after a restart.

Nothing happens at import time (paho and cryptography are imported when first needed);
:class:`Broker` writes and starts nothing until :meth:`Broker.start`.
"""

import dataclasses
import datetime
import ipaddress
import json
import os
import re
import secrets
import shutil
import signal
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from s3_server import free_port

# Seconds mosquitto may take to accept an MQTT connect at start (it takes about 10 ms).
START_TIMEOUT_S = 10
# Seconds it may take to save its database and exit on SIGTERM.
STOP_TIMEOUT_S = 5
# Seconds a client waits for the broker's answers (CONNACK, SUBACK, PUBACK).
ANSWER_TIMEOUT_S = 10
# Where Debian puts the broker (outside a non-root user's PATH).
DEBIAN_MOSQUITTO = "/usr/sbin/mosquitto"
# The line mosquitto 2.0 logs once every listener is open.
_RUNNING = re.compile(rb"^\S+ mosquitto version \S+ running$", re.MULTILINE)
USERS = ("trap", "watcher", "other")
ACL = """\
user trap
topic readwrite appliance/trap/#
topic readwrite homeassistant/#

user watcher
topic read #

user other
topic write appliance/other/#
"""


class BrokerError(Exception):
    """The broker could not be started (the message says why, with its log's tail), or it
    refused a client's connect (:class:`ConnectRefused`)."""


class ConnectRefused(BrokerError, ConnectionRefusedError):
    """The broker answered a connect with a failure (``reason``: paho's reason code, such as
    "Not authorized")."""

    def __init__(self, message: str, reason):
        super().__init__(message)
        self.reason = reason


def mosquitto_path() -> str | None:
    """The path of the ``mosquitto`` program: on the PATH, else Debian's; None when neither."""
    found = shutil.which("mosquitto")
    if found is None and os.access(DEBIAN_MOSQUITTO, os.X_OK):
        found = DEBIAN_MOSQUITTO
    return found


class Broker:
    """A real mosquitto on ``127.0.0.1:port`` (``port`` 0: a free one, kept across :meth:`stop`
    and :meth:`start`), its config, password file, ACL, certificates, persistence file and log in
    ``folder`` (see the module's docstring for what ``auth`` and ``tls`` turn on)."""

    host: str = "127.0.0.1"

    def __init__(self, folder: Path, *, port: int = 0, auth: bool = False, tls: bool = False):
        self.folder, self.port, self.auth, self.tls = Path(folder), port or free_port(), auth, tls
        self.config_path = self.folder / "mosquitto.conf"
        self.log_path = self.folder / "mosquitto.log"
        # What mosquitto prints before its log file is open (a bad config line, a missing file).
        self.output_path = self.folder / "mosquitto.out"
        #: The throw-away CA's certificate (PEM) when ``tls``, for a client's CA file; written by
        #: the first :meth:`start`.
        self.ca_path: Path | None = self.folder / "ca.crt" if tls else None
        #: ``auth``: each user's password ({"trap": ..., "watcher": ..., "other": ...}), else {}.
        self.users: dict[str, str] = {user: secrets.token_urlsafe(12) for user in USERS} if auth else {}
        self.process: subprocess.Popen | None = None

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def password_file(self, user: str, path: Path) -> Path:
        """Write ``user``'s password at ``path`` as one line (ending in one newline, as ``echo``
        writes it), mode 0600; returns ``path``.  Raises KeyError for a user the broker lacks."""
        if user not in self.users:
            raise KeyError(f"no user {user!r} on this broker (auth={self.auth}); users: {sorted(self.users)}")
        path = Path(path)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with open(fd, "w") as f:
            f.write(self.users[user] + "\n")
        os.chmod(path, 0o600)
        return path

    def config(self) -> str:
        """The text of the broker's config file."""
        lines = [
            f"listener {self.port} {self.host}",
            "user root",
            "persistence true",
            f"persistence_location {self.folder}",
            f"log_dest file {self.log_path}",
            "log_type all",
            "log_timestamp_format %Y-%m-%dT%H:%M:%S",
        ]
        if self.tls:
            folder = self.folder
            lines += [f"cafile {folder / 'ca.crt'}", f"certfile {folder / 'server.crt'}",
                      f"keyfile {folder / 'server.key'}"]  # fmt: skip
        if self.auth:
            lines += ["allow_anonymous false", f"password_file {self.folder / 'passwords'}",
                      f"acl_file {self.folder / 'acl'}"]  # fmt: skip
        else:
            lines.append("allow_anonymous true")
        return "\n".join(lines) + "\n"

    def start(self) -> "Broker":
        """Start mosquitto (on the same port as before) and wait until it accepts an MQTT connect
        (a CONNACK, not just a TCP connection); returns self.  Raises :class:`BrokerError`, with
        the log's tail, when mosquitto is missing, exits or does not accept in
        :data:`START_TIMEOUT_S` seconds."""
        if self.running:
            return self
        binary = mosquitto_path()
        if binary is None:
            raise BrokerError("mosquitto is not installed: apt install mosquitto")
        self.folder.mkdir(parents=True, exist_ok=True)
        self._write_files()
        # mosquitto appends to its log: what this start logs comes after this.
        self._log_start = self.log_path.stat().st_size if self.log_path.exists() else 0
        with open(self.output_path, "wb") as output:
            self.process = subprocess.Popen([binary, "-c", str(self.config_path)], stdin=subprocess.DEVNULL,
                                            stdout=output, stderr=subprocess.STDOUT)  # fmt: skip
        try:
            self._wait_until_accepting()
        except BaseException:
            self.kill()
            raise
        return self

    def _write_files(self) -> None:
        self.config_path.write_text(self.config())
        if self.tls and not (self.folder / "server.key").exists():
            _make_certificates(self.folder, self.host)
        if self.auth:
            passwords = self.folder / "passwords"
            for n, (user, password) in enumerate(self.users.items()):
                create = ["-c"] if n == 0 else []
                _run(["mosquitto_passwd", "-b", *create, str(passwords), user, password])
            (self.folder / "acl").write_text(ACL)

    def _wait_until_accepting(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        user = "watcher" if self.auth else None
        while True:
            if self.process.poll() is not None:
                raise BrokerError(f"mosquitto exited with status {self.process.returncode} at start: "
                                  f"{self._tails()}")  # fmt: skip
            # An error before its log is open (that log file itself, as user "mosquitto") does
            # not always stop it, but it would not log the line awaited below.
            if b"Error:" in self.output_path.read_bytes():
                raise BrokerError(f"mosquitto could not start: {self._tails()}")
            # Once its listener is open: until then, another broker holding the port (a race
            # for a free port) could answer the probe while this one is about to exit.
            if not _RUNNING.search(self._log_bytes()[self._log_start :]):
                if time.monotonic() > deadline:
                    raise BrokerError(f"mosquitto did not open its listener in {START_TIMEOUT_S} s: "
                                      f"{self._tails()}")  # fmt: skip
                time.sleep(0.01)
                continue
            try:
                _probe(self, user)
                return
            except ConnectRefused as exc:
                raise BrokerError(f"mosquitto refused the start probe's connect ({exc}): "
                                  f"{self._tails()}") from None  # fmt: skip
            except ssl.SSLError as exc:
                raise BrokerError(f"the TLS handshake with mosquitto failed ({exc}): "
                                  f"{self._tails()}") from None  # fmt: skip
            except OSError:  # not listening yet
                if time.monotonic() > deadline:
                    raise BrokerError(f"mosquitto did not accept an MQTT connect on {self.host}:{self.port} "
                                      f"in {START_TIMEOUT_S} s: {self._tails()}") from None  # fmt: skip
                time.sleep(0.01)

    def _log_bytes(self) -> bytes:
        try:
            return self.log_path.read_bytes()
        except FileNotFoundError:
            return b""

    def _tails(self) -> str:
        texts = [path.read_text(errors="replace")[-2000:] for path in (self.output_path, self.log_path)
                 if path.exists()]  # fmt: skip
        return "\n".join(text.strip() for text in texts if text.strip()) or "(no output, no log)"

    def stop(self) -> None:
        """Stop the broker with SIGTERM and wait for it to exit (it saves its persistence file
        first, so retained messages survive a :meth:`start`); nothing when stopped."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def kill(self) -> None:
        """Kill the broker (SIGKILL: nothing saved since the last start is kept); nothing when
        stopped."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()
        self.process = None

    def log(self) -> str:
        """The broker's log so far ("" before the first start)."""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def __enter__(self) -> "Broker":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def _run(command: list[str]) -> None:
    try:
        subprocess.run(command, check=True, capture_output=True, text=True)
    except FileNotFoundError:
        raise BrokerError(f"{command[0]} is not installed: apt install mosquitto") from None
    except subprocess.CalledProcessError as exc:
        raise BrokerError(f"{command[0]} failed (status {exc.returncode}): {exc.stderr.strip()}") from None


def _make_certificates(folder: Path, host: str) -> None:
    """A throw-away CA (``ca.crt``) and a certificate it signs for the IP address ``host``
    (``server.crt``, its key ``server.key``), EC P-256, valid from 2000 to 2100 so that a test
    that shifts a client's clock far still verifies them."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    def name(common_name: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])

    def certificate(subject, public_key, issuer, issuer_key):
        authority = x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key())
        return (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(issuer)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(datetime.datetime(2000, 1, 1, tzinfo=datetime.UTC))
            .not_valid_after(datetime.datetime(2100, 1, 1, tzinfo=datetime.UTC))
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
            .add_extension(authority, critical=False)
        )

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = name("camera-trap tests throw-away CA")
    ca = (
        certificate(ca_name, ca_key.public_key(), ca_name, ca_key)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_ca_key_usage(x509), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    server_key = ec.generate_private_key(ec.SECP256R1())
    address = ipaddress.ip_address(host)
    server = (
        certificate(name(host), server_key.public_key(), ca_name, ca_key)
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(address)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    (folder / "ca.crt").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    (folder / "server.crt").write_bytes(server.public_bytes(serialization.Encoding.PEM))
    key_pem = server_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption())  # fmt: skip
    fd = os.open(folder / "server.key", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with open(fd, "wb") as f:
        f.write(key_pem)


def _ca_key_usage(x509):
    """A CA's key usage: signing certificates and revocation lists, nothing else."""
    usage = dict.fromkeys(["digital_signature", "content_commitment", "key_encipherment", "data_encipherment",
                           "key_agreement", "encipher_only", "decipher_only"], False)  # fmt: skip
    return x509.KeyUsage(key_cert_sign=True, crl_sign=True, **usage)


def _client(broker: Broker, user: str | None, password: str | None, **options):
    """A paho-mqtt 2.x client set up for ``broker``: ``user``'s credentials (``password``, else
    the broker's for that user), the broker's CA when it takes TLS."""
    import paho.mqtt.client as mqtt

    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, **options)
    if user is not None:
        client.username_pw_set(user, password if password is not None else broker.users.get(user))
    if broker.tls:
        client.tls_set(ca_certs=str(broker.ca_path))
    return client


def _probe(broker: Broker, user: str | None) -> None:
    """Connect to ``broker`` and wait for its CONNACK.  Raises OSError when nothing listens,
    :class:`ConnectRefused` when the broker answers with a failure."""
    client = _client(broker, user, None, reconnect_on_failure=False)
    answers = []
    client.on_connect = lambda client, userdata, flags, reason, properties: answers.append(reason)
    client.connect(broker.host, broker.port, keepalive=10)
    try:
        deadline = time.monotonic() + ANSWER_TIMEOUT_S
        while not answers:
            if time.monotonic() > deadline:
                raise TimeoutError(f"no CONNACK from {broker.host}:{broker.port} in {ANSWER_TIMEOUT_S} s")
            client.loop(timeout=0.05)
        if answers[0].is_failure:
            raise ConnectRefused(f"connect as {user or 'anonymous'} refused: {answers[0]}", answers[0])
    finally:
        client.disconnect()


@dataclasses.dataclass(frozen=True)
class Message:
    """One message the broker delivered: ``topic``, ``payload`` (bytes), ``retain`` (True when
    delivered because retained, at subscribe time; False for one forwarded as it was published),
    ``qos`` (0, 1 or 2), ``received_monotonic`` (``time.monotonic()`` at arrival, seconds)."""

    topic: str
    payload: bytes
    retain: bool
    qos: int
    received_monotonic: float

    def json(self) -> object:
        """The payload parsed as JSON.  Raises ValueError when it is not JSON."""
        return json.loads(self.payload)


class Subscriber:
    """A paho-mqtt 2.x client (``CallbackAPIVersion.VERSION2``, its own network thread via
    ``loop_start``) subscribed to ``topics`` (default ``["#"]``, at QoS 2) on ``broker`` as
    ``user`` (default: the "watcher" user, who may read everything, on an ``auth`` broker;
    anonymous on others) with ``password`` (default: the broker's for ``user``).

    Returns once subscribed.  Raises :class:`ConnectRefused` when the broker refuses the connect
    (a wrong password), ``ssl.SSLError`` when the TLS handshake fails, AssertionError when the
    broker refuses a subscription or does not answer in :data:`ANSWER_TIMEOUT_S` seconds.
    After a broker restart it reconnects and subscribes again (retained messages then arrive
    again)."""

    def __init__(
        self,
        broker: Broker,
        topics: Iterable[str] = ("#",),
        *,
        user: str | None = None,
        password: str | None = None,
    ):
        self.broker, self.topics_subscribed = broker, list(topics)
        self.user = user if user is not None else ("watcher" if broker.auth else None)
        self.messages: list[Message] = []
        self._changed = threading.Condition()
        self._connack = None
        self._subscribed = None
        self._client = _client(broker, self.user, password)
        # Seconds between tries after a broker restart (paho sleeps them; its hints say int).
        self._client.reconnect_delay_set(min_delay=0.1, max_delay=1)  # type: ignore[arg-type]
        self._client.on_connect = self._on_connect
        self._client.on_subscribe = self._on_subscribe
        self._client.on_message = self._on_message
        try:
            self._client.connect(broker.host, broker.port, keepalive=30)
            self._client.loop_start()
            self._wait(lambda: self._connack is not None, "CONNACK")
            if self._connack.is_failure:
                raise ConnectRefused(f"connect as {self.user or 'anonymous'} refused: {self._connack}",
                                     self._connack)  # fmt: skip
            self._wait(lambda: self._subscribed is not None, "SUBACK")
            refused = [(t, str(r)) for t, r in zip(self.topics_subscribed, self._subscribed, strict=False)
                       if r.is_failure]  # fmt: skip
            if refused:
                raise AssertionError(f"the broker refused the subscriptions {refused}")
        except BaseException:
            self.close()
            raise

    def _wait(self, condition: Callable[[], bool], what: str) -> None:
        with self._changed:
            if not self._changed.wait_for(condition, timeout=ANSWER_TIMEOUT_S):
                raise AssertionError(f"no {what} from {self.broker.host}:{self.broker.port} "
                                     f"in {ANSWER_TIMEOUT_S} s")  # fmt: skip

    def _on_connect(self, client, userdata, flags, reason, properties) -> None:
        if reason.is_failure:
            client.disconnect()  # rather than try again and again
        elif self.topics_subscribed:
            client.subscribe([(topic, 2) for topic in self.topics_subscribed])
        with self._changed:
            self._connack = reason
            if not self.topics_subscribed:  # a client that only publishes
                self._subscribed = []
            self._changed.notify_all()

    def _on_subscribe(self, client, userdata, mid, reasons, properties) -> None:
        with self._changed:
            self._subscribed = list(reasons)
            self._changed.notify_all()

    def _on_message(self, client, userdata, message) -> None:
        received = Message(message.topic, bytes(message.payload), bool(message.retain), message.qos,
                           time.monotonic())  # fmt: skip
        with self._changed:
            self.messages.append(received)
            self._changed.notify_all()

    def wait_for(self, predicate: Callable[[Message], bool], timeout_s: float = 10.0) -> Message:
        """The first message, already received or arriving within ``timeout_s`` seconds, for
        which ``predicate(message)`` is true.  Raises AssertionError, listing the topics seen,
        when none comes."""
        checked = 0

        def found() -> bool:
            nonlocal checked
            while checked < len(self.messages):
                if predicate(self.messages[checked]):
                    return True
                checked += 1
            return False

        with self._changed:
            if self._changed.wait_for(found, timeout=timeout_s):
                return self.messages[checked]
            seen = sorted({m.topic for m in self.messages})
        raise AssertionError(f"no matching message in {timeout_s} s; {len(self.messages)} messages on "
                             f"the topics {seen}")  # fmt: skip

    def topics(self) -> set[str]:
        """The topics of the messages received so far."""
        with self._changed:
            return {m.topic for m in self.messages}

    def last(self, topic: str) -> Message | None:
        """The last message received on ``topic``, None when none."""
        with self._changed:
            return next((m for m in reversed(self.messages) if m.topic == topic), None)

    def publish(self, topic: str, payload: bytes | str, *, qos: int = 1, retain: bool = False) -> None:
        """Publish as this client and wait until done (QoS 1: PUBACK, QoS 2: PUBCOMP, QoS 0:
        sent).  Raises AssertionError when not done in :data:`ANSWER_TIMEOUT_S` seconds."""
        info = self._client.publish(topic, payload, qos=qos, retain=retain)
        info.wait_for_publish(timeout=ANSWER_TIMEOUT_S)
        if not info.is_published():
            raise AssertionError(f"publish to {topic} not done in {ANSWER_TIMEOUT_S} s ({info.rc})")

    def close(self) -> None:
        """Disconnect and stop the network thread; nothing when closed."""
        if self._client is None:
            return
        self._client.disconnect()
        self._client.loop_stop()
        self._client = None

    def __enter__(self) -> "Subscriber":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
