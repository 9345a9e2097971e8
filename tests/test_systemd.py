"""systemd notification over a real AF_UNIX datagram socket, as systemd listens for it."""

import contextlib
import dataclasses
import queue
import socket
import subprocess
import sys
import threading
import time

import pytest
import schedule

from appliance.exif import Identity
from appliance.loop import LoopSettings, MainLoop
from boot.systemd import Notifier
from hw.camera import SimulatedCamera
from hw.triggers import TriggerEvent

SETTINGS = LoopSettings(
    capture_timeout_s=5, thumbnail_max_px=32, identity=Identity("Raspberry Pi", "simulated")
)


class Listener:
    """A datagram socket like systemd's notify socket, bound at :attr:`path`, read as messages
    arrive by a thread of its own (as systemd does: the socket's queue holds only a few)."""

    def __init__(self, path):
        self.path = str(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.settimeout(0.05)
        self._got = []
        self._closing = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self):
        while not self._closing.is_set():
            with contextlib.suppress(TimeoutError):
                self._got.append((time.monotonic(), self.sock.recv(4096).decode()))

    def messages(self, settle_s):
        """Everything received, once ``settle_s`` seconds pass, as ``(monotonic time, text)``."""
        time.sleep(settle_s)
        return list(self._got)

    def close(self):
        self._closing.set()
        self._thread.join()
        self.sock.close()


@pytest.fixture
def listener(tmp_path):
    listener = Listener(tmp_path / "notify")
    yield listener
    listener.close()


def test_without_notify_socket_nothing_is_sent_and_nothing_fails():
    notifier = Notifier({})
    assert not notifier.enabled and notifier.watchdog_interval_s is None
    notifier.ready("up")
    notifier.watchdog()


def test_messages_and_watchdog_interval(listener):
    notifier = Notifier({"NOTIFY_SOCKET": listener.path, "WATCHDOG_USEC": "30000000"})
    assert notifier.watchdog_interval_s == 15.0  # half the period, as sd_watchdog_enabled(3) advises
    notifier.ready("3 captures")
    notifier.watchdog()
    notifier.stopping()
    assert [m for _, m in listener.messages(0.5)] == [
        "READY=1\nSTATUS=3 captures", "WATCHDOG=1", "STOPPING=1\nSTATUS=stopping"
    ]  # fmt: skip


def test_a_watchdog_meant_for_another_process_is_ignored(listener):
    notifier = Notifier({"NOTIFY_SOCKET": listener.path, "WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "1"})
    assert notifier.watchdog_interval_s is None


def test_a_full_queue_drops_messages_instead_of_blocking(tmp_path, caplog):
    deaf = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)  # bound, never read
    deaf.bind(str(tmp_path / "deaf"))
    notifier = Notifier({"NOTIFY_SOCKET": str(tmp_path / "deaf")})
    started = time.monotonic()
    for _ in range(1000):
        notifier.watchdog()
    assert time.monotonic() - started < 5
    assert caplog.text.count("cannot notify systemd") == 1
    deaf.close()


def test_an_unreachable_socket_is_logged_once_and_never_raises(tmp_path, caplog):
    notifier = Notifier({"NOTIFY_SOCKET": str(tmp_path / "nobody-listens")})
    notifier.ready("up")
    notifier.status("still up")
    assert caplog.text.count("cannot notify systemd") == 1


def test_the_loop_pings_while_it_makes_progress_and_not_while_a_capture_hangs(store, listener):
    notifier = Notifier({"NOTIFY_SOCKET": listener.path, "WATCHDOG_USEC": "200000"})  # ping every 0.1 s
    events = queue.Queue()
    loop = MainLoop(events=events, camera=SimulatedCamera(size_px=(64, 48), capture_time_s=1.5), store=store,
                    scheduler=schedule.Scheduler(), settings=SETTINGS, notifier=notifier)  # fmt: skip
    loop.run(duration_s=0.6)  # idle: pings
    events.put(TriggerEvent("button", time.monotonic()))
    loop.run(duration_s=2.2)  # a capture that hangs for 1.5 s, then pings again
    pings = [t for t, m in listener.messages(0.3) if m == "WATCHDOG=1"]
    gaps = [b - a for a, b in zip(pings, pings[1:], strict=False)]
    assert len(pings) >= 10
    assert max(gaps) >= 1.4  # no keep-alive while the capture hung
    assert sorted(gaps)[len(gaps) // 2] < 0.2  # otherwise every 0.1 s


def test_the_real_command_says_ready_status_and_stopping(tmp_path, listener, run_config):
    result = subprocess.run(
        [sys.executable, "-m", "appliance", "run", "--simulate", "--duration-s", "2", "--port", "0",
         "--host", "127.0.0.1", "--data-dir", str(tmp_path / "data"), "--config", str(run_config)],
        capture_output=True, text=True, timeout=30,
        env={"NOTIFY_SOCKET": listener.path, "WATCHDOG_USEC": "1000000", "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    messages = [m for _, m in listener.messages(0.5)]
    assert messages[0] == "STATUS=checking the capture store"
    ready = next(m for m in messages if m.startswith("READY=1"))
    assert "captures in the last 24 h" in ready and "GB free; cleanup ok" in ready
    assert messages.count("WATCHDOG=1") >= 3  # every 0.5 s for 2 s
    assert messages[-1] == "STOPPING=1\nSTATUS=stopping"


def test_a_long_burst_keeps_pinging_and_a_stop_cuts_it_short(store, listener):
    notifier = Notifier({"NOTIFY_SOCKET": listener.path, "WATCHDOG_USEC": "200000"})  # ping every 0.1 s
    events = queue.Queue()
    loop = MainLoop(events=events, camera=SimulatedCamera(size_px=(64, 48)), store=store,
                    scheduler=schedule.Scheduler(), notifier=notifier,
                    settings=dataclasses.replace(SETTINGS, burst_count=5, burst_interval_s=2.0))  # fmt: skip
    events.put(TriggerEvent("motion", time.monotonic()))
    threading.Timer(1.0, loop.request_stop, ["SIGTERM"]).start()
    started = time.monotonic()
    loop.run(duration_s=20)
    assert time.monotonic() - started < 1.5  # not the 8 s the burst would take
    assert store.db["captures"].count == 1
    pings = [t for t, m in listener.messages(0.3) if m == "WATCHDOG=1"]
    assert len(pings) >= 5 and max(b - a for a, b in zip(pings, pings[1:], strict=False)) < 0.6


def test_captures_slower_than_the_burst_interval_still_ping(store, listener):
    notifier = Notifier({"NOTIFY_SOCKET": listener.path, "WATCHDOG_USEC": "200000"})  # ping every 0.1 s
    events = queue.Queue()
    loop = MainLoop(events=events, camera=SimulatedCamera(size_px=(64, 48), capture_time_s=0.3), store=store,
                    scheduler=schedule.Scheduler(), notifier=notifier,
                    settings=dataclasses.replace(SETTINGS, burst_count=6, burst_interval_s=0.05))  # fmt: skip
    events.put(TriggerEvent("motion", time.monotonic()))
    loop.run(duration_s=2.5)
    assert store.db["captures"].count == 6
    pings = [t for t, m in listener.messages(0.3) if m == "WATCHDOG=1"]
    assert (
        max(b - a for a, b in zip(pings, pings[1:], strict=False)) < 1.0
    )  # about a capture, not the 1.8 s burst
