"""``python -m appliance`` and the ``appliance`` command.

SIGTERM or SIGINT while the modules are still being imported (a second or so on a Pi) is
remembered, and the command then stops at once with status 0, as it does at any later moment; a
SIGHUP then is ignored (the config is about to be read).
"""

import signal
import sys


def main(argv: list[str] | None = None) -> int:
    """Import the command, then run it (see :func:`appliance.cli.main`); returns the exit status."""
    early: list[int] = []
    previous = {signum: signal.signal(signum, lambda num, frame: early.append(num))
                for signum in (signal.SIGTERM, signal.SIGINT)}  # fmt: skip
    previous[signal.SIGHUP] = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    from appliance.cli import main as command  # the imports that take a while

    for signum, handler in previous.items():
        signal.signal(signum, handler)
    if early:
        print(f"appliance: stopped by {signal.strsignal(early[0])} while starting", file=sys.stderr)
        return 0
    return command(argv)


if __name__ == "__main__":
    sys.exit(main())
