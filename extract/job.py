"""The extraction job: corpus -> frozen V-JEPA 2 encoder -> sharded feature store, once.

Data flow (one rank):

    DataLoader workers: load episode, decode + preprocess frames in pieces of <= piece_frames
        -> main process: release pieces in plan order, encode in batches of batch_size frames
           (a batch never spans two units)
        -> writer thread: finished episodes in plan order into their unit's shard, seal units.

Batches depend only on the plan (never on worker timing, rank count or where a previous run
stopped), so a resumed or distributed run stores bit-identical features.
"""

from __future__ import annotations

import os
import time
from collections import defaultdict, deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from store import (
    EpisodeInfo, ShardWriter, StoreConfig, UserError, create_store, merge_manifest, remove_unsealed,
    sealed_units,
)

from .corpus import Corpus, SkipEpisode, open_corpus
from .encoder import build_encoder
from .preprocess import CROP_RULE, preprocess
from .vit import ENCODER_PRESETS


WRITES_IN_FLIGHT = 4  # finished episodes queued for the writer thread before encoding waits


@dataclass
class ExtractConfig:
    corpus: Path
    out: Path
    format: str = "droid"
    camera: str = "left"  # DROID view
    video_key: str | None = None  # LeRobot camera
    state_key: str = "observation.state"  # LeRobot 7-D end-effector state column
    fps: float = 4.0
    preset: str = "vit_giant"
    checkpoint: Path | None = None
    random_init: bool = False
    codec: str = "bf16"
    compression: str = "none"
    chunk_frames: int = 4  # measured: `cli.py bench loader`
    episodes_per_unit: int = 64
    batch_size: int = 64
    workers: int = 4
    piece_frames: int = 32
    min_frames: int = 2
    rank: int | None = None  # default: $RANK (torchrun) or 0
    world_size: int | None = None  # default: $WORLD_SIZE or 1
    device: str | None = None  # default: cuda:$LOCAL_RANK if available, else cpu
    limit: int | None = None  # only the first N episodes of the corpus


@dataclass
class Piece:
    """Up to piece_frames preprocessed frames of one episode; the first carries its metadata."""

    order: int  # position of the episode in this rank's work list
    last: bool
    frames: torch.Tensor | None = None  # [k, 3, S, S] float32
    header: dict | None = None
    skip: str | None = None  # set on the last piece of an episode that cannot be extracted


class EpisodePieces(IterableDataset):
    """Worker w of n loads episodes w, w+n, ...; the loader interleaves workers round-robin."""

    def __init__(self, corpus: Corpus, sources: list[str], fps: float, size: int,
                 piece_frames: int, min_frames: int):
        self.corpus, self.sources, self.fps, self.size = corpus, sources, fps, size
        self.piece_frames, self.min_frames = piece_frames, min_frames

    def __iter__(self) -> Iterator[Piece]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        for order in range(worker, len(self.sources), workers):
            yield from self._pieces(order)

    def _pieces(self, order: int) -> Iterator[Piece]:
        try:
            ep = self.corpus.load(self.sources[order], self.fps)
            if len(ep) < self.min_frames:
                raise SkipEpisode(f"only {len(ep)} frames at {self.fps:g} fps, {self.min_frames} needed")
            header = {"state": ep.state, "frame_index": ep.frame_index, "timestamp": ep.timestamp,
                      "camera": ep.camera, "task": ep.task, "success": ep.success,
                      "native_fps": ep.native_fps, "stride": ep.stride, "note": "; ".join(ep.notes)}
            for start in range(0, len(ep), self.piece_frames):
                frames = preprocess(ep.frames(slice(start, start + self.piece_frames)), self.size)
                yield Piece(order, start + self.piece_frames >= len(ep), frames, header if start == 0 else None)
        except SkipEpisode as e:
            yield Piece(order, True, skip=str(e))


@dataclass
class _Episode:
    header: dict | None = None
    skip: str | None = None
    released: bool = False  # all pieces handed to the encoder queue
    frames: int = 0
    features: list[torch.Tensor] = field(default_factory=list)

    @property
    def encoded(self) -> int:
        return sum(len(f) for f in self.features)


@dataclass
class Summary:
    rank: int
    world_size: int
    units: int  # this rank's units done in this run
    units_skipped: int  # already sealed by an earlier run
    episodes_ok: int = 0
    frames: int = 0
    seconds: float = 0.0
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (source, reason)
    merged: bool = False
    store: Path | None = None


def _rank_world(cfg: ExtractConfig) -> tuple[int, int]:
    rank = cfg.rank if cfg.rank is not None else int(os.environ.get("RANK", 0))
    world = cfg.world_size if cfg.world_size is not None else int(os.environ.get("WORLD_SIZE", 1))
    if world < 1 or not 0 <= rank < world:
        raise UserError(f"rank {rank} is not in 0..world_size-1 (world_size {world})")
    return rank, world


def _device(cfg: ExtractConfig) -> torch.device:
    if cfg.device:
        return torch.device(cfg.device)
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device("cpu")


def plan_units(sources: list[str], per_unit: int) -> list[list[str]]:
    if per_unit < 1:
        raise UserError("episodes per unit must be at least 1")
    return [sources[i:i + per_unit] for i in range(0, len(sources), per_unit)]


def run_extract(cfg: ExtractConfig, on_start=None, on_episode=None) -> Summary:
    """Run (or resume) this rank's share of the extraction.

    `on_start(episodes)` is called once with the number of episodes this run will write,
    `on_episode(frames)` after each written episode (0 frames for a skipped one).
    """
    rank, world = _rank_world(cfg)
    if cfg.fps <= 0:
        raise UserError("--fps must be positive")
    for name in ("batch_size", "piece_frames", "chunk_frames", "min_frames"):
        if getattr(cfg, name) < 1:
            raise UserError(f"{name.replace('_', '-')} must be at least 1")
    corpus = open_corpus(cfg.corpus, cfg.format, cfg.camera, cfg.video_key, cfg.state_key)
    sources = corpus.sources()[: cfg.limit]
    units = plan_units(sources, cfg.episodes_per_unit)
    encoder, weights_id = build_encoder(cfg.preset, cfg.checkpoint, cfg.random_init)
    preset = ENCODER_PRESETS[cfg.preset]
    config = StoreConfig(
        encoder="vjepa2-vit", preset=cfg.preset, checkpoint_sha256=weights_id, feature_dim=preset.dim,
        grid=preset.grid, image_size=preset.image_size, fps=float(cfg.fps), crop=CROP_RULE,
        camera=corpus.camera, codec=cfg.codec, compression=cfg.compression,
        chunk_frames=cfg.chunk_frames, source_format=corpus.format,
    )
    create_store(cfg.out, config, units)
    mine = [u for u in range(len(units)) if u % world == rank]
    remove_unsealed(cfg.out, mine)  # leftovers of a crashed run of this rank
    done = set(sealed_units(cfg.out))
    todo = [u for u in mine if u not in done]
    summary = Summary(rank, world, units=len(todo), units_skipped=len(mine) - len(todo), store=Path(cfg.out))

    first_id = np.cumsum([0] + [len(u) for u in units])
    work = [(int(first_id[u] + i), u, src) for u in todo for i, src in enumerate(units[u])]
    if on_start:
        on_start(len(work))
    if work:
        device = _device(cfg)
        encoder.to(device)
        start = time.perf_counter()
        _Pipeline(cfg, encoder, device, work, summary, on_episode).run(corpus, preset.image_size)
        summary.seconds = time.perf_counter() - start
    if set(sealed_units(cfg.out)) == set(range(len(units))):
        merge_manifest(cfg.out)  # every rank that finds all units sealed merges; the result is the same
        summary.merged = True
    return summary


class _Pipeline:
    def __init__(self, cfg: ExtractConfig, encoder: torch.nn.Module, device: torch.device,
                 work: list[tuple[int, int, str]], summary: Summary, on_episode):
        self.cfg, self.encoder, self.device, self.work = cfg, encoder, device, work
        self.summary, self.on_episode = summary, on_episode
        self.unit_end = {i for i in range(len(work)) if i + 1 == len(work) or work[i + 1][1] != work[i][1]}
        self.waiting: dict[int, deque[Piece]] = defaultdict(deque)
        self.episodes: dict[int, _Episode] = {}
        self.queue: deque[tuple[int, torch.Tensor]] = deque()  # released frames, not yet encoded
        self.queued = 0
        self.next_release = 0
        self.next_write = 0
        self.writer: ShardWriter | None = None  # used by the writer thread only
        self.writes = ThreadPoolExecutor(max_workers=1)
        self.pending: deque[Future] = deque()

    def run(self, corpus: Corpus, image_size: int) -> None:
        cfg = self.cfg
        dataset = EpisodePieces(corpus, [w[2] for w in self.work], cfg.fps, image_size,
                                cfg.piece_frames, cfg.min_frames)
        loader = DataLoader(dataset, batch_size=None, num_workers=cfg.workers,
                            pin_memory=self.device.type == "cuda")
        try:
            for piece in loader:
                self.waiting[piece.order].append(piece)
                self._release()
        finally:
            self._drain()
            self.writes.shutdown()
        if self.next_write != len(self.work):
            raise RuntimeError(f"pipeline ended with {len(self.work) - self.next_write} episodes unwritten")

    def _release(self) -> None:
        """Hand pieces to the encoder queue strictly in plan order."""
        while self.waiting.get(self.next_release):
            order = self.next_release
            piece = self.waiting[order].popleft()
            ep = self.episodes.setdefault(order, _Episode())
            if piece.header is not None:
                ep.header = piece.header
            if piece.frames is not None:
                self.queue.append((order, piece.frames))
                self.queued += len(piece.frames)
                ep.frames += len(piece.frames)
            if piece.skip is not None:
                ep.skip = piece.skip
            if piece.last:
                ep.released = True
                del self.waiting[order]
                self.next_release += 1
            self._encode(flush=piece.last and order in self.unit_end)

    def _encode(self, flush: bool) -> None:
        bs = self.cfg.batch_size
        while self.queued >= bs or (flush and self.queued):
            owners, parts, need = [], [], min(bs, self.queued)
            while need:
                order, frames = self.queue.popleft()
                if len(frames) > need:
                    self.queue.appendleft((order, frames[need:]))
                    frames = frames[:need]
                owners.append((order, len(frames)))
                parts.append(frames)
                need -= len(frames)
            out = self._forward(torch.cat(parts))
            self.queued -= len(out)
            offset = 0
            for order, n in owners:
                self.episodes[order].features.append(out[offset:offset + n])
                offset += n
        self._write_ready()

    @torch.inference_mode()
    def _forward(self, frames: torch.Tensor) -> torch.Tensor:
        x = frames.to(self.device, non_blocking=True)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.device.type == "cuda"):
            return self.encoder(x).float().cpu()

    def _write_ready(self) -> None:
        """Queue the finished episodes, in plan order, for the writer thread."""
        while self.next_write < len(self.work):
            order = self.next_write
            ep = self.episodes.get(order)
            if ep is None or not ep.released or (ep.skip is None and ep.encoded < ep.frames):
                return
            self.pending.append(self.writes.submit(self._write, order, ep))
            del self.episodes[order]
            self.next_write += 1
            self._drain(keep=WRITES_IN_FLIGHT)

    def _drain(self, keep: int = 0) -> None:
        """Wait until at most `keep` writes are outstanding; a failed write raises here."""
        while len(self.pending) > keep:
            self.pending.popleft().result()

    def _write(self, order: int, ep: _Episode) -> None:
        """Runs on the writer thread, so zarr writes and checksums overlap with encoding."""
        episode_id, unit, source = self.work[order]
        if self.writer is None:
            self.writer = ShardWriter(self.cfg.out, unit)
        h = ep.header or {}
        info = EpisodeInfo(episode_id, source, camera=h.get("camera", ""), task=h.get("task", ""),
                           success=h.get("success"), native_fps=h.get("native_fps", 0.0),
                           stride=h.get("stride", 0), note=h.get("note", ""))
        if ep.skip is not None:
            self.writer.add_skipped(info, ep.skip)
            self.summary.skipped.append((source, ep.skip))
        else:
            self.writer.add_episode(info, torch.cat(ep.features), h["state"], h["frame_index"], h["timestamp"])
            self.summary.episodes_ok += 1
            self.summary.frames += ep.frames
        if order in self.unit_end:
            self.writer.seal()
            self.writer = None
        if self.on_episode:
            self.on_episode(0 if ep.skip else ep.frames)
