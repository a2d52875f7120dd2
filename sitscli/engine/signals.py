"""Graceful stop on SIGTERM / SIGUSR1: finish the current step, save, exit with a telling status.

SLURM sends SIGTERM at the end of a job's wall time (and before a preemption), and
`#SBATCH --signal=B:USR1@300` asks for SIGUSR1 five minutes earlier. Instead of dying mid-write,
the training loop polls `StopSignals.received` after every optimizer step.
"""

from __future__ import annotations

import signal
import threading

# EX_TEMPFAIL from sysexits.h ("temporary failure, the user is invited to retry"): the CLI exits
# with it after a graceful stop so that a requeue script can tell "resume me" from success (0) and
# from errors (1-3).
INTERRUPTED_EXIT_CODE = 75

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class StopSignals:
    """While active, SIGTERM/SIGUSR1 only record their name in `received` (main thread only)."""

    def __init__(self) -> None:
        self.received: str | None = None
        self._previous: dict[int, object] = {}

    def _handle(self, signum: int, frame) -> None:
        self.received = signal.Signals(signum).name

    def __enter__(self) -> "StopSignals":
        # Python only lets the main thread install handlers; elsewhere (a notebook worker thread)
        # the signals keep their default meaning.
        if threading.current_thread() is threading.main_thread():
            for sig in STOP_SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
