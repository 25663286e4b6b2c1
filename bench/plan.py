"""Planning speed: energy evaluations per second and seconds per CEM call."""

from __future__ import annotations

import torch

from train.loop import build_model
from train.plan import CEMConfig, plan_to_goal

from .report import table


def run(settings: list[tuple[str, int, tuple[int, int], CEMConfig]], device: str | None = None) -> tuple[str, dict]:
    """settings: (predictor preset, feature dim, grid, CEM config). Weights are random: speed does not depend on them."""
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    results, rows = {}, []
    for preset, dim, grid, cfg in settings:
        torch.manual_seed(0)
        model = build_model(dim, grid, preset).eval().to(dev)
        n = grid[0] * grid[1]
        z0, goal = torch.randn(n, dim, device=dev), torch.randn(n, dim, device=dev)
        state = torch.tensor([0.5, 0.0, 0.2, 3.14, 0.0, 0.0, 0.5], device=dev)
        plan_to_goal(model, z0, state, goal, CEMConfig(**{**cfg.__dict__, "iterations": 1}))  # warm-up
        plan = plan_to_goal(model, z0, state, goal, cfg)
        rate = plan.evaluations / plan.seconds
        results[preset] = {"seconds_per_plan": plan.seconds, "evaluations_s": rate}
        rows.append([preset, f"{dim} x {n}", f"{cfg.samples} x {cfg.iterations}, horizon {cfg.horizon}",
                     cfg.batch, f"{rate:.0f}", f"**{plan.seconds:.2f}**"])
    body = (f"CEM (SPEC §6) with the predictor rolled forward one step per action, energies in batches, {dev}"
            f"{' (bf16 autocast)' if dev.type == 'cuda' else ''}.\n\n"
            + table(["predictor", "features", "samples x iterations", "energy batch", "evaluations/s",
                     "seconds per plan"], rows))
    return body, results
