"""The training loop: AdamW, warmup-constant-anneal, atomic checkpoints, exact resume, DDP, metrics."""

from __future__ import annotations

import csv
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Subset

from extract.weights import load_checkpoint
from store import Store, UserError, open_store

from .data import ClipDataset, ShuffledStream, split_episodes
from .evaluate import collect, summarize
from .losses import normalize, training_losses
from .predictor import PREDICTOR_PRESETS, ACPredictor, load_predictor_weights

STEP_FIELDS = ["step", "loss", "tf_loss", "rollout_loss", "lr", "grad_norm", "data_time", "step_time", "clips_per_s"]
# reference schedule (SPEC §5): 4,500 warmup and 4,500 anneal steps out of 94,500
PHASE_FRACTION = 4500 / 94500


class TrainingDiverged(UserError):
    """The loss became NaN or Inf; the last good checkpoint is kept."""


@dataclass
class TrainConfig:
    store: Path
    out: Path
    preset: str = "ac_vitg"
    frames: int = 8
    rollout_steps: int = 2
    batch_size: int = 8  # clips per rank
    steps: int = 1000
    lr: float = 4.25e-4
    start_lr: float = 7.5e-5
    final_lr: float = 0.0
    warmup: int | None = None  # default: steps * 4500/94500
    anneal: int | None = None  # default: the same
    weight_decay: float = 0.04
    grad_clip: float | None = None
    val_fraction: float = 0.1
    val_every: int = 200
    val_clips: int = 256
    ckpt_every: int = 500
    keep_last: int = 3
    resume: bool = False
    init_from: Path | None = None
    seed: int = 0
    workers: int = 2
    activation_checkpointing: bool = False
    attention: str = "per-step"  # or "mask", see train.predictor.ATTENTION
    device: str | None = None

    def phases(self) -> tuple[int, int]:
        warmup = self.warmup if self.warmup is not None else round(self.steps * PHASE_FRACTION)
        anneal = self.anneal if self.anneal is not None else round(self.steps * PHASE_FRACTION)
        if warmup < 0 or anneal < 0 or warmup + anneal > self.steps:
            raise UserError(f"warmup {warmup} + anneal {anneal} must fit in {self.steps} steps")
        return warmup, anneal


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Learning rate of 0-based step: linear warmup start_lr -> lr, constant, linear anneal -> final_lr."""
    warmup, anneal = cfg.phases()
    if step < warmup:
        return cfg.start_lr + (cfg.lr - cfg.start_lr) * step / warmup
    if anneal and step >= cfg.steps - anneal:
        return cfg.lr + (cfg.final_lr - cfg.lr) * (step - (cfg.steps - anneal) + 1) / anneal
    return cfg.lr


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on weight matrices only, none on biases and 1-D parameters (norms)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if p.ndim < 2 or name.endswith(".bias") else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_model(feature_dim: int, grid: tuple[int, int], preset: str, activation_checkpointing: bool = False,
                attention: str = "per-step") -> ACPredictor:
    if preset not in PREDICTOR_PRESETS:
        raise UserError(f"unknown predictor preset {preset!r}; choose one of {', '.join(PREDICTOR_PRESETS)}")
    return ACPredictor(feature_dim, tuple(grid), PREDICTOR_PRESETS[preset],
                       activation_checkpointing=activation_checkpointing, attention=attention)


def check_fits(ckpt: dict, store: Store, what: str) -> None:
    """A checkpoint of ours is only valid on features of the same dim and grid."""
    want = ckpt["model"]
    have = {"feature_dim": store.config.feature_dim, "grid": list(store.config.grid)}
    got = {"feature_dim": want["feature_dim"], "grid": list(want["grid"])}
    if got != have:
        raise UserError(f"{what} was trained on features {got}, the store {store.root} holds {have}")


def load_trained(path: Path, store: Store | None = None) -> tuple[ACPredictor, dict]:
    """A predictor (eval mode) from one of our checkpoints, or from the released vjepa2-ac-vitg.pt
    (an ac_vitg model on ViT-g features), checked against `store` if given. Returns it and the checkpoint."""
    ckpt = load_checkpoint(path)
    meta = ckpt.get("model", {"preset": "ac_vitg", "feature_dim": 1408, "grid": [16, 16]})
    if store is not None:
        if "model" in ckpt:
            check_fits(ckpt, store, str(path))
        meta = {**meta, "feature_dim": store.config.feature_dim, "grid": store.config.grid}
    model = build_model(meta["feature_dim"], meta["grid"], meta["preset"])
    load_predictor_weights(model, path, ckpt)
    return model.eval(), ckpt


def save_checkpoint(path: Path, obj: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _link_latest(out: Path, step_file: Path, keep_last: int) -> None:
    tmp = out / f".latest.pt.tmp-{os.getpid()}"
    if tmp.exists():
        tmp.unlink()
    os.link(step_file, tmp)  # latest.pt shares the step file's data: no second write
    os.replace(tmp, out / "latest.pt")
    for old in sorted(out.glob("step_*.pt"))[:-keep_last]:
        old.unlink()


class MetricsLog:
    """metrics.csv (one row per step), val.csv and TensorBoard, on rank 0."""

    def __init__(self, out: Path, start_step: int):
        from torch.utils.tensorboard import SummaryWriter

        self.path = out / "metrics.csv"
        rows = []
        if start_step and self.path.exists():  # drop steps after the checkpoint we resume from
            with open(self.path) as f:
                rows = [r for r in csv.DictReader(f) if int(r["step"]) <= start_step]
        with open(self.path, "w", newline="") as f:
            w = csv.DictWriter(f, STEP_FIELDS)
            w.writeheader()
            w.writerows(rows)
        self.file = open(self.path, "a", newline="")
        self.csv = csv.DictWriter(self.file, STEP_FIELDS)
        self.val_path = out / "val.csv"
        self.tb = SummaryWriter(str(out / "tb"), purge_step=start_step + 1 if start_step else None)

    def step(self, row: dict) -> None:
        self.csv.writerow({k: row[k] for k in STEP_FIELDS})
        self.file.flush()
        for k in STEP_FIELDS[1:]:
            self.tb.add_scalar(f"train/{k}", row[k], row["step"])

    def val(self, step: int, v: dict) -> None:
        row = {"step": step, "tf_l1": v["tf_l1"]}
        for h, (m, c) in enumerate(zip(v["rollout_l1"], v["copy_l1"]), start=1):
            row[f"rollout_l1_h{h}"], row[f"copy_l1_h{h}"] = m, c
            self.tb.add_scalar(f"val/rollout_l1/h{h}", m, step)
            self.tb.add_scalar(f"val/copy_last_l1/h{h}", c, step)
        self.tb.add_scalar("val/tf_l1", v["tf_l1"], step)
        new = not self.val_path.exists()
        with open(self.val_path, "a", newline="") as f:
            w = csv.DictWriter(f, list(row))
            if new:
                w.writeheader()
            w.writerow(row)
        self.tb.flush()

    def close(self) -> None:
        self.file.close()
        self.tb.close()


def validation_loader(store: Store, episodes: list[int], cfg: TrainConfig, max_clips: int) -> DataLoader | None:
    """Up to max_clips windows of the validation episodes, evenly spaced, always the same ones."""
    if not episodes:
        return None
    data = ClipDataset(store, episodes, cfg.frames)
    if len(data) == 0:
        return None
    step = max(1, len(data) // max_clips)
    subset = Subset(data, list(range(0, len(data), step))[:max_clips])
    return DataLoader(subset, batch_size=cfg.batch_size, num_workers=0)


@dataclass
class TrainResult:
    steps_done: int
    start_step: int
    val: dict | None  # final validation summary (rank 0)
    out: Path
    model: ACPredictor  # the trained predictor (unwrapped)


def run_train(cfg: TrainConfig, on_start=None, on_step=None) -> TrainResult:
    """Train (or resume) and return the final validation summary. DDP when WORLD_SIZE > 1."""
    world = int(os.environ.get("WORLD_SIZE", 1))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    rank = dist.get_rank() if world > 1 else 0
    if cfg.device:
        device = torch.device(cfg.device)
    elif torch.cuda.is_available():
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    else:
        device = torch.device("cpu")
    if cfg.frames < 2 or not 0 <= cfg.rollout_steps <= cfg.frames - 1:
        raise UserError(f"need --frames >= 2 and 0 <= --rollout-steps <= frames - 1 (got {cfg.frames}, {cfg.rollout_steps})")

    store = open_store(cfg.store)
    if not store.complete:
        raise UserError(f"{cfg.store}: only {len(store.sealed)} of {store.num_units} units sealed; "
                        "finish the extraction first (rerun it to resume)")
    train_ids, val_ids = split_episodes(store, cfg.val_fraction, cfg.seed)
    train_set = ClipDataset(store, train_ids, cfg.frames)
    if len(train_set) < cfg.batch_size * world:
        raise UserError(f"only {len(train_set)} training clips of {cfg.frames} frames in {cfg.store}; "
                        f"need at least batch size x ranks = {cfg.batch_size * world}")

    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    latest = out / "latest.pt"
    torch.manual_seed(cfg.seed)
    model = build_model(store.config.feature_dim, store.config.grid, cfg.preset, cfg.activation_checkpointing,
                        cfg.attention)
    opt_state, start_step = None, 0
    if cfg.resume and latest.exists():
        ckpt = load_checkpoint(latest)
        check_fits(ckpt, store, str(latest))
        if ckpt["model"]["preset"] != cfg.preset:
            raise UserError(f"{latest} is a {ckpt['model']['preset']} model, not {cfg.preset}")
        model.load_state_dict(ckpt["predictor"])
        opt_state, start_step = ckpt["optimizer"], ckpt["step"]
    elif latest.exists() and not cfg.resume:
        raise UserError(f"{out} already holds a run (latest.pt); pass --resume to continue it or choose another --out")
    elif cfg.init_from:
        load_predictor_weights(model, cfg.init_from)
    if start_step >= cfg.steps:
        raise UserError(f"{latest} is at step {start_step}; raise --steps above it to train further")

    model.to(device)
    ddp = torch.nn.parallel.DistributedDataParallel(model) if world > 1 else model
    opt = torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=(0.9, 0.999), eps=1e-8)
    if opt_state is not None:
        opt.load_state_dict(opt_state)
    sampler = ShuffledStream(len(train_set), cfg.seed, rank, world, skip=start_step * cfg.batch_size)
    loader = DataLoader(train_set, batch_size=cfg.batch_size, sampler=sampler, num_workers=cfg.workers,
                        pin_memory=device.type == "cuda", drop_last=True, persistent_workers=cfg.workers > 0)
    val_loader = validation_loader(store, val_ids, cfg, cfg.val_clips) if rank == 0 else None
    log = MetricsLog(out, start_step) if rank == 0 else None
    meta = {
        "model": {"preset": cfg.preset, "feature_dim": store.config.feature_dim, "grid": list(store.config.grid)},
        "store": store.config.to_attrs(),
        "split": {"val_fraction": cfg.val_fraction, "seed": cfg.seed, "frames": cfg.frames},
        "config": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(cfg).items()},
    }
    if on_start:
        on_start(cfg.steps, start_step)

    val = None
    if val_loader is not None and start_step == 0 and cfg.val_every:  # the untrained baseline
        log.val(0, summarize(collect(model, val_loader, device)))
    batches = iter(loader)
    tick = time.perf_counter()
    try:
        for step in range(start_step, cfg.steps):
            batch = next(batches)
            data_time = time.perf_counter() - tick
            lr = lr_at(step, cfg)
            for g in opt.param_groups:
                g["lr"] = lr
            z = normalize(batch["features"].to(device, non_blocking=True))
            actions = batch["actions"].to(device, non_blocking=True)
            states = batch["states"].to(device, non_blocking=True)
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda"):
                losses = training_losses(ddp, z, actions, states, cfg.rollout_steps)
            opt.zero_grad(set_to_none=True)
            losses["loss"].backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip or math.inf)
            values = torch.stack([losses[k].detach().float() for k in ("loss", "tf_loss", "rollout_loss")] + [grad_norm])
            if world > 1:
                dist.all_reduce(values)
                values /= world
            loss, tf_loss, rollout_loss, gn = values.tolist()
            if not math.isfinite(loss):
                raise TrainingDiverged(f"loss became {loss} at step {step + 1}; stopped, the last good "
                                       f"checkpoint stays in {out} (try a lower --lr or --grad-clip)")
            opt.step()
            done = step + 1
            step_time = time.perf_counter() - tick
            row = {"step": done, "loss": loss, "tf_loss": tf_loss, "rollout_loss": rollout_loss, "lr": lr,
                   "grad_norm": gn, "data_time": data_time, "step_time": step_time,
                   "clips_per_s": cfg.batch_size * world / step_time}
            if rank == 0:
                log.step(row)
                if done % cfg.ckpt_every == 0 or done == cfg.steps:
                    step_file = out / f"step_{done:08d}.pt"
                    save_checkpoint(step_file, {**meta, "predictor": model.state_dict(),
                                                "optimizer": opt.state_dict(), "step": done})
                    _link_latest(out, step_file, cfg.keep_last)
                if val_loader is not None and ((cfg.val_every and done % cfg.val_every == 0) or done == cfg.steps):
                    val = summarize(collect(model, val_loader, device))
                    log.val(done, val)
            if on_step:
                on_step(row, val)
            tick = time.perf_counter()
    finally:
        if log:
            log.close()
    return TrainResult(cfg.steps - start_step, start_step, val, out, model)
