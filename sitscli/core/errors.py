"""User-facing errors.

Every error a user can cause is a `SitsError` subclass whose message says, in one line, what is
wrong and what to do about it. The CLI prints the message and exits with `exit_code`; `--debug`
shows the traceback instead. Errors of the operating system (a full disk, a read-only folder)
are not wrapped where they happen: the CLI turns any OSError into one line with
`os_error_line` and exits with OS_ERROR_EXIT_CODE, after the atomic writers removed what they had
begun.

Exit codes: 0 success, 1 error, 2 bad option or missing input, 3 output exists, 4 output locked by
another run, 74 operating-system error (EX_IOERR), 75 stopped by a signal: run the same command
again, with --resume where it says so (EX_TEMPFAIL), 130 Ctrl-C with nothing to resume.
"""

import errno


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


# EX_IOERR from sysexits.h ("an error occurred while doing I/O on some file").
OS_ERROR_EXIT_CODE = 74

_OS_ADVICE = {
    errno.ENOSPC: "free some space or write elsewhere, then run the command again",
    errno.EDQUOT: "free some space or write elsewhere, then run the command again",
    errno.EACCES: "write to a folder you may write to, or fix its permissions",
    errno.EPERM: "write to a folder you may write to, or fix its permissions",
    errno.EROFS: "write elsewhere",
    errno.ENOENT: "check the path",
    errno.ENOTDIR: "a part of the path is a file, not a folder: check the path",
    errno.EISDIR: "give a file, not a folder",
    errno.ENAMETOOLONG: "choose a shorter path",
    errno.EMFILE: "raise the limit (ulimit -n) or use fewer --num-workers",
    errno.EIO: "the disk or network filesystem failed: check it and run the command again",
}


def os_error_line(exc: OSError) -> str:
    """One line for an OSError: what failed, on which path, and what to do about it."""
    where = f" ({exc.filename})" if exc.filename else ""
    advice = _OS_ADVICE.get(exc.errno) if exc.errno is not None else None
    if advice is None:
        detail = (exc.strerror or str(exc) or type(exc).__name__).splitlines()[0]
        return f"{detail}{where}"
    return f"{exc.strerror or 'OS error'}{where}: {advice}"
