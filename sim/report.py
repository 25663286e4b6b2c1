"""What `sim eval` reports: success rates with Wilson intervals, table cells, the start | goal | final
grid and episode videos with the goal inset."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from common.media import write_mp4


def wilson(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a success rate."""
    p, d = successes / n, 1 + z * z / n
    centre, half = (p + z * z / (2 * n)) / d, z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return max(0.0, centre - half), min(1.0, centre + half)


def summarize(outcomes: list[dict]) -> dict:
    k, n = sum(o["success"] for o in outcomes), len(outcomes)
    d = [o["distance"] for o in outcomes]
    firsts = [o["first_success_step"] for o in outcomes if o["first_success_step"] is not None]
    return {"success_rate": k / n, "successes": k, "episodes": n, "ci95": wilson(k, n),
            "final_distance_mean": float(np.mean(d)), "final_distance_median": float(np.median(d)),
            "steps_to_first_success_median": float(np.median(firsts)) if firsts else None,
            "seconds_per_plan": float(np.median([o["seconds_per_plan"] for o in outcomes]))}


def summary_cells(m: dict) -> list[str]:
    """One policy's summary as table cells: successes, rate, 95% CI, median distance, steps, s per plan."""
    return [f"{m['successes']}/{m['episodes']}", f"{m['success_rate']:.0%}", f"{m['ci95'][0]:.0%}..{m['ci95'][1]:.0%}",
            f"{m['final_distance_median']:.3g}",
            "-" if m["steps_to_first_success_median"] is None else f"{m['steps_to_first_success_median']:.0f}",
            f"{m['seconds_per_plan']:.2f}"]


def _inset(frame: np.ndarray, goal: np.ndarray) -> np.ndarray:
    """The frame with the goal image, a third of its size and framed in green, in its top-right corner."""
    out = frame.copy()
    h, w = frame.shape[0] // 3, frame.shape[1] // 3
    rows = np.linspace(0, goal.shape[0] - 1, h).astype(int)
    cols = np.linspace(0, goal.shape[1] - 1, w).astype(int)
    out[:h + 2, -w - 2:] = (0, 200, 0)
    out[1:h + 1, -w - 1:-1] = goal[rows][:, cols]
    return out


def write_video(path: Path, frames: list[np.ndarray], goal: np.ndarray) -> None:
    even = [f[: f.shape[0] // 2 * 2, : f.shape[1] // 2 * 2] for f in frames]  # yuv420p needs even sizes
    write_mp4(path, [_inset(f, goal[: f.shape[0], : f.shape[1]]) for f in even], fps=2)


def write_grid(path: Path, rows: list[tuple[np.ndarray, np.ndarray, np.ndarray]], policy: str,
               max_rows: int = 8) -> None:
    """start | goal | final of a policy's first episodes, one row each."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = rows[:max_rows]
    fig, axes = plt.subplots(len(rows), 3, figsize=(7.5, 2.4 * len(rows)), squeeze=False)
    for r, images in enumerate(rows):
        for c, (image, title) in enumerate(zip(images, ("start", "goal", f"final ({policy})"))):
            axes[r, c].imshow(image)
            axes[r, c].set_xticks([]), axes[r, c].set_yticks([])
            if r == 0:
                axes[r, c].set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
