"""Which frozen features let the predictor plan: the same PushT episodes, predictor, training and CEM
through each encoder and camera (collect, extract, train, eval, sim eval reach and push, the oracle's reach and push).

Each row's corpus, store, run and reports live under DIRECTORY/<camera>-<encoder>/ and are reused, so an
interrupted benchmark resumes where it stopped; the table also shows the rows of earlier runs with the same
settings, so rows can be measured a few at a time. A folder keeps the rows of one corpus size, frame rate and
training length (its settings.json); other ones need another folder."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path

from common.errors import UserError
from common.files import output_dir
from extract.config import ExtractConfig
from extract.job import run_extract
from model import ACTION_CONDITIONING
from model.encoders import efficientnet
from model.predictor import PREDICTOR_PRESETS
from sim.collect import run_collect
from sim.config import CollectConfig, SimEvalConfig, SimTask
from sim.envs import pusht_env_class
from sim.evaluate import run_sim_eval
from train.config import CEMConfig, EvalConfig, TrainConfig
from train.evaluate import run_eval
from train.loop import run_train

from .config import EncodersBench, names
from .report import Section, table

log = logging.getLogger("bench")

VIT_DEMO = (128, 16)  # vit_demo's frame pixels and patch size; EfficientNet-Lite0 takes --size and --feature-stride
ENCODERS = {  # --encoders name -> (row label, extract settings; EfficientNet-Lite0's size and stride are the bench's)
    "vit_demo": ("`vit_demo`, random", {"preset": "vit_demo"}),
    "effnet-random": ("EfficientNet-Lite0, random", {"encoder": "efficientnet-lite0", "random_init": True}),
    "effnet-imagenet": ("EfficientNet-Lite0, ImageNet", {"encoder": "efficientnet-lite0"}),
}
CAMERAS = ("top", "agent")


def _same_settings(b: EncodersBench) -> None:
    """The settings folder names do not carry are kept in the folder: a rerun with others would reuse rows made
    with the first ones, so it is refused."""
    mine = {"corpus_episodes": b.corpus_episodes, "fps": b.fps, "steps": b.steps}
    kept = b.directory / "settings.json"
    if not kept.exists():
        kept.write_text(json.dumps(mine))
    elif (theirs := json.loads(kept.read_text())) != mine:
        made = " ".join(f"--{k.replace('_', '-')} {v:g}" for k, v in theirs.items())
        raise UserError(f"--directory {b.directory} holds rows made with {made}; use those or another --directory")


def _cached(path: Path, make: Callable[[], dict]) -> dict:
    """make()'s JSON result, kept in `path` so a rerun skips the work."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(make(), indent=1))
    return json.loads(path.read_text())


def _task(b: EncodersBench, task: str, **kw) -> SimTask:
    return SimTask(**{"env": "pusht", "task": task, "episodes": b.episodes, "budget": b.budget, "horizon": 1,
                      "size": b.size, **kw})


def _px(b: EncodersBench) -> str:
    """The frame size in a corpus's folder name: none at the default 128 px (the first runs')."""
    return "" if b.size == VIT_DEMO[0] else f"-{b.size}px"


def _tag(b: EncodersBench) -> str:
    """Frame size and feature stride in a store's folder name and the section's id: none at the defaults."""
    return _px(b) + ("" if b.feature_stride == VIT_DEMO[1] else f"-stride{b.feature_stride}")


def _folders(b: EncodersBench, camera: str, encoder: str, conditioning: str, predictor: str) -> tuple[Path, Path]:
    """A store's folder (its features, and their oracle) and a row's (its run and sim results): the store's, or
    a subfolder per conditioning and predictor other than the defaults."""
    features = b.directory / f"{camera}{_tag(b)}-{encoder}"
    return features, features.joinpath(*(x for x, default in ((conditioning, "token"), (predictor, "ac_demo"))
                                          if x != default))


def _kept(b: EncodersBench, folder: Path, task: str, oracle: bool = False) -> Path:
    """Where a sim eval's result is kept: its settings in the name, so a rerun with others measures again."""
    name, episodes = ("sim-oracle", b.oracle_episodes) if oracle else ("sim", b.episodes)
    return folder / f"{name}-{task}-{episodes}x{b.budget}steps-cem{b.samples}x{b.iterations}.json"


def _done(b: EncodersBench, *row_key: str) -> bool:
    """Whether a row's last results are kept (every stage before them is then kept too)."""
    features, row = _folders(b, *row_key)
    return _kept(b, row, "push").exists() and (not b.oracle_episodes or _kept(b, features, "push", True).exists())


def _row(b: EncodersBench, camera: str, encoder: str, conditioning: str, predictor: str,
         on_stage: Callable[[str], None]) -> dict:
    corpus = b.directory / f"corpus-{camera}{_px(b)}"
    features, row = _folders(b, camera, encoder, conditioning, predictor)
    store, run = features / "store", row / "run"
    if not (corpus / "sim-000000.tar").exists():
        on_stage(f"{camera}: sim collect")
        run_collect(CollectConfig(out=corpus, env="pusht", episodes=b.corpus_episodes, steps=80, size=b.size,
                                  camera=camera))
    on_stage(f"{camera}-{encoder}: extract")
    run_extract(ExtractConfig(corpus=str(corpus), out=str(store), format="webdataset", fps=b.fps,
                              actions="state-delta", workers=1, episodes_per_unit=100, **ENCODERS[encoder][1],
                              **({} if encoder == "vit_demo" else {"image_size": b.size,
                                                                   "feature_stride": b.feature_stride})))
    last = run / f"step_{b.steps:08d}.pt"
    if not last.exists():
        on_stage(f"{camera}-{encoder}-{conditioning}-{predictor}: train")
        run_train(TrainConfig(store=str(store), out=run, preset=predictor, action_conditioning=conditioning,
                              steps=b.steps, batch_size=8, lr=1e-3, start_lr=2e-4, anneal=b.steps // 5, val_every=0,
                              ckpt_every=b.steps, workers=1,
                              resume=(run / "latest.pt").exists()))
    on_stage(f"{camera}-{encoder}-{conditioning}-{predictor}: eval")
    metrics = _cached(row / f"eval-step{b.steps}.json",
                      lambda: run_eval(EvalConfig(checkpoint=last, store=str(store))).metrics)
    cem = CEMConfig(samples=b.samples, iterations=b.iterations, elites=min(10, b.samples))
    result = {"h1_over_copy": metrics["rollout_l1"][0] / metrics["copy_l1"][0],
              "shuffled_over_true": metrics["shuffled_over_true"][0]}
    for task in ("reach", "push"):
        on_stage(f"{camera}-{encoder}-{conditioning}-{predictor}: sim eval {task}")
        cfg = SimEvalConfig(checkpoint=last, out=row / f"sim-{task}", videos=2, sim=_task(b, task), cem=cem)
        result[task] = _cached(_kept(b, row, task), lambda: run_sim_eval(cfg).report["policies"])
    for task in ("reach", "push") if b.oracle_episodes else ():  # the simulator as the world model, with the
        # same CEM and horizon: what they allow whatever the predictor; one per store (its features)
        on_stage(f"{camera}-{encoder}: oracle {task}")
        cfg = SimEvalConfig(checkpoint=last, out=features / f"sim-oracle-{task}", videos=0, model=False,
                            baselines=False, sim=_task(b, task, oracle=True, episodes=b.oracle_episodes), cem=cem)
        result[f"oracle_{task}"] = _cached(_kept(b, features, task, oracle=True),
                                           lambda: run_sim_eval(cfg).report["policies"])["oracle"]
    return result


def _rate(m: dict) -> str:
    return f"{m['successes']}/{m['episodes']} ({m['success_rate']:.0%})"


def run(b: EncodersBench, on_progress: Callable[[int, int], None] | None = None) -> Section:
    encoders, cameras = names(b.encoders, "--encoders", ENCODERS), names(b.cameras, "--cameras", CAMERAS)
    conditionings = names(b.conditionings, "--conditionings", ACTION_CONDITIONING)
    predictors = names(b.predictors, "--predictors", PREDICTOR_PRESETS)
    if (b.size, b.feature_stride) != VIT_DEMO and "vit_demo" in encoders:
        raise UserError(f"--size {b.size} --feature-stride {b.feature_stride}: vit_demo takes {VIT_DEMO[0]} px "
                        f"frames in {VIT_DEMO[1]} px patches only")
    efficientnet.check(b.feature_stride, b.size, "--size")
    pusht_env_class()  # the extras, before the first hour's work
    if any(e.startswith("effnet") for e in encoders):
        efficientnet.network_class()
    if "effnet-imagenet" in encoders:
        efficientnet.weights_file()
    output_dir(b.directory, "--directory")
    _same_settings(b)
    rows, results = [], {}
    order = [(c, e, a, p) for c in CAMERAS for e in ENCODERS for a in ACTION_CONDITIONING for p in PREDICTOR_PRESETS]
    asked = {(c, e, a, p) for c in cameras for e in encoders for a in conditionings for p in predictors}
    todo = [r for r in order if r in asked or _done(b, *r)]  # and the rows of earlier runs with these settings
    for i, (camera, encoder, conditioning, predictor) in enumerate(todo):
        r = _row(b, camera, encoder, conditioning, predictor,
                 lambda stage: log.info("bench encoders %d/%d: %s", i + 1, len(todo), stage))
        results["-".join((camera, encoder, conditioning, predictor))] = r
        rows.append([ENCODERS[encoder][0], camera, conditioning, predictor, f"{r['h1_over_copy']:.2f}",
                     f"{r['shuffled_over_true']:.2f}",
                     *(_rate(r[f"oracle_{t}"]) if b.oracle_episodes else "-" for t in ("reach", "push")),
                     f"**{_rate(r['reach']['model'])}**",
                     f"**{_rate(r['push']['model'])}**", f"{r['reach']['model']['seconds_per_plan']:.2f}"])
        if on_progress:
            on_progress(i + 1, len(todo))
    base = next(iter(results.values()))
    baselines = "; ".join(f"{t}: " + ", ".join(f"{p} {_rate(base[t][p])}" for p in ("random", "hold"))
                          for t in ("reach", "push"))
    oracle = f"({b.oracle_episodes} episodes per task)" if b.oracle_episodes else "(not run here)"
    side = b.size // b.feature_stride
    kept = ["/".join(r) for r in todo if r not in asked]
    sizes = "; ".join(f"{p}: width {PREDICTOR_PRESETS[p].width}, depth {PREDICTOR_PRESETS[p].depth}"
                      for p in dict.fromkeys(r[3] for r in todo))
    body = (f"PushT (gym-pusht), {b.corpus_episodes} scripted episodes of 80 control steps per camera at {b.size} "
            f"px, extracted at {b.fps:g} fps with state-delta actions by each encoder ({side} x {side} tokens: "
            + ("`vit_demo`'s patches, " if (b.size, b.feature_stride) == VIT_DEMO else "")
            + f"EfficientNet-Lite0's stride-{b.feature_stride} map, its channels as the feature dim); the "
            f"predictor each row names (`train --preset`: {sizes}) trained {b.steps} steps (batch 8, lr 1e-3) "
            f"on each store, its actions given as "
            f"V-JEPA 2-AC's action token (token) or also joined to every frame token (concat, DINO-WM's "
            f"conditioning: `train --action-conditioning concat`). h = 1 / copy-last and "
            f"shuffled / true: `eval` on the held-out episodes (rollout L1 at one step over the copy-last "
            f"frame's; with other clips' actions over the true ones: above 1 means the model uses its actions). "
            f"Reach and push: `sim eval`, {b.episodes} episodes (task seed 0), budget {b.budget} control steps, "
            f"horizon 1, CEM {b.samples} x {b.iterations}, success within 20 px (push: agent and block together, "
            f"and the block's angle within 20 degrees); oracle: the same CEM with the simulator as the world "
            f"model and the same features {oracle}, what the planner allows with a perfect model. Baselines on "
            f"the same starts and goals ({todo[0][0]} camera): {baselines}. Everything under "
            f"`{b.directory}`" + (f"; the rows this command did not ask for ({', '.join(kept)}) are kept from "
                                  f"earlier runs in it" if kept else "") + ".\n\n"
            + table(["encoder", "camera", "actions", "predictor", "h = 1 / copy-last", "shuffled / true",
                     "oracle reach", "oracle push", "model reach", "model push", "s per plan"], rows))
    return Section(f"encoders-{b.fps:g}fps{_tag(b)}", f"Encoders: which features let the predictor plan (PushT, "
                   f"{b.fps:g} fps, {b.size} px, stride {b.feature_stride})",
                   body, results)
