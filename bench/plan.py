"""Planning speed: energy evaluations per second and seconds per CEM call."""

from __future__ import annotations

from dataclasses import replace

import torch

from common.device import pick_device
from train.checkpoint import RELEASED_META
from train.plan import Planner
from train.predictor import build_model

from .config import PlanBench
from .report import Section, table

FEATURES = {"ac_demo": (128, (8, 8)), "ac_vitg": (1408, (16, 16)), "ac_vitg_mini": (320, (8, 8))}  # dim, grid
HORIZON = 1


def run(bench: PlanBench) -> Section:
    """Weights are random: the speed does not depend on them."""
    dev = pick_device()
    cfg = bench.cem
    results, rows = {}, []
    for preset in bench.presets.split(","):
        dim, grid = FEATURES[preset]
        torch.manual_seed(0)
        model = build_model(dim, grid, preset).eval().to(dev)
        n = grid[0] * grid[1]
        z0, goal = torch.randn(n, dim, device=dev), torch.randn(n, dim, device=dev)
        state = torch.tensor([0.5, 0.0, 0.2, 3.14, 0.0, 0.0, 0.5], device=dev)
        Planner(model, RELEASED_META, replace(cfg, iterations=1), dev).plan(z0, state, goal, HORIZON)  # warm-up
        plan = Planner(model, RELEASED_META, cfg, dev).plan(z0, state, goal, HORIZON)
        rate = plan.evaluations / plan.seconds
        results[preset] = {"seconds_per_plan": plan.seconds, "evaluations_s": rate}
        rows.append([preset, f"{dim} x {n}", f"{cfg.samples} x {cfg.iterations}, horizon {HORIZON}",
                     cfg.energy_batch, f"{rate:.0f}", f"**{plan.seconds:.2f}**"])
    body = (f"CEM (SPEC §6) with the predictor rolled forward one step per action, energies in batches, {dev}"
            f"{' (bf16 autocast)' if dev.type == 'cuda' else ''}.\n\n"
            + table(["predictor", "features", "samples x iterations", "energy batch", "evaluations/s",
                     "seconds per plan"], rows))
    return Section(f"plan-{dev.type}", f"Planning speed ({dev.type.upper()})", body, results)
