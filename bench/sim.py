"""Closed-loop success against training steps and CEM samples: `sim eval` over one run's checkpoints."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from common.errors import UserError
from sim.config import SimEvalConfig, SimTask
from sim.evaluate import policy_names, run_sim_eval
from sim.report import summary_cells
from train.config import CEMConfig

from .config import SimBench, counts
from .report import Section, table

log = logging.getLogger("bench")


def _row(label: str, samples: str, m: dict) -> list:
    cells = summary_cells(m)
    return [label, samples, cells[0], f"**{cells[1]}**", *cells[2:]]


def _energy(bench: SimBench) -> str:
    """The CEM energy in words: the paper's (features after the last action) or what differs."""
    frames = "every planned frame's" if bench.energy == "all" else "the last frame's"
    return f"{frames} features" + (f" + {bench.state_weight:g} x the state's" if bench.state_weight else "")


def run(bench: SimBench, on_progress: Callable[[int, int], None] | None = None) -> Section:
    """The largest sample count on every checkpoint (baselines with the last), then each count on the last;
    `on_progress(episodes done, episodes in all)` after each closed-loop episode."""
    if not Path(bench.run).is_dir():
        raise UserError(f"--run {bench.run} is not a training run folder")
    checkpoints = sorted(Path(bench.run).glob("step_*.pt"))
    if not checkpoints:
        raise UserError(f"{bench.run} holds no step_*.pt checkpoints (train with --ckpt-every)")
    sample_counts, t = counts(bench.samples, "--samples"), bench.sim
    tag = "".join(name for name, differs in (  # what differs from the defaults (the paper's) names the section
        (f"-energy-{bench.energy}", bench.energy != CEMConfig.energy),
        (f"-state{bench.state_weight:g}", bench.state_weight != CEMConfig.state_weight),
        (f"-seed{t.task_seed}", t.task_seed != SimTask.task_seed)) if differs)
    out = Path(bench.run) / f"sim-bench-{t.env}-{t.task}{tag}"
    runs = [(c, sample_counts[-1]) for c in checkpoints] + [(checkpoints[-1], s) for s in sample_counts[:-1]]
    rows, results, baselines = [], {}, []
    cem = CEMConfig(iterations=bench.iterations, energy=bench.energy, state_weight=bench.state_weight)
    # every policy runs beside the last checkpoint; building its settings checks them before any evaluation
    policies = len(policy_names(SimEvalConfig(checkpoint=checkpoints[-1], sim=t, cem=cem)))
    total, done = t.episodes * (len(runs) - 1 + policies), [0]

    def tick(*_) -> None:
        done[0] += 1
        if on_progress:
            on_progress(done[0], total)

    for i, (ckpt, samples) in enumerate(runs):
        last = ckpt == checkpoints[-1]
        beside = last and samples == sample_counts[-1]  # the baselines and the oracle run once, beside the final model
        cfg = SimEvalConfig(checkpoint=ckpt, out=out / f"{ckpt.stem}-s{samples}", videos=3 if last else 0,
                            baselines=beside, cem=replace(cem, samples=samples, elites=min(10, samples)),
                            sim=t if beside else replace(t, oracle=False, state_oracle=False))
        log.info("sim eval %d/%d: %s, %d samples", i + 1, len(runs), ckpt.name, samples)
        report = run_sim_eval(cfg, on_episode=tick).report
        step = int(ckpt.stem.split("_")[1])
        results[f"{ckpt.stem}_s{samples}"] = {k: v for k, v in report["policies"]["model"].items()
                                             if k != "per_episode"}
        rows.append(_row(f"model, step {step}", f"{samples} x {bench.iterations}", report["policies"]["model"]))
        if beside:
            baselines = [_row(name, f"{samples} x {bench.iterations}" if name == "oracle" else "-", m)
                         for name, m in report["policies"].items() if name != "model"]
    rows += baselines
    body = (f"`sim eval --env {t.env} --task {t.task}` on the checkpoints of `{bench.run}`: {t.episodes} episodes "
            f"(task seed {t.task_seed}), budget {t.budget} control steps, horizon {t.horizon} x frame skip "
            f"{report['frame_skip']}, energy {_energy(bench)}, success within {report['tolerance']:g} "
            f"{report['unit']} of the goal; the baselines"
            f"{' and the oracle (CEM with the simulator as the world model)' if t.oracle else ''} run the "
            f"same starts and goals. Reports, grids and videos in `{out}`.\n\n"
            + table(["policy", "CEM samples x iterations", "successes", "rate", "95% CI (Wilson)",
                     f"final distance (median, {report['unit']})", "steps to first within tolerance (median)",
                     "s per plan"], rows))
    return Section(f"sim-{t.env}-{t.task}{tag}", f"Closed loop: {t.task} in {t.env}"
                   + (f" ({_energy(bench)}, task seed {t.task_seed})" if tag else ""), body, results)
