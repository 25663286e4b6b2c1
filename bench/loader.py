"""The trainer's data path: random 8-frame windows through the DataLoader vs a plain sequential read."""

from __future__ import annotations

import itertools
import os
import shutil
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from statistics import median

import numpy as np
import torch
from torch.utils.data import DataLoader

from store import ChunkCache, StoredEpisode, open_store, reseal, write_store
from store.location import list_files, upload, where
from train.data import ClipDataset, ShuffledStream, collate

from .config import LoaderBench
from .report import Section, table

VITG_DIM, TOKENS = 1408, 256
CLIP_MB = 8 * TOKENS * VITG_DIM * 2 / 1e6  # one 8-frame ViT-g clip in bf16
PREDICTOR_TFLOP_PER_CLIP = 5.2  # SPEC §5: ac_vitg fwd+bwd with the rollout pass, 8-frame clip
H100_EFFECTIVE_TFLOPS = 400.0


class RandomEpisodes(Sequence):
    """Episodes of random ViT-g features, built one at a time when the store writer asks for them."""

    def __init__(self, count: int, frames: int):
        self.count, self.frames = count, frames

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, i: int) -> StoredEpisode:
        if not 0 <= i < self.count:
            raise IndexError(i)
        g = torch.Generator().manual_seed(i)
        features = torch.randn(self.frames, TOKENS, VITG_DIM, generator=g).to(torch.bfloat16)
        return StoredEpisode(features, np.zeros((self.frames, 7), np.float32))


def make_store(directory: Path, frames: int, chunk_frames: int, episode_frames: int = 66, per_unit: int = 8) -> Path:
    """A ViT-g-sized bf16 store of random features (DROID's mean episode: ~66 frames at 4 fps), made once
    per size in `directory`."""
    root = directory / f"vitg-bf16-{frames}f-chunk{chunk_frames}"
    if (root / "manifest.parquet").exists():
        reseal(root)  # one made by older code gets the seals a new store has
        return root
    shutil.rmtree(root, ignore_errors=True)
    episodes = RandomEpisodes(max(1, frames // episode_frames), episode_frames)
    return write_store(root, episodes, per_unit, preset="vit_giant", checkpoint_sha256="random-init-seed0",
                       image_size=256, crop="bench", camera="left", chunk_frames=chunk_frames, source_format="bench")


def feature_files(root: Path) -> list[Path]:
    return sorted(p for p in root.glob("shards/*/features/c/**/*") if p.is_file())


def drop_cache(root: Path) -> None:
    """Evict the store's files from the page cache (posix_fadvise DONTNEED: no root needed)."""
    for p in root.rglob("*"):
        if p.is_file():
            fd = os.open(p, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def sequential_read(root: Path) -> float:
    """MB/s of reading every feature chunk file once, in order."""
    files = feature_files(root)
    start, n = time.perf_counter(), 0
    buf = bytearray(16 << 20)
    view = memoryview(buf)
    for p in files:
        with open(p, "rb", buffering=0) as f:
            while k := f.readinto(view):
                n += k
    return n / (time.perf_counter() - start) / 1e6


def loader_rate(root: Path | str, workers: int, clips: int, batch: int = 8, verify: bool = True,
                cache: ChunkCache | None = None) -> float:
    """Clips/s of the trainer's DataLoader over random windows."""
    store = open_store(root, verify, cache)
    data = ClipDataset(store, store.ok_episodes, 8)
    loader = DataLoader(data, batch_size=batch, sampler=ShuffledStream(len(data), seed=1), num_workers=workers,
                        drop_last=True, persistent_workers=False, prefetch_factor=4 if workers else None,
                        collate_fn=collate)
    it = iter(loader)
    next(it)  # workers started
    start, n = time.perf_counter(), 0
    for b in itertools.islice(it, clips // batch):
        n += len(b["features"])
    return n / (time.perf_counter() - start)


def run(cfg: LoaderBench, workers=(1, 2, 4), chunks=(1, 4, 8), repeats: int = 3) -> Section:
    directory, frames, clips = cfg.directory, cfg.frames, cfg.clips
    warnings.filterwarnings("ignore", message="This DataLoader will create")  # 4 workers on 2 cores: on purpose
    if cfg.store_url:
        return object_store(cfg, workers, repeats)
    need_clips = H100_EFFECTIVE_TFLOPS / PREDICTOR_TFLOP_PER_CLIP
    results, rows = {}, []
    for chunk in chunks:
        root = make_store(directory, frames, chunk)
        files_per_window = 7 / chunk + 1  # expected chunk files a random 8-frame window touches
        for w in workers:
            plain, cold, warm = [], [], []
            for _ in range(repeats):  # each loader run right after its plain read: a noisy machine's drift cancels
                drop_cache(root)
                plain.append(sequential_read(root))
                drop_cache(root)
                cold.append(loader_rate(root, w, clips))
                warm.append(loader_rate(root, w, clips))
            cold_cps, warm_cps, plain_mb = median(cold), median(warm), median(plain)
            cold_mb = cold_cps * CLIP_MB
            ratio = median(c * CLIP_MB / p for c, p in zip(cold, plain))
            results[f"chunk{chunk}_workers{w}"] = {"cold_clips_s": cold_cps, "warm_clips_s": warm_cps,
                                                  "cold_mb_s": cold_mb, "plain_read_mb_s": plain_mb,
                                                  "loader_over_plain": ratio}
            rows.append([chunk, f"{files_per_window:.2f}", w, f"{cold_cps:.0f}", f"{cold_mb:.0f}", f"{plain_mb:.0f}",
                         f"**{ratio:.0%}**", f"{warm_cps:.0f}"])
    body = (
        f"Store: {frames} random ViT-g frames (256 x 1408, bf16, {CLIP_MB:.2f} MB per 8-frame clip, "
        f"{frames * CLIP_MB / 8 / 1e3:.1f} GB), episodes of 66 frames; windows drawn by the trainer's shuffled "
        f"sampler, batches of 8, {clips} clips ({clips * CLIP_MB / 1e3:.1f} GB of windows) per measurement, "
        f"median of {repeats}. Cold: the store's files evicted from the page cache (posix_fadvise DONTNEED) "
        "before the run; warm: the same run again at once (CPU-bound). Plain read: every feature chunk "
        "file read once in order, cold, just before each cold run; loader / plain is the median of those "
        "pairs' ratios. MB/s counts the features delivered to the trainer; a window reads only its 8 rows "
        "(each checked against the seal's row digest) from the chunk files it touches (column 2).\n\n"
        + table(["chunk frames", "chunk files per window", "workers", "cold clips/s", "cold MB/s",
                 "plain read MB/s", "loader / plain", "warm clips/s"], rows)
        + f"\n\nPer-GPU need of the ac_vitg predictor on an H100: {PREDICTOR_TFLOP_PER_CLIP} TFLOP per clip "
        f"(SPEC §5) / {H100_EFFECTIVE_TFLOPS:.0f} TFLOP/s effective = {1e3 * PREDICTOR_TFLOP_PER_CLIP / H100_EFFECTIVE_TFLOPS:.1f} "
        f"ms per clip = {need_clips:.0f} clips/s = {need_clips * CLIP_MB:.0f} MB/s."
    )
    results["need_clips_s"] = need_clips
    return Section("loader", "Data loader vs plain read", body, results)


def object_store(cfg: LoaderBench, workers: Sequence[int], repeats: int) -> Section:
    """The same store on local disk and at cfg.store_url: cold, and through a chunk cache (filled, then warm)."""
    local = make_store(cfg.directory, cfg.frames, 4)
    remote = where(cfg.store_url)
    if not (remote / "manifest.parquet").exists():
        upload({rel: local / rel for rel in list_files(local)}, remote)
    chunks = [f"{remote.key}/{rel}" for rel in list_files(remote) if "/features/c/" in rel]
    start = time.perf_counter()
    got = sum(map(len, remote.call("cat", chunks).values()))  # all at once: fsspec's concurrent GETs
    plain = {"remote_read_mb_s": got / (time.perf_counter() - start) / 1e6}
    drop_cache(local)
    plain["local_read_mb_s"] = sequential_read(local)
    results, rows = {"plain": plain}, []
    for w in workers:
        runs = {"local": [], "remote": [], "fill": [], "cached": []}
        for _ in range(repeats):
            drop_cache(local)
            runs["local"].append(loader_rate(local, w, cfg.clips))
            runs["remote"].append(loader_rate(cfg.store_url, w, cfg.clips))
            cache_dir = cfg.directory / "chunk-cache"
            shutil.rmtree(cache_dir, ignore_errors=True)
            cache = ChunkCache(cache_dir, 100 * 10**9)
            runs["fill"].append(loader_rate(cfg.store_url, w, cfg.clips, cache=cache))
            drop_cache(cache_dir)
            runs["cached"].append(loader_rate(cfg.store_url, w, cfg.clips, cache=cache))
        m = {k: median(v) for k, v in runs.items()}
        results[f"workers{w}"] = {f"{k}_clips_s": v for k, v in m.items()}
        rows.append([w, f"{m['local']:.0f}", f"{m['local'] * CLIP_MB:.0f}", f"{m['remote']:.0f}",
                     f"**{m['remote'] / m['local']:.0%}**", f"{m['fill']:.0f}", f"{m['cached']:.0f}",
                     f"**{m['cached'] / m['local']:.0%}**"])
    body = (
        f"Store: {cfg.frames} random ViT-g frames in 4-frame chunks ({CLIP_MB:.2f} MB per 8-frame clip), on "
        f"local disk and copied to `{cfg.store_url}`; the trainer's DataLoader, batches of 8, {cfg.clips} clips "
        f"per measurement, every chunk checked against its seal, median of {repeats}. Local: page cache "
        "evicted first. Object store: first epoch, no cache. Cache fill: the first epoch through `--cache` "
        "(fetch, check, write a local copy); cached: the same windows again from the cache (its files "
        "evicted from the page cache first). Plain reads of every feature chunk once, for scale: local disk "
        f"{plain['local_read_mb_s']:.0f} MB/s (in order, cold), object store {plain['remote_read_mb_s']:.0f} MB/s "
        "(all GETs issued at once from one process).\n\n"
        + table(["workers", "local clips/s", "local MB/s", "object store clips/s", "object / local",
                 "cache fill clips/s", "cached clips/s", "cached / local"], rows))
    return Section("loader-object-store", "Data loader from an object store", body, results)
