"""Atomic outputs: nothing half-written is ever left under the final name."""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

from sitscli.core.errors import InputNotFoundError, OutputExistsError


def require_exists(path: str | os.PathLike, what: str = "input") -> Path:
    """Return `path` as a Path, or raise a one-line error naming what was expected there."""
    p = Path(path)
    if not p.exists():
        raise InputNotFoundError(f"{what} not found: {p} (check the path)")
    return p


def check_output(path: str | os.PathLike, overwrite: bool) -> Path:
    """Refuse to replace an existing output unless the user said so."""
    p = Path(path)
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
    return path.with_name(f".{path.name}.partial-{uuid.uuid4().hex[:8]}")


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
