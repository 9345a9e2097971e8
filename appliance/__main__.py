"""``python -m appliance`` and the ``appliance`` command.

SIGTERM or SIGINT while the modules are still being imported (a second or so on a Pi) is
remembered until the command's own handlers are in place, and the command then stops at once with
status 0, as it does at any later moment; a SIGHUP then is ignored (the config is about to be
read).
"""

import signal
import sys


def main(argv: list[str] | None = None) -> int:
    """Import the command, then run it (see :func:`appliance.cli.main`); returns the exit status."""
    early: list[int] = []
    handlers = {signum: signal.signal(signum, lambda num, frame: early.append(num))
                for signum in (signal.SIGTERM, signal.SIGINT)}  # fmt: skip
    handlers[signal.SIGHUP] = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    from appliance.cli import main as command  # the imports that take a while

    return command(argv, early=early, handlers=handlers)


if __name__ == "__main__":
    sys.exit(main())
