"""The extraction job vs its two stages alone: decoding (workers) and encoding (main process)."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from common.device import pick_device
from extract.config import ExtractConfig
from extract.corpus import open_corpus
from extract.demo import make_demo_corpus
from extract.encoder import build_encoder
from extract.job import EpisodePieces, run_extract

from .config import ExtractBench
from .report import Section, table


def decode_only(corpus: Path, image_size: int, workers: int) -> float:
    """Frames/s of the job's DataLoader alone (decode + crop + resize + normalise)."""
    c = open_corpus(corpus, "droid", camera="wrist")
    loader = DataLoader(EpisodePieces(c, c.sources(), 4.0, image_size), batch_size=None, num_workers=workers)
    start, n = time.perf_counter(), 0
    for piece in loader:
        n += 0 if piece.frames is None else len(piece.frames)
    return n / (time.perf_counter() - start)


def encode_only(preset: str, batch: int, frames: int, device: torch.device) -> float:
    """Frames/s of the encoder alone on preprocessed frames, as the job calls it."""
    encoder, _ = build_encoder(preset, random_init=True)
    encoder.to(device)
    size = encoder.preset.image_size
    x = torch.randn(batch, 3, size, size, pin_memory=device.type == "cuda")
    amp = dict(device_type="cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")
    with torch.inference_mode(), torch.autocast(**amp):
        encoder(x.to(device)).float().cpu()  # warm-up
        start = time.perf_counter()
        for _ in range(max(1, frames // batch)):
            encoder(x.to(device, non_blocking=True)).float().cpu()
    return max(1, frames // batch) * batch / (time.perf_counter() - start)


def run(cfg: ExtractBench) -> Section:
    directory, preset, batch, workers, episodes = cfg.directory, cfg.preset, cfg.batch, cfg.workers, cfg.episodes
    dev = pick_device()
    corpus = directory / "corpus"
    if not corpus.exists():
        make_demo_corpus(corpus, episodes=episodes)
    out = directory / f"job-{preset}"
    shutil.rmtree(out, ignore_errors=True)
    s = run_extract(ExtractConfig(corpus=corpus, out=out, preset=preset, camera="wrist", workers=workers,
                                  batch_size=batch, episodes_per_unit=8, random_init=True, device=str(dev)))
    job = s.frames / s.seconds
    image_size = build_encoder(preset, random_init=True)[0].preset.image_size
    dec = decode_only(corpus, image_size, workers)
    enc = encode_only(preset, batch, s.frames, dev)
    slower = min(dec, enc)
    result = {"job_frames_s": job, "decode_frames_s": dec, "encode_frames_s": enc, "job_over_slower": job / slower}
    body = (f"{s.frames} frames ({episodes} demo episodes, wrist camera, 320x180 H.264), preset {preset}, "
            f"encoder batch {batch}, {workers} decoding workers, {dev}.\n\n"
            + table(["stage", "frames/s"], [["decode + preprocess only (workers)", f"{dec:.0f}"],
                                            ["encode only (main process)", f"{enc:.0f}"],
                                            ["whole job (store written, shards sealed)", f"{job:.0f}"]])
            + f"\n\nJob / slower stage: **{job / slower:.0%}**.")
    return Section(f"extract-{preset}", f"Extraction pipeline ({preset})", body, result)
