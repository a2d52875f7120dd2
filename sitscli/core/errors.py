"""User-facing errors.

Every error a user can cause is a `SitsError` subclass whose message says, in one line, what is
wrong and what to do about it. The CLI prints the message and exits with `exit_code`; `--debug`
shows the traceback instead.
"""


class SitsError(Exception):
    """Base class of every error caused by input, configuration or environment."""

    exit_code = 1


class InputNotFoundError(SitsError):
    """A path given on the command line does not exist."""

    exit_code = 2


class DataFormatError(SitsError):
    """A file exists but is not what it should be (corrupt raster, wrong columns, bad layout)."""


class DataContentError(SitsError):
    """Readable data whose content cannot be used (no valid date, labels outside the raster...)."""


class ConfigError(SitsError):
    """A bad option value, or options that contradict each other."""

    exit_code = 2


class CheckpointError(SitsError):
    """A run directory that is missing, tampered with, or does not fit the data."""


class OutputExistsError(SitsError):
    """An output path exists and --overwrite was not given."""

    exit_code = 3


class OutputLockedError(SitsError):
    """Another sits process is writing the same output (it holds the output's lock)."""

    exit_code = 4
