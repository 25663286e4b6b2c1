"""Feature codecs and compression: bytes per frame, read speed, fidelity, and what int8 does to training."""

from __future__ import annotations

import csv
import time
from pathlib import Path

import torch

from extract.config import ExtractConfig
from extract.corpora import DroidCorpus
from extract.job import run_extract
from model.checkpoint import load_trained
from model.encoders import build_encoder
from store import codecs, open_store
from store.location import tree_bytes
from train.config import TrainConfig
from train.data import split_episodes
from train.evaluate import collect, summarize
from train.loop import run_train, validation_loader

from .config import CodecsBench
from .report import Section, demo_corpus, table

PRESET = "vit_demo"
DEMO_EPISODES = 32


def encoder_features(corpus: Path, frames: int = 256) -> torch.Tensor:
    """float32 encoder output [frames, N, D] of frames from the corpus: the reference for fidelity."""
    c = DroidCorpus(corpus, "wrist")
    encoder, _ = build_encoder(PRESET, random_init=True)
    out = []
    for source in c.sources():
        ep = c.load(source, ExtractConfig.fps)
        with torch.inference_mode():
            out.append(encoder(encoder.input.apply(ep.frames(slice(0, len(ep))))))
        if sum(len(o) for o in out) >= frames:
            break
    return torch.cat(out)[:frames]


def read_speed(root: Path) -> float:
    """Frames/s of reading every episode through Store.read_episode."""
    store = open_store(root)
    start = time.perf_counter()
    n = sum(len(store.read_episode(e)["features"]) for e in store.ok_episodes)
    return n / (time.perf_counter() - start)


def val_loss(run: Path) -> float:
    with open(run / "val.csv") as f:
        return float(list(csv.DictReader(f))[-1]["tf_l1"])


def run(cfg: CodecsBench) -> Section:
    directory, train_steps = cfg.directory, cfg.steps
    corpus = demo_corpus(directory, DEMO_EPISODES)
    reference = encoder_features(corpus)
    raw16 = reference[0].numel() * 2
    results, rows = {}, []
    for codec in codecs.CODECS:
        stored, scales = codecs.encode(reference, codec)
        decoded = codecs.decode(stored, scales, codec).float()
        l1 = float((decoded - reference).abs().mean())
        rel = float((decoded - reference).abs().mean() / reference.abs().mean())
        for compression in codecs.COMPRESSIONS:
            root = directory / f"store-{codec}-{compression}"
            if not (root / "manifest.parquet").exists():
                run_extract(ExtractConfig(corpus=corpus, out=root, preset=PRESET, camera="wrist", codec=codec,
                                          compression=compression, workers=1, episodes_per_unit=8))
            store = open_store(root)
            size = sum(tree_bytes(p) for name in ("features", "scales") for p in root.glob(f"shards/*/{name}"))
            per_frame = size / store.total_frames
            speed = read_speed(root)
            results[f"{codec}/{compression}"] = {"bytes_per_frame": per_frame, "ratio": per_frame / raw16,
                                                 "read_frames_s": speed, "l1": l1, "relative_l1": rel}
            rows.append([codec, compression, f"{per_frame:.0f}", f"{per_frame / raw16:.3f}", f"{speed:.0f}",
                         f"{l1:.2e}", f"{rel:.2e}"])
    # what int8 does to training: the same model and seed on the bf16 and the int8 store, both
    # validated on the bf16 features
    losses = {}
    for codec in ("bf16", "int8"):
        out = directory / f"run-{codec}"
        if not (out / "val.csv").exists():
            run_train(TrainConfig(store=directory / f"store-{codec}-none", out=out, preset="ac_demo",
                                  steps=train_steps, batch_size=8, lr=2e-3, start_lr=4e-4, anneal=train_steps // 3,
                                  val_every=train_steps, ckpt_every=train_steps, workers=1))
        losses[codec] = val_loss(out)
    bf16_store = open_store(directory / "store-bf16-none")
    defaults = TrainConfig(store=bf16_store.root, out=directory)
    val_ids = split_episodes(bf16_store, defaults.val_fraction, defaults.seed)[1]
    on_bf16 = {}
    for codec in ("bf16", "int8"):
        model, _, _ = load_trained(directory / f"run-{codec}" / "latest.pt", bf16_store)
        loader = validation_loader(bf16_store, val_ids, defaults.frames, 8, defaults.val_clips)
        on_bf16[codec] = summarize(collect(model, loader, torch.device("cpu")))["tf_l1"]
    gap = on_bf16["int8"] / on_bf16["bf16"] - 1
    results["training"] = {"val_tf_l1_own_store": losses, "val_tf_l1_on_bf16": on_bf16, "relative_gap": gap}
    body = (
        f"Features: the {PRESET} encoder's output on the demo corpus ({reference.shape[1]} tokens x "
        f"{reference.shape[2]} dims; raw 16-bit = {raw16} bytes per frame). Bytes per frame: the features "
        "(and int8 scales) chunk files on disk / stored frames. Read: frames/s of Store.read_episode over "
        "every episode (page cache warm). L1: mean |decoded - float32 encoder output| over "
        f"{len(reference)} frames, absolute and relative to mean |x|.\n\n"
        + table(["codec", "compression", "bytes/frame", "vs raw 16-bit", "read frames/s", "L1", "relative L1"], rows)
        + f"\n\nTraining (ac_demo, {train_steps} steps, same seed) from the int8 store vs the bf16 store, "
        "teacher-forcing L1 on the held-out bf16 features: "
        f"bf16 {on_bf16['bf16']:.4f}, int8 {on_bf16['int8']:.4f}, **{100 * gap:+.2f}%**."
    )
    return Section("codecs", "Feature codecs", body, results)
