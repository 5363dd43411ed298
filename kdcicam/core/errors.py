"""User-facing errors.

Anything a user can cause (a bad file, a bad option, an unknown run) raises a subclass of
:class:`KdcicamError` with a one-line message that names the file/line/key at fault. The CLI
prints that line (no traceback unless ``--debug``) and exits with :data:`EXIT_USER_ERROR`.
"""

from __future__ import annotations

EXIT_USER_ERROR = 2
EXIT_INTERNAL_ERROR = 1
EXIT_INTERRUPTED = 130


class KdcicamError(Exception):
    """An error caused by input; its message is shown to the user as one line."""


class DataError(KdcicamError):
    """A dataset folder or file is missing, malformed or inconsistent."""


class ConfigError(KdcicamError):
    """A configuration value, config file or registry cell is invalid."""


class StoreError(KdcicamError):
    """The run store cannot be opened, is from a newer version, or a run name is unknown."""


class RunError(KdcicamError):
    """A training or evaluation run cannot proceed (diverged, missing teacher, bad weights...)."""


class KdcicamWarning(UserWarning):
    """Something the user should know that does not stop the command (the CLI prints it as one line)."""


class StoreWarning(KdcicamWarning):
    """A damaged row of the run store was skipped."""
