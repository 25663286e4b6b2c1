"""Run `cli.py ARGS` with a real signal sent to this process part-way (for the preemption tests):

    python tests/signal_at.py SIGNAL COUNT RANK ARGS...

train: after optimiser step COUNT on rank RANK; extract: after the COUNT-th episode written. SIGNAL is a
name (SIGTERM, SIGUSR1), group:NAME (to this process's group, DataLoader workers included, as SLURM does; start
it in a session of its own), TWICE: two SIGTERMs back to back, or EXIT: the process dies at once (a crashed rank).
"""

import os
import signal
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import cli  # noqa: E402
import extract.job  # noqa: E402
import train.loop  # noqa: E402

name, count, rank, args = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4:]


def fire() -> None:
    if name == "EXIT":
        os._exit(9)
    if name.startswith("group:"):
        os.killpg(0, signal.Signals[name.removeprefix("group:")])
        return
    for s in [signal.SIGTERM] * 2 if name == "TWICE" else [signal.Signals[name]]:
        os.kill(os.getpid(), s)


if args[0] == "train":
    after_step = train.loop._after_step

    def _after_step(run, row):
        val = after_step(run, row)
        if row["step"] == count and run.rank == rank:
            fire()
        return val

    train.loop._after_step = _after_step
else:
    write, written = extract.job._Pipeline._write, []

    def _write(self, order, ep):
        write(self, order, ep)
        written.append(order)
        if len(written) == count:
            fire()
            time.sleep(1)  # the writer thread holds on, so the main thread, held back by the writes queued
            # behind this one, takes the signal before it runs out of work

    extract.job._Pipeline._write = _write
sys.argv = ["cli.py", *args]
cli.main()
