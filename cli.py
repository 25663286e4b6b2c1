"""Command line of the V-JEPA 2-AC pipeline: extract features once, train on them, inspect, evaluate, plan.

Thin by design: it parses arguments and calls library functions.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from store import UserError

app = typer.Typer(
    help="Train V-JEPA 2-AC world models from cached V-JEPA 2 features.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
store_app = typer.Typer(help="Inspect, verify and merge feature stores.", no_args_is_help=True)
app.add_typer(store_app, name="store")
console = Console(soft_wrap=True)  # long paths stay on one line
err = Console(stderr=True)

StorePath = typer.Argument(..., help="Store directory (a Zarr v3 group written by `extract`).")


def _human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    raise AssertionError


# ---------------------------------------------------------------- extract


@app.command("demo-corpus")
def demo_corpus(
    out: Path = typer.Argument(..., help="Folder to write the corpus into (DROID raw layout)."),
    episodes: int = typer.Option(64, min=1, help="Number of episodes."),
    seed: int = typer.Option(0, help="Random seed; the same seed gives the same corpus."),
) -> None:
    """Write the built-in synthetic robot corpus: a rendered gripper pushing a block, in DROID raw format."""
    from rich.progress import Progress

    from extract.demo import make_demo_corpus

    with Progress(console=err, transient=True) as progress:
        task = progress.add_task("rendering episodes", total=episodes)
        make_demo_corpus(out, episodes, seed, progress=lambda _: progress.advance(task))
    console.print(f"wrote {episodes} demo episodes to {out}")


@app.command("extract")
def extract(
    corpus: Path = typer.Option(..., help="Corpus root: DROID folders (or a list file), a LeRobot dataset, or .tar shards."),
    out: Path = typer.Option(..., help="Store directory to create or resume."),
    format: str = typer.Option("droid", help="Corpus format: droid | lerobot | webdataset."),
    camera: str = typer.Option("left", help="DROID camera: left | right | wrist."),
    video_key: str | None = typer.Option(None, help="LeRobot video key (camera), e.g. observation.images.front."),
    state_key: str = typer.Option("observation.state", help="LeRobot column with the 7-D end-effector state."),
    fps: float = typer.Option(4.0, help="Stored frames per second; stride = ceil(native fps / fps)."),
    preset: str = typer.Option("vit_giant", help="Encoder: vit_large | vit_huge | vit_giant (256 px); small: vit_g_mini, vit_demo, vit_test."),
    checkpoint: Path | None = typer.Option(None, help="Released .pt file (vitg.pt, vjepa2-ac-vitg.pt, ...)."),
    random_init: bool = typer.Option(False, help="Allow a large preset without checkpoint (random weights; timing only)."),
    codec: str = typer.Option("bf16", help="Feature codec: bf16 | fp16 | int8."),
    compression: str = typer.Option("none", help="Chunk compression: none | zstd | blosc-zstd."),
    chunk_frames: int = typer.Option(4, help="Frames per feature chunk file (4: see BENCHMARKS.md, loader)."),
    episodes_per_unit: int = typer.Option(64, help="Episodes per work unit (= per shard)."),
    batch_size: int = typer.Option(64, help="Frames per encoder batch."),
    workers: int = typer.Option(4, help="Decoding worker processes (0: decode in the main process)."),
    rank: int | None = typer.Option(None, help="This rank (default $RANK or 0): takes units rank, rank+world, ..."),
    world_size: int | None = typer.Option(None, help="Number of ranks (default $WORLD_SIZE or 1)."),
    device: str | None = typer.Option(None, help="Torch device (default: cuda:$LOCAL_RANK if available, else cpu)."),
    limit: int | None = typer.Option(None, help="Only the first N episodes of the corpus."),
) -> None:
    """Run the frozen V-JEPA 2 encoder once over a corpus into a sharded feature store (resumable)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from extract.job import ExtractConfig, run_extract
    from extract.vit import LARGE_PRESETS

    cfg = ExtractConfig(
        corpus=corpus, out=out, format=format, camera=camera, video_key=video_key, state_key=state_key,
        fps=fps, preset=preset, checkpoint=checkpoint, random_init=random_init, codec=codec,
        compression=compression, chunk_frames=chunk_frames, episodes_per_unit=episodes_per_unit,
        batch_size=batch_size, workers=workers, rank=rank, world_size=world_size, device=device, limit=limit,
    )
    if checkpoint is None and preset not in LARGE_PRESETS:
        err.print(f"[yellow]note: preset {preset} has RANDOM weights (no checkpoint): "
                  "fine for the demo and tests, meaningless as real features[/yellow]")
    frames = [0, time.perf_counter()]
    columns = [TextColumn("[bold]extract"), BarColumn(), MofNCompleteColumn(), TextColumn("episodes"),
               TextColumn("{task.fields[frames]} frames, {task.fields[rate]:.1f} frames/s"), TimeRemainingColumn()]
    with Progress(*columns, console=err) as progress:
        task = progress.add_task("extract", total=None, frames=0, rate=0.0)

        def on_episode(n: int) -> None:
            frames[0] += n
            rate = frames[0] / max(time.perf_counter() - frames[1], 1e-9)
            progress.update(task, advance=1, frames=frames[0], rate=rate)

        s = run_extract(cfg, on_start=lambda n: progress.update(task, total=n), on_episode=on_episode)
    t = Table(title=f"extraction, rank {s.rank} of {s.world_size}", show_header=False)
    for k, v in [("store", s.store), ("units written", s.units), ("units already sealed", s.units_skipped),
                 ("episodes ok", s.episodes_ok), ("episodes skipped", len(s.skipped)), ("frames", s.frames),
                 ("seconds", f"{s.seconds:.1f}"), ("frames/s", f"{s.frames / max(s.seconds, 1e-9):.1f}"),
                 ("manifest merged", "yes" if s.merged else "no (units of other ranks pending)")]:
        t.add_row(k, str(v))
    console.print(t)
    if s.skipped:
        console.print(f"[yellow]{len(s.skipped)} episode(s) skipped:[/yellow]")
        for source, reason in s.skipped:
            console.print(f"  {source}: {reason}")


# ---------------------------------------------------------------- train


def horizon_table(title: str, val: dict) -> Table:
    """Rollout L1 per horizon next to the copy-last baseline."""
    t = Table(title=title)
    for col in ("h", "model rollout L1", "copy-last L1", "model / copy"):
        t.add_column(col, justify="right")
    for h, (m, c) in enumerate(zip(val["rollout_l1"], val["copy_l1"]), start=1):
        style = "green" if m < c else "red"
        t.add_row(str(h), f"{m:.4f}", f"{c:.4f}", f"[{style}]{m / c:.3f}[/{style}]")
    return t


@app.command("train")
def train(
    store: Path = typer.Option(..., help="Feature store written by `extract`."),
    out: Path = typer.Option(..., help="Run folder: checkpoints, metrics.csv, val.csv, tb/."),
    preset: str = typer.Option("ac_vitg", help="Predictor: ac_vitg (released 1024x24); small: ac_vitg_mini, ac_demo, ac_test."),
    frames: int = typer.Option(8, help="Stored frames per clip."),
    rollout_steps: int = typer.Option(2, help="Autoregressive steps of the rollout loss (0: teacher forcing only)."),
    batch_size: int = typer.Option(8, help="Clips per step and rank."),
    steps: int = typer.Option(1000, help="Optimizer steps in all."),
    lr: float = typer.Option(4.25e-4, help="Peak learning rate."),
    start_lr: float = typer.Option(7.5e-5, help="Learning rate at the start of warmup."),
    final_lr: float = typer.Option(0.0, help="Learning rate at the end of the anneal."),
    warmup: int | None = typer.Option(None, help="Warmup steps (default: 4.8% of --steps, as 4.5k of 94.5k)."),
    anneal: int | None = typer.Option(None, help="Anneal steps (default: 4.8% of --steps)."),
    weight_decay: float = typer.Option(0.04, help="AdamW weight decay on weight matrices."),
    grad_clip: float | None = typer.Option(None, help="Clip the gradient norm to this (default: no clipping)."),
    val_fraction: float = typer.Option(0.1, help="Fraction of episodes held out for validation."),
    val_every: int = typer.Option(200, help="Validate every N steps (and at the end)."),
    val_clips: int = typer.Option(256, help="Validation clips (evenly spaced windows of held-out episodes)."),
    ckpt_every: int = typer.Option(500, help="Write a checkpoint every N steps (and at the end)."),
    keep_last: int = typer.Option(3, help="Step checkpoints kept besides latest.pt."),
    resume: bool = typer.Option(False, help="Continue from OUT/latest.pt."),
    init_from: Path | None = typer.Option(None, help="Start from a predictor checkpoint (e.g. vjepa2-ac-vitg.pt)."),
    seed: int = typer.Option(0, help="Seed of the model init, the data order and the split."),
    workers: int = typer.Option(2, help="DataLoader worker processes."),
    activation_checkpointing: bool = typer.Option(False, help="Recompute block activations in backward (less memory)."),
    attention: str = typer.Option("per-step", help="Block-causal attention: per-step (one unmasked SDPA per step) | mask (one masked SDPA); see bench attention."),
    device: str | None = typer.Option(None, help="Torch device (default: cuda:$LOCAL_RANK if available, else cpu)."),
) -> None:
    """Train the V-JEPA 2-AC predictor on cached features (teacher forcing + rollout L1). DDP under torchrun."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from train.loop import TrainConfig, run_train

    cfg = TrainConfig(
        store=store, out=out, preset=preset, frames=frames, rollout_steps=rollout_steps, batch_size=batch_size,
        steps=steps, lr=lr, start_lr=start_lr, final_lr=final_lr, warmup=warmup, anneal=anneal,
        weight_decay=weight_decay, grad_clip=grad_clip, val_fraction=val_fraction, val_every=val_every,
        val_clips=val_clips, ckpt_every=ckpt_every, keep_last=keep_last, resume=resume, init_from=init_from,
        seed=seed, workers=workers, activation_checkpointing=activation_checkpointing, attention=attention,
        device=device,
    )
    rank0 = int(os.environ.get("RANK", 0)) == 0
    columns = [TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(), TextColumn("steps"),
               TextColumn("loss {task.fields[loss]:.4f}  {task.fields[cps]:.1f} clips/s  {task.fields[val]}"),
               TimeRemainingColumn()]
    with Progress(*columns, console=err, disable=not rank0) as progress:
        task = progress.add_task("train", total=None, loss=float("nan"), cps=0.0, val="")

        def on_step(row: dict, val: dict | None) -> None:
            shown = f"val h1 {val['rollout_l1'][0]:.4f} (copy {val['copy_l1'][0]:.4f})" if val else ""
            progress.update(task, completed=row["step"], loss=row["loss"], cps=row["clips_per_s"], val=shown)

        result = run_train(cfg, on_start=lambda total, start: progress.update(task, total=total, completed=start),
                           on_step=on_step)
    if rank0 and result.val:
        console.print(horizon_table(f"validation after {cfg.steps} steps ({result.val['clips']} clips)", result.val))
        console.print(f"teacher-forcing L1 {result.val['tf_l1']:.4f}; checkpoints and metrics in {result.out}")


# ---------------------------------------------------------------- eval and plan

CheckpointOpt = typer.Option(..., help="Predictor checkpoint: RUN/latest.pt, or the released vjepa2-ac-vitg.pt.")
StoreOpt = typer.Option(..., help="Feature store to evaluate on.")
DeviceOpt = typer.Option(None, help="Torch device (default: cuda if available, else cpu).")
SAMPLES = typer.Option(800, help="CEM samples per iteration.")
ITERATIONS = typer.Option(10, help="CEM iterations.")
ELITES = typer.Option(10, help="CEM elites (top-k lowest energies).")
MOMENTUM_MEAN = typer.Option(0.15, help="Momentum of the mean: new = elites x (1 - m) + old x m.")
MOMENTUM_STD = typer.Option(0.15, help="Momentum of the std.")
MAXNORM = typer.Option(0.075, help="Each xyz action component is clipped to +-maxnorm (m).")
GRIPPER_MAX = typer.Option(0.75, help="Gripper change clipped to +-this.")
DIMS = typer.Option("xyzg", help="Searched action dims: xyzg (xyz + gripper, rotation 0) or all.")
ENERGY_BATCH = typer.Option(800, help="Energies per predictor call.")


def _device(name: str | None):
    import torch

    return torch.device(name) if name else torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _episodes(store, ckpt: dict, which: str) -> list[int]:
    """The trainer's validation split (from the checkpoint) or all ok episodes."""
    from train.data import split_episodes

    if which == "all":
        return store.ok_episodes
    if which != "val":
        raise UserError("--episodes must be val or all")
    if "split" not in ckpt:
        raise UserError("this checkpoint records no train/val split (not one of ours): use --episodes all")
    split = ckpt["split"]
    val = split_episodes(store, split["val_fraction"], split["seed"])[1]
    if not val:
        raise UserError("the run had no validation episodes (--val-fraction 0): use --episodes all")
    return val


@app.command("eval")
def evaluate_cmd(
    checkpoint: Path = CheckpointOpt,
    store: Path = StoreOpt,
    episodes: str = typer.Option("val", help="val: the trainer's held-out episodes; all: every episode."),
    frames: int | None = typer.Option(None, help="Frames per clip, H = frames - 1 (default: the training clip length)."),
    max_clips: int = typer.Option(512, help="At most this many clips (evenly spaced windows)."),
    batch_size: int = typer.Option(8, help="Clips per batch."),
    out: Path | None = typer.Option(None, help="Report folder (default: eval/ beside the checkpoint)."),
    seed: int = typer.Option(0, help="Seed of the action shuffle."),
    device: str | None = DeviceOpt,
) -> None:
    """Rollout error per horizon vs copy-last (with standard errors) and the model's action sensitivity."""
    import json

    from torch.utils.data import Subset

    from store import open_store
    from train.data import ClipDataset
    from train.evaluate import evaluate, plot_report
    from train.loop import load_trained

    dev = _device(device)
    st = open_store(store)
    model, ckpt = load_trained(checkpoint, st)
    frames = frames or ckpt.get("split", {}).get("frames", 8)
    clips = ClipDataset(st, _episodes(st, ckpt, episodes), frames)
    if len(clips) == 0:
        raise UserError(f"no episode of {store} holds {frames} frames")
    step = max(1, len(clips) // max_clips)
    clips = Subset(clips, list(range(0, len(clips), step))[:max_clips])
    report = evaluate(model.to(dev), clips, dev, batch_size, seed)
    out = out or Path(checkpoint).parent / "eval"
    out.mkdir(parents=True, exist_ok=True)
    report.update({"checkpoint": str(checkpoint), "store": str(store), "episodes": episodes, "frames": frames})
    (out / "report.json").write_text(json.dumps(report, indent=1))
    plot_report(report, out / "horizon.png")

    t = Table(title=f"{report['clips']} clips of {frames} frames ({episodes} episodes); mean ± standard error")
    for col in ("h", "model L1", "copy L1", "model cos", "copy cos", "shuffled/true", "zero/true"):
        t.add_column(col, justify="right")
    for h in range(frames - 1):
        r = report
        t.add_row(str(h + 1), f"{r['rollout_l1'][h]:.4f}±{r['rollout_l1_se'][h]:.4f}",
                  f"{r['copy_l1'][h]:.4f}±{r['copy_l1_se'][h]:.4f}", f"{r['rollout_cos'][h]:.3f}",
                  f"{r['copy_cos'][h]:.3f}", f"{r['shuffled_over_true'][h]:.3f}", f"{r['zero_over_true'][h]:.3f}")
    console.print(t)
    console.print(f"teacher-forcing L1 {report['tf_l1']:.4f} ± {report['tf_l1_se']:.4f}")
    worse = (sum(report["shuffled_over_true"]) / len(report["shuffled_over_true"]) - 1) * 100
    console.print(f"with other clips' actions the rollout error is {worse:+.1f}% on average "
                  f"({'the model uses its actions' if worse > 2 else 'the model barely uses its actions'})")
    console.print(f"wrote {out / 'report.json'} and {out / 'horizon.png'}")


def _cem_config(samples, iterations, elites, horizon, momentum_mean, momentum_std, maxnorm, gripper_max, dims,
                energy_batch, seed):
    from train.plan import CEMConfig

    return CEMConfig(samples=samples, iterations=iterations, elites=elites, horizon=horizon,
                     momentum_mean=momentum_mean, momentum_std=momentum_std, maxnorm=maxnorm,
                     gripper_max=gripper_max, dims=dims, batch=energy_batch, seed=seed)


@app.command("plan")
def plan_cmd(
    checkpoint: Path = CheckpointOpt,
    store: Path | None = typer.Option(None, help="Take start and goal frames from this store ..."),
    episode: int | None = typer.Option(None, help="... episode id,"),
    start: int = typer.Option(0, help="... start frame (stored index),"),
    goal: int | None = typer.Option(None, help="... goal frame (default: start + horizon)."),
    image: Path | None = typer.Option(None, help="Or: the current camera image (encoded with the run's encoder) ..."),
    goal_image: Path | None = typer.Option(None, help="... the goal image ..."),
    state: str | None = typer.Option(None, help="... and the current state 'x,y,z,roll,pitch,yaw,gripper'."),
    encoder_checkpoint: Path | None = typer.Option(None, help="Encoder weights for --image (the store's encoder)."),
    horizon: int = typer.Option(1, help="Actions planned."),
    samples: int = SAMPLES, iterations: int = ITERATIONS, elites: int = ELITES,
    momentum_mean: float = MOMENTUM_MEAN, momentum_std: float = MOMENTUM_STD, maxnorm: float = MAXNORM,
    gripper_max: float = GRIPPER_MAX, dims: str = DIMS, energy_batch: int = ENERGY_BATCH,
    seed: int = typer.Option(0, help="Seed of the CEM samples."),
    landscape: Path | None = typer.Option(None, help="Write the energy over a (dx, dy) grid around 0 to this PNG."),
    device: str | None = DeviceOpt,
) -> None:
    """Plan actions from a start frame to a goal with the cross-entropy method (energy: L1 to the goal)."""
    import torch

    from store import open_store
    from train.loop import load_trained
    from train.plan import encode_images, landscape as energy_landscape, plan_to_goal, plot_landscape, store_pair

    dev = _device(device)
    cfg = _cem_config(samples, iterations, elites, horizon, momentum_mean, momentum_std, maxnorm, gripper_max,
                      dims, energy_batch, seed)
    true = None
    if store is not None:
        if episode is None:
            raise UserError("--store needs --episode (and --start, --goal)")
        st = open_store(store)
        model, _ = load_trained(checkpoint, st)
        model.to(dev)
        z0, s0, zg, true = store_pair(st, episode, start, start + horizon if goal is None else goal, dev)
        if len(true) != horizon:
            console.print(f"[yellow]note: goal is {len(true)} frames after start, planning {horizon} action(s)[/yellow]")
    elif image is not None and goal_image is not None and state is not None:
        try:
            s0 = torch.tensor([float(v) for v in state.split(",")], device=dev)
        except ValueError:
            raise UserError("--state must be 7 comma-separated numbers") from None
        if s0.shape != (7,):
            raise UserError("--state must be 7 comma-separated numbers")
        model, ckpt = load_trained(checkpoint)
        z0, zg = encode_images([image, goal_image], ckpt, encoder_checkpoint, dev)
        if z0.shape[-1] != model.predictor_embed.in_features:
            raise UserError(f"the encoder gives {z0.shape[-1]}-dim features, the predictor takes "
                            f"{model.predictor_embed.in_features}")
        model.to(dev)
    else:
        raise UserError("give --store/--episode/--start/--goal, or --image, --goal-image and --state")

    plan = plan_to_goal(model, z0, s0, zg, cfg)
    t = Table(title=f"planned actions (energy {plan.energy:.4f})")
    for col in ("step", "dx", "dy", "dz", "droll", "dpitch", "dyaw", "dgripper"):
        t.add_column(col, justify="right")
    for k, a in enumerate(plan.actions.tolist()):
        t.add_row(str(k), *(f"{v:+.4f}" for v in a))
    if true is not None:
        for k, a in enumerate(true.tolist()):
            t.add_row(f"true {k}", *(f"{v:+.4f}" for v in a), style="dim")
    console.print(t)
    console.print(f"{plan.seconds:.2f} s per planning call, {plan.evaluations / plan.seconds:.0f} energy evaluations/s "
                  f"({cfg.samples} samples x {cfg.iterations} iterations, horizon {cfg.horizon}, {dev})")
    if landscape:
        grid, energy = energy_landscape(model, z0, s0, zg, cfg.maxnorm, batch=cfg.batch)
        plot_landscape(grid, energy, None if true is None else true[0, :2], plan.actions[0, :2], landscape)
        console.print(f"wrote {landscape}")


@app.command("plan-eval")
def plan_eval_cmd(
    checkpoint: Path = CheckpointOpt,
    store: Path = StoreOpt,
    k: int = typer.Option(1, help="Stored frames between start and goal (= actions planned)."),
    pairs: int = typer.Option(32, help="Start/goal pairs (evenly spaced over the episodes)."),
    episodes: str = typer.Option("val", help="val: the trainer's held-out episodes; all: every episode."),
    samples: int = SAMPLES, iterations: int = ITERATIONS, elites: int = ELITES,
    momentum_mean: float = MOMENTUM_MEAN, momentum_std: float = MOMENTUM_STD, maxnorm: float = MAXNORM,
    gripper_max: float = GRIPPER_MAX, dims: str = DIMS, energy_batch: int = ENERGY_BATCH,
    seed: int = typer.Option(0, help="Seed of the CEM samples."),
    out: Path | None = typer.Option(None, help="Report folder (default: plan-eval/ beside the checkpoint)."),
    device: str | None = DeviceOpt,
) -> None:
    """Offline planning evaluation: infer the action between held-out frames by CEM, compare with the truth."""
    import json

    from rich.progress import Progress

    from store import open_store
    from train.loop import load_trained
    from train.plan import offline_planning

    dev = _device(device)
    st = open_store(store)
    model, ckpt = load_trained(checkpoint, st)
    cfg = _cem_config(samples, iterations, elites, k, momentum_mean, momentum_std, maxnorm, gripper_max, dims,
                      energy_batch, seed)
    with Progress(console=err, transient=True) as progress:
        task = progress.add_task("planning", total=pairs)
        result = offline_planning(model.to(dev), st, _episodes(st, ckpt, episodes), k, pairs, cfg, dev,
                                  on_pair=lambda _: progress.advance(task))
    out = out or Path(checkpoint).parent / "plan-eval"
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(result, indent=1))
    m = result["mean"]
    t = Table(title=f"offline planning over {result['pairs']} pairs, {k} stored frame(s) apart")
    for col in ("", "CEM plan", "zero action"):
        t.add_column(col, justify="right")
    t.add_row("xyz error (cm)", f"{100 * m['xyz_error']:.2f}", f"{100 * m['zero_xyz_error']:.2f}")
    t.add_row("direction cosine", f"{m['cosine']:.3f}", "0")
    t.add_row("gripper error", f"{m['gripper_error']:.3f}", f"{m['zero_gripper_error']:.3f}")
    t.add_row("true move (cm)", f"{100 * m['true_move']:.2f}", "")
    t.add_row("seconds per plan", f"{m['seconds']:.2f}", "")
    console.print(t)
    console.print(f"wrote {out / 'report.json'}")


# ---------------------------------------------------------------- store


@store_app.command("ls")
def store_ls(path: Path = StorePath) -> None:
    """List shards: sealed or not, episodes, frames, bytes on disk, codec."""
    from store.format import read_root_attrs
    from store.inspect import shard_rows

    attrs = read_root_attrs(path)
    rows = shard_rows(path)
    t = Table(title=f"{path} ({len(rows)} of {attrs['num_units']} units present)")
    for col in ("shard", "state", "episodes", "frames", "size", "codec"):
        t.add_column(col, justify="right" if col in ("episodes", "frames", "size") else "left")
    for r in rows:
        t.add_row(
            f"{r['unit']:05d}",
            "sealed" if r["sealed"] else "[red]unsealed[/red]",
            "-" if r["episodes"] is None else str(r["episodes"]),
            "-" if r["frames"] is None else str(r["frames"]),
            _human_bytes(r["bytes"]),
            r["codec"],
        )
    console.print(t)


@store_app.command("info")
def store_info(path: Path = StorePath) -> None:
    """The store's extraction settings and totals (frames, hours of video, size)."""
    from store import open_store
    from store.inspect import summary

    s = summary(open_store(path))
    t = Table(title=str(path), show_header=False)
    t.add_column("key", style="bold")
    t.add_column("value")
    for k, v in s.items():
        if k == "hours":
            v = f"{v:.3f}"
        elif k == "bytes":
            v = _human_bytes(v)
        t.add_row(k, str(v))
    console.print(t)


@store_app.command("show")
def store_show(
    path: Path = StorePath,
    episode: int = typer.Argument(..., help="Episode id (see `store info` / the manifest)."),
    png: Path | None = typer.Option(None, help="Write a picture: PCA filmstrip of the features above the state plot."),
) -> None:
    """One episode: source, task, state trajectory and per-frame feature statistics."""
    from store import open_store
    from store.inspect import episode_png, episode_summary

    store = open_store(path)
    s = episode_summary(store, episode)
    row = s["row"]
    console.print(f"[bold]episode {episode}[/bold]  status={row['status']} {row['reason']}")
    for k in ("source", "camera", "task", "success", "num_frames", "native_fps", "stride", "note", "unit"):
        console.print(f"  {k}: {row[k]}")
    if "state" not in s:
        return
    st = s["state"]
    fmt = lambda v: "[" + ", ".join(f"{x:.3f}" for x in v) + "]"  # noqa: E731
    console.print(f"  state first {fmt(st['first'])}\n  state last  {fmt(st['last'])}")
    console.print(f"  state min   {fmt(st['min'])}\n  state max   {fmt(st['max'])}")
    console.print(f"  xyz path length: {st['xyz_path_length']:.4f}")
    t = Table(title="per-frame features")
    for col in ("row", "frame", "time s", "mean", "std", "token norm", "L1 to prev"):
        t.add_column(col, justify="right")
    fr = s["frames"]
    for i in range(len(fr["mean"])):
        t.add_row(str(i), str(fr["frame_index"][i]), f"{fr['timestamp'][i]:.2f}", f"{fr['mean'][i]:.4f}",
                  f"{fr['std'][i]:.4f}", f"{fr['token_norm'][i]:.3f}", f"{fr['delta_l1'][i]:.4f}")
    console.print(t)
    if png:
        episode_png(store, episode, png)
        console.print(f"wrote {png}")


@store_app.command("verify")
def store_verify(path: Path = StorePath) -> None:
    """Check every sealed shard's checksums, shapes and the manifest; exit 1 if anything is wrong."""
    from rich.progress import Progress

    from store import sealed_units, verify

    with Progress(console=err, transient=True) as progress:
        task = progress.add_task("verifying shards", total=len(sealed_units(path)))
        problems = verify(path, on_shard=lambda _: progress.advance(task))
    if problems:
        for p in problems:
            console.print(f"[red]BAD[/red] {p}")
        console.print(f"[red]{len(problems)} problem(s) in {path}[/red]")
        raise typer.Exit(1)
    console.print(f"[green]OK[/green] {path}: every unit sealed, checksums and manifest consistent")


@store_app.command("stats")
def store_stats(path: Path = StorePath) -> None:
    """Feature mean/std/norm summaries and NaN/Inf counts over every stored frame."""
    from rich.progress import Progress

    from store import open_store
    from store.inspect import feature_stats

    store = open_store(path)
    with Progress(console=err, transient=True) as progress:
        task = progress.add_task("reading features", total=len(store.ok_episodes))
        stats = feature_stats(store, on_episode=lambda _: progress.advance(task))
    t = Table(title=f"feature statistics of {path}", show_header=False)
    for k, v in stats.items():
        t.add_row(k, f"{v:.5g}" if isinstance(v, float) else str(v))
    console.print(t)
    if stats["nan"] or stats["inf"]:
        console.print("[red]non-finite feature values found[/red]")
        raise typer.Exit(1)


@store_app.command("merge")
def store_merge(path: Path = StorePath) -> None:
    """Merge the shards' episode tables into manifest.parquet once every unit is sealed."""
    from store import merge_manifest

    table = merge_manifest(path)
    console.print(f"wrote {path / 'manifest.parquet'} with {table.num_rows} episodes")


# ---------------------------------------------------------------- bench

bench_app = typer.Typer(help="Benchmarks: each prints its results and writes its section of BENCHMARKS.md.",
                        no_args_is_help=True)
app.add_typer(bench_app, name="bench")
BenchDir = typer.Option(Path("data/bench"), help="Working folder (corpora and stores are reused).")
Write = typer.Option(True, help="Write the section into BENCHMARKS.md.")


def _report(name: str, title: str, run, write: bool) -> None:
    from bench.report import section, write_section

    body, _ = run()
    text = section(title, "python cli.py " + " ".join(sys.argv[1:]), body)
    console.print(text)
    if write:
        write_section(name, text)


@bench_app.command("cached-vs-online")
def bench_online(
    directory: Path = BenchDir, write: bool = Write,
    pairs: str = typer.Option("vit_demo:ac_demo,vit_g_mini:ac_vitg_mini",
                              help="encoder:predictor pairs (vit_giant:ac_vitg on a GPU)."),
    batch: int = typer.Option(4, help="Clips per step."), batches: int = typer.Option(8, help="Steps per run."),
    repeats: int = typer.Option(5, help="Runs per path, alternating (the median is reported)."),
    workers: int = typer.Option(1, help="DataLoader workers."),
) -> None:
    """Training clips/s from the store vs decoding + encoding on every step (the reference way)."""
    from bench import online

    pair_list = [tuple(p.split(":")) for p in pairs.split(",")]
    _report("cached-vs-online", f"Cached features vs online encoding ({'GPU' if _device(None).type == 'cuda' else 'CPU'})",
            lambda: online.run(directory, pair_list, batch, batches, repeats, workers), write)


@bench_app.command("loader")
def bench_loader(
    directory: Path = BenchDir, write: bool = Write,
    frames: int = typer.Option(6000, help="Frames in each benchmark store (ViT-g size: 704 KiB each)."),
    clips: int = typer.Option(200, help="Clips read per measurement."),
) -> None:
    """Random 8-frame windows through the trainer's DataLoader vs a plain sequential read of the shards."""
    from bench import loader

    _report("loader", "Data loader vs plain read", lambda: loader.run(directory, frames, clips), write)


@bench_app.command("extract")
def bench_extract(
    directory: Path = BenchDir, write: bool = Write,
    preset: str = typer.Option("vit_demo", help="Encoder preset (vit_giant on a GPU)."),
    batch: int = typer.Option(64, help="Encoder batch (frames)."),
    workers: int = typer.Option(1, help="Decoding workers."),
    episodes: int = typer.Option(32, help="Demo corpus episodes."),
) -> None:
    """Whole-job frames/s vs decode-only and encode-only."""
    from bench import extract as bench_extract_mod

    _report(f"extract-{preset}", f"Extraction pipeline ({preset})",
            lambda: bench_extract_mod.run(directory, preset, batch, workers, episodes), write)


@bench_app.command("codecs")
def bench_codecs(
    directory: Path = BenchDir, write: bool = Write,
    steps: int = typer.Option(300, help="Training steps of the int8-vs-bf16 comparison."),
) -> None:
    """Bytes per frame, read speed and fidelity of each codec and compression; int8 vs bf16 training."""
    from bench import codecs as bench_codecs_mod

    _report("codecs", "Feature codecs", lambda: bench_codecs_mod.run(directory, train_steps=steps), write)


@bench_app.command("attention")
def bench_attention(write: bool = Write) -> None:
    """The predictor's block-causal attention: masked SDPA vs per-step SDPA vs plain softmax."""
    from bench import attention

    _report(f"attention-{_device(None).type}", f"Block-causal attention ({_device(None).type.upper()})",
            attention.run, write)


@bench_app.command("memory")
def bench_memory(directory: Path = BenchDir, write: bool = Write) -> None:
    """Peak RSS of the extraction job and of training at the demo sizes."""
    from bench import memory

    _report("memory", "Peak memory", lambda: memory.run(directory), write)


@bench_app.command("gpu")
def bench_gpu(write: bool = Write) -> None:
    """ViT-g encoder frames/s (bf16, batch 64); ac_vitg step time and MFU at 8 and 16 clips."""
    from bench import gpu

    _report("gpu", "GPU: encoder and predictor", gpu.run, write)


@bench_app.command("plan")
def bench_plan(
    write: bool = Write,
    presets: str = typer.Option("ac_demo", help="Predictor presets: ac_demo (128-dim 8x8 features), ac_vitg (ViT-g)."),
    samples: int = SAMPLES, iterations: int = ITERATIONS, energy_batch: int = ENERGY_BATCH,
) -> None:
    """Energy evaluations/s and seconds per planning call (paper settings: 800 x 10, horizon 1)."""
    from bench import plan as bench_plan_mod
    from train.plan import CEMConfig

    dims = {"ac_demo": (128, (8, 8)), "ac_vitg": (1408, (16, 16)), "ac_vitg_mini": (320, (8, 8))}
    cfg = CEMConfig(samples=samples, iterations=iterations, batch=energy_batch)
    settings = [(p, *dims[p], cfg) for p in presets.split(",")]
    _report(f"plan-{_device(None).type}", f"Planning speed ({_device(None).type.upper()})",
            lambda: bench_plan_mod.run(settings), write)


def main() -> None:
    try:
        app()
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)  # one line, never wrapped
        sys.exit(2)
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(130)


if __name__ == "__main__":
    main()
