"""Stopping cleanly when a scheduler asks (SLURM's --signal=USR1@90, a preemption's SIGTERM, torchrun
passing either on): the command finishes the work in hand, saves it and exits with PREEMPTED_EXIT.
A second signal ends the process at once (the signals' default action).
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class StopRequest:
    """Set by the first stop signal; polled by the loop at the points where it can stop cleanly."""

    def __init__(self) -> None:
        self.signal: int | None = None

    @property
    def requested(self) -> bool:
        return self.signal is not None

    @property
    def name(self) -> str:
        return signal.Signals(self.signal).name if self.signal else "a stop signal"

    def _handle(self, signum: int, frame) -> None:
        self.signal = signum
        for s in STOP_SIGNALS:
            signal.signal(s, signal.SIG_DFL)


@contextmanager
def stop_signals() -> Iterator[StopRequest]:
    """Catch SIGTERM and SIGUSR1 while the block runs (handlers restored after it). Only the main thread may
    handle signals: called from another thread, the request is never set and the signals keep their action."""
    stop = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return
    previous = {s: signal.signal(s, stop._handle) for s in STOP_SIGNALS}
    try:
        yield stop
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def ignore_stop_signals(worker_id: int = 0) -> None:
    """DataLoader workers' `worker_init_fn`: SIGUSR1 sent to the whole process group (SLURM's --signal=USR1@90
    does) is for the main process, which stops its workers itself; they would die of it and fail the main one.
    SIGTERM keeps its action: torch stops its workers with it, and a worker deaf to it hangs the main one."""
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
