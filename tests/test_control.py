"""Commands beside the running appliance (``appliance.control``): ``appliance protect``,
``unprotect`` and ``capture`` ask the real ``appliance run`` process through its control socket
while it goes on capturing, work on the store directly when it does not run, and never create a
store in the wrong folder.  Every command is a real process; the index is read back from disk."""

import os
import signal
import sqlite3
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_end_to_end import start, status_url, wait_for_captures

from appliance import control
from appliance.cli import SERVICE_DATA_DIR
from appliance.control import SOCKET_NAME, ControlChannel
from appliance.exc import ControlError, UnknownCapture
from appliance.store import IndexReader, unsafe_layout

# A data directory whose socket path is past the kernel's 107 bytes for AF_UNIX addresses.
DEEP = Path("a-folder-name-long-enough-to-matter" * 2) / ("and-another-one-as-long-as-that" * 2)


def appliance(*args, cwd=None) -> subprocess.CompletedProcess:
    """``appliance ARGS`` as a separate process, its output captured."""
    return subprocess.run([sys.executable, "-m", "appliance", *map(str, args)],
                          capture_output=True, text=True, timeout=60, cwd=cwd)  # fmt: skip


def protected(data_dir: Path) -> dict[int, int]:
    """``{seq: protected}`` of every capture, read from the index file, read-only."""
    db = sqlite3.connect(f"file:{data_dir / 'captures.db'}?mode=ro", uri=True)
    try:
        return dict(db.execute("SELECT seq, protected FROM captures"))
    finally:
        db.close()


def total(url: str) -> int:
    return wait_for_captures(url, 0)["captures"]["total"]


class Running:
    """``appliance run --simulate`` on ``data_dir`` in a subprocess, its log in a file."""

    def __init__(self, data_dir: Path, config: Path, log: Path):
        self.data_dir, self.config, self.log = data_dir, config, log
        with open(log, "a") as stderr:
            self.process = start(data_dir, config, "--trigger-interval-s", "0.3", stderr=stderr)
        self.url = status_url(self.process)

    def command(self, *args) -> subprocess.CompletedProcess:
        """``appliance ARGS --data-dir <its data dir> --config <its config>``."""
        return appliance(*args, "--data-dir", self.data_dir, "--config", self.config)

    def stop(self, signum=signal.SIGTERM) -> int:
        self.process.send_signal(signum)
        self.process.communicate(timeout=20)
        return self.process.returncode


@pytest.fixture(scope="module")
def running(tmp_path_factory):
    """One appliance running for the tests of this module that only add to its store, on a data
    directory deep enough that its socket's path is longer than AF_UNIX allows."""
    folder = tmp_path_factory.mktemp("running")
    config = folder / "run-config.toml"
    config.write_text(
        # As conftest.RUN_CONFIG: triggers never held back, and cleanup never deletes.
        "trigger_cooldown_s = 0\nmax_captures_per_minute = 0\ncleanup_start_free_percent = 0\n"
        "cleanup_start_free_bytes = 0\ncleanup_stop_free_percent = 0\ncleanup_stop_free_bytes = 0\n"
        "headroom_hours = 0\ncapture_min_free_bytes = 0\n"
    )
    run = Running(folder / DEEP / "data", config, folder / "run.log")
    wait_for_captures(run.url, 4)
    yield run
    assert run.stop() == 0, run.log.read_text()
    assert not (run.data_dir / SOCKET_NAME).exists(), "a clean stop removes the socket"


def test_the_channel_answers_with_the_main_loops_outcome_and_the_client_names_each(main_loop, tmp_path):
    data_dir = tmp_path / "data"  # the main loop's store
    with ControlChannel(data_dir, main_loop.submit):
        client = control.connect(data_dir)
        [shot] = client.capture()
        assert main_loop.reader.get(shot)["trigger"] == "manual"
        client.protect(shot, True)
        assert main_loop.reader.get(shot)["protected"] == 1
        with pytest.raises(UnknownCapture):
            client.protect("0" * 32, True)  # as for a capture deleted since the command read it
        with pytest.raises(ControlError, match="^expected a capture id of 32 hex characters$"):
            client.protect("not-an-id", False)
    assert not (data_dir / SOCKET_NAME).exists()
    assert control.connect(data_dir) is None
    with pytest.raises(ControlError, match=r"^the appliance stopped \(.*control.sock answers no more\)$"):
        client.protect(shot, False)
    assert main_loop.reader.get(shot)["protected"] == 1


def test_protect_by_id_and_by_number_goes_through_the_running_appliance_which_goes_on_capturing(running):
    assert len(os.fsencode(running.data_dir / SOCKET_NAME)) > 108
    first = IndexReader(running.data_dir).by_seq(1)
    before = total(running.url)
    result = running.command("protect", first["id"].upper(), "#2")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        f"#1 {first['id']}: protected",
        f"#2 {IndexReader(running.data_dir).by_seq(2)['id']}: protected",
    ]
    assert {seq: p for seq, p in protected(running.data_dir).items() if seq <= 3} == {1: 1, 2: 1, 3: 0}
    wait_for_captures(running.url, before + 3)  # it never stopped
    assert running.process.poll() is None


def test_unprotect_through_the_running_appliance(running):
    assert running.command("protect", "3").returncode == 0
    assert protected(running.data_dir)[3] == 1
    result = running.command("unprotect", "#3")
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"#3 {IndexReader(running.data_dir).by_seq(3)['id']}: unprotected\n"
    assert protected(running.data_dir)[3] == 0


def test_capture_asks_the_running_appliance_for_a_manual_shot_and_names_it(running):
    result = running.command("capture")
    assert result.returncode == 0, result.stderr
    seq, capture_id = result.stdout.removesuffix(": captured\n").split()
    row = IndexReader(running.data_dir).get(capture_id)
    assert row["trigger"] == "manual" and seq == f"#{row['seq']}"


def test_known_and_unknown_ids_are_each_named_and_the_status_is_1(running):
    unknown_id = "0123456789abcdef0123456789abcdef"
    result = running.command("protect", "#999999", "4", unknown_id)
    assert result.returncode == 1
    assert result.stdout.splitlines() == [
        "#999999: no such capture",
        f"#4 {IndexReader(running.data_dir).by_seq(4)['id']}: protected",
        f"{unknown_id}: no such capture",
    ]
    assert protected(running.data_dir)[4] == 1


def test_the_socket_is_the_appliance_users_alone_and_no_check_takes_it_for_a_stray(running):
    st = (running.data_dir / SOCKET_NAME).lstat()
    assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600
    assert st.st_uid == os.getuid()
    assert unsafe_layout(running.data_dir) == []


@pytest.mark.parametrize("ref", ["xyz", "#0", "#3a", "0123456789abcdef0123456789abcde", "#-1"])
def test_a_malformed_id_is_refused_with_2_before_anything_is_done(running, ref):
    result = running.command("protect", "1", ref)
    assert result.returncode == 2
    assert f"not a capture: {ref!r} (give its id, 32 hex characters, or its number" in result.stderr
    assert result.stdout == ""


@pytest.mark.parametrize(
    "args",
    [("protect", "3"), ("unprotect", "#3"), ("capture",), ("cleanup",), ("clock", "--trust"),
     ("export", "camtrap-dp", "out")],
)  # fmt: skip
def test_in_the_wrong_folder_a_command_names_the_folder_searched_and_creates_nothing(tmp_path, args):
    config = tmp_path / "appliance.toml"
    config.write_text("")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    result = appliance(*args, "--config", config, cwd=elsewhere)
    assert result.returncode == 2
    assert result.stderr.startswith(
        f"appliance: {args[0]}: no capture store in {elsewhere / 'appliance-data'} (no captures.db there; "
        "data_dir is not set, so appliance-data in the current folder): give the appliance's data "
        f"directory with --data-dir DIR (the installed service's is {SERVICE_DATA_DIR}), or set "
        f"data_dir in {config}; nothing was created"
    ), result.stderr
    assert list(elsewhere.iterdir()) == []
    given = appliance(*args, "--config", config, "--data-dir", tmp_path / "nothing-here", cwd=elsewhere)
    assert given.returncode == 2
    searched = tmp_path / "nothing-here"
    assert f"no capture store in {searched} (no captures.db there; the folder given" in given.stderr
    assert sorted(tmp_path.iterdir()) == [config, elsewhere]


def test_the_hint_names_the_installed_services_data_directory():
    unit = (Path(__file__).parents[1] / "systemd" / "appliance.service").read_text()
    assert f"--data-dir {SERVICE_DATA_DIR}\n" in unit


def test_a_killed_appliances_socket_neither_stops_the_next_start_nor_confuses_the_commands(
    tmp_path, run_config
):
    run = Running(tmp_path / "data", run_config, tmp_path / "run.log")
    wait_for_captures(run.url, 3)
    assert run.stop(signal.SIGKILL) == -signal.SIGKILL
    assert stat.S_ISSOCK((run.data_dir / SOCKET_NAME).lstat().st_mode)  # left behind

    # Not running: nobody listens on the socket, and the command changes the store itself.
    result = run.command("protect", "#2")
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"#2 {IndexReader(run.data_dir).by_seq(2)['id']}: protected\n"
    assert protected(run.data_dir)[2] == 1
    capture = run.command("capture")
    assert capture.returncode == 2
    assert capture.stderr == (
        f"appliance: capture: no appliance answers on {run.data_dir / SOCKET_NAME}: a test shot needs "
        "the running appliance and its camera; start it (sudo systemctl start appliance, or appliance "
        f"run --data-dir {run.data_dir})\n"
    )
    check = run.command("check", "--simulate")
    assert SOCKET_NAME not in check.stdout and "unknown" not in check.stdout, check.stdout

    again = Running(run.data_dir, run_config, tmp_path / "run.log")
    try:
        result = again.command("unprotect", "2")
        assert result.returncode == 0, result.stderr
        assert protected(run.data_dir)[2] == 0
    finally:
        assert again.stop() == 0, (tmp_path / "run.log").read_text()
    assert not (run.data_dir / SOCKET_NAME).exists()


def test_an_appliance_that_cannot_make_its_socket_runs_on_and_the_commands_say_it_does_not_answer(
    tmp_path, run_config
):
    data_dir = tmp_path / "data"
    (data_dir / SOCKET_NAME).mkdir(parents=True)  # something else has the socket's name
    run = Running(data_dir, run_config, tmp_path / "run.log")
    try:
        wait_for_captures(run.url, 2)
        result = run.command("protect", "1")
        assert result.returncode == 1
        assert result.stderr == (
            f"appliance: protect: {data_dir} is in use by process {run.process.pid}, which does not "
            f"answer on {data_dir / SOCKET_NAME}: an appliance starting or stopping (try again in a "
            "moment), one running without its control channel (its log says why) or of an older "
            "version, or another command; nothing done\n"
        )
        assert protected(data_dir)[1] == 0
        time.sleep(0.5)
        assert run.process.poll() is None
    finally:
        assert run.stop() == 0
    log = (tmp_path / "run.log").read_text()
    assert f"control channel off ({data_dir / SOCKET_NAME} is not a socket; move it away)" in log
    assert (data_dir / SOCKET_NAME).is_dir()  # left alone
