"""Stopping cleanly on SIGTERM / SIGUSR1 (and Ctrl-C), whenever the signal comes.

SLURM sends SIGTERM at the end of a job's wall time (and before a preemption), and
`#SBATCH --signal=B:USR1@300` asks for SIGUSR1 five minutes earlier. The CLI installs the handlers
first thing (`stop_handlers`), before anything is imported or written, so there is no moment at
which such a signal kills the process with its default action. What a signal does then depends
on where it lands:
- inside a `StopSignals` block (the training loop): it is only recorded; the loop polls
  `StopSignals.received` after every optimizer step, saves a resumable state and returns;
- anywhere else (start-up, `prepare`, the final test report, a map's blocks): it raises
  `StopRequested`, so the work unwinds: temporary outputs are removed, resumable ones (a run's
  last saved state, a map's finished blocks) are kept.
Either way the CLI prints one line and exits with INTERRUPTED_EXIT_CODE: run the same command
again (with --resume where the line says so). Ctrl-C (SIGINT) is handled alike, except that it
exits 130 when nothing resumable was kept, and a second Ctrl-C in a training loop stops at once.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator

# EX_TEMPFAIL from sysexits.h ("temporary failure, the user is invited to retry"): the CLI exits
# with it after a stop signal so that a requeue script can tell "run me again" from success (0)
# and from errors (1-4, 74).
INTERRUPTED_EXIT_CODE = 75

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class StopRequested(BaseException):
    """A stop signal that came outside a training loop. A BaseException, as KeyboardInterrupt, so
    that `except Exception` does not swallow it; not a KeyboardInterrupt, which Typer turns into a
    bare exit code before the CLI could say what was kept.

    Code that keeps something resumable while it unwinds says so with `keep(note)`.
    """

    def __init__(self, signal_name: str):
        super().__init__(signal_name)
        self.signal_name = signal_name
        self.note: str | None = None

    def keep(self, note: str) -> None:
        """Record that a resumable state was kept, and how to continue it (`note`, one clause)."""
        self.note = note

    @property
    def resumable(self) -> bool:
        return self.note is not None

    @property
    def exit_code(self) -> int:
        # 128 + SIGINT: the shell's code for Ctrl-C, kept when there is nothing to resume
        return INTERRUPTED_EXIT_CODE if self.resumable or self.signal_name != "SIGINT" else 130

    def line(self) -> str:
        """The CLI's one line."""
        return f"stopped by {self.signal_name}: " + (self.note or "nothing was kept; run the same command again")


INTERRUPTIONS = (KeyboardInterrupt, StopRequested)   # what `except` lists to keep partial work


_active: list["StopSignals"] = []   # innermost last
_raised: list[str] = []             # StopRequested already raised in this command: the work is unwinding


def _handle(signum: int, frame) -> None:
    name = signal.Signals(signum).name
    if _raised:
        return      # a repeated signal (torchrun forwards SIGTERM, then sends it again) must not break the clean-up
    if _active:
        stop = _active[-1]
        if not (signum == signal.SIGINT and stop.received == "SIGINT"):   # a second Ctrl-C stops at once
            stop.received = stop.received or name
            return
    _raised.append(name)
    raise StopRequested(name)


def _in_main_thread() -> bool:
    # Python only lets the main thread install handlers; elsewhere (a notebook worker thread)
    # the signals keep their default meaning.
    return threading.current_thread() is threading.main_thread()


def _handled_signals() -> tuple[int, ...]:
    # A SIGINT that is ignored stays ignored: a shell starts background jobs (`sits ... &`) so.
    ignored = signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    return STOP_SIGNALS if ignored else (*STOP_SIGNALS, signal.SIGINT)


@contextlib.contextmanager
def stop_handlers() -> Iterator[None]:
    """Install the handlers for the whole of a command (the CLI's first step); restore them after."""
    _raised.clear()
    previous = {sig: signal.signal(sig, _handle) for sig in _handled_signals()} if _in_main_thread() else {}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


class StopSignals:
    """While active, SIGTERM/SIGUSR1/SIGINT only record their name in `received` (a second Ctrl-C
    raises StopRequested at once). Installs the handlers itself when `stop_handlers` has not."""

    def __init__(self) -> None:
        self.received: str | None = None
        self._previous: dict[int, object] = {}

    def __enter__(self) -> "StopSignals":
        if _in_main_thread():
            for sig in _handled_signals():
                if signal.getsignal(sig) is not _handle:
                    self._previous[sig] = signal.signal(sig, _handle)
        if self._previous:          # outside the CLI's stop_handlers: a fresh start
            _raised.clear()
        _active.append(self)
        return self

    def __exit__(self, *exc) -> None:
        _active.remove(self)
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
