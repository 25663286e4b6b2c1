"""The extraction job vs its two stages alone: decoding (workers) and encoding (main process); and the
decoding layer vs decord alone (what extraction used before it) and vs PyAV alone (its fallback)."""

from __future__ import annotations

import shutil
import statistics
import time
from pathlib import Path

import av
import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from common.device import pick_device
from common.media import DecordReader, PyAVReader, Video, write_mp4
from extract.config import ExtractConfig
from extract.corpora import open_corpus
from extract.job import EpisodePieces, run_extract
from model.encoders import build_encoder
from model.preprocess import InputSpec
from sim.demo import WRIST_SERIAL
from store.location import list_files, upload, where

from .config import ExtractBench
from .report import Section, demo_corpus, table


def decode_only(corpus: Path, spec: InputSpec, workers: int) -> float:
    """Frames/s of the job's DataLoader alone (decode + crop + resize + normalise)."""
    c = open_corpus(corpus, "droid", camera="wrist")
    loader = DataLoader(EpisodePieces(c, c.sources(), ExtractConfig.fps, spec), batch_size=None, num_workers=workers)
    start, n = time.perf_counter(), 0
    for piece in loader:
        n += 0 if piece.frames is None else len(piece.frames)
    return n / (time.perf_counter() - start)


DECODERS = {"decord alone (before)": DecordReader, "decoding layer (after)": Video, "PyAV alone (the fallback)": PyAVReader}
PIECE = 32  # frames per request, as the job's pieces


def resized(videos: list[Path], folder: Path, width: int, height: int, codec: str) -> list[Path]:
    """The videos resized to width x height in `codec`, written once."""
    out = []
    folder.mkdir(parents=True, exist_ok=True)
    for i, video in enumerate(videos):
        path = folder / f"{i:03d}.mp4"
        if not path.exists():
            with av.open(str(video)) as c:
                frames = torch.from_numpy(np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)]))
            x = F.interpolate(frames.permute(0, 3, 1, 2).float(), size=(height, width), mode="bilinear")
            write_mp4(path, list(x.round().clamp(0, 255).byte().permute(0, 2, 3, 1).numpy()), 15, codec=codec)
        out.append(path)
    return out


def decode_rate(decoder, videos: list[Path], stride: int) -> float | None:
    """Frames/s of opening each video and decoding every stride-th frame in pieces; None if it fails."""
    start, n = time.perf_counter(), 0
    try:
        for path in videos:
            video = decoder(path)
            rows = list(range(0, len(video), stride))
            for i in range(0, len(rows), PIECE):
                n += len(video.frames(rows[i:i + PIECE]))
    except Exception:  # noqa: BLE001 - a decoder that cannot read the set is reported as such
        return None
    return n / (time.perf_counter() - start)


def decoder_rates(sets: dict[str, list[Path]], stride: int, repeats: int) -> dict[str, dict[str, float | None]]:
    """{set: {decoder: median frames/s}}, the decoders alternating within each repeat."""
    runs = {name: {d: [] for d in DECODERS} for name in sets}
    for _ in range(repeats):
        for name, videos in sets.items():
            for label, decoder in DECODERS.items():
                runs[name][label].append(decode_rate(decoder, videos, stride))
    return {name: {d: None if None in r else statistics.median(r) for d, r in per.items()}
            for name, per in runs.items()}


def encode_only(preset: str, batch: int, frames: int, device: torch.device) -> float:
    """Frames/s of the encoder alone on preprocessed frames, as the job calls it."""
    encoder, _ = build_encoder(preset, random_init=True)
    encoder.to(device)
    size = encoder.input.size
    x = torch.randn(batch, 3, size, size, pin_memory=device.type == "cuda")
    amp = dict(device_type="cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")
    with torch.inference_mode(), torch.autocast(**amp):
        encoder(x.to(device)).float().cpu()  # warm-up
        start = time.perf_counter()
        for _ in range(max(1, frames // batch)):
            encoder(x.to(device, non_blocking=True)).float().cpu()
    return max(1, frames // batch) * batch / (time.perf_counter() - start)


def from_url(cfg: ExtractBench, corpus: Path, dev: torch.device) -> Section:
    """The whole job on the corpus in the bucket at --corpus-url next to its local copy, runs alternating."""
    remote = where(cfg.corpus_url)
    if not remote.exists():
        upload({rel: corpus / rel for rel in list_files(corpus)}, remote)
    rates: dict[str, list[float]] = {"local disk": [], cfg.corpus_url: []}
    for _ in range(cfg.repeats):
        for label, source in (("local disk", corpus), (cfg.corpus_url, cfg.corpus_url)):
            out = cfg.directory / "job-from-url"
            shutil.rmtree(out, ignore_errors=True)
            s = run_extract(ExtractConfig(corpus=source, out=str(out), preset=cfg.preset, camera="wrist",
                                          workers=cfg.workers, batch_size=cfg.batch, episodes_per_unit=8,
                                          random_init=True, device=str(dev)))
            rates[label].append(s.frames / s.seconds)
    local, far = (statistics.median(r) for r in rates.values())
    body = (f"{s.frames} frames ({cfg.episodes} demo episodes, wrist camera), preset {cfg.preset}, encoder batch "
            f"{cfg.batch}, {cfg.workers} decoding workers, {dev}; the corpus read where it lies (each episode's "
            f"objects fetched by the worker that decodes it) next to its local copy, median of {cfg.repeats} "
            "alternating runs.\n\n"
            + table(["corpus", "whole job, frames/s"], [["local disk", f"{local:.0f}"],
                                                         [cfg.corpus_url, f"{far:.0f}"]])
            + f"\n\nFrom the bucket / from local disk: **{far / local:.0%}**.")
    return Section(f"extract-url-{cfg.preset}", f"Extraction from an object store ({cfg.preset})", body,
                   {"local_frames_s": local, "url_frames_s": far, "ratio": far / local})


def run(cfg: ExtractBench) -> Section:
    directory, preset, batch, workers, episodes = cfg.directory, cfg.preset, cfg.batch, cfg.workers, cfg.episodes
    dev = pick_device()
    corpus = demo_corpus(directory, episodes)
    if cfg.corpus_url:
        return from_url(cfg, corpus, dev)
    out = directory / f"job-{preset}"
    shutil.rmtree(out, ignore_errors=True)
    s = run_extract(ExtractConfig(corpus=corpus, out=out, preset=preset, camera="wrist", workers=workers,
                                  batch_size=batch, episodes_per_unit=8, random_init=True, device=str(dev)))
    job = s.frames / s.seconds
    dec = decode_only(corpus, build_encoder(preset, random_init=True)[0].input, workers)
    enc = encode_only(preset, batch, s.frames, dev)
    slower = min(dec, enc)
    wrist = sorted(corpus.rglob(f"recordings/MP4/{WRIST_SERIAL}.mp4"))[: cfg.videos]
    sets = {"demo wrist, 320x180 H.264": wrist,
            "the same at 1280x720 H.264 (DROID's size)": resized(wrist[:4], directory / "h264-720p", 1280, 720,
                                                                "libx264"),
            "the same at 96x96 AV1 (LeRobot PushT's size)": resized(wrist, directory / "av1-96", 96, 96, "libsvtav1")}
    rates = decoder_rates(sets, stride=4, repeats=cfg.repeats)
    result = {"job_frames_s": job, "decode_frames_s": dec, "encode_frames_s": enc, "job_over_slower": job / slower,
              "decoders": rates}
    body = (f"{s.frames} frames ({episodes} demo episodes, wrist camera, 320x180 H.264), preset {preset}, "
            f"encoder batch {batch}, {workers} decoding workers, {dev}.\n\n"
            + table(["stage", "frames/s"], [["decode + preprocess only (workers)", f"{dec:.0f}"],
                                            ["encode only (main process)", f"{enc:.0f}"],
                                            ["whole job (store written, shards sealed)", f"{job:.0f}"]])
            + f"\n\nJob / slower stage: **{job / slower:.0%}**.\n\n"
            + f"Decoding alone, one process, every 4th frame of {cfg.videos} videos (4 at 720p) in requests of {PIECE} "
              "frames, "
              f"frames/s (median of {cfg.repeats}, decoders alternating):\n\n"
            + table(["videos", *DECODERS], [[name, *(f"{r:.0f}" if r else "fails" for r in per.values())]
                                            for name, per in rates.items()]))
    return Section(f"extract-{preset}", f"Extraction pipeline ({preset})", body, result)
