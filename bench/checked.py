"""The cost of checked reads: the trainer's data path with and without checking chunks against the seal,
under xxh3-128 seals (new stores), BLAKE3 seals (earlier format-3 code's) and SHA-256 seals (format 2), and
`store verify` under each."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from statistics import median, quantiles

from extract.config import ExtractConfig
from store import reseal, sealed_units, verify
from store.digest import SEAL_DIGEST, digest_bytes
from store.format import read_seal, shard_dir
from store.location import tree_bytes
from store.writer import write_seal

from .config import CheckedReadsBench
from .loader import CLIP_MB, feature_files, loader_rate, make_store
from .report import Section, table

CHUNK = ExtractConfig.chunk_frames  # the default
DIGESTS = {"xxh3-128": ("xxh3-128", "default"), "blake3": ("BLAKE3", "earlier format 3"),
           "sha256": ("SHA-256", "format 2")}  # name in a seal -> name and role in the table


def digest_rate(paths: list, algorithm: str, repeats: int = 3) -> float:
    """MB/s of one digest over the store's feature chunk files on one core (page cache warm)."""
    data = [p.read_bytes() for p in paths[:64]]
    best = 0.0
    for _ in range(repeats):
        start = time.perf_counter()
        for d in data:
            digest_bytes(d, algorithm)
        best = max(best, sum(map(len, data)) / (time.perf_counter() - start) / 1e6)
    return best


def verify_rate(root) -> float:
    """MB/s of `store verify` over the whole store (page cache warm)."""
    verify(root)  # warms the page cache
    start = time.perf_counter()
    problems = verify(root)
    assert not problems, problems
    return tree_bytes(root) / (time.perf_counter() - start) / 1e6


def _relinked(root: Path, algorithm: str) -> Path:
    """The same files (hard links) under `algorithm`'s seals; only the seals are new files, so `root` keeps its own."""
    copy = root.with_name(f"{root.name}-{algorithm}")
    shutil.rmtree(copy, ignore_errors=True)
    shutil.copytree(root, copy, copy_function=os.link)
    reseal(copy, algorithm)
    return copy


def run(cfg: CheckedReadsBench) -> Section:
    root = make_store(cfg.directory, cfg.frames, CHUNK)
    stores = {a: root if a == SEAL_DIGEST else _relinked(root, a) for a in DIGESTS}
    for unit in sealed_units(stores["sha256"]):  # as format 2 wrote them, without row digests: windows read whole
        seal = read_seal(stores["sha256"], unit)  # chunks
        write_seal(shard_dir(stores["sha256"], unit), {k: v for k, v in seal.items() if k != "frame_digests"})
    rates: dict[str, list[float]] = {k: [] for k in (*DIGESTS, "unchecked")}
    for _ in range(cfg.repeats):  # alternating, page cache warm: the CPU cost of the check shows in full
        for name in rates:
            rates[name].append(loader_rate(stores.get(name, root), 1, cfg.clips, verify=name != "unchecked"))
    clips = {k: median(v) for k, v in rates.items()}
    paired = {a: [c / u for c, u in zip(rates[a], rates["unchecked"])] for a in DIGESTS}  # of runs side by side
    ratio = {a: median(v) for a, v in paired.items()}
    spread = {a: quantiles(v, n=4)[::2] if len(v) > 1 else v * 2 for a, v in paired.items()}  # middle half of runs
    hash_mb = {a: digest_rate(feature_files(root), a) for a in DIGESTS}
    verify_mb = {a: verify_rate(stores[a]) for a in DIGESTS}
    for store in stores.values():
        if store != root:
            shutil.rmtree(store)
    # hashed per window: its rows (row digests), or the whole chunks a random 8-frame window touches (format 2)
    read_mb = {a: (7 / CHUNK + 1) * CHUNK / 8 * CLIP_MB if a == "sha256" else CLIP_MB for a in DIGESTS}
    rows = [[f"checked against {label} seals ({role})", f"{clips[a]:.0f}", f"**{ratio[a]:.1%}**",
             f"{spread[a][0]:.0%}-{spread[a][1]:.0%}", f"{hash_mb[a]:.0f}", f"{1e3 * read_mb[a] / hash_mb[a]:.1f}",
             f"{verify_mb[a]:.0f}"]
            for a, (label, role) in DIGESTS.items()]
    rows.append(["unchecked", f"{clips['unchecked']:.0f}", "100%", "-", "-", "-", "-"])
    body = (f"Store: {cfg.frames} random ViT-g frames (bf16, chunks of {CHUNK} frames), the trainer's DataLoader "
            f"with 1 worker over random 8-frame windows, batches of 8, {cfg.clips} clips per run, median of "
            f"{cfg.repeats} alternating runs (of unchecked: the median of each run's ratio to the unchecked run "
            "beside it, and the middle half of those ratios), page cache warm (so the check's CPU cost is not hidden "
            "behind disk reads). The BLAKE3 and SHA-256 stores are the same files resealed (`store migrate "
            "--digest`), the SHA-256 one without row digests, as a format-2 store holds them. Digest MB/s: one "
            f"core, over the chunk files; a window hashes its 8 rows, {CLIP_MB:.1f} MB, with row digests, else the "
            f"{read_mb['sha256']:.1f} MB of the chunks it touches. Verify: `store verify` of the whole store (with "
            "row digests it hashes the features twice: each file, and each row, on a thread per core), page cache "
            "warm.\n\n"
            + table(["reads", "clips/s", "of unchecked", "middle half of runs", "digest MB/s (1 core)",
                     "digest ms per clip", "`store verify` MB/s"], rows))
    return Section("checked-reads", "Checked reads", body,
                   {"clips_s": clips, "of_unchecked": ratio, "of_unchecked_quartiles": spread, "digest_mb_s": hash_mb,
                    "verify_mb_s": verify_mb})
