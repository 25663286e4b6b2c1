"""Settings of the simulator commands (`demo-corpus`, `sim collect`, `sim eval`): defaults, help and limits, once."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from common.errors import UserError
from common.settings import check, device_setting, seed_setting, setting
from train.config import CEMConfig

ENVS = ("demo", "pusht")
TASKS = ("reach", "push")


def _size():
    return setting(224, "Frame size in pixels of PushT's camera (sim eval must render as collect did).",
                   min=32, max=2048)


@dataclass
class CollectConfig:
    """Episodes of a simulator under an exploratory scripted policy, as a WebDataset corpus for `extract`."""

    out: Path = setting(help="Corpus folder: writes OUT/sim-000000.tar (WebDataset: .mp4 + .json per episode).")
    env: str = setting("pusht", "Simulator: pusht (gym-pusht) or demo (the demo corpus's world).", choices=ENVS)
    episodes: int = setting(64, "Episodes to collect.", min=1, max=1_000_000)
    steps: int = setting(80, "Control steps per episode (PushT: 10 Hz; demo: 15 Hz).", min=2, max=100_000)
    size: int = _size()
    camera: str | None = setting(None, "Camera (default: the env's first). pusht: top (gym-pusht's frame of the "
                                       "table) or agent (rides above the agent, as a wrist camera; every patch "
                                       "moves with it); demo: wrist or left. The store keeps it for sim eval.")
    seed: int = seed_setting("Seed: the same seed gives the same corpus.")

    def __post_init__(self) -> None:
        check(self)


@dataclass
class SimTask:
    """Which closed loop to run: simulator, task, episodes and their budget (shared by sim eval and bench sim)."""

    env: str = setting("demo", "Simulator.", choices=ENVS)
    task: str = setting("reach", "reach: move the agent to where the goal image shows it; push: reach the "
                                 "state 30 control steps later on a scripted episode (agent and block).",
                        choices=TASKS)
    episodes: int = setting(20, "Episodes (the baselines run the same starts and goals).", min=1, max=100_000)
    budget: int = setting(50, "Control steps per episode (a planned action spends the store's frame skip).",
                          min=1, max=100_000)
    horizon: int = setting(5, "Frame-skipped actions planned at each step.", min=1, max=64)
    size: int = _size()
    task_seed: int = seed_setting("Seed of the starts and goals (--seed seeds CEM).")
    oracle: bool = setting(False, "Also plan with the simulator as the world model: CEM's candidates played from "
                                  "the current state, their frames encoded. What a perfect predictor could do "
                                  "with these features; slow (samples x iterations rollouts per plan).")
    state_oracle: bool = setting(False, "Also plan with the simulator as the world model and the task's own score "
                                        "(distance; push: and the block's angle) as the energy: what CEM, horizon "
                                        "and budget allow with a perfect model and a perfect energy, whatever the "
                                        "encoder; no frame rendered, so fast.")
    encoder_checkpoint: Path | None = setting(None, "The store's encoder weights (not needed for a "
                                                    "random-init encoder: it is rebuilt from its seed).")
    device: str | None = device_setting()

    def __post_init__(self) -> None:
        check(self)


@dataclass
class SimEvalConfig:
    """Closed-loop model-predictive control in a simulator: plan, execute the first action, replan."""

    checkpoint: Path = setting(help="Predictor checkpoint (RUN/latest.pt) trained on a store of this simulator.")
    out: Path | None = setting(None, "Report folder (default: sim-ENV-TASK/ beside the checkpoint).")
    videos: int = setting(3, "Closed-loop episodes written as MP4 (goal inset).", min=0)
    model: bool = setting(True, "Plan with the checkpoint's model (--no-model: only the baselines and the oracle, "
                                "to measure what the planner allows whatever the predictor).")
    baselines: bool = setting(True, "Also run random actions and holding still on the same starts and goals.")
    sim: SimTask = setting(factory=SimTask)
    cem: CEMConfig = setting(factory=CEMConfig)

    def __post_init__(self) -> None:
        check(self)
        if not (self.model or self.baselines or self.sim.oracle or self.sim.state_oracle):
            raise UserError("--no-model --no-baselines leaves no policy to run: add --oracle or --state-oracle, or "
                            "drop one of them")
        if self.sim.oracle and self.cem.state_weight:
            raise UserError("--oracle plans on the features alone (what they allow); run it without --state-weight")


@dataclass
class DemoCorpusConfig:
    out: Path = setting(help="Folder to write the corpus into (DROID raw layout).", arg=True)
    episodes: int = setting(64, "Number of episodes.", min=1, max=100_000)
    seed: int = seed_setting("Random seed of the episodes (the table is the same for every seed: the world of `sim "
                             "eval --env demo`); the same seed gives the same corpus.")

    def __post_init__(self) -> None:
        check(self)
