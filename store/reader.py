"""Reading a store: the episode table and windows of frames, cheap enough for DataLoader workers.

Every byte a reader takes from a shard is checked against the shard's seal on the way in
(`VerifiedChunks`, and `Store.read_window`'s own reads of a local store's uncompressed feature chunks): a
deleted, truncated or altered chunk is a one-line StoreError naming the shard and the file, never zeros or
garbage handed to training. A store may be local or at an
fsspec URL (store.location); with a `ChunkCache`, objects once read come from local disk.
"""

from __future__ import annotations

import asyncio
import os
import threading
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import torch
import zarr
from zarr.abc.store import OffsetByteRequest, RangeByteRequest, SuffixByteRequest
from zarr.abc.store import Store as ZarrStore
from zarr.core.buffer import default_buffer_prototype
from zarr.core.sync import sync
from zarr.storage import WrapperStore

from common.errors import StoreError

from . import codecs, manifest
from .cache import ChunkCache
from .digest import digest_bytes, digest_parts
from .format import (
    MANIFEST_FILE, Location, StoreConfig, feature_chunk, read_manifest, read_plan, read_root_attrs,
    read_seal, sealed_units, shard_dir, shard_episodes,
)
from .location import remote_errors, unreachable, where, zarr_store


class VerifiedChunks(WrapperStore):
    """A read-only zarr store over one sealed shard that checks each file it serves against the seal.

    A file the seal lists must exist and hash to its recorded digest (the seal names the algorithm);
    zarr would otherwise read a missing chunk as fill values and a damaged one as noise. The cost: one
    digest per chunk read (BENCHMARKS.md, checked-reads). With a cache, a verified copy is served from
    local disk.
    """

    def __init__(self, store: ZarrStore, seal: dict, unit: int, cache: ChunkCache | None = None):
        super().__init__(store)
        self.seal, self.unit, self.cache = seal, unit, cache
        self.digests, self.algorithm = seal["files"], seal["digest"]

    def _with_store(self, store: ZarrStore) -> "VerifiedChunks":
        return type(self)(store, self.seal, self.unit, self.cache)

    async def _matches(self, data: bytes | memoryview, want: str) -> bool:
        # on a thread (both digests release the GIL), so a window's chunks are read and checked at once
        return await asyncio.to_thread(digest_bytes, data, self.algorithm) == want

    async def get(self, key, prototype, byte_range=None):
        want = self.digests.get(key)
        if want is None:  # not part of the shard (zarr probing for optional keys)
            return await self._store.get(key, prototype, byte_range)
        buf = None
        if self.cache is not None and (data := self.cache.get(self.algorithm, want)) is not None:
            if await self._matches(data, want):
                buf = prototype.buffer.from_bytes(data)
            else:
                self.cache.drop(self.algorithm, want)  # a damaged copy: fetch the object again
        if buf is None:
            try:
                buf = await self._store.get(key, prototype, None)
            except Exception as e:
                if (down := unreachable(e, f"shard {self.unit:05d}: {key}")) is not None:
                    raise down from None
                raise
            if buf is None:
                raise missing(self.unit, key)
            data = memoryview(buf.as_numpy_array())  # the bytes read, not a copy
            if not await self._matches(data, want):
                raise damaged(self.unit, key)
            if self.cache is not None:
                self.cache.put(self.algorithm, want, data)
        if byte_range is not None:  # (zarr asks for ranges only of sharded arrays; the whole object was checked)
            buf = prototype.buffer.from_bytes(buf.to_bytes()[_slice(byte_range)])
        return buf


def missing(unit: int, key: str) -> StoreError:
    return StoreError(f"shard {unit:05d}: {key} is missing (deleted after sealing); the store is damaged: run "
                      "`cli.py store verify`")


def damaged(unit: int, key: str) -> StoreError:
    return StoreError(f"shard {unit:05d}: {key} does not match its checksum (damaged or changed after sealing); run "
                      "`cli.py store verify`")


def _slice(r: RangeByteRequest | OffsetByteRequest | SuffixByteRequest) -> slice:
    if isinstance(r, RangeByteRequest):
        return slice(r.start, r.end)
    return slice(r.offset, None) if isinstance(r, OffsetByteRequest) else slice(-r.suffix, None)


_SCRATCH = threading.local()


def _scratch(size: int) -> memoryview:
    """This thread's buffer for the bytes of a chunk that a window does not use."""
    if len(getattr(_SCRATCH, "buffer", b"")) < size:
        _SCRATCH.buffer = bytearray(size)
    return memoryview(_SCRATCH.buffer)


def _pread(path: Path, parts: list[memoryview], offset: int, size: int) -> bool | None:
    """Read a file from `offset` into `parts`, in order: None if it does not exist, else whether it is `size`
    bytes long and filled them."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        return os.fstat(fd).st_size == size and os.preadv(fd, parts, offset) == sum(map(len, parts))
    finally:
        os.close(fd)


def shard_arrays(root: Location, unit: int, config: StoreConfig, seal: dict | None = None,
                 verify: bool = True, cache: ChunkCache | None = None) -> dict[str, zarr.Array]:
    """The row arrays of one sealed shard, opened by name, every read checked against its seal (unless
    `verify` is off: only `bench checked-reads` turns it off, to measure what the checks cost)."""
    seal = seal or read_seal(root, unit)
    folder = shard_dir(root, unit)
    store = zarr_store(folder, read_only=True)
    if verify:
        store = VerifiedChunks(store, seal, unit, cache)
    try:
        with remote_errors(str(folder)):
            return {name: zarr.open_array(store=store, path=name, mode="r", zarr_format=3)
                    for name in codecs.shard_layout(config)}
    except (FileNotFoundError, ValueError, KeyError) as e:
        raise StoreError(f"shard {unit:05d}: arrays unreadable ({type(e).__name__}: {e})") from None


def read_rows(arrays: list[zarr.Array], rows: slice) -> list[np.ndarray]:
    """The same rows of several arrays, all their chunks fetched at once (one round trip from an object store)."""
    async def gather():
        return await asyncio.gather(*(a.async_array.getitem(rows) for a in arrays))

    return sync(gather())


class Store:
    """A read-only view of the sealed shards of a store.

    Opening checks the store's metadata: the plan and the manifest against the checksums recorded
    in the root attributes, the unit count, and that the manifest names only sealed shards.
    Zarr arrays (and object-store clients) are opened lazily, per process: a Store made before a
    fork (or pickled into a DataLoader worker) reopens its files in the child.
    """

    def __init__(self, root: Location | str, verify: bool = True, cache: ChunkCache | None = None):
        if cache is not None and not verify:
            raise StoreError("a chunk cache needs verified reads (its copies are named by the seals' digests)")
        self.root, self.verify, self.cache = where(root), verify, cache
        self.attrs = read_root_attrs(self.root)
        self.config = StoreConfig.from_attrs(self.attrs)
        self.num_units: int = self.attrs["num_units"]
        self.sealed = sealed_units(self.root)
        try:
            read_plan(self.root, self.attrs)  # a damaged plan or unit count is refused here
            if self.sealed and self.sealed[-1] >= self.num_units:
                raise StoreError(f"{self.root}: shard {self.sealed[-1]:05d} exists but zarr.json says "
                                 f"{self.num_units} units (damaged metadata)")
            self.episodes = self._episode_table()
        except StoreError as e:
            raise StoreError(f"{e}; run `cli.py store verify {self.root}`") from None
        self.complete = len(self.sealed) == self.num_units
        cols = self.episodes.select(["episode_id", "unit", "first_row", "num_frames"]).to_pydict()
        self._where = {e: (u, r, n) for e, u, r, n in zip(*cols.values())}
        self._arrays: dict[int, dict[str, zarr.Array]] = {}
        self._seals: dict[int, dict] = {}
        # uncompressed bf16 / fp16 features of a local store, or of a remote one read through a cache, are read
        # from their files straight into the tensor that needs them (`_read_chunks`); others through zarr
        self._direct = (self.config.compression == "none" and self.config.codec in codecs.AS_STORED
                        and (isinstance(self.root, Path) or cache is not None))
        self._rows: dict[int, dict[str, np.ndarray]] = {}  # per shard: its states (and actions), read whole once
        self._pid = os.getpid()

    def _episode_table(self):
        table = read_manifest(self.root, self.attrs)
        if table is None:  # not merged yet: the sealed shards' own tables
            return manifest.concat([shard_episodes(self.root, u) for u in self.sealed])
        stray = sorted(set(table["unit"].to_pylist()) - set(self.sealed))
        if stray:
            raise StoreError(f"{self.root / MANIFEST_FILE}: lists episodes of unit(s) {stray[:5]} that are not sealed "
                             "(damaged manifest or shards)")
        return table

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_arrays"], state["_rows"], state["_seals"] = {}, {}, {}
        return state

    @property
    def ok_episodes(self) -> list[int]:
        """Ids of the episodes that hold frames (status ok), in id order."""
        ok = pc.equal(self.episodes["status"], "ok")
        return self.episodes.filter(ok)["episode_id"].to_pylist()

    @property
    def total_frames(self) -> int:
        return int(pc.sum(self.episodes["num_frames"]).as_py() or 0)

    def episode(self, episode_id: int) -> dict:
        """The manifest row of one episode as a dict."""
        self._locate(episode_id)
        mask = pc.equal(self.episodes["episode_id"], episode_id)
        return self.episodes.filter(mask).to_pylist()[0]

    def num_frames(self, episode_id: int) -> int:
        return self._locate(episode_id)[2]

    def _locate(self, episode_id: int) -> tuple[int, int, int]:
        try:
            return self._where[episode_id]
        except KeyError:
            raise StoreError(f"episode {episode_id} is not in a sealed shard of {self.root}") from None

    def _unit_arrays(self, unit: int) -> dict[str, zarr.Array]:
        if self._pid != os.getpid():  # forked: file handles of the parent are not ours
            self._arrays, self._rows, self._seals, self._pid = {}, {}, {}, os.getpid()
        if unit not in self._arrays:
            self._seals[unit] = read_seal(self.root, unit)
            self._arrays[unit] = shard_arrays(self.root, unit, self.config, self._seals[unit], self.verify, self.cache)
        return self._arrays[unit]

    def _read_chunks(self, unit: int, rows: slice, features: torch.Tensor) -> None:
        """Feature rows of an uncompressed shard into `features` [rows, tokens, D], each chunk file read once by
        the kernel straight into it, no copy after (zarr's path copies each chunk twice more: BENCHMARKS.md,
        loader)."""
        k = self.config.chunk_frames
        frame = features[0].numel() * features.element_size()
        out = memoryview(features.view(torch.uint8).numpy().reshape(-1))
        for i in range(rows.start // k, (rows.stop - 1) // k + 1):
            first, stop = max(rows.start, i * k), min(rows.stop, (i + 1) * k)  # the rows of chunk i wanted
            self._read_chunk(unit, i, slice(first, stop), out[(first - rows.start) * frame:(stop - rows.start) * frame])

    def _read_chunk(self, unit: int, index: int, rows: slice, into: memoryview) -> None:
        """Rows of feature chunk `index` into `into`, checked against the seal. With row digests (`frame_digests`)
        only those rows are read, each checked against its own; else the whole file, the rest into a scratch
        buffer, checked against the file's digest. From the shard's file, or a remote store's cached copy; one not
        cached is fetched, checked and cached by VerifiedChunks."""
        seal, key, k = self._seals[unit], feature_chunk(index), self.config.chunk_frames
        algorithm, row_digests = seal["digest"], seal.get("frame_digests")
        frame = len(into) // (rows.stop - rows.start)
        offset = (rows.start - index * k) * frame  # of the rows in the file
        if row_digests is not None:
            parts, at = [into], offset

            def intact() -> bool:
                return all(digest_bytes(into[j * frame:(j + 1) * frame], algorithm) == row_digests[r]
                           for j, r in enumerate(range(rows.start, rows.stop)))
        else:
            scratch = _scratch(k * frame)
            parts = [p for p in (scratch[:offset], into, scratch[offset:k * frame - len(into)]) if len(p)]
            at = 0  # disjoint parts: every byte of the file is still there to hash

            def intact() -> bool:
                return digest_parts(parts, algorithm) == seal["files"].get(key)
        if isinstance(self.root, Path):
            whole = _pread(shard_dir(self.root, unit) / key, parts, at, k * frame)
            if whole is None:
                raise missing(unit, key)
            if not whole or (self.verify and not intact()):
                raise damaged(unit, key)
            return
        want = seal["files"].get(key)
        if want is None:
            raise damaged(unit, key)
        if (copy := self.cache.copy(algorithm, want)) is not None:
            if _pread(copy, parts, at, k * frame) and intact():
                return
            self.cache.drop(algorithm, want)  # a damaged copy: fetch the object again
        data = sync(self._arrays[unit]["features"].store_path.store.get(key, default_buffer_prototype()))
        data = data.as_numpy_array()
        if len(data) != k * frame:
            raise damaged(unit, key)
        into[:] = data[offset:offset + len(into)]

    @property
    def stats(self) -> dict | None:
        """Per-dim statistics of states and actions (store.stats), written by the merge; None before it."""
        return self.attrs.get("stats") or None

    def read_window(self, episode_id: int, start: int, length: int,
                    out: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Frames [start, start + length) of an episode: (features [L, tokens, D], state [L, S], and the
        stored actions [L, A] of a store of column actions, else None).

        Features come back in the stored precision (bf16, or float16 for fp16/int8), raw
        encoder output: layer-normalise them before use. With `out` (that shape and dtype), they are
        written into it, for bf16 and fp16 straight from the chunks (ClipDataset reads a batch so).
        """
        unit, first, n = self._locate(episode_id)
        if start < 0 or length < 1 or start + length > n:
            raise StoreError(f"window [{start}, {start + length}) outside episode {episode_id} of {n} frames")
        a = self._unit_arrays(unit)
        rows = slice(first + start, first + start + length)
        if unit not in self._rows:  # a few bytes per row: one read per shard instead of one per window
            small = [k for k in ("state", "action") if k in a]
            self._rows[unit] = dict(zip(small, read_rows([a[k] for k in small], slice(None))))
        small = {k: torch.from_numpy(v[rows].copy()) for k, v in self._rows[unit].items()}  # callers may write
        if self._direct:
            features = out if out is not None else torch.empty(
                (length, self.config.tokens, self.config.feature_dim), dtype=codecs.FEATURE_DTYPE[self.config.codec])
            self._read_chunks(unit, rows, features)
            return features, small["state"], small.get("action")
        view = None if out is None else codecs.stored_view(out, self.config.codec)
        if view is not None:
            a["features"].get_basic_selection(rows, out=default_buffer_prototype().nd_buffer.from_numpy_array(view))
            return out, small["state"], small.get("action")
        names = [k for k in ("features", "scales") if k in a]
        got = dict(zip(names, read_rows([a[k] for k in names], rows)))  # the chunks of both at once
        features = codecs.decode(got["features"], got.get("scales"), self.config.codec)
        if out is not None:
            features = out.copy_(features)
        return features, small["state"], small.get("action")

    def read_episode(self, episode_id: int) -> dict[str, np.ndarray | torch.Tensor]:
        """All rows of an episode: features, state, action (None unless stored), frame_index, timestamp."""
        unit, first, n = self._locate(episode_id)
        features, state, action = self.read_window(episode_id, 0, n)
        a = self._unit_arrays(unit)
        rows = slice(first, first + n)
        return {"features": features, "state": state.numpy(), "action": None if action is None else action.numpy(),
                "frame_index": a["frame_index"][rows], "timestamp": a["timestamp"][rows]}


def open_store(root: Location | str, verify: bool = True, cache: ChunkCache | None = None) -> Store:
    return Store(root, verify, cache)
