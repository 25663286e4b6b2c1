"""Stopping cleanly when a scheduler asks (SLURM's --signal=USR1@90, a preemption's SIGTERM, torchrun
passing either on): the command finishes the work in hand, saves it and exits with PREEMPTED_EXIT.
A second signal ends the process at once (the signals' default action).

A stop signal sent to every process (SLURM's --signal, scancel, a Kubernetes pod's SIGTERM) reaches DataLoader
workers too. They serve their main process while it finishes its step or unit (`ignore_stop_signals`): the main
process says, in memory shared with the workers it forks, whether it is running, stopping or exiting.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)
RUNNING, STOPPING, EXITING = 0, 1, 2  # the main process's state, as its workers see it
WORKER_GRACE = 30.0  # seconds a worker serves on after a SIGTERM while its main process is stopping (SLURM kills all
# 30 s after the SIGTERM, KillWait)
MAIN_LAG = 2.0  # seconds a worker waits for its main process, running, to take the same signal (it may be in a long
# operation); a worker terminated alone (torch's way to end a worker that did not exit when told) dies then
_main: list = []  # [the shared state], made by the first stop_signals() in the main process
_termed: list[float] = []  # in a worker: when its first SIGTERM came


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
        _main[0].value = STOPPING
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
    if not _main:
        _main.append(multiprocessing.Value("b", RUNNING, lock=False))
    _main[0].value = RUNNING
    previous = {s: signal.signal(s, stop._handle) for s in STOP_SIGNALS}
    try:
        yield stop
    finally:
        _main[0].value = EXITING  # the work is done or saved: the workers may go
        for s, handler in previous.items():
            signal.signal(s, handler)


def ignore_stop_signals(worker_id: int = 0) -> None:
    """DataLoader workers' `worker_init_fn`: a stop signal sent to every process is for the main process, which
    finishes its step or unit, reading from its workers, and then stops them itself; workers dying of it would
    fail the main one. SIGUSR1 is ignored. SIGTERM, also torch's and multiprocessing's way of ending a worker, ends
    it once its main process is done (has left its `stop_signals` block), WORKER_GRACE seconds after that began
    stopping, or MAIN_LAG seconds after the signal if the main process did not take one."""
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _worker_signal)
    signal.signal(signal.SIGALRM, _worker_signal)


def _worker_signal(signum: int, frame) -> None:
    """SIGTERM, then SIGALRM every 0.1 s: end this worker when its main process no longer needs it."""
    if signum == signal.SIGTERM and not _termed:
        _termed.append(time.monotonic())
    waited = time.monotonic() - _termed[0]
    state = _main[0].value if _main else EXITING
    if state == EXITING or waited > (WORKER_GRACE if state == STOPPING else MAIN_LAG):
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)
    else:
        signal.setitimer(signal.ITIMER_REAL, 0.1)
