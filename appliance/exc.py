"""The appliance's exceptions: one root, each subclass also inheriting the matching builtin."""


class ApplianceError(Exception):
    """Base class for every error raised by :mod:`appliance`."""


class ConfigError(ApplianceError, ValueError):
    """A config file or command-line value is invalid.  The message names the file and the key."""


class StoreError(ApplianceError, OSError):
    """The capture store could not write or read a capture."""


class StoreInUse(StoreError):
    """Another process holds the capture store's lock (``.lock``): a running appliance, or a
    command writing to it.  ``holder``: what the lock file says of it (its process id), or
    ``"another process"``."""

    def __init__(self, message: str, holder: str):
        self.holder = holder
        super().__init__(message)


class UnknownCapture(StoreError, KeyError):
    """No capture in the index has the id ``capture_id`` (asked to protect or unprotect it, say).
    The web API answers it with a 404."""

    def __init__(self, capture_id: str):
        self.capture_id = capture_id
        super().__init__("no such capture")


class OffloadMismatch(StoreError, ValueError):
    """A copy of a capture was to be recorded as offloaded (verified on a target) with a SHA-256
    that is not the one the index holds for it: the copy is not the photo, and nothing was
    recorded.  ``capture_id``, ``target``: which; ``expected``, ``found``: the two SHA-256s (hex;
    ``expected`` None when the index holds none)."""

    def __init__(self, capture_id: str, target: str, expected: str | None, found: str):
        self.capture_id, self.target, self.expected, self.found = capture_id, target, expected, found
        super().__init__(
            f"the copy of capture {capture_id} on {target} has SHA-256 {found}, not the {expected} "
            "the index holds: not recorded as offloaded"
        )


class NotCaptured(ApplianceError, OSError):
    """A capture asked for (a test shot from the status page) was not stored: the camera failed,
    the store could not write it, or capturing is paused for space.  The status page says which."""


class ExportError(ApplianceError, ValueError):
    """An export cannot be made as asked: settings it needs are missing, or the output folder is
    not empty.  Nothing has been written."""


class ControlError(ApplianceError, ConnectionError):
    """The control socket (:mod:`appliance.control`) cannot be made, or the running appliance
    could not be asked through it, or did not say that it did what it was asked: the socket
    refused this user, the appliance was busy, or it stopped or broke off before answering.  The
    message says which."""


class Stopped(ApplianceError, OSError):
    """An action asked of the main loop (a :class:`~appliance.loop.Request`: a test shot,
    protecting a capture) came when the loop had stopped, or was still waiting when it stopped:
    nothing was done.  The web API and the control socket answer it with a 503."""


class NoStick(ApplianceError, FileNotFoundError):
    """An offload was asked for and no stick can be written: ``offload_usb_path`` is not set,
    nothing is mounted there, or what is has not the label ``offload_usb_label`` or is the data
    directory's own filesystem.  The message says which; the web API answers it with a 409."""


class RemoteTrouble(ApplianceError, ConnectionError):
    """rclone could not do what was asked of a remote (:mod:`appliance.rclone`): ``kind`` says
    what went wrong (one of :data:`appliance.rclone.KINDS`: ``"unreachable"``, ``"credentials
    refused"``, ``"no bucket"``, ``"timed out"``, ``"full"``...), the message is one line with
    the credentials replaced by ``***``."""

    def __init__(self, kind: str, message: str):
        self.kind = kind
        super().__init__(message)


class MergeRefused(ApplianceError, ValueError):
    """``appliance fleet merge`` cannot merge what it was given (:mod:`appliance.fleet`): no
    deployment folder there, a deployment, photo or event that two folders hold differently, an
    output folder that is not empty, links asked into a remote.  The message names the folders;
    nothing has been written."""


class MergeFailed(ApplianceError, OSError):
    """``appliance fleet merge`` could not copy the photos as they were offloaded: ``problems``,
    one line each, names every photo missing from its folder or differing from its folder's
    ``SHA256SUMS``.  Nothing has been written."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__(f"{len(problems)} photo(s) missing or not as their SHA256SUMS says")
