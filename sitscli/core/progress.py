"""Progress reporting: a rich bar on a terminal, plain periodic lines in batch logs (SLURM).

Library code calls `progress(total, description)` and `.advance(n)`; it never prints directly.
Messages go through `log()` to stderr so that stdout stays clean for `--json` output.
"""

from __future__ import annotations

import math
import os
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")

_quiet = False


def set_quiet(quiet: bool) -> None:
    global _quiet
    _quiet = quiet


def is_terminal() -> bool:
    return sys.stderr.isatty()


def log(message: str) -> None:
    """One line for the user, on stderr (rich markup is stripped when not on a terminal).

    Only rank 0 of a torchrun job speaks: the other ranks would repeat every line."""
    if _quiet or os.environ.get("RANK", "0") != "0":
        return
    if is_terminal():
        from rich.console import Console

        Console(stderr=True).print(message, highlight=False)
    else:
        from rich.text import Text

        print(Text.from_markup(message).plain, file=sys.stderr, flush=True)


class Progress:
    """A progress bar (terminal) or plain lines every `interval` seconds (logs).

    In logs a line comes at least every `interval` seconds even while one step runs for longer (a
    large map block, a slow epoch step): a background thread writes "still working" lines, so a
    batch job's log never looks hung. `interval=math.inf` writes no periodic line.
    """

    def __init__(self, total: int | None, description: str, interval: float = 30.0):
        self.total, self.description, self.interval = total, description, interval
        self.done = 0
        self.status: str | None = None
        self._start = self._last = time.monotonic()
        self._bar = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._heartbeat: threading.Thread | None = None
        if _quiet:
            return
        if is_terminal():
            from rich.progress import BarColumn, MofNCompleteColumn, Progress as RichProgress
            from rich.progress import TextColumn, TimeElapsedColumn, TimeRemainingColumn

            self._bar = RichProgress(
                TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                TimeElapsedColumn(), TimeRemainingColumn(), transient=True,
            )
            self._bar.start()
            self._task = self._bar.add_task(description, total=total)
        elif math.isfinite(interval):
            self._heartbeat = threading.Thread(target=self._beat, name="sits-progress", daemon=True)
            self._heartbeat.start()

    def advance(self, n: int = 1, status: str | None = None) -> None:
        with self._lock:
            self.done += n
            self.status = status
            if self._bar is not None:
                desc = f"{self.description} {status}" if status else self.description
                self._bar.update(self._task, advance=n, description=desc)
                return
            now = time.monotonic()
            if not _quiet and now - self._last >= self.interval:
                self._line(now, status)

    def _line(self, now: float, extra: str | None) -> None:
        """One plain progress line (the caller holds the lock)."""
        self._last = now
        of = f"/{self.total}" if self.total else ""
        tail = f" {extra}" if extra else ""
        print(f"{self.description}: {self.done}{of} ({now - self._start:.0f}s){tail}", file=sys.stderr, flush=True)

    def _beat(self) -> None:
        """Write a line whenever `interval` seconds pass without one, until `close`."""
        while True:
            with self._lock:
                due = self._last + self.interval
            if self._stop.wait(max(0.0, due - time.monotonic())):
                return
            with self._lock:
                now = time.monotonic()
                if now - self._last >= self.interval and not self._stop.is_set():
                    self._line(now, "still working" + (f", {self.status}" if self.status else ""))

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
        if self._heartbeat is not None:
            self._stop.set()
            self._heartbeat.join()
            self._heartbeat = None

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def track(items: Iterable[T], total: int | None, description: str) -> Iterator[T]:
    with Progress(total, description) as bar:
        for item in items:
            yield item
            bar.advance()
