"""Planning speed: energy evaluations per second and seconds per CEM call."""

from __future__ import annotations

from dataclasses import replace

import torch

from common.device import pick_device
from common.errors import UserError
from model.checkpoint import RELEASED_META
from model.predictor import build_model
from model.vit import ENCODER_PRESETS
from train.plan import Planner

from .config import PlanBench, counts, names
from .report import Section, table

ENCODER_OF = {"ac_demo": "vit_demo", "ac_vitg": "vit_giant", "ac_vitg_mini": "vit_g_mini"}  # the features it plans in


def run(bench: PlanBench) -> Section:
    """Weights are random: the speed does not depend on them. Cached and uncached rollouts (losses.rollout)
    alternate at each horizon, on the same plan."""
    dev = pick_device()
    cfg = bench.cem
    if cfg.state_weight:
        raise UserError("bench plan times the features' energy on random frames, which have no goal state: drop "
                        "--state-weight")
    results, rows = {}, []
    horizons = counts(bench.horizons, "--horizons")
    for preset in names(bench.presets, "--presets", ENCODER_OF):
        features = ENCODER_PRESETS[ENCODER_OF[preset]]
        dim, grid = features.dim, features.grid
        torch.manual_seed(0)
        model = build_model(dim, grid, preset).eval().to(dev)
        n = grid[0] * grid[1]
        z0, goal = torch.randn(n, dim, device=dev), torch.randn(n, dim, device=dev)
        state = torch.tensor([0.5, 0.0, 0.2, 3.14, 0.0, 0.0, 0.5], device=dev)
        Planner(model, RELEASED_META, replace(cfg, iterations=1), dev).plan(z0, state, goal, 1)  # warm-up
        for horizon in horizons:
            rate = {}
            for cached in (True, False):
                plan = Planner(model, RELEASED_META, cfg, dev, cached).plan(z0, state, goal, horizon)
                rate[cached] = plan.evaluations / plan.seconds
                results[f"{preset}_h{horizon}_{'cached' if cached else 'uncached'}"] = {
                    "seconds_per_plan": plan.seconds, "evaluations_s": rate[cached]}
                if cached:
                    seconds = plan.seconds
            rows.append([preset, f"{dim} x {n}", f"{cfg.samples} x {cfg.iterations}", horizon, cfg.energy_batch,
                         f"{rate[False]:.0f}", f"{rate[True]:.0f}", f"**{rate[True] / rate[False]:.2f}x**",
                         f"{seconds:.2f}"])
    body = (f"CEM (SPEC §6) with the predictor rolled forward one step per action, energies in batches, {dev}"
            f"{' (bf16 autocast)' if dev.type == 'cuda' else ''}. Uncached: each step recomputes the whole "
            "sequence (the reference's way); cached: the keys and values of earlier steps are kept and each "
            "step adds only its own tokens (tested equal within 1e-5).\n\n"
            + table(["predictor", "features", "samples x iterations", "horizon", "energy batch",
                     "uncached evaluations/s", "cached evaluations/s", "cached / uncached",
                     "seconds per plan (cached)"], rows))
    return Section(f"plan-{dev.type}", f"Planning speed ({dev.type.upper()})", body, results)
