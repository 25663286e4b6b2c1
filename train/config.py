"""Settings of the training, evaluation and planning commands: defaults, help and limits, once.

The checkpoint stores the TrainConfig it was trained with (`common.settings.as_dict`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common.errors import UserError
from common.files import output_file
from common.settings import check, device_setting, seed_setting, setting
from model import ACTION_CONDITIONING
from store.format import STATE_RULES

# "per-step": one unmasked SDPA call per step over the keys so far (skips the masked half, lets
# CUDA use its flash kernel); "mask": one SDPA call with the boolean block-causal mask. Equal
# outputs (tested); per-step measured faster on CPU at both the ac_vitg and the demo size
# (BENCHMARKS.md, attention).
ATTENTION = ("per-step", "mask")
EPISODE_SETS = ("val", "all")
NORMALIZE = ("states,actions", "states", "actions", "none")
# reference schedule (SPEC §5): 4,500 warmup and 4,500 anneal steps out of 94,500
PHASE_FRACTION = 4500 / 94500


def _checkpoint() -> Path:
    return setting(help="Predictor checkpoint: RUN/latest.pt, or the released vjepa2-ac-vitg.pt.")


def _episodes() -> str:
    return setting("val", "val: the trainer's held-out episodes; all: every episode.", choices=EPISODE_SETS)


def energy_setting() -> Any:
    """CEM's --energy (plan, sim eval, bench sim)."""
    return setting("last", "What the energy compares with the goal: the frame after the last action (last, the "
                           "paper's) or every planned frame (all: their mean L1, so a plan must make progress at "
                           "each step; with a horizon above 1, MPC then cannot keep putting the work off to a "
                           "step it never executes).", choices=("last", "all"))


def state_weight_setting() -> Any:
    """CEM's --state-weight (plan, sim eval, bench sim)."""
    return setting(0.0, "Weight of the state in the energy: the mean over state dims of |planned state - goal "
                        "state| / the dim's std in the data, added to the feature L1 (after the same actions as "
                        "the frames it compares; DINO-WM plans with proprioception so). 0: features alone, the "
                        "paper's. Needs the goal's state.", min=0, max=1000)


@dataclass
class TrainConfig:
    store: str = setting(help="Feature store written by `extract`: a folder or an fsspec URL (s3://bucket/prefix).")
    out: Path = setting(help="Run folder: checkpoints, metrics.csv, val.csv, tb/.")
    preset: str = setting("ac_vitg", "Predictor: ac_vitg (released 1024x24); small: ac_vitg_mini, ac_demo, ac_test.")
    action_conditioning: str = setting("token", "How actions reach the frames: token (V-JEPA 2-AC's own action token "
                                                "per step, which the frame tokens attend to: the released "
                                                "architecture) or concat (DINO-WM's: the action also joins every "
                                                "frame token's input; see BENCHMARKS.md, encoders).",
                                       choices=ACTION_CONDITIONING)
    frames: int = setting(8, "Stored frames per clip.", min=2, max=1024)
    rollout_steps: int = setting(2, "Autoregressive steps of the rollout loss (0: teacher forcing only).", min=0)
    batch_size: int = setting(8, "Clips per micro-batch and rank.", min=1, max=65536)
    accum_steps: int = setting(1, "Micro-batches summed into each optimiser step: the global batch is "
                                  "batch size x accum steps x ranks (the reference: 8 x 1 x 32 = 256).", min=1,
                               max=4096)
    steps: int = setting(1000, "Optimizer steps in all.", min=1)
    lr: float = setting(4.25e-4, "Peak learning rate.", gt=0, max=10)
    start_lr: float = setting(7.5e-5, "Learning rate at the start of warmup.", min=0, max=10)
    final_lr: float = setting(0.0, "Learning rate at the end of the anneal.", min=0, max=10)
    warmup: int | None = setting(None, "Warmup steps (default: 4.8% of --steps, as 4.5k of 94.5k).", min=0)
    anneal: int | None = setting(None, "Anneal steps (default: 4.8% of --steps).", min=0)
    weight_decay: float = setting(0.04, "AdamW weight decay on weight matrices.", min=0)
    grad_clip: float | None = setting(None, "Clip the gradient norm to this (default: no clipping).", gt=0)
    val_fraction: float = setting(0.1, "Fraction of episodes held out for validation.", min=0, max=0.99)
    val_every: int = setting(200, "Validate every N steps, and at the end (0: only at the end).", min=0)
    val_clips: int = setting(256, "Validation clips (evenly spaced windows of held-out episodes).", min=1)
    ckpt_every: int = setting(500, "Write a checkpoint every N steps (and at the end).", min=1)
    keep_last: int = setting(3, "Step checkpoints kept besides latest.pt.", min=1)
    resume: bool = setting(False, "Continue from OUT/latest.pt; with none there, start at step 0 (so a relaunch "
                                  "script can always pass it).")
    init_from: Path | None = setting(None, "Start from a predictor checkpoint (e.g. vjepa2-ac-vitg.pt); adapters "
                                           "that do not fit this store (state, action or feature dims) are "
                                           "re-initialised and named.")
    freeze_blocks: int = setting(0, "Keep the first N predictor blocks frozen (fine-tuning on little data).", min=0)
    normalize: str | None = setting(None, "z-score states and/or actions with the store's statistics (default: "
                                          "states,actions; none for pose-delta stores, as the reference).",
                                    choices=NORMALIZE)
    seed: int = seed_setting("Seed of the model init, the data order and the split.")
    workers: int = setting(2, "DataLoader worker processes.", min=0, max=256)
    verify_reads: bool = setting(True, "Check every chunk read against its shard's seal, so damaged data stops "
                                       "training (xxh3-128 digests of the rows read: 0.2-0.7 ms of CPU per ViT-g clip, "
                                       "92-95% of unchecked clips/s at 1 worker on 2 cores; slower for stores sealed by "
                                       "older code: BENCHMARKS.md, checked reads).")
    cache: Path | None = setting(None, "Keep a local copy of the chunks read from a remote store in this folder, "
                                       "so epochs after the first read from local disk (checked against the "
                                       "seals; workers and runs may share it).")
    cache_size: float = setting(100.0, "Bound of --cache in GB (the least recently used copies go first).", gt=0)
    activation_checkpointing: bool = setting(False, "Recompute block activations in backward (less memory).")
    attention: str = setting("per-step", "Block-causal attention: per-step (one unmasked SDPA per step) or mask "
                                         "(one masked SDPA); see bench attention.", choices=ATTENTION)
    device: str | None = device_setting()

    def __post_init__(self) -> None:
        check(self)
        if self.cache is not None and not self.verify_reads:
            raise UserError("--cache needs --verify-reads (the cache names its copies by the seals' checksums)")
        if self.rollout_steps > self.frames - 1:
            raise UserError(f"--rollout-steps {self.rollout_steps} must be at most --frames - 1 = {self.frames - 1}")
        self.phases()

    def phases(self) -> tuple[int, int]:
        """(warmup, anneal) steps."""
        warmup = self.warmup if self.warmup is not None else round(self.steps * PHASE_FRACTION)
        anneal = self.anneal if self.anneal is not None else round(self.steps * PHASE_FRACTION)
        if warmup + anneal > self.steps:
            raise UserError(f"warmup {warmup} + anneal {anneal} must fit in {self.steps} steps")
        return warmup, anneal


@dataclass
class EvalConfig:
    checkpoint: Path = _checkpoint()
    store: str = setting(help="Feature store to evaluate on (a folder or an fsspec URL).")
    episodes: str = _episodes()
    frames: int | None = setting(None, "Frames per clip, H = frames - 1 (default: the training clip length).",
                                 min=2, max=1024)
    max_clips: int = setting(512, "At most this many clips (evenly spaced windows; 2 or more: the action "
                             "sensitivity gives each clip another's actions).", min=2)
    batch_size: int = setting(8, "Clips per batch.", min=1, max=65536)
    out: Path | None = setting(None, "Report folder (default: eval/ beside the checkpoint).")
    seed: int = seed_setting("Seed of the action shuffle.")
    device: str | None = device_setting()

    def __post_init__(self) -> None:
        check(self)


@dataclass
class CEMConfig:
    """The cross-entropy method (SPEC §6); the defaults are the paper's."""

    samples: int = setting(800, "CEM samples per iteration.", min=1, max=1_000_000)
    iterations: int = setting(10, "CEM iterations.", min=1, max=10_000)
    elites: int = setting(10, "CEM elites (top-k lowest energies).", min=1)
    momentum_mean: float = setting(0.15, "Momentum of the mean: new = elites x (1 - m) + old x m.", min=0, max=0.99)
    momentum_std: float = setting(0.15, "Momentum of the std.", min=0, max=0.99)
    maxnorm: float = setting(0.075, "Each xyz action component is clipped to +-maxnorm (m).", gt=0, max=1)
    gripper_max: float = setting(0.75, "Gripper change clipped to +-this.", gt=0, max=1)
    rotation_max: float = setting(0.25, "Each Euler angle change clipped to +-this (rad), with --dims all.",
                                  gt=0, max=3.15)
    dims: str | None = setting(None, "Searched action dims: all, xyzg (pose-delta: xyz + gripper, rotations 0), or "
                                     "indices and names separated by commas (default: xyzg for pose-delta, else all).")
    state_from_action: str = setting("hold", "For a dataset's action column: how a planned action moves the state: "
                                             "hold (it stays), or target (the column is an absolute target of the "
                                             "state's dims, as SO-100, ALOHA and PushT record).", choices=STATE_RULES)
    pick: str = setting("mean", "The plan CEM returns: mean (the final mean, the paper's) or best (the "
                                "lowest-energy candidate seen, each iteration's mean among the candidates, so "
                                "a plan that nothing sampled beats is kept; for sparse energies).",
                        choices=("mean", "best"))
    energy: str = energy_setting()
    state_weight: float = state_weight_setting()
    energy_batch: int = setting(800, "Energies per predictor call.", min=1, max=1_000_000)
    seed: int = seed_setting("Seed of the CEM samples.")

    def __post_init__(self) -> None:
        check(self)
        if self.elites > self.samples:
            raise UserError(f"--elites {self.elites} must be at most --samples {self.samples}")


@dataclass
class PlanConfig:
    checkpoint: Path = _checkpoint()
    store: str | None = setting(None, "Take start and goal frames from this store (a folder or URL) ...")
    episode: int | None = setting(None, "... episode id,", min=0)
    start: int = setting(0, "... start frame (stored index),", min=0)
    goal: int | None = setting(None, "... goal frame (default: start + horizon).", min=0)
    image: Path | None = setting(None, "Or: the current camera image (encoded with the run's encoder) ...")
    goal_image: Path | None = setting(None, "... the goal image ...")
    state: str | None = setting(None, "... and the current state, comma-separated (DROID: x,y,z,roll,pitch,yaw,gripper).")
    goal_state: str | None = setting(None, "With --image: the goal's state, as --state (--state-weight needs it).")
    encoder_checkpoint: Path | None = setting(None, "Encoder weights for --image (the store's encoder).")
    horizon: int = setting(1, "Actions planned.", min=1, max=64)
    landscape: Path | None = setting(None, "Write the energy over a (dx, dy) grid around 0 to this PNG.")
    cem: CEMConfig = setting(factory=CEMConfig)
    device: str | None = device_setting()

    def __post_init__(self) -> None:
        check(self)
        images = (self.image, self.goal_image, self.state)
        if self.store is not None and any(v is not None for v in (*images, self.goal_state)):
            raise UserError("give either --store (start and goal from the store) or --image, --goal-image and "
                            "--state, not both")
        if self.store is not None and self.episode is None:
            raise UserError("--store needs --episode (and --start, --goal)")
        if self.store is None and any(v is None for v in images):
            raise UserError("give --store/--episode/--start/--goal, or --image, --goal-image and --state")
        if self.store is None and self.cem.state_weight and self.goal_state is None:
            raise UserError("--state-weight needs the goal's state: give --goal-state with --goal-image")
        if self.landscape is not None:
            output_file(self.landscape, "--landscape")


EXPORT_FORMATS = ("safetensors", "released")


@dataclass
class ExportConfig:
    """Write a trained predictor for use elsewhere: safetensors with everything needed to rebuild and use
    it in its metadata, or a .pt in the released layout (vjepa2-ac-vitg.pt's) for the official loader."""

    checkpoint: Path = setting(help="Our checkpoint (RUN/latest.pt) to export.", arg=True)
    out: Path = setting(help="File to write (.safetensors or .pt; the suffix is added when missing).", arg=True)
    format: str = setting("safetensors", "safetensors (weights + metadata) or released ({'predictor', 'encoder'} "
                                         "with module. prefixes).", choices=EXPORT_FORMATS)
    encoder_checkpoint: Path | None = setting(None, "--format released: also write this encoder (the store's: "
                                                    "its SHA-256 is checked) as the `encoder` entry.")

    def __post_init__(self) -> None:
        check(self)


@dataclass
class PlanEvalConfig:
    checkpoint: Path = _checkpoint()
    store: str = setting(help="Feature store with the held-out episodes (a folder or an fsspec URL).")
    k: int = setting(1, "Stored frames between start and goal (= actions planned).", min=1, max=64)
    pairs: int = setting(32, "Start/goal pairs (evenly spaced over the episodes).", min=1, max=100_000)
    episodes: str = _episodes()
    out: Path | None = setting(None, "Report folder (default: plan-eval/ beside the checkpoint).")
    cem: CEMConfig = setting(factory=CEMConfig)
    device: str | None = device_setting()

    def __post_init__(self) -> None:
        check(self)
