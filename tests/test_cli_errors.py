"""The mistakes a new user makes with the ``appliance`` command, made through the real command in a
subprocess: each is refused with one line on standard error that starts ``appliance:``, says what
is wrong and what to do, and exits with the status of the rule (0 ok; 1 warnings, done in part, or
a failure of the machine; 2 refused), before anything is opened; and ``--help``, ``--version``."""

import os
import re
import socket
import subprocess
import sys

import pytest

import appliance
from appliance import arguments, bench, cli
from appliance.store import CaptureStore
from hw.clock import clock_synced


def appliance_command(*args, timeout=60) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "appliance", *map(str, args)], capture_output=True, text=True, timeout=timeout
    )


def refusal(result: subprocess.CompletedProcess, status: int = 2) -> str:
    """The one line ``result`` said on standard error (after any log lines), having exited with
    ``status``."""
    assert result.returncode == status, (result.returncode, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.startswith("appliance: ")]
    assert len(lines) == 1, result.stderr
    return lines[0]


# --- Mistakes in what run is given --------------------------------------------------------------


@pytest.mark.parametrize("contents", [[], ["notes.txt"], ["notes.txt", "truncated.jpg"]])
def test_a_replay_folder_without_a_decodable_jpeg_is_refused_before_anything_is_opened(
    tmp_path, photo, run_config, contents
):
    replay = tmp_path / "replay"
    replay.mkdir()
    for name in contents:
        (replay / name).write_bytes(photo[:1000] if name.endswith(".jpg") else b"no photo here")
    result = appliance_command("run", "--replay", replay, "--data-dir", tmp_path / "data", "--port", "0",
                               "--config", run_config, "--duration-s", "5")  # fmt: skip
    line = refusal(result)
    assert "simulate_replay_dir" in line and "holds no JPEG that can be decoded" in line
    assert f"({len(contents)} file" in line and "add JPEG photos to it, or leave it unset" in line
    assert not (tmp_path / "data").exists()  # not a synthetic scene instead


def test_a_missing_replay_folder_is_refused(tmp_path, run_config):
    result = appliance_command("run", "--replay", tmp_path / "nowhere", "--data-dir", tmp_path / "data",
                               "--config", run_config)  # fmt: skip
    assert f"'{tmp_path / 'nowhere'}' does not exist: name a folder of JPEG photos" in refusal(result)


@pytest.mark.parametrize(
    "command",
    [
        ["run", "--simulate", "--port", "0", "--duration-s", "5"],
        ["check", "--simulate"],
        ["cleanup"],
        ["clock"],
        ["import", "--dry-run", "."],
    ],
)
def test_a_data_dir_that_is_a_file_is_refused_by_every_command(tmp_path, run_config, command):
    (tmp_path / "notes").write_text("mine")
    result = appliance_command(*command, "--data-dir", tmp_path / "notes", "--config", run_config)
    line = refusal(result)
    assert f"data_dir: '{tmp_path / 'notes'}' is a file, not a folder: name a folder" in line
    assert (tmp_path / "notes").read_text() == "mine"


def test_a_data_dir_inside_a_file_is_refused(tmp_path, run_config):
    (tmp_path / "notes").write_text("mine")
    result = appliance_command("check", "--simulate", "--data-dir", tmp_path / "notes" / "data",
                               "--config", run_config)  # fmt: skip
    assert f"is inside '{tmp_path / 'notes'}', which is a file, not a folder" in refusal(result)


def test_a_port_in_use_is_found_before_the_store_or_the_camera_is_opened(tmp_path, run_config):
    with socket.create_server(("127.0.0.1", 0)) as held:
        port = held.getsockname()[1]
        result = appliance_command("run", "--simulate", "--host", "127.0.0.1", "--port", port,
                                   "--data-dir", tmp_path / "data", "--config", run_config,
                                   "--duration-s", "5")  # fmt: skip
    # A failure of the machine, not of what was given: another program may let the port go, and
    # systemd starts the appliance again (RestartPreventExitStatus=2 only).
    line = refusal(result, status=1)
    assert line.startswith(
        f"appliance: the status page cannot listen on 127.0.0.1:{port}: the port is in use"
    )
    assert f"by process {os.getpid()} " in line  # this test holds it
    assert "--port or web_port" in line
    assert not (tmp_path / "data").exists()  # no store opened, not even the data directory made
    assert "Status page" not in result.stdout and "preflight" not in result.stderr


def test_an_address_not_of_this_machine_names_web_host(tmp_path, run_config):
    result = appliance_command("run", "--simulate", "--host", "192.0.2.1", "--port", "0",
                               "--data-dir", tmp_path / "data", "--config", run_config)  # fmt: skip
    line = refusal(result, status=1)
    assert "192.0.2.1:0: that is no address of this machine: set web_host (--host)" in line
    assert not (tmp_path / "data").exists()


@pytest.mark.parametrize("seconds", ["-1", "nan", "inf", "soon"])
def test_a_duration_that_is_not_0_or_more_seconds_is_refused(tmp_path, seconds):
    result = appliance_command("run", "--simulate", "--duration-s", seconds, "--data-dir", tmp_path / "data")
    line = refusal(result)
    assert line == (
        f"appliance: run: argument --duration-s: '{seconds}' is not a number of seconds: give 0 or more, "
        "e.g. 30 (see appliance run --help)"
    )
    assert not (tmp_path / "data").exists()


def test_a_missing_config_file_is_named(tmp_path):
    result = appliance_command("run", "--simulate", "--config", tmp_path / "appliance.tml")
    assert refusal(result) == (
        f"appliance: config error: {tmp_path / 'appliance.tml'}: no such file: check the path (a TOML config "
        "file)"
    )


# --- Mistakes in what the other commands are given ---------------------------------------------------


def test_check_in_simulation_exits_0_when_the_clock_is_the_only_finding(tmp_path):
    result = appliance_command("check", "--simulate", "--data-dir", tmp_path / "data")
    assert result.returncode == 0, result.stdout + result.stderr
    if not clock_synced():  # as in most containers: a note, which needs no action
        assert re.search(r"^note\s+clock\s+not set.*nothing to do in simulation$", result.stdout, re.M)
    assert not re.search(r"^(warning|fatal) ", result.stdout, re.M), result.stdout


@pytest.mark.parametrize("command", [["cleanup"], ["clock", "--trust"]])
def test_a_store_held_by_another_process_is_one_line_saying_to_stop_it(tmp_path, command):
    store = CaptureStore(tmp_path / "data")  # held by this process, as by a running appliance
    try:
        result = appliance_command(*command, "--data-dir", tmp_path / "data")
    finally:
        store.close()
    assert refusal(result, 1) == (
        f"appliance: {command[0]}: {tmp_path / 'data'} is in use by process {os.getpid()}: stop it first "
        "(sudo systemctl stop appliance), then run this again"
    )


def test_export_to_a_file_is_refused_naming_a_folder(tmp_path):
    CaptureStore(tmp_path / "data").close()
    config = tmp_path / "appliance.toml"
    config.write_text(
        'latitude = 51.5\nlongitude = 4.7\ndata_license = "CC0-1.0"\nmedia_license = "CC-BY-4.0"\n'
    )
    (tmp_path / "package.zip").write_text("mine")
    result = appliance_command("export", "camtrap-dp", tmp_path / "package.zip",
                               "--data-dir", tmp_path / "data", "--config", config)  # fmt: skip
    assert refusal(result) == (
        f"appliance: export: {tmp_path / 'package.zip'}: is a file, not a folder: name a new or empty folder "
        "for the package"
    )
    assert (tmp_path / "package.zip").read_text() == "mine"


@pytest.mark.parametrize("made", [False, True])
def test_import_of_a_missing_folder_or_a_file_is_refused(tmp_path, made):
    folder = tmp_path / "photos"
    if made:
        folder.write_text("not a folder")
    result = appliance_command("import", folder, "--data-dir", tmp_path / "data")
    what = "is not a folder" if made else "no such folder"
    assert refusal(result) == f"appliance: import: {folder}: {what}: name the folder that holds the photos"
    assert not (tmp_path / "data").exists()


def test_bench_refuses_a_data_dir_that_cannot_be_a_folder(tmp_path):
    (tmp_path / "notes").write_text("mine")
    result = appliance_command("bench", "--data-dir", tmp_path / "notes" / "bench")
    assert refusal(result) == (
        f"appliance: bench: --data-dir {tmp_path / 'notes' / 'bench'}: cannot be made a folder (Not a "
        "directory): name a folder this user can write to"
    )


def test_bench_makes_its_data_dir_with_its_parents(tmp_path, monkeypatch, capsys):
    measured_in = []

    def measure(data_dir, photo, captures):  # the figures themselves are tests/test_bench.py's
        measured_in.append(data_dir)
        raise OSError("measured enough")

    monkeypatch.setattr(bench, "measure", measure)
    assert cli.main(["bench", "--data-dir", str(tmp_path / "new" / "bench"), "--captures", "100"]) == 1
    assert measured_in == [tmp_path / "new" / "bench"] and measured_in[0].is_dir()
    assert "appliance: bench: failed: measured enough" in capsys.readouterr().err


@pytest.mark.parametrize(
    "args, said",
    [
        ([], "appliance: the following arguments are required: COMMAND (see appliance --help)"),
        (["start"], "appliance: argument COMMAND: invalid choice: 'start'"),
        (["run", "--port", "eighty"], "appliance: run: argument --port: invalid int value: 'eighty'"),
        (["check", "--log-level", "loud"], "appliance: check: argument --log-level: invalid choice: 'LOUD'"),
        (
            ["export", "camtrap-dp"],
            "appliance: export camtrap-dp: the following arguments are required: OUTDIR",
        ),
    ],
)
def test_command_line_mistakes_are_one_line_naming_the_help(args, said):
    line = refusal(appliance_command(*args))
    assert line.startswith(said) and line.endswith(" --help)")


# --- --help and --version ----------------------------------------------------------------------------


def test_version_prints_the_version_of_the_status_page():
    result = appliance_command("--version")
    assert (result.returncode, result.stdout, result.stderr) == (
        0,
        f"appliance {appliance.__version__}\n",
        "",
    )


COMMANDS = [name.split() for name, _, _ in arguments.commands(arguments.parser())]


@pytest.mark.parametrize("command", COMMANDS[1:], ids=" ".join)
def test_every_command_has_its_own_exit_statuses(command):
    assert " ".join(command) in arguments.EXIT_STATUS


@pytest.mark.parametrize("command", [[], *COMMANDS[1:]], ids=lambda c: " ".join(["appliance", *c]))
def test_every_help_is_plain_text_ending_with_the_exit_statuses(command):
    result = appliance_command(*command, "--help")
    assert result.returncode == 0 and result.stderr == ""
    text = " ".join(result.stdout.split())
    name = " ".join(command) or "appliance"
    assert text.endswith(f"Exit status: {' '.join(arguments.EXIT_STATUS[name].split())}")
    assert text.count("Exit status: ") == 1 and re.search(r"Exit status: (0 |that of ).*; 2 ", text)
    assert "`" not in text and ":class:" not in text and ":func:" not in text
    if command:  # a description in whole sentences, above the options
        description = result.stdout.split("\n\n")[1]
        assert description[:1].isupper() and description.rstrip().endswith("."), description
