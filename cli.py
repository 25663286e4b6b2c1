"""Command line of the V-JEPA 2-AC pipeline: extract features once, train on them, inspect, evaluate, plan.

A printer: each command's options come from its config dataclass (defaults, help and limits are
written there once), it calls one library function and prints the result. Library modules are
imported inside the commands, so `--help` never loads torch.
"""

from __future__ import annotations

import gc
import logging
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from bench.config import BENCHES
from common.commands import command
from common.errors import PREEMPTED_EXIT, PeerLost, Preempted, TrainingDiverged, UserError
from common.files import human_bytes, output_file
from extract.config import ExtractConfig
from sim.config import CollectConfig, DemoCorpusConfig, SimEvalConfig
from store.digest import DIGESTS, SEAL_DIGEST
from train.config import EvalConfig, ExportConfig, PlanConfig, PlanEvalConfig, TrainConfig

app = typer.Typer(help="Train V-JEPA 2-AC world models from cached V-JEPA 2 features.", no_args_is_help=True,
                  pretty_exceptions_enable=False, add_completion=False)
store_app = typer.Typer(help="Inspect, verify, merge and migrate feature stores.", no_args_is_help=True)
bench_app = typer.Typer(help="Benchmarks: each prints its results and writes its section of BENCHMARKS.md.",
                        no_args_is_help=True)
sim_app = typer.Typer(help=escape("Closed loop in a simulator (gym-pusht with the [sim] extra, or the demo world): "
                                  "collect a corpus, evaluate a trained model by planning."), no_args_is_help=True)
app.add_typer(store_app, name="store")
app.add_typer(sim_app, name="sim")
app.add_typer(bench_app, name="bench")
console = Console(soft_wrap=True)  # long paths stay on one line
err = Console(stderr=True)
T = TypeVar("T")
StorePath = typer.Argument(..., help="Store written by `extract`: a folder or an fsspec URL (s3://bucket/prefix).")


@contextmanager
def _bar(label: str, fields: str = "", disable: bool = False) -> Iterator[Progress]:
    """A progress bar on stderr; `fields` formats the task's extra fields after the count. A bar with fields
    stays as the command's summary. Where stderr is not a terminal (a log) nothing is drawn while it runs, and
    only a command that succeeded writes its summary, so a failure's log holds just its `error:` line."""
    columns = [TextColumn(f"[bold]{label}"), BarColumn(), MofNCompleteColumn(), TextColumn(fields), TimeRemainingColumn()]
    live = err.is_terminal and not disable
    with Progress(*columns, console=err, transient=not fields, disable=not live) as p:
        yield p
    if fields and not live and not disable:
        err.print(p.get_renderable())


LOG_EVERY = 30  # seconds between progress lines where stderr is a log, not a terminal


def _clock(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    return f"{m // 60}:{m % 60:02d}:{s:02d}" if m >= 60 else f"{m}:{s:02d}"


@contextmanager
def _steps(label: str) -> Iterator[Callable[[int, int], None]]:
    """`update(done, total)` moves a progress bar with the time left; where stderr is a log, not a terminal, it
    writes a line with the count and the time left at most every LOG_EVERY seconds (long jobs show progress)."""
    start, logged = time.perf_counter(), [0.0]
    with _bar(label) as p:
        task = p.add_task("", total=None)

        def update(done: int, total: int) -> None:
            p.update(task, completed=done, total=total)
            elapsed = time.perf_counter() - start
            if not err.is_terminal and done and elapsed - logged[0] >= LOG_EVERY:
                logged[0] = elapsed
                err.print(f"{label}: {done}/{total} after {_clock(elapsed)}, about "
                          f"{_clock(elapsed / done * (total - done))} left", highlight=False)

        yield update


def _counted(label: str, total: int, run: Callable[[Callable], T]) -> T:
    """`run(tick)` under a progress bar of `total` steps, each `tick(...)` call one step."""
    done = [0]
    with _steps(label) as update:
        def tick(*_) -> None:
            done[0] += 1
            update(done[0], total)

        return run(tick)


def _table(title: str, header: list[str] | None, rows: list[list]) -> None:
    t = Table(title=escape(title), show_header=header is not None)  # titles hold paths, never markup
    for col in header or ["", ""]:
        t.add_column(col, justify="right" if header else "left")
    for row in rows:
        t.add_row(*map(str, row))
    console.print(t)


# ---------------------------------------------------------------- extract and train


@command(app, "demo-corpus", DemoCorpusConfig)
def demo_corpus(cfg: DemoCorpusConfig) -> None:
    """Write the built-in synthetic robot corpus: a rendered gripper pushing a block, in DROID raw format."""
    from sim.demo import make_demo_corpus

    _counted("rendering episodes", cfg.episodes,
             lambda tick: make_demo_corpus(cfg.out, cfg.episodes, cfg.seed, progress=tick))
    console.print(f"wrote {cfg.episodes} demo episodes to {cfg.out}")


@command(app, "extract", ExtractConfig)
def extract(cfg: ExtractConfig) -> None:
    """Run a frozen encoder (V-JEPA 2 by default) once over a corpus into a sharded feature store (resumable)."""
    from extract.job import run_extract
    from model.encoders import random_weights

    if random_weights(cfg.encoder, cfg.checkpoint, cfg.random_init):
        what = f"no --checkpoint: preset {cfg.preset}" if cfg.encoder == "vjepa2" else f"--encoder {cfg.encoder}"
        err.print(f"[yellow]note: {what} has RANDOM weights: fine for the demo, tests and timing, meaningless as "
                  "real features[/yellow]")
    start = time.perf_counter()
    with _bar("extract", "{task.fields[frames]} frames, {task.fields[rate]:.1f} frames/s") as p:
        task = p.add_task("", total=None, frames=0, rate=0.0)

        def on_episode(n: int) -> None:
            frames = p.tasks[0].fields["frames"] + n
            p.update(task, advance=1, frames=frames, rate=frames / max(time.perf_counter() - start, 1e-9))

        s = run_extract(cfg, on_start=lambda n: p.update(task, total=n), on_episode=on_episode)
    _table(f"extraction, rank {s.rank} of {s.world_size}", None, [
        ["store", s.store], ["actions", s.actions], ["units written", s.units], ["units already sealed", s.units_skipped],
        ["units another process was writing", s.units_held],
        ["episodes ok", s.episodes_ok], ["episodes skipped", len(s.skipped)],
        ["episodes decoded by PyAV", len(s.fallback)], ["frames", s.frames],
        ["seconds", f"{s.seconds:.1f}"], ["frames/s", f"{s.frames / max(s.seconds, 1e-9):.1f}"],
        ["manifest merged", "yes" if s.merged else "no (units of other ranks pending)"],
        *([["object-store requests retried", s.retries]] if s.retries is not None else [])])
    for why, n in Counter(why for _, why in s.fallback).items():  # once per reason, not per episode
        every = "every episode" if n == s.episodes_ok else f"{n} of {s.episodes_ok} episodes"
        console.print(f"[yellow]{every} decoded by PyAV ({why})[/yellow]")
    for what, items in (("skipped", s.skipped), ("stored with a note", s.notes)):
        if items:
            console.print(f"[yellow]{len(items)} episode(s) {what}:[/yellow]")
            for source, text in items:
                console.print(f"  {source}: {text}")
    if s.skipped_before:
        console.print(f"[yellow]{len(s.skipped_before)} episode(s) skipped by an earlier run, kept in their sealed "
                      "units (--retry-skipped redoes those units):[/yellow]")
        for source, text in s.skipped_before:
            console.print(f"  {source}: {text}")
    if s.failed:
        raise UserError(s.failed)


def _horizon_rows(val: dict) -> list[list]:
    return [[h, f"{m:.4f}", f"{c:.4f}", f"[{'green' if m < c else 'red'}]{m / c:.3f}"]
            for h, (m, c) in enumerate(zip(val["rollout_l1"], val["copy_l1"]), start=1)]


@command(app, "train", TrainConfig)
def train(cfg: TrainConfig) -> None:
    """Train the V-JEPA 2-AC predictor on cached features (teacher forcing + rollout L1). DDP under torchrun."""
    from common.device import rank_world
    from train.loop import run_train

    lead = rank_world()[0] == 0
    with _bar("train", "loss {task.fields[loss]:.4f}  {task.fields[cps]:.1f} clips/s  {task.fields[val]}",
              disable=not lead) as p:
        task = p.add_task("", total=None, loss=float("nan"), cps=0.0, val="")

        def on_step(row: dict, val: dict | None) -> None:
            shown = f"val h1 {val['rollout_l1'][0]:.4f} (copy {val['copy_l1'][0]:.4f})" if val else ""
            p.update(task, completed=row["step"], loss=row["loss"], cps=row["clips_per_s"], val=shown)

        result = run_train(cfg, on_start=lambda total, start: p.update(task, total=total, completed=start),
                           on_step=on_step)
    if lead and result.val:
        _table(f"validation after {cfg.steps} steps ({result.val['clips']} clips)",
               ["h", "model rollout L1", "copy-last L1", "model / copy"], _horizon_rows(result.val))
        console.print(f"teacher-forcing L1 {result.val['tf_l1']:.4f}; checkpoints and metrics in {result.out}")
    if lead and result.retries is not None:
        console.print(f"object-store requests retried: {result.retries} (all ranks and their DataLoader workers)")


# ---------------------------------------------------------------- eval and plan


@command(app, "eval", EvalConfig)
def evaluate(cfg: EvalConfig) -> None:
    """Rollout error per horizon vs copy-last (with standard errors) and the model's action sensitivity."""
    from train.evaluate import run_eval

    r = run_eval(cfg)
    m = r.metrics
    _table(f"{m['clips']} clips of {r.frames} frames ({cfg.episodes} episodes); mean ± standard error",
           ["h", "model L1", "copy L1", "model cos", "copy cos", "shuffled/true", "zero/true"],
           [[h + 1, f"{m['rollout_l1'][h]:.4f}±{m['rollout_l1_se'][h]:.4f}", f"{m['copy_l1'][h]:.4f}±"
             f"{m['copy_l1_se'][h]:.4f}", f"{m['rollout_cos'][h]:.3f}", f"{m['copy_cos'][h]:.3f}",
             f"{m['shuffled_over_true'][h]:.3f}", f"{m['zero_over_true'][h]:.3f}"] for h in range(r.frames - 1)])
    console.print(f"teacher-forcing L1 {m['tf_l1']:.4f} ± {m['tf_l1_se']:.4f}")
    console.print(f"with other clips' actions the rollout error is {100 * r.shuffled_worse:+.1f}% on average "
                  f"({r.verdict})")
    console.print(f"wrote {r.out / 'report.json'} and {r.out / 'horizon.png'}")


@command(app, "plan", PlanConfig)
def plan(cfg: PlanConfig) -> None:
    """Plan actions from a start frame to a goal with the cross-entropy method (energy: L1 to the goal)."""
    from train.plan_report import run_plan

    r = run_plan(cfg)
    for note in r.notes:
        console.print(f"[yellow]note: {note}[/yellow]")
    rows = [[k, *(f"{v:+.4f}" for v in a)] for k, a in enumerate(r.plan.actions.tolist())]
    rows += [[f"[dim]true {k}", *(f"[dim]{v:+.4f}" for v in a)] for k, a in enumerate(
        [] if r.true_actions is None else r.true_actions.tolist())]
    _table(f"planned actions (energy {r.plan.energy:.4f})", ["step", *r.names], rows)
    c = cfg.cem
    console.print(f"{r.plan.seconds:.2f} s per planning call, {r.plan.evaluations / r.plan.seconds:.0f} energy "
                  f"evaluations/s ({c.samples} samples x {c.iterations} iterations, horizon {cfg.horizon}, {r.device})")
    if r.landscape:
        console.print(f"wrote {r.landscape}")


@command(app, "plan-eval", PlanEvalConfig)
def plan_eval(cfg: PlanEvalConfig) -> None:
    """Offline planning evaluation: infer the action between held-out frames by CEM, compare with the truth."""
    from train.plan_report import run_plan_eval

    r = _counted("planning", cfg.pairs, lambda tick: run_plan_eval(cfg, on_pair=tick))
    m = r.mean
    rows = [[f"|error| {name}", f"{a:.4g}", f"{b:.4g}"] for name, a, b in zip(r.names, m["action_error"],
                                                                               m["noop_error"])]
    if "xyz_error" in m:  # pose-delta
        rows += [["xyz error (cm)", f"{100 * m['xyz_error']:.2f}", f"{100 * m['zero_xyz_error']:.2f}"],
                 ["direction cosine", f"{m['cosine']:.3f}", "0"],
                 ["gripper error", f"{m['gripper_error']:.3f}", f"{m['zero_gripper_error']:.3f}"],
                 ["true move (cm)", f"{100 * m['true_move']:.2f}", ""]]
    _table(f"offline planning over {r.pairs} pairs, {r.k} stored frame(s) apart (per action, data units)",
           ["", "CEM plan", "no move"], rows + [["seconds per plan", f"{m['seconds']:.2f}", ""]])
    console.print(f"wrote {r.out / 'report.json'}")


@command(app, "export", ExportConfig)
def export(cfg: ExportConfig) -> None:
    from train.export import run_export

    r = run_export(cfg)
    console.print(f"wrote {r.path}: {r.tensors} predictor tensors" + (" and the encoder" if r.encoder else ""))


# ---------------------------------------------------------------- store


@store_app.command("ls")
def store_ls(path: str = StorePath) -> None:
    """List shards: sealed or not, episodes, frames, bytes on disk, codec."""
    from store.format import read_root_attrs
    from store.inspect import shard_rows

    rows = shard_rows(path)
    _table(f"{path} ({len(rows)} of {read_root_attrs(path)['num_units']} units present)",
           ["shard", "state", "episodes", "frames", "size", "codec"],
           [[f"{r.unit:05d}", "sealed" if r.sealed else "[red]unsealed", "-" if r.episodes is None else r.episodes,
             "-" if r.frames is None else r.frames, human_bytes(r.bytes), r.codec] for r in rows])


@store_app.command("info")
def store_info(path: str = StorePath) -> None:
    """The store's extraction settings and totals (frames, hours of video, size)."""
    from store import open_store
    from store.inspect import summary

    s = summary(open_store(path))
    _table(str(path), None, [[k, escape(str(v))] for k, v in s.attrs.items()] + [
        ["units sealed", f"{s.units_sealed}/{s.num_units}"], ["episodes ok", s.episodes_ok],
        ["episodes skipped", s.episodes_skipped], ["frames", s.frames], ["hours", f"{s.hours:.3f}"],
        ["size", human_bytes(s.bytes)]])


@store_app.command("show")
def store_show(path: str = StorePath, episode: int = typer.Argument(..., help="Episode id (see the manifest)."),
               png: Path | None = typer.Option(None, help="Write a picture: PCA filmstrip of the features above "
                                                          "the state plot.")) -> None:
    """One episode: source, task, state trajectory and per-frame feature statistics."""
    from store import open_store
    from store.inspect import episode_png, episode_summary

    if png:
        output_file(png, "--png")
    store = open_store(path)
    s = episode_summary(store, episode)
    console.print(f"[bold]episode {episode}[/bold]  status={s.row['status']} {escape(str(s.row['reason']))}")
    for k in ("source", "camera", "task", "success", "num_frames", "native_fps", "stride", "note", "unit"):
        console.print(f"  {k}: {escape(str(s.row[k]))}")  # a dataset's own strings: a task may hold "[...]"
    if not s.state:
        return
    console.print("  state       " + escape(", ".join(s.state["names"])))
    for k in ("first", "last", "min", "max"):
        console.print(f"  state {k:5s} [" + ", ".join(f"{x:.3f}" for x in s.state[k]) + "]")
    console.print(f"  path length: {s.state['path_length']:.4f}")
    fr = s.frames
    _table("per-frame features", ["row", "frame", "time s", "mean", "std", "token norm", "L1 to prev"],
           [[i, fr["frame_index"][i], f"{fr['timestamp'][i]:.2f}", f"{fr['mean'][i]:.4f}", f"{fr['std'][i]:.4f}",
             f"{fr['token_norm'][i]:.3f}", f"{fr['delta_l1'][i]:.4f}"] for i in range(len(fr["mean"]))])
    if png:
        episode_png(store, episode, png)
        console.print(f"wrote {png}")


@store_app.command("verify")
def store_verify(path: str = StorePath) -> None:
    """Check every sealed shard's checksums, shapes and the manifest; exit 1 if anything is wrong."""
    from store import sealed_units, verify

    problems = _counted("verifying shards", len(sealed_units(path)), lambda tick: verify(path, on_shard=tick))
    for problem in problems:
        console.print(f"[red]BAD[/red] {escape(problem)}")
    if problems:
        console.print(f"[red]{len(problems)} problem(s) in {escape(path)}[/red]")
        raise typer.Exit(1)
    console.print(f"[green]OK[/green] {escape(path)}: every unit sealed, checksums and manifest consistent")


@store_app.command("migrate")
def store_migrate(path: str = StorePath,
                  digest: str = typer.Option(SEAL_DIGEST, help=f"Digest of the new seals: {', '.join(DIGESTS)} "
                                             "(docs/store-format.md, \"Seals\": blake3 where a store must be "
                                             "tamper-evident).")) -> None:
    """Reseal every shard with xxh3-128 digests (or --digest's; store format 3) and, for uncompressed bf16/fp16
    features, a digest per row (so training reads only the rows it needs); each file is checked against its old
    seal first. Safe to kill: run it again to finish."""
    from store import reseal, sealed_units, unsealed_units

    if digest not in DIGESTS:
        raise UserError(f"--digest {digest!r} is not one of: {', '.join(DIGESTS)}")
    changed = _counted("resealing shards", len(sealed_units(path)),
                       lambda tick: reseal(path, digest, on_shard=tick))
    unsealed = len(unsealed_units(path))
    left = f"; {unsealed} unsealed shard(s) left as they are (the extraction seals them)" if unsealed else ""
    console.print(f"{path}: {changed} shard(s) resealed with {digest} (and row digests where the chunks "
                  f"hold rows as they are), the others already were{left}")


@store_app.command("stats")
def store_stats(path: str = StorePath) -> None:
    """Feature mean/std/norm summaries and NaN/Inf counts over every stored frame."""
    from store import open_store
    from store.inspect import feature_stats

    store = open_store(path)
    stats = _counted("reading features", len(store.ok_episodes), lambda tick: feature_stats(store, on_episode=tick))
    _table(f"feature statistics of {path}", None, [[k, f"{v:.5g}" if isinstance(v, float) else v]
                                                    for k, v in stats.items()])
    if any(stats[k] for k in ("nan", "inf", "state_nan", "state_inf")):
        console.print("[red]non-finite values found[/red]")
        raise typer.Exit(1)


@store_app.command("merge")
def store_merge(path: str = StorePath) -> None:
    """Merge the shards' episode tables into manifest.parquet once every unit is sealed."""
    from store import merge_manifest
    from store.location import where

    console.print(f"wrote {where(path) / 'manifest.parquet'} with {merge_manifest(path).num_rows} episodes")


# ---------------------------------------------------------------- sim


@command(sim_app, "collect", CollectConfig)
def sim_collect(cfg: CollectConfig) -> None:
    """Episodes of a simulator under an exploratory scripted policy, as a WebDataset corpus for `extract`."""
    from sim.collect import run_collect

    r = _counted(f"collecting {cfg.env} episodes", cfg.episodes, lambda tick: run_collect(cfg, on_episode=tick))
    console.print(f"wrote {r.path}: {r.episodes} episodes, {r.frames} frames; next: cli.py extract --format "
                  f"webdataset --corpus {cfg.out} ...")


@command(sim_app, "eval", SimEvalConfig)
def sim_eval(cfg: SimEvalConfig) -> None:
    """Closed-loop planning in a simulator: plan with CEM, execute the first action, replan; baselines (and
    the oracle) beside."""
    from sim.evaluate import policy_names, run_sim_eval
    from sim.report import summary_cells

    r = _counted("closed-loop episodes", len(policy_names(cfg)) * cfg.sim.episodes,
                 lambda tick: run_sim_eval(cfg, on_episode=tick))
    rep = r.report
    rows = [[name, *summary_cells(m)] for name, m in rep["policies"].items()]
    _table(f"{rep['task']} in {rep['env']}: {rep['episodes']} episodes, budget {rep['budget']} control steps, "
           f"horizon {rep['horizon']} x {rep['frame_skip']} steps, success within {rep['tolerance']:g} "
           f"{rep['unit']}", ["policy", "success", "rate", "95% CI", f"final distance (median, {rep['unit']})",
                              "steps to first within tolerance", "s per plan"], rows)
    console.print(f"wrote {r.out / 'report.json'}, {r.out / 'grid.png'} and {min(cfg.videos, cfg.sim.episodes)} "
                  "episode videos")


# ---------------------------------------------------------------- bench


def _bench(name: str) -> Callable:
    def run(cfg) -> None:
        from bench.report import run_bench

        with _steps(f"bench {name}") as update:
            console.print(run_bench(name, cfg, on_progress=update))
    return run


for _name, (_, _cls) in BENCHES.items():
    command(bench_app, _name, _cls)(_bench(_name))


def _one_line(e: Exception) -> str:
    text = str(e).strip()
    if "Original Traceback" in text:  # raised in a DataLoader worker: torch wraps it in the worker's traceback,
        text = text.splitlines()[-1].split(": ", 1)[-1]  # whose last line is "module.Class: message"
    return text


def main() -> None:
    from typer._click.exceptions import ClickException, NoArgsIsHelpError

    # the library's notes (logging.info), e.g. which tensors --init-from re-initialised, as "note: ..." lines
    logging.basicConfig(level=logging.WARNING, format="note: %(message)s", stream=sys.stderr)
    for package in ("common", "model", "store", "extract", "train", "sim", "bench"):
        logging.getLogger(package).setLevel(logging.INFO)
    # aiohttp leaves tasks with unread errors behind when an object store's connection drops; the failure itself
    # is retried, or reported in one line
    logging.getLogger("asyncio").setLevel(logging.CRITICAL)
    try:
        code = app(standalone_mode=False)
    except NoArgsIsHelpError as e:  # a group called without a command: its help
        print(e.ctx.get_help())
        code = 0
    except ClickException as e:  # typer's own parsing errors (unknown option, not a number, ...)
        print(f"error: {e.format_message()}", file=sys.stderr)
        code = 2
    except (UserError, TrainingDiverged, PeerLost) as e:
        print(f"error: {_one_line(e)}", file=sys.stderr)  # never wrapped
        code = 2 if isinstance(e, UserError) else 1
    except Preempted as e:  # stopped by SIGTERM/SIGUSR1 with its work saved
        print(f"preempted: {e}", file=sys.stderr)
        code = PREEMPTED_EXIT
    except KeyboardInterrupt:
        err.print("interrupted")
        code = 130
    # a failed command's traceback holds its objects in reference cycles; collected only at interpreter exit,
    # after pyarrow's filesystems were finalized, their destructors abort the process (exit 134, not 2)
    gc.collect()
    sys.exit(code or 0)


if __name__ == "__main__":
    main()
