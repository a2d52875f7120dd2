"""Outputs: atomic writes (nothing half-written under the final name) and exclusive output locks.

Locks: inside an `output_locks()` block (the CLI runs every command in one), `check_output` also
takes an exclusive lock on the output, so that a second process writing the same output fails at
once instead of mixing its files with the first one's. The lock is `.NAME.lock` beside the output
(`filelock`: flock(2), which the kernel drops when its process dies, so a killed run's lock is
taken over by the next one; where a filesystem has no flock, filelock's soft lock, which is taken
over when its local pid is dead). Who holds it (host, pid, start time, command) is written to the
companion file `.NAME.lock.json` for the error message of the run that is refused. Both files are
removed when the block ends, as are the folders made for the output if it was not written.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import shutil
import socket
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock, Timeout

from sitscli.core.errors import ConfigError, InputNotFoundError, OutputExistsError, OutputLockedError

# How long a second run waits for a lock before it is refused: long enough to cover the moment
# between a holder taking the lock and writing who it is, short enough to count as "at once".
LOCK_WAIT_S = 0.3


# URL schemes and the GDAL virtual file system that reads them by byte ranges (GDAL "Virtual File
# Systems": /vsicurl/ for HTTP(S), /vsis3/, /vsigs/, /vsiaz/ for object stores, credentials from the
# usual AWS_*/GOOGLE_*/AZURE_* variables).
REMOTE_SCHEMES = {"http://": "/vsicurl/http://", "https://": "/vsicurl/https://", "s3://": "/vsis3/",
                  "gs://": "/vsigs/", "az://": "/vsiaz/"}


def is_remote(path: str | os.PathLike) -> bool:
    """Whether `path` is a URL or a GDAL virtual path (`/vsicurl/...`, `/vsis3/...`) rather than a local file."""
    text = os.fspath(path)
    return text.startswith("/vsi") or text.startswith(tuple(REMOTE_SCHEMES))


def gdal_path(path: str | os.PathLike) -> str:
    """The name GDAL opens: 's3://bucket/key' -> '/vsis3/bucket/key', 'https://h/x' -> '/vsicurl/https://h/x';
    GDAL virtual paths and local paths are returned as they are."""
    text = os.fspath(path)
    for scheme, prefix in REMOTE_SCHEMES.items():
        if text.startswith(scheme):
            return prefix + text[len(scheme):]
    return text


def require_input(path: str | os.PathLike, what: str = "input") -> Path | str:
    """A local input as an existing Path, or a remote one (URL, GDAL virtual path) as the string GDAL opens.

    Remote inputs are not checked here (that is a network request): opening them says what failed.
    Never pass a URL through `Path()` first: it folds 'https://' into 'https:/'.
    """
    if is_remote(path):
        return gdal_path(path)
    return require_exists(path, what)


def require_exists(path: str | os.PathLike, what: str = "input") -> Path:
    """Return `path` as a Path, or raise a one-line error naming what was expected there."""
    p = Path(path)
    if not p.exists():
        raise InputNotFoundError(f"{what} not found: {p} (check the path)")
    return p


def check_output(path: str | os.PathLike, overwrite: bool) -> Path:
    """Lock the output (inside `output_locks()`), then refuse to replace it unless the user said so."""
    p = Path(path)
    lock_output(p)
    if p.exists() and not overwrite:
        raise OutputExistsError(f"output exists: {p} (pass --overwrite to replace it, or choose another path)")
    return p


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink(missing_ok=True)


def temporary_sibling(path: Path) -> Path:
    """A unique hidden name next to `path`, on the same filesystem so rename is atomic."""
    return path.with_name(f".{path.name}{_PARTIAL}{uuid.uuid4().hex[:8]}")


_PARTIAL = ".partial-"


def _is_temporary(path: Path) -> bool:
    """Whether `path` is a name made by `temporary_sibling`."""
    return path.name.startswith(".") and _PARTIAL in path.name


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary path to write to; on success it replaces `path`, on error it is removed.

    Works for files and directories alike (a zarr store, a run directory).
    """
    final = check_output(path, overwrite)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_sibling(final)
    try:
        yield tmp
    except BaseException:
        _remove(tmp)
        raise
    if final.exists():
        _remove(final)
    os.replace(tmp, final)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Replace `path` by `text` in one step (a kill or a full disk leaves the old file, never half of one)."""
    final = Path(path)
    tmp = temporary_sibling(final)
    try:
        tmp.write_text(text)
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


# ------------------------------------------------------------------------------- output locks

@dataclass
class _HeldLock:
    output: Path                 # absolute
    lock: FileLock
    made_folders: list[Path]     # folders made for the output, deepest first


_scopes: list[list[_HeldLock]] = []


def lock_file(output: Path) -> Path:
    return output.with_name(f".{output.name}.lock")


def holder_file(output: Path) -> Path:
    return output.with_name(f".{output.name}.lock.json")


@contextlib.contextmanager
def output_locks() -> Iterator[None]:
    """Outputs checked with `check_output` (or `lock_output`) in this block stay locked until it ends."""
    held: list[_HeldLock] = []
    _scopes.append(held)
    try:
        yield
    finally:
        _scopes.pop()                     # blocks nest: the innermost ends first
        for entry in reversed(held):
            _release(entry)


def lock_output(path: str | os.PathLike) -> None:
    """Make the output's folder and take the output's exclusive lock for the current `output_locks()` block.

    Takes no lock outside such a block or on the other ranks of a torchrun job (rank 0 writes), and
    does nothing for a path inside an output this process already holds (a run directory's files).
    Raises OutputLockedError naming the holder when another process has it.
    """
    output = Path(os.path.abspath(path))
    if any(h.output == output or h.output in output.parents for scope in _scopes for h in scope):
        return
    if any(_is_temporary(folder) for folder in output.parents):
        return  # a file of an output being built under its temporary name: no other run can see it
    made = make_folder(output.parent, output)
    if not _scopes or int(os.environ.get("RANK", "0")) != 0:
        return
    lock = FileLock(str(lock_file(output)), timeout=LOCK_WAIT_S)
    try:
        lock.acquire()
    except Timeout:
        _remove_empty(made)
        raise OutputLockedError(f"{output} is being written by another sits run ({describe_holder(output)}): "
                                f"wait for it to end, or choose another output") from None
    except BaseException:
        _remove_empty(made)
        raise
    entry = _HeldLock(output, lock, made)
    _scopes[-1].append(entry)
    started = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    write_text_atomic(holder_file(output), json.dumps({"host": socket.gethostname(), "pid": os.getpid(),
                                                       "started": started, "command": " ".join(sys.argv)}))


def describe_holder(output: Path) -> str:
    """'host vm1, pid 4242, started 2025-06-01T10:00:00+02:00' from the lock's companion file."""
    try:
        holder = json.loads(holder_file(output).read_text())
        return f"host {holder['host']}, pid {holder['pid']}, started {holder['started']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "holder unknown: it is starting or ending"


def make_folder(folder: Path, output: Path) -> list[Path]:
    """Make `folder` and its missing parents -> the folders made, deepest first.

    A regular file where a folder should be is a one-line ConfigError (mkdir's own error says
    only "File exists" or "Not a directory").
    """
    missing = []
    existing = folder
    while not existing.exists():
        missing.append(existing)
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(f"cannot write {output}: {existing} is a file, not a folder (choose another output path)")
    made: list[Path] = []
    try:
        for d in reversed(missing):
            with contextlib.suppress(FileExistsError):   # another rank or process made it meanwhile
                d.mkdir()
                made.insert(0, d)
    except BaseException:
        _remove_empty(made)
        raise
    return made


def _remove_empty(folders: list[Path]) -> None:
    for d in folders:                     # deepest first
        with contextlib.suppress(OSError):
            d.rmdir()                     # fails (and is left) when something was written into it


def _release(entry: _HeldLock) -> None:
    # The lock file is removed while still held: a process that opened it meanwhile finds it
    # unlinked once it gets the lock, and takes a new one (filelock checks the link count).
    for companion in (holder_file(entry.output), lock_file(entry.output)):
        with contextlib.suppress(OSError):
            companion.unlink(missing_ok=True)
    entry.lock.release()
    if not entry.output.exists():
        _remove_empty(entry.made_folders)
