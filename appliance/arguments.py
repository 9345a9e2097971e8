"""The ``appliance`` command line: what each command takes (:func:`parser`), how a mistake in it
is told (one line, :class:`Parser`), and each command's exit statuses (:data:`EXIT_STATUS`, the
end of its ``--help``).  :mod:`appliance.cli` runs what it parses."""

import argparse
import datetime
import math
from pathlib import Path

from appliance import __version__
from appliance import config as config_module
from appliance.export import MEDIA_MODES, parse_time
from appliance.store import CAPTURE_ID, TRIGGERS

# protect's and unprotect's exit statuses (through the running appliance, or on the store directly).
_MARK_STATUS = (
    "0 every capture is marked; 1 some are not (an unknown id, or the appliance could not do it now: the "
    "others are marked), or a process holds the store and no appliance answers on its control socket; "
    "2 refused: a bad id, a bad config or command line, no capture store in the data directory, or a "
    "control socket that refuses this user."
)
# The exit statuses of each command, the end of its --help: a new command adds its line here.
EXIT_STATUS = {
    "appliance": "0 ok; 1 warnings, done in part, or a failure of the machine; 2 refused: a bad config "
    "or command line, or an argument that is not what it must be. Each command's --help says more.",
    "run": "0 after a clean stop (SIGTERM, SIGINT, --duration-s); 1 when the machine fails it: no camera, "
    "GPIO unavailable, the data disk unusable or not mounted, the port of the status page in use, the "
    "capture store not closed cleanly, a camera that keeps failing (systemd restarts it); 2 refused: a "
    "bad config or command line, a data directory that is a file, a replay folder without a photo "
    "(systemd does not restart it).",
    "check": "0 every check is ok or only a note (in simulation an unsynchronised clock is a note); 1 a "
    "check warns: something was repaired, or needs a look; 2 a check is fatal, or the config or command "
    "line is bad.",
    "cleanup": "0 done (with --dry-run, planned); 1 it failed: the appliance runs (the store's lock), or "
    "the disk failed; 2 refused: a bad config or command line, or no capture store in the data directory.",
    "clock": "0 the clock is trusted (with --trust: trusted from now on); 1 it is not (with --trust: the "
    "kernel does not say it is synchronised, or the appliance runs); 2 a bad config or command line.",
    "protect": _MARK_STATUS,
    "unprotect": _MARK_STATUS,
    "capture": "0 the test shot was stored; 1 it was not (the camera failed, capturing is paused for space, "
    "the appliance was busy); 2 refused: no appliance runs on the data directory (a test shot needs it), "
    "its control socket refuses this user, a bad config or command line, or no capture store there.",
    "bench": "0 measured, whatever the verdicts; 1 the benchmark itself failed; 2 refused: a bad command "
    "line, a --photo that is not a JPEG, a --data-dir that cannot be a folder.",
    "config": "0 the defaults printed, or every file is ok; 2 a file is bad, or a bad command line.",
    "export": "that of its format's command (appliance export camtrap-dp --help); 2 for a bad command line.",
    "export camtrap-dp": "0 written; 1 writing failed; 2 refused: a bad config or command line, "
    "settings the export needs that are not set, an output that is a file or a folder that is not empty.",
    "offload": "0 every capture is on the stick, checked, and it is safe to remove (with --dry-run: a stick "
    "is there); 1 the copy ended early (the stick full, read-only, pulled out or failing, a file there "
    "of other content, an interrupt), or a process holds the store and no appliance answers; 2 "
    "refused: no stick to write (offload_usb_path not set, nothing mounted there, or without the "
    "label offload_usb_label), a bad config or command line, or no capture store in the data directory.",
    "fleet": "that of its action's command (appliance fleet merge --help); 2 for a bad command line.",
    "fleet merge": "0 merged; 1 it failed: the remote could not be read (unreachable, credentials refused, "
    "timed out), a photo is missing or differs from its SHA256SUMS, or writing failed; 2 refused: a bad "
    "command line, a source without deployment folders or an unknown remote, two folders holding one "
    "deployment or photo differently, --media link from a remote, an output that is a file or a folder "
    "that is not empty. Nothing is written unless it exits 0.",
    "mqtt": "that of its action's command (appliance mqtt forget --help); 2 for a bad command line.",
    "mqtt forget": "0 the trap is gone from the broker and Home Assistant; 1 the broker could not be "
    "reached, refused the connection or did not take the messages in time; 2 refused: a bad config or "
    "command line, or mqtt_host not set.",
    "import": "0 every file was looked at (skipped files included); 1 it stopped early (free space, the "
    "store, an interrupt); 2 refused: a bad config or command line, or DIR is not a folder.",
}
# A command without its own line in EXIT_STATUS (tests/test_cli_errors.py fails then) gets the rule.
_EXIT_RULE = EXIT_STATUS["appliance"]


class Parser(argparse.ArgumentParser):
    """argparse's parser, whose refusal of a command line is one line on standard error (exit
    status 2): ``appliance: run: argument --port: ... (see appliance run --help)``."""

    def error(self, message):
        command = self.prog.removeprefix("appliance").strip()
        self.exit(2, f"appliance: {command + ': ' if command else ''}{message} (see {self.prog} --help)\n")


def parser() -> argparse.ArgumentParser:
    """The ``appliance`` command line: every command, its options and its exit statuses."""
    parser = Parser(
        prog="appliance",
        description="An unattended camera trap: run it, check its data, clean up, keep photos, "
        "export and import them.",
    )
    parser.add_argument(
        "--version", action="version", version=f"appliance {__version__}", help="print the version and exit"
    )
    subcommands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run = subcommands.add_parser("run", help="run the appliance until stopped (SIGTERM, SIGINT)")
    check = subcommands.add_parser(
        "check", help="check the data directory and repair the index (stop the appliance first)"
    )
    cleanup = subcommands.add_parser(
        "cleanup", help="delete what the cleanup policy asks for now (stop the appliance first)"
    )
    cleanup.add_argument("--dry-run", action="store_true", help="only print what would be deleted")
    clock = subcommands.add_parser(
        "clock", help="say whether the wall clock is trusted, and why (runs beside the appliance)"
    )
    clock.add_argument(
        "--trust",
        action="store_true",
        help="the clock is right: trust it from now on, and mark photos stamped after now as of "
        "doubtful time (stop the appliance first)",
    )
    protect = subcommands.add_parser(
        "protect", help="keep captures from automatic cleanup (through the appliance when it runs)"
    )
    unprotect = subcommands.add_parser(
        "unprotect", help="let cleanup delete captures again (through the appliance when it runs)"
    )
    for command in (protect, unprotect):
        command.add_argument("ids", nargs="+", type=_capture_ref, metavar="ID",
                             help="the capture's id (32 hex characters) or its number as the pages "
                                  "show it (#3 or 3)")  # fmt: skip
    capture = subcommands.add_parser(
        "capture", help="take a test shot now (trigger manual) with the running appliance"
    )
    offload = subcommands.add_parser(
        "offload", help="copy the photos to the USB stick now, checked (through the appliance when it runs)"
    )
    offload.add_argument("--target", choices=["usb"], default="usb", help="where to copy to (default: usb)")
    offload.add_argument(
        "--dry-run", action="store_true", help="only say which stick and how much would be copied"
    )
    bench = subcommands.add_parser("bench", help="measure the capture path and store against baselines")
    bench.add_argument("--data-dir", metavar="DIR",
                       help="folder to measure in, created if missing; on the card, to measure the card "
                            "(default: the temporary folder)")  # fmt: skip
    bench.add_argument("--photo", metavar="FILE", help="the JPEG to capture (default: a synthetic 12 MP one)")
    bench.add_argument("--captures", type=int, default=10_000, metavar="N",
                       help="captures in the ingest run (default 10,000; at least 100)")  # fmt: skip
    bench.add_argument("--json", action="store_true", help="print one JSON object")
    bench.add_argument("--quick", action="store_true",
                       help="largest index 100,000 captures instead of 1,000,000, fewer start-ups, "
                            "deletions and recoveries: a check that the bench runs (CI), not the "
                            "figures of a full run")  # fmt: skip
    config = subcommands.add_parser("config", help="print the default config file, or check config files")
    action = config.add_mutually_exclusive_group(required=True)
    action.add_argument("--print-defaults", action="store_true", help="print every setting, commented")
    action.add_argument("--check", nargs="*", type=Path, metavar="FILE",
                        help="check FILE (default: the files the appliance would read)")  # fmt: skip
    exporting = subcommands.add_parser("export", help="export captures for other tools")
    formats = exporting.add_subparsers(dest="format", required=True)
    camtrap_dp = formats.add_parser(
        "camtrap-dp", help="write a Camtrap DP data package (runs beside the appliance; only reads)"
    )
    camtrap_dp.add_argument("outdir", type=Path, metavar="OUTDIR", help="new or empty folder to write")
    camtrap_dp.add_argument("--since", type=_iso_time, metavar="ISO",
                            help="first capture time included, e.g. 2026-05-01 or 2026-05-01T18:00+02:00 "
                                 "(no offset: UTC)")  # fmt: skip
    camtrap_dp.add_argument(
        "--until", type=_iso_time, metavar="ISO", help="capture time excluded (same forms)"
    )
    camtrap_dp.add_argument("--media", choices=MEDIA_MODES, default="copy",
                            help="copy the photos (default), hard-link them, or write none")  # fmt: skip
    fleet = subcommands.add_parser("fleet", help="work on the packages of many traps (runs on any computer)")
    fleet_actions = fleet.add_subparsers(dest="action", required=True)
    merge = fleet_actions.add_parser(
        "merge", help="merge the traps' offloaded deployment folders into one Camtrap DP package"
    )
    merge.add_argument(
        "source",
        metavar="REMOTE_OR_FOLDER",
        help="a folder holding the deployment folders (searched 3 levels deep, e.g. a folder "
        "of USB stick copies), or an rclone remote, name:path (e.g. fleet:camtrap-2026/)",
    )
    merge.add_argument("outdir", type=Path, metavar="OUTDIR", help="new or empty folder to write")
    merge.add_argument(
        "--since",
        type=_iso_time,
        metavar="ISO",
        help="first photo time included, e.g. 2026-05-01 or 2026-05-01T18:00+02:00 (no offset: UTC)",
    )
    merge.add_argument("--until", type=_iso_time, metavar="ISO", help="photo time excluded (same forms)")
    merge.add_argument(
        "--media",
        choices=MEDIA_MODES,
        default="copy",
        help="copy the photos, each checked against its SHA256SUMS (default), link to "
        "them (a local folder only), or write none (filePath then names the photo "
        "in the source)",
    )
    merge.add_argument("--rclone-config", metavar="PATH",
                       help="the rclone config file naming the remote (default: rclone's own, "
                            "~/.config/rclone/rclone.conf)")  # fmt: skip
    mqtt = subcommands.add_parser("mqtt", help="manage the trap's presence on the MQTT broker")
    mqtt_actions = mqtt.add_subparsers(dest="action", required=True)
    forget = mqtt_actions.add_parser(
        "forget",
        help="remove the trap from Home Assistant and the broker: empty retained discovery configs, "
        "state, thumbnail and availability (stop the appliance first, or it announces itself again)",
    )
    importing = subcommands.add_parser(
        "import",
        help="index a folder of photos from an earlier unit or another camera (stop the appliance first)",
    )
    importing.add_argument("folder", type=Path, metavar="DIR", help="folder of photos (searched recursively)")
    importing.add_argument(
        "--trigger",
        choices=[t for t in TRIGGERS if t != "unknown"],
        default="import",
        help="trigger recorded for the photos (default: import; motion and button give Camtrap DP "
        "captureMethod activityDetection, timelapse timeLapse)",
    )
    importing.add_argument(
        "--utc-offset",
        type=_utc_offset,
        metavar="+HH:MM",
        help="zone of EXIF times that carry no offset, e.g. +01:00 or -05:30 (default: this machine's zone)",
    )
    importing.add_argument(
        "--dry-run", action="store_true", help="only print what would be imported (runs beside the appliance)"
    )
    default_files = " over ".join(map(str, reversed(config_module.DEFAULT_PATHS)))
    for command in (
        run,
        check,
        cleanup,
        clock,
        protect,
        unprotect,
        capture,
        offload,
        camtrap_dp,
        forget,
        importing,
    ):
        command.add_argument(
            "--config", type=Path, help=f"TOML config file (default: {default_files}, those that exist)"
        )
        command.add_argument("--data-dir", metavar="DIR", help="the data directory (overrides data_dir)")
        level = "INFO" if command is run else "WARNING"
        command.add_argument("--log-level", default=level, type=str.upper, metavar="LEVEL",
                             choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                             help=f"the least severe messages logged: DEBUG, INFO, WARNING or ERROR "
                                  f"(default: {level})")  # fmt: skip
    for command in (run, check):
        command.add_argument(
            "--simulate", action="store_true", default=None, help="no Pi: mock GPIO pins, a simulated camera"
        )
    run.add_argument("--replay", metavar="DIR",
                     help="simulate, replaying the JPEG photos in DIR (in name order, looping)")  # fmt: skip
    run.add_argument(
        "--trigger-interval-s", type=float, metavar="S", help="in simulation, seconds between triggers"
    )
    run.add_argument(
        "--duration-s", type=_seconds, metavar="S", help="stop cleanly after S seconds (0 or more)"
    )
    run.add_argument("--host", help="address the status page listens on (overrides web_host)")
    run.add_argument(
        "--port", type=int, help="TCP port of the status page, 0 for any free one (overrides web_port)"
    )
    for name, command, summary in commands(parser):
        if summary and not command.description:  # its line in the list of commands, as a sentence
            command.description = summary[:1].upper() + summary[1:] + "."
        command.epilog = f"Exit status: {EXIT_STATUS.get(name, _EXIT_RULE)}"
    return parser


def commands(parser: argparse.ArgumentParser, name: str = "appliance", summary: str = ""):
    """``(name, parser, summary)`` of ``parser`` and of each of its commands, depth first: the
    command's name without "appliance" ("export camtrap-dp"), and its one-line help."""
    yield name, parser, summary
    for action in parser._actions:  # argparse lists its commands nowhere public
        if isinstance(action, argparse._SubParsersAction):
            helps = {choice.dest: choice.help or "" for choice in action._choices_actions}
            for command, subparser in action.choices.items():
                full = f"{name} {command}".removeprefix("appliance ")
                yield from commands(subparser, full, helps.get(command, ""))


def _seconds(text: str) -> float:
    try:
        seconds = float(text)
    except ValueError:
        seconds = math.nan
    if not (math.isfinite(seconds) and seconds >= 0):
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds: give 0 or more, e.g. 30")
    return seconds


def _iso_time(text: str) -> datetime.datetime:
    try:
        return parse_time(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO 8601 date or time: {text!r}") from None


def _capture_ref(text: str) -> str | int:
    """A capture as given on the command line: its id (32 hex characters, returned in lower case)
    or its number, the ``seq`` the pages show as ``#3`` (``#3`` or ``3``, returned as an int)."""
    number = text.removeprefix("#")
    if number == text and CAPTURE_ID.fullmatch(text.lower()):
        return text.lower()
    if number.isascii() and number.isdigit() and 0 < int(number) < 2**63:
        return int(number)
    raise argparse.ArgumentTypeError(
        f"not a capture: {text!r} (give its id, 32 hex characters, or its number as the pages show "
        "it: #3 or 3)"
    )


def _utc_offset(text: str) -> datetime.tzinfo:
    try:
        return datetime.datetime.strptime(text, "%z").tzinfo
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a UTC offset like +01:00 or -0530: {text!r}") from None
