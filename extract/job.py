"""The extraction job: corpus -> frozen frame encoder (V-JEPA 2 by default) -> sharded feature store, once.

Data flow (one rank):

    DataLoader workers: load episode, decode + preprocess frames in pieces of <= piece_frames
        -> main process: release pieces in plan order, encode in batches of batch_size frames
           (a batch never spans two units)
        -> writer thread: finished episodes in plan order into their unit's shard, seal units.

Batches depend only on the plan (never on worker timing, rank count or where a previous run
stopped), so a resumed or distributed run stores bit-identical features.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict, deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from common.device import bf16_autocast, pick_device, rank_world
from common.errors import Preempted, SkipEpisode, StoreError, UserError
from common.media import free_decoders
from common.stop import StopRequest, ignore_stop_signals, stop_signals
from model.encoders import build_encoder
from model.preprocess import InputSpec
from store import (
    EpisodeInfo,
    ShardWriter,
    StoreConfig,
    create_store,
    merge_manifest,
    plan_units,
    sealed_units,
)
from store.format import SEAL_FILE, read_manifest, read_root_attrs, read_seal, shard_dir, shard_episodes
from store.integrity import check_shard
from store.lease import UnitLocks
from store.location import (
    RemotePath,
    is_url,
    remove_tree,
    reset_retries,
    retries,
    where,
)

from .config import ExtractConfig
from .corpora import Corpus, open_corpus

log = logging.getLogger(__name__)
WRITES_IN_FLIGHT = 4  # finished episodes queued for the writer thread before encoding waits
PIECE_FRAMES = 32  # frames a decoding worker hands over at once (bounds its memory, keeps the encoder fed)
MIN_FRAMES = 2  # an episode needs one action at least
CHECKS_IN_FLIGHT = 16  # sealed shards checked at once when a run starts (each is a few small reads)


@dataclass
class Piece:
    """Up to PIECE_FRAMES preprocessed frames of one episode; the first carries its rows' metadata."""

    order: int  # position of the episode in this rank's work list
    last: bool
    frames: torch.Tensor | None = None  # [k, 3, S, S] float32
    info: EpisodeInfo | None = None  # first piece only: the episode's metadata and its per-row arrays
    state: np.ndarray | None = None
    action: np.ndarray | None = None
    frame_index: np.ndarray | None = None
    timestamp: np.ndarray | None = None
    skip: str | None = None  # set on the last piece of an episode that cannot be extracted
    fallback: str | None = None  # why decord did not decode this episode (PyAV did), once known


class EpisodePieces(IterableDataset):
    """Worker w of n loads episodes w, w+n, ...; the loader interleaves workers round-robin."""

    def __init__(self, corpus: Corpus, sources: list[str], fps: float, spec: InputSpec):
        self.corpus, self.sources, self.fps, self.spec = corpus, sources, fps, spec

    def __iter__(self) -> Iterator[Piece]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        for order in range(worker, len(self.sources), workers):
            yield from self._pieces(order)

    def _pieces(self, order: int) -> Iterator[Piece]:
        try:
            ep = self.corpus.load(self.sources[order], self.fps)
            if len(ep) < MIN_FRAMES:
                why = f" ({ep.info.note})" if ep.info.note else ""
                raise SkipEpisode(f"only {len(ep)} frames at {self.fps:g} fps, {MIN_FRAMES} needed{why}")
            for start in range(0, len(ep), PIECE_FRAMES):
                frames = self.spec.apply(ep.frames(slice(start, start + PIECE_FRAMES)))
                piece = Piece(order, start + PIECE_FRAMES >= len(ep), frames, fallback=ep.video.fallback)
                if start == 0:
                    piece.info, piece.state, piece.action, piece.frame_index, piece.timestamp = (
                        ep.info, ep.state, ep.action, ep.frame_index, ep.timestamp)
                yield piece
        except SkipEpisode as e:
            yield Piece(order, True, skip=str(e))
        except OSError as e:  # a read that failed (a file or object gone, a connection lost): this episode only
            yield Piece(order, True, skip=f"reading it failed: {type(e).__name__}: {e}")


@dataclass
class _Episode:
    first: Piece | None = None  # the piece with the metadata
    skip: str | None = None
    fallback: str | None = None
    released: bool = False  # all pieces handed to the encoder queue
    frames: int = 0
    features: list[torch.Tensor] = field(default_factory=list)

    @property
    def encoded(self) -> int:
        return sum(len(f) for f in self.features)


@dataclass
class ExtractSummary:
    rank: int
    world_size: int
    units: int  # this rank's units written by this run
    units_skipped: int  # already sealed (by an earlier run, or by another writer meanwhile)
    units_held: int = 0  # being written by another process: left to it
    # (source, reason) of the skipped episodes in units an earlier run sealed, kept as they are (no --retry-skipped)
    skipped_before: list[tuple[str, str]] = field(default_factory=list)
    episodes_ok: int = 0
    frames: int = 0
    seconds: float = 0.0
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (source, reason)
    fallback: list[tuple[str, str]] = field(default_factory=list)  # (source, why) of episodes decoded by PyAV
    notes: list[tuple[str, str]] = field(default_factory=list)  # (source, note) of stored episodes with a note
    merged: bool = False
    store: Path | RemotePath | None = None
    actions: str = ""  # the store's action space, said in words
    retries: int | None = None  # object-store requests retried (this rank's process and its decoding workers), if
    # the corpus or the store is in one

    @property
    def failed(self) -> str | None:
        """Why this run extracted nothing although it had episodes to do, else None."""
        if self.skipped and not self.episodes_ok:
            return f"all {len(self.skipped)} episodes of this run were skipped; nothing was extracted"
        return None


def run_extract(cfg: ExtractConfig, on_start=None, on_episode=None) -> ExtractSummary:
    """Run (or resume) this rank's share of the extraction.

    `on_start(episodes)` is called once with the number of episodes this run will write,
    `on_episode(frames)` after each written episode (0 frames for a skipped one).
    """
    rank, world = rank_world(cfg.rank, cfg.world_size)
    device = pick_device(cfg.device)  # a bad --device stops here, before any work
    reset_retries()
    corpus = open_corpus(cfg.corpus, cfg.format, cfg.camera, cfg.video_key, cfg.state_key, cfg.actions,
                         cfg.native_fps)
    robot = corpus.robot(cfg.fps)
    sources = corpus.sources()[: cfg.limit]
    if not sources:  # (a store of no units would read as damaged metadata)
        raise UserError(f"{cfg.corpus}: the {corpus.format} corpus lists no episodes")
    units = plan_units(sources, cfg.episodes_per_unit)
    encoder, weights_id = build_encoder(cfg.preset, cfg.checkpoint, cfg.random_init, family=cfg.encoder,
                                        feature_stride=cfg.feature_stride, image_size=cfg.image_size)
    config = StoreConfig(
        encoder=encoder.family, preset=encoder.name, checkpoint_sha256=weights_id, feature_dim=encoder.dim,
        grid=tuple(encoder.grid), image_size=encoder.input.size, fps=float(cfg.fps), crop=encoder.input.describe(),
        camera=corpus.camera, codec=cfg.codec, compression=cfg.compression,
        chunk_frames=cfg.chunk_frames, source_format=corpus.format, state_dim=robot.state_dim,
        action_dim=robot.action_dim, actions=robot.actions, state_names=robot.state_names,
        action_names=robot.action_names,
    )
    create_store(cfg.out, config, units)
    first_id = np.cumsum([0] + [len(u) for u in units])
    shards = _Shards(cfg.out, config, [list(range(first_id[u], first_id[u + 1])) for u in range(len(units))])
    mine = [u for u in range(len(units)) if u % world == rank]
    sealed = sorted(set(sealed_units(cfg.out)) & set(mine))
    with ThreadPoolExecutor(max_workers=CHECKS_IN_FLIGHT) as pool:
        intact = {u for u, ok in zip(sealed, pool.map(lambda u: shards.intact(u, report=True), sealed)) if ok}
        if cfg.retry_skipped:  # each unit's own table decides (the merged manifest may predate a redo)
            kept = sorted(intact)
            shards.redo = {u: seal for u, seal in zip(kept, pool.map(shards.seal_if_skips, kept)) if seal}
            intact -= set(shards.redo)
    todo = [u for u in mine if u not in intact]
    summary = ExtractSummary(rank, world, units=0, units_skipped=len(mine) - len(todo), store=where(cfg.out),
                             actions=f"{robot.actions} ({robot.state_dim}-D states, {robot.action_dim}-D actions)",
                             skipped_before=[] if cfg.retry_skipped else _kept_skips(cfg.out, intact))

    work = [(int(first_id[u] + i), u, src) for u in todo for i, src in enumerate(units[u])]
    if on_start:
        on_start(len(work))
    if work:
        encoder.to(device)
        start = time.perf_counter()
        with stop_signals() as stop:
            _Pipeline(cfg, encoder, device, work, summary, on_episode, stop, shards).run(corpus, encoder.input)
        summary.seconds = time.perf_counter() - start
    if set(sealed_units(cfg.out)) == set(range(len(units))):
        merge_manifest(cfg.out)  # every rank that finds all units sealed merges; the result is the same
        summary.merged = True
    if is_url(cfg.out) or is_url(cfg.corpus):
        summary.retries = retries()
    return summary


def _kept_skips(root: Path | RemotePath | str, units: set[int]) -> list[tuple[str, str]]:
    """(source, reason) of the skipped episodes in `units`, from the merged manifest (one read; none before the
    merge). For the summary alone: a manifest that does not read gives none here (`store verify` names it)."""
    try:
        table = read_manifest(root, read_root_attrs(root))
    except StoreError:
        return []
    if table is None:
        return []
    return [(r["source"], r["reason"]) for r in table.to_pylist() if r["status"] == "skipped" and r["unit"] in units]


class _Shards:
    """The store's units as this run sees them: whether one is done, and claiming one to write it."""

    def __init__(self, root: Path | RemotePath, config: StoreConfig, planned: list[list[int]]):
        self.root, self.config, self.planned = where(root), config, planned
        self.locks = UnitLocks(self.root)
        self.redo: dict[int, bytes] = {}  # sealed units to write again (--retry-skipped): their seals when chosen

    def intact(self, unit: int, report: bool = False) -> bool:
        """A sealed unit that checks out against its seal (its feature chunks listed, not hashed). Any other, as
        crashes and concurrent writers leave them, is removed and redone when claimed."""
        problems = check_shard(self.root, unit, self.config, self.planned[unit], chunks=False)[0]
        if problems and report:
            log.info("%s; the shard will be removed and redone", problems[0])
        return not problems

    def seal_if_skips(self, unit: int) -> bytes | None:
        """A sealed unit's seal if any of its episodes was skipped, else None."""
        raw = (shard_dir(self.root, unit) / SEAL_FILE).read_bytes()
        episodes = shard_episodes(self.root, unit, read_seal(self.root, unit, raw))
        return raw if "skipped" in episodes["status"].to_pylist() else None

    def claim(self, unit: int) -> str | None:
        """Lock a unit to write it and clear what stands in its place: None, or why it is not this run's to write."""
        holder = self.locks.take(unit)
        if holder is not None:
            return f"{holder} is writing it"
        seal = shard_dir(self.root, unit) / SEAL_FILE
        # a unit chosen for a redo is kept if another writer has sealed it again since (its seal changed)
        if seal.exists() and (unit not in self.redo or seal.read_bytes() != self.redo[unit]) and self.intact(unit):
            self.locks.release(unit)
            return "sealed by another writer meanwhile"
        remove_tree(shard_dir(self.root, unit))
        return None


class _Pipeline:
    def __init__(self, cfg: ExtractConfig, encoder: torch.nn.Module, device: torch.device,
                 work: list[tuple[int, int, str]], summary: ExtractSummary, on_episode, stop: StopRequest,
                 shards: _Shards):
        self.cfg, self.encoder, self.device, self.work = cfg, encoder, device, work
        self.summary, self.on_episode, self.stop, self.shards = summary, on_episode, stop, shards
        self.abandoned = False  # queued episodes left unwritten after a stop
        self.claimed: dict[int, bool] = {}  # unit -> whether this run writes it (decided as its first piece comes)
        self.unit_end = {i for i in range(len(work)) if i + 1 == len(work) or work[i + 1][1] != work[i][1]}
        self.waiting: dict[int, deque[Piece]] = defaultdict(deque)
        self.episodes: dict[int, _Episode] = {}
        self.queue: deque[tuple[int, torch.Tensor]] = deque()  # released frames, not yet encoded
        # the batch being encoded: (its frames' owners as (order, count), its features, when they are there)
        self.in_flight: tuple[list[tuple[int, int]], torch.Tensor, torch.cuda.Event | None] | None = None
        self.queued = 0
        self.next_release = 0
        self.next_write = 0
        self.writer: ShardWriter | None = None  # used by the writer thread only (until it is shut down)
        self.writes = ThreadPoolExecutor(max_workers=1)
        self.pending: deque[Future] = deque()

    def run(self, corpus: Corpus, spec: InputSpec) -> None:
        cfg = self.cfg
        dataset = EpisodePieces(corpus, [w[2] for w in self.work], cfg.fps, spec)
        loader = DataLoader(dataset, batch_size=None, num_workers=cfg.workers,
                            pin_memory=self.device.type == "cuda", worker_init_fn=ignore_stop_signals)
        free_decoders()
        try:
            for piece in loader:
                if self.stop.requested:
                    break
                self.waiting[piece.order].append(piece)
                self._release()
            self._land()  # the last batch's episodes
            self._write_ready()
            self._drain()  # episodes already encoded are written (and their unit sealed if they end it)
        finally:
            self.writes.shutdown(cancel_futures=True)  # after a failure: the first error stands, later writes go
            if self.writer is not None:  # a unit begun and not sealed: a stop or a failure
                self.writer.discard()
            self.shards.locks.close()
        if self.stop.requested and (self.next_write < len(self.work) or self.abandoned):
            raise Preempted(f"{self.stop.name}: {self.summary.units} of this run's units sealed, the unit in "
                            "progress removed; run the same command again to resume")
        if self.next_write != len(self.work):
            raise RuntimeError(f"pipeline ended with {len(self.work) - self.next_write} episodes unwritten")

    def _release(self) -> None:
        """Hand pieces to the encoder queue strictly in plan order."""
        while self.waiting.get(self.next_release):
            order = self.next_release
            piece = self.waiting[order].popleft()
            if not self._claimed(self.work[order][1]):  # its pieces are dropped unencoded
                if piece.last:
                    del self.waiting[order]
                    self.next_release += 1
                    self._write_ready()
                continue
            ep = self.episodes.setdefault(order, _Episode())
            if piece.info is not None:
                ep.first = piece
            ep.fallback = piece.fallback or ep.fallback
            if piece.frames is not None:
                self.queue.append((order, piece.frames))
                self.queued += len(piece.frames)
                ep.frames += len(piece.frames)
            if piece.skip is not None:  # its frames already queued are not encoded
                ep.skip = piece.skip
                self.queue = deque(item for item in self.queue if item[0] != order)
                self.queued = sum(len(frames) for _, frames in self.queue)
            if piece.last:
                ep.released = True
                del self.waiting[order]
                self.next_release += 1
            self._encode(flush=piece.last and order in self.unit_end)

    def _claimed(self, unit: int) -> bool:
        if unit not in self.claimed:
            why = self.shards.claim(unit)
            if why:
                log.info("unit %d: %s; skipped here", unit, why)
                if why.endswith("meanwhile"):
                    self.summary.units_skipped += 1
                else:
                    self.summary.units_held += 1
            self.claimed[unit] = why is None
        return self.claimed[unit]

    def _encode(self, flush: bool) -> None:
        """Encode the queued frames in batches (a short one at a unit's end), each launched before the one
        before it lands, so the device works while this process decodes, collates and writes."""
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
            self.queued -= sum(n for _, n in owners)
            launched = (owners, *self._launch(parts))
            self._land()
            self.in_flight = launched
        if flush:  # a unit's last frames: its episodes are written and it is sealed now, not a batch later
            self._land()
        self._write_ready()

    @torch.inference_mode()
    def _launch(self, parts: list[torch.Tensor]) -> tuple[torch.Tensor, torch.cuda.Event | None]:
        """Start encoding a batch: its features [n, tokens, dim] and the event after which they are there (None:
        at once). On CUDA both copies go through pinned memory, so they and the forward are only queued here."""
        if self.device.type != "cuda":
            return self.encoder(torch.cat(parts).to(self.device)).float().cpu(), None
        frames = torch.empty((sum(map(len, parts)), *parts[0].shape[1:]), dtype=parts[0].dtype, pin_memory=True)
        torch.cat(parts, out=frames)
        with bf16_autocast(self.device):
            z = self.encoder(frames.to(self.device, non_blocking=True)).float()
        out = torch.empty(z.shape, dtype=z.dtype, pin_memory=True)
        out.copy_(z, non_blocking=True)
        done = torch.cuda.Event()
        done.record(torch.cuda.current_stream(self.device))  # (the stream of this device, not of cuda:0)
        return out, done

    def _land(self) -> None:
        """Hand the batch in flight's features to their episodes once the device is done with it."""
        if self.in_flight is None:
            return
        (owners, out, done), self.in_flight = self.in_flight, None
        if done is not None:
            done.synchronize()
            out = out.clone()  # pageable: the episodes queued for the writer do not hold page-locked memory
        offset = 0
        for order, n in owners:
            if order in self.episodes:  # not an episode that was skipped (and written) meanwhile
                self.episodes[order].features.append(out[offset:offset + n])
            offset += n

    def _write_ready(self) -> None:
        """Queue the finished episodes, in plan order, for the writer thread."""
        while self.next_write < len(self.work):
            order = self.next_write
            if self.claimed.get(self.work[order][1]) is False:  # another writer's unit
                self.next_write += 1
                continue
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
        if self.writer is None and self.stop.requested:  # stopping: the unit in flight is sealed, no new one begun
            self.abandoned = True
            return
        if self.writer is None:
            self.writer = ShardWriter(self.cfg.out, unit)
        first = ep.first
        info = replace(first.info if first else EpisodeInfo(), episode_id=episode_id, source=source)
        if ep.skip is not None:
            self.writer.add_skipped(info, ep.skip)
            self.summary.skipped.append((source, ep.skip))
        else:
            self.writer.add_episode(info, torch.cat(ep.features), first.state, first.frame_index, first.timestamp,
                                    first.action)
            if info.note:
                self.summary.notes.append((source, info.note))
            if ep.fallback:
                self.summary.fallback.append((source, ep.fallback))
            self.summary.episodes_ok += 1
            self.summary.frames += ep.frames
        if order in self.unit_end:
            self.shards.locks.confirm(unit)
            self.writer.seal()
            self.writer = None
            self.shards.locks.release(unit)
            self.summary.units += 1
        if self.on_episode:
            self.on_episode(0 if ep.skip else ep.frames)
