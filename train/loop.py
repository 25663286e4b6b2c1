"""The training loop: AdamW, warmup-constant-anneal, atomic checkpoints, exact resume, DDP, metrics.

run_train = `_setup` (build or restore everything) + per step `_optimizer_step` and `_after_step`
(log, checkpoint, validate).
"""

from __future__ import annotations

import contextlib
import csv
import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Subset

from common.device import bf16_autocast, pick_device, rank_world
from common.errors import PeerLost, Preempted, TrainingDiverged, UserError
from common.files import disk_full, output_dir, remove_stale_temps
from common.media import free_decoders
from common.settings import as_dict
from common.stop import StopRequest, ignore_stop_signals, stop_signals
from model.checkpoint import ModelMeta
from model.predictor import ACPredictor, normalization_from_stats
from model.weights import load_checkpoint
from store import ChunkCache, Store, open_store
from store.format import POSE_DELTA
from store.location import is_url, reset_retries, retries

from .checkpoint import link_latest, save_checkpoint, transfer_weights
from .config import TrainConfig
from .data import ClipDataset, ShuffledStream, collate, evenly_spaced, split_episodes
from .evaluate import collect, summarize
from .losses import normalize, training_losses

PEER_GONE = ("Connection closed by peer", "Connection reset by peer", "Broken pipe", "NCCL communicator was aborted")
RESUME_KEYS = ("preset", "action_conditioning", "normalization", "frames", "batch_size", "accum_steps", "seed",
               "val_fraction", "freeze_blocks")
STEP_FIELDS = ["step", "loss", "tf_loss", "rollout_loss", "lr", "grad_norm", "data_time", "step_time", "clips_per_s",
               "global_batch"]


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
        if self.val_path.exists():  # validations after the checkpoint we resume from (or of an older run) go
            with open(self.val_path) as f:
                kept = [r for r in csv.DictReader(f) if start_step and int(r["step"]) <= start_step]
            if not kept:  # the next validation starts the file again, header first
                self.val_path.unlink()
            else:
                with open(self.val_path, "w", newline="") as f:
                    w = csv.DictWriter(f, list(kept[0]))
                    w.writeheader()
                    w.writerows(kept)
        self.tb = SummaryWriter(str(out / "tb"), purge_step=start_step + 1 if start_step else None)

    def step(self, row: dict) -> None:
        with disk_full(self.path):
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
        with disk_full(self.val_path), open(self.val_path, "a", newline="") as f:
            w = csv.DictWriter(f, list(row))
            if new:
                w.writeheader()
            w.writerow(row)
        self.tb.flush()

    def close(self) -> None:
        self.file.close()
        self.tb.close()


def validation_loader(store: Store, episodes: list[int], frames: int, batch_size: int,
                      max_clips: int) -> DataLoader | None:
    """Up to max_clips windows of the validation episodes, evenly spaced, always the same ones."""
    data = ClipDataset(store, episodes, frames)
    if len(data) == 0:
        return None
    return DataLoader(Subset(data, evenly_spaced(len(data), max_clips)), batch_size=batch_size, num_workers=0,
                      collate_fn=collate)


@dataclass
class TrainResult:
    start_step: int
    val: dict | None  # final validation summary (rank 0)
    out: Path
    model: ACPredictor  # the trained predictor (unwrapped)
    reinitialised: list[str]  # tensors --init-from re-initialised
    retries: int | None = None  # object-store requests retried by every rank and its DataLoader workers (s3://)


@dataclass
class _Run:
    """Everything a training run holds between steps."""

    cfg: TrainConfig
    out: Path
    rank: int
    world: int
    device: torch.device
    model: ACPredictor
    ddp: torch.nn.Module  # the model, wrapped for DDP when world > 1
    opt: torch.optim.Optimizer
    batches: object  # iterator over training batches
    val_loader: DataLoader | None
    log: MetricsLog | None
    meta: dict  # saved with every checkpoint
    start_step: int
    reinitialised: list[str]  # tensors --init-from could not take from its checkpoint


def _open_training_store(cfg: TrainConfig, world: int) -> tuple[Store, ClipDataset, list[int]]:
    cache = ChunkCache(cfg.cache, int(cfg.cache_size * 1e9)) if cfg.cache else None
    store = open_store(cfg.store, cfg.verify_reads, cache)
    if not store.complete:
        raise UserError(f"{cfg.store}: only {len(store.sealed)} of {store.num_units} units sealed; "
                        "finish the extraction first (rerun it to resume)")
    train_ids, val_ids = split_episodes(store, cfg.val_fraction, cfg.seed)
    train_set = ClipDataset(store, train_ids, cfg.frames)
    if len(train_set) < cfg.batch_size * world:
        raise UserError(f"only {len(train_set)} training clips of {cfg.frames} frames in {cfg.store}; "
                        f"need at least batch size x ranks = {cfg.batch_size * world}")
    return store, train_set, val_ids


def _setup(cfg: TrainConfig) -> _Run:
    """Open the store, build the model and optimiser, restore them on --resume, start the data."""
    rank, world = rank_world()
    device = pick_device(cfg.device)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    store, train_set, val_ids = _open_training_store(cfg, world)

    out = output_dir(cfg.out, "--out")
    if (out / "zarr.json").exists():
        raise UserError(f"--out {out} is a feature store; a run needs a folder of its own")
    remove_stale_temps(out, "*.pt")  # of checkpoint writes that were killed
    latest = out / "latest.pt"
    meta = ModelMeta.of_store(cfg.preset, store, _normalization(cfg, store), cfg.action_conditioning)
    torch.manual_seed(cfg.seed)
    model = meta.build(activation_checkpointing=cfg.activation_checkpointing, attention=cfg.attention)
    opt_state, start_step, reinitialised = None, 0, []
    if cfg.resume and latest.exists():
        ckpt = load_checkpoint(latest)
        ran_meta = ModelMeta.of_checkpoint(ckpt)  # an older checkpoint's: with the defaults of fields it predates
        ran_meta.check_fits(store, str(latest))
        ran = {**ran_meta.to_dict(), **ckpt["config"]}
        now = {**meta.to_dict(), **as_dict(cfg)}
        for key in RESUME_KEYS:  # what the data stream, the split and the optimiser state depend on
            if ran.get(key) != now[key]:
                raise UserError(f"{latest} was trained with {key} {ran.get(key)}, this run has {now[key]}: "
                                "resume with the run's own settings")
        model.load_state_dict(ckpt["predictor"])
        opt_state, start_step = ckpt["optimizer"], ckpt["step"]
    elif latest.exists() and not cfg.resume:
        raise UserError(f"{out} already holds a run (latest.pt); pass --resume to continue it or choose another --out")
    elif cfg.init_from:
        reinitialised = transfer_weights(model, cfg.init_from)
    if start_step >= cfg.steps:
        raise UserError(f"{latest} is at step {start_step}; raise --steps above it to train further")
    if cfg.freeze_blocks > len(model.predictor_blocks):
        raise UserError(f"--freeze-blocks {cfg.freeze_blocks}: the {cfg.preset} predictor has "
                        f"{len(model.predictor_blocks)} blocks")
    model.predictor_blocks[:cfg.freeze_blocks].requires_grad_(False)

    model.to(device)
    ddp = torch.nn.parallel.DistributedDataParallel(model) if world > 1 else model
    opt = torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=(0.9, 0.999), eps=1e-8)
    if opt_state is not None:
        opt.load_state_dict(opt_state)
    sampler = ShuffledStream(len(train_set), cfg.seed, rank, world, skip=start_step * cfg.batch_size * cfg.accum_steps)
    loader = DataLoader(train_set, batch_size=cfg.batch_size, sampler=sampler, num_workers=cfg.workers,
                        pin_memory=device.type == "cuda", drop_last=True, collate_fn=collate,
                        worker_init_fn=ignore_stop_signals)
    saved = {"model_meta": meta.to_dict(), "store": meta.encoder,
             "split": {"val_fraction": cfg.val_fraction, "seed": cfg.seed, "frames": cfg.frames},
             "config": as_dict(cfg)}
    lead = rank == 0
    val_loader = validation_loader(store, val_ids, cfg.frames, cfg.batch_size, cfg.val_clips) if lead else None
    log = MetricsLog(out, start_step) if lead else None
    free_decoders()
    return _Run(cfg, out, rank, world, device, model, ddp, opt, iter(loader), val_loader, log, saved, start_step,
                reinitialised)


def _normalization(cfg: TrainConfig, store: Store) -> dict | None:
    """The z-scoring of --normalize (default: states and actions, except for DROID's metric pose deltas)."""
    which = cfg.normalize or ("none" if store.config.actions == POSE_DELTA else "states,actions")
    if which == "none":
        return None
    if not store.stats:
        raise UserError(f"--normalize {which} needs the store's statistics, which `cli.py store merge "
                        f"{store.root}` writes")
    return normalization_from_stats(store.stats, which)


def _optimizer_step(run: _Run, step: int, tick: float) -> dict:
    """One AdamW step on --accum-steps micro-batches of --batch-size clips per rank (`tick`: when the step
    began). Their gradients are summed (each loss scaled by 1/K), and DDP averages them over the ranks on
    the last micro-batch only; so the step sees the mean loss of batch x K x ranks clips."""
    cfg = run.cfg
    lr = lr_at(step, cfg)
    for g in run.opt.param_groups:
        g["lr"] = lr
    run.opt.zero_grad(set_to_none=True)
    data_time, parts = 0.0, torch.zeros(3)
    for micro in range(cfg.accum_steps):
        start = time.perf_counter() if micro else tick
        batch = next(run.batches)
        data_time += time.perf_counter() - start
        z = normalize(batch["features"].to(run.device, non_blocking=True))
        actions = batch["actions"].to(run.device, non_blocking=True)
        states = batch["states"].to(run.device, non_blocking=True)
        last = micro == cfg.accum_steps - 1
        with contextlib.ExitStack() as stack:
            if run.world > 1 and not last:
                stack.enter_context(run.ddp.no_sync())  # gradients stay local until the last micro-batch
            with bf16_autocast(run.device):
                losses = training_losses(run.ddp, z, actions, states, cfg.rollout_steps)
            (losses["loss"] / cfg.accum_steps).backward()
        parts += torch.stack([losses[k].detach().float().cpu() for k in ("loss", "tf_loss", "rollout_loss")])
    grad_norm = torch.nn.utils.clip_grad_norm_(run.model.parameters(), cfg.grad_clip or math.inf)
    values = torch.cat([(parts / cfg.accum_steps).to(grad_norm.device), grad_norm.float().view(1)])
    if run.world > 1:
        dist.all_reduce(values)
        values /= run.world
    loss, tf_loss, rollout_loss, gn = values.tolist()
    if not (math.isfinite(loss) and math.isfinite(gn)):
        what = f"loss became {loss}" if not math.isfinite(loss) else f"gradient norm became {gn}"
        kept = (f"the last good checkpoint stays in {run.out}" if (run.out / "latest.pt").exists()
                else "no checkpoint was written yet")
        raise TrainingDiverged(f"{what} at step {step + 1}; stopped, {kept} (try a lower --lr or --grad-clip)")
    run.opt.step()
    step_time = time.perf_counter() - tick
    global_batch = cfg.batch_size * cfg.accum_steps * run.world
    return {"step": step + 1, "loss": loss, "tf_loss": tf_loss, "rollout_loss": rollout_loss, "lr": lr,
            "grad_norm": gn, "data_time": data_time, "step_time": step_time,
            "clips_per_s": global_batch / step_time, "global_batch": global_batch}


def _validate(run: _Run) -> dict:
    return summarize(collect(run.model, run.val_loader, run.device))


def _checkpoint(run: _Run, done: int) -> None:
    step_file = run.out / f"step_{done:08d}.pt"
    save_checkpoint(step_file, {**run.meta, "predictor": run.model.state_dict(),
                                "optimizer": run.opt.state_dict(), "step": done})
    link_latest(run.out, step_file, run.cfg.keep_last)


def _stop_agreed(run: _Run, stop: StopRequest) -> bool:
    """Whether any rank was asked to stop; every rank calls this after every step, so all stop at the same one."""
    if run.world == 1:
        return stop.requested
    flag = torch.tensor([float(stop.requested)], device=run.device)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return bool(flag.item())


def _preempt(run: _Run, done: int, stop: StopRequest) -> None:
    """Rank 0 checkpoints step `done` (unless it just did); the other ranks wait for it before they exit."""
    if run.rank == 0 and done % run.cfg.ckpt_every:
        _checkpoint(run, done)
    if run.world > 1:
        dist.barrier()
    who = stop.name if stop.requested else "a stop signal on another rank"
    raise Preempted(f"{who} after step {done}; {run.out / 'latest.pt'} holds it: rerun with --resume to continue")


def _after_step(run: _Run, row: dict) -> dict | None:
    """Rank 0: log the step, validate and write a checkpoint when due. Returns the validation, if run.

    Validation comes first: a run that dies while validating resumes from the checkpoint before and validates
    this step again (checkpointed first, its validation would be lost)."""
    cfg, done = run.cfg, row["step"]
    if run.rank != 0:
        return None
    run.log.step(row)
    last, val = done == cfg.steps, None
    if run.val_loader is not None and ((cfg.val_every and done % cfg.val_every == 0) or last):
        val = _validate(run)
        run.log.val(done, val)
    if done % cfg.ckpt_every == 0 or last:
        _checkpoint(run, done)
    return val


def _retries(run: _Run) -> int | None:
    """Object-store requests this run retried, all ranks together (every rank calls this once, at the end)."""
    if not is_url(run.cfg.store):
        return None
    count = torch.tensor([retries()], device=run.device)
    if run.world > 1:
        dist.all_reduce(count)
    return int(count.item())


def run_train(cfg: TrainConfig, on_start: Callable[[int, int], None] | None = None,
              on_step: Callable[[dict, dict | None], None] | None = None) -> TrainResult:
    """Train (or resume); DDP when WORLD_SIZE > 1. `on_start(total, start_step)`, `on_step(row, validation)`.

    SIGTERM or SIGUSR1 (on any rank) ends the run after the step in progress, checkpointed: raises Preempted."""
    reset_retries()
    with stop_signals() as stop:
        run = _setup(cfg)
        if on_start:
            on_start(cfg.steps, run.start_step)
        val = None
        try:
            if run.val_loader is not None and run.start_step == 0 and cfg.val_every:  # the untrained baseline
                run.log.val(0, _validate(run))
            tick = time.perf_counter()
            for step in range(run.start_step, cfg.steps):
                row = _optimizer_step(run, step, tick)
                val = _after_step(run, row) or val
                if on_step:
                    on_step(row, val)
                if step + 1 < cfg.steps and _stop_agreed(run, stop):
                    _preempt(run, step + 1, stop)
                tick = time.perf_counter()
        except RuntimeError as e:  # gloo and NCCL report a rank that vanished mid-collective only in their text
            if run.world > 1 and any(m in str(e) for m in PEER_GONE):
                reason = re.sub(r"^\[[^\]]*\]\s*", "", str(e).splitlines()[0])[:120]  # less gloo's source line
                raise PeerLost(f"rank {run.rank}: another rank of the run is gone ({reason}); its log says why; "
                               "rerun with --resume to continue from the last checkpoint") from None
            raise
        finally:
            if run.log:
                run.log.close()
    return TrainResult(run.start_step, val, run.out, run.model, run.reinitialised, _retries(run))
