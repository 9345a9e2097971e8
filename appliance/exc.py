"""The appliance's exceptions: one root, each subclass also inheriting the matching builtin."""


class ApplianceError(Exception):
    """Base class for every error raised by :mod:`appliance`."""


class ConfigError(ApplianceError, ValueError):
    """A config file or command-line value is invalid.  The message names the file and the key."""


class StoreError(ApplianceError, OSError):
    """The capture store could not write or read a capture."""


class ExportError(ApplianceError, ValueError):
    """An export cannot be made as asked: settings it needs are missing, or the output folder is
    not empty.  Nothing has been written."""
