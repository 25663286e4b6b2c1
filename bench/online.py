"""Training throughput from the feature store vs the reference way (decode, encode, then train)."""

from __future__ import annotations

import itertools
import time
from pathlib import Path
from statistics import median

import torch
from torch.utils.data import DataLoader, Dataset

from common.device import bf16_autocast, pick_device
from common.errors import UserError
from extract.config import ExtractConfig
from extract.corpora import DroidCorpus
from extract.job import run_extract
from model.encoders import build_encoder
from model.predictor import PREDICTOR_PRESETS, build_model
from model.preprocess import preprocess
from model.vit import ENCODER_PRESETS
from store import open_store
from store.actions import actions_from_states
from train.data import ClipDataset, ShuffledStream, collate
from train.loop import param_groups
from train.losses import normalize, training_losses

from .config import OnlineBench
from .report import Section, demo_corpus, median_time, table

DEMO_EPISODES = 24


class DecodedClips(Dataset):
    """The same windows as a ClipDataset, but as the reference loads them: open the episode,
    decode its frames from the MP4 and preprocess them (the encoder runs in the main process)."""

    def __init__(self, clips: ClipDataset, corpus: DroidCorpus, fps: float, size: int):
        self.clips, self.corpus, self.fps, self.size = clips, corpus, fps, size
        self.sources = {r["episode_id"]: r["source"] for r in clips.store.episodes.to_pylist()}

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        episode, start = self.clips.windows[i]
        ep = self.corpus.load(self.sources[episode], self.fps)
        rows = slice(start, start + self.clips.frames)
        states = torch.from_numpy(ep.state[rows])
        return {"frames": preprocess(ep.frames(rows), self.size), "states": states,
                "actions": actions_from_states(states)}


def ensure_store(corpus: Path, out: Path, preset: str) -> Path:
    if not (out / "manifest.parquet").exists():
        run_extract(ExtractConfig(corpus=corpus, out=out, preset=preset, camera="wrist", workers=1,
                                  episodes_per_unit=8, random_init=True))
    return out


def interleaved_rates(paths: dict, batches: int, repeats: int) -> dict[str, float]:
    """Median clips/s of each (loader, step) path; runs of `batches` steps alternate between the
    paths so that drifting machine load hits them alike."""
    iters = {name: iter(loader) for name, (loader, _) in paths.items()}
    for name, (_, step) in paths.items():
        step(next(iters[name]))  # warm-up
    rates: dict[str, list[float]] = {name: [] for name in paths}
    for _ in range(repeats):
        for name, (_, step) in paths.items():
            start, clips = time.perf_counter(), 0
            for batch in itertools.islice(iters[name], batches):
                step(batch)
                clips += len(batch["actions"])
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            rates[name].append(clips / (time.perf_counter() - start))
    return {name: median(r) for name, r in rates.items()}


def compare(corpus: Path, store_dir: Path, encoder_preset: str, predictor_preset: str, batch: int,
            batches: int, repeats: int, workers: int, device: torch.device) -> dict:
    store = open_store(ensure_store(corpus, store_dir, encoder_preset))
    clips = ClipDataset(store, store.ok_episodes, 8)
    encoder, _ = build_encoder(encoder_preset, random_init=True)  # the store's encoder (same seed)
    encoder.to(device)
    torch.manual_seed(0)
    model = build_model(store.config.feature_dim, store.config.grid, predictor_preset).to(device)
    opt = torch.optim.AdamW(param_groups(model, 0.04), lr=1e-4)

    def train_step(z, actions, states):
        with bf16_autocast(device):
            loss = training_losses(model, z, actions.to(device), states.to(device), 2)["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def cached(b):
        train_step(normalize(b["features"].to(device, non_blocking=True)), b["actions"], b["states"])

    def online(b):
        frames = b["frames"].to(device, non_blocking=True)
        with torch.inference_mode(), bf16_autocast(device):
            z = encoder(frames.flatten(0, 1)).float()
        train_step(normalize(z.unflatten(0, frames.shape[:2]).clone()), b["actions"], b["states"])

    def loader(data):
        return DataLoader(data, batch_size=batch, sampler=ShuffledStream(len(data), seed=0), num_workers=workers,
                          pin_memory=device.type == "cuda", drop_last=True, persistent_workers=workers > 0,
                          collate_fn=collate)

    decoded = DecodedClips(clips, DroidCorpus(corpus, "wrist"), store.config.fps, store.config.image_size)
    # the two paths see the same clips and the same features (up to the store's bf16 rounding)
    with torch.inference_mode():
        x = decoded[0]["frames"].to(device)
        gap = float((encoder(x).float().cpu() - clips[0]["features"].float()).abs().max())
    rates = interleaved_rates({"cached": (loader(clips), cached), "online": (loader(decoded), online)},
                              batches, repeats)
    result = {"cached_clips_s": rates["cached"], "online_clips_s": rates["online"], "feature_gap": gap}
    # where the time goes, per clip, on one fixed batch
    b = next(iter(loader(decoded)))
    sync = device.type == "cuda"
    frames = b["frames"].to(device)
    with torch.inference_mode(), bf16_autocast(device):
        result["encode_s_per_clip"] = median_time(lambda: encoder(frames.flatten(0, 1)), repeats, sync=sync) / batch
    z = normalize(torch.stack([clips[i]["features"] for i in range(batch)]).to(device))
    result["train_s_per_clip"] = median_time(lambda: train_step(z, b["actions"], b["states"]), repeats, sync=sync) / batch
    result["decode_s_per_clip"] = median_time(lambda: decoded[0], repeats)
    result["speedup"] = result["cached_clips_s"] / result["online_clips_s"]
    return result


def flops_per_clip(encoder_preset: str, predictor_preset: str) -> tuple[float, float]:
    """FLOPs of encoding 8 frames and of one predictor training step on one 8-frame clip."""
    from torch.utils.flop_counter import FlopCounterMode

    from model.vit import ENCODER_PRESETS, VisionTransformer

    p = ENCODER_PRESETS[encoder_preset]
    with torch.device("meta"):
        enc = VisionTransformer(p).to("meta")
        with FlopCounterMode(display=False) as fc, torch.no_grad():
            enc(torch.randn(8, 3, p.image_size, p.image_size))
        e = fc.get_total_flops()
        model = build_model(p.dim, p.grid, predictor_preset)
        n = p.grid[0] * p.grid[1]
        with FlopCounterMode(display=False) as fc:
            training_losses(model, torch.randn(1, 8, n, p.dim), torch.randn(1, 7, 7), torch.randn(1, 8, 7), 2)["loss"].backward()
    return e, fc.get_total_flops()


def run(cfg: OnlineBench) -> Section:
    dev = pick_device()
    batch, batches, repeats, workers = cfg.batch, cfg.batches, cfg.repeats, cfg.workers
    pairs = [pair.strip().partition(":")[::2] for pair in cfg.pairs.split(",")]
    if any(enc not in ENCODER_PRESETS or pred not in PREDICTOR_PRESETS for enc, pred in pairs):
        raise UserError(f"--pairs {cfg.pairs!r}: each is ENCODER:PREDICTOR, of {', '.join(ENCODER_PRESETS)} and "
                        f"{', '.join(PREDICTOR_PRESETS)}")
    corpus = demo_corpus(cfg.directory, DEMO_EPISODES)
    rows, results = [], {}
    for enc, pred in pairs:
        e, p = flops_per_clip(enc, pred)
        r = compare(corpus, cfg.directory / f"store-{enc}", enc, pred, batch, batches, repeats, workers, dev)
        r.update({"encoder_gflop_per_clip": e / 1e9, "predictor_gflop_per_clip": p / 1e9})
        results[f"{enc}+{pred}"] = r
        rows.append([f"{enc} + {pred}", f"{e / 1e9:.1f} / {p / 1e9:.1f} = {e / p:.2f}",
                     f"{1e3 * r['decode_s_per_clip']:.0f} / {1e3 * r['encode_s_per_clip']:.0f} / "
                     f"{1e3 * r['train_s_per_clip']:.0f}", f"{r['online_clips_s']:.2f}",
                     f"{r['cached_clips_s']:.2f}", f"**{r['speedup']:.2f}x**", f"{r['feature_gap']:.1e}"])
    real_e, real_p = flops_per_clip("vit_giant", "ac_vitg")  # on the meta device: no memory, no time
    body = (
        f"Same predictor, same clips (8 frames, wrist camera of the demo corpus), batch {batch}, {workers} "
        f"DataLoader worker(s), {dev}; median of {repeats} runs of {batches} steps, cached and online runs "
        "alternating. Online = the reference "
        "way: the worker opens the episode, decodes and preprocesses the clip's frames, the main process "
        "runs the frozen encoder, then the training step. Cached = the trainer reading the store. The "
        f"real pair (vit_giant + ac_vitg) costs {real_e / 1e12:.2f} / {real_p / 1e12:.2f} TFLOP per clip = "
        f"{real_e / real_p:.2f} (FLOP counter, block-causal attention counted as computed; SPEC §5: 4.3 / 5.2). "
        "The ms per clip are timed alone on one batch (decode: one worker, one clip). Feature "
        "gap: max |online features - stored features| of one clip (bf16 storage).\n\n"
        + table(["encoder + predictor", "encoder / predictor GFLOP per clip",
                 "ms per clip: decode / encode / train step", "online clips/s", "cached clips/s", "speed-up",
                 "feature gap"], rows)
    )
    return Section(f"cached-vs-online-{dev.type}", f"Cached features vs online encoding ({dev.type.upper()})", body,
                   results)
