"""The cost of checked reads: the trainer's data path with and without checking chunks against the seal,
under BLAKE3 seals (format 3) and SHA-256 seals (format 2), and `store verify` under each."""

from __future__ import annotations

import os
import shutil
import time
from statistics import median

from store import reseal, sealed_units, verify
from store.format import read_seal, shard_dir
from store.writer import write_seal
from store.digest import digest_bytes
from store.location import tree_bytes

from .config import CheckedReadsBench
from .loader import TOKENS, VITG_DIM, feature_files, loader_rate, make_store
from .report import Section, table

CHUNK = 4  # the default chunk_frames
DIGESTS = {"blake3": "BLAKE3", "sha256": "SHA-256"}  # name in a seal -> name in the table


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


def run(cfg: CheckedReadsBench) -> Section:
    root = make_store(cfg.directory, cfg.frames, CHUNK)
    legacy = root.with_name(root.name + "-sha256")  # the same files (hard links), SHA-256 seals as format 2 wrote
    shutil.rmtree(legacy, ignore_errors=True)
    shutil.copytree(root, legacy, copy_function=os.link)
    reseal(legacy, "sha256")  # replaces only the seals (new files), so `root` keeps its BLAKE3 ones
    for unit in sealed_units(legacy):  # and, as format 2 wrote them, without row digests: windows read whole chunks
        write_seal(shard_dir(legacy, unit), {k: v for k, v in read_seal(legacy, unit).items() if k != "frame_digests"})
    stores = {"blake3": root, "sha256": legacy}
    rates: dict[str, list[float]] = {k: [] for k in (*DIGESTS, "unchecked")}
    for _ in range(cfg.repeats):  # alternating, page cache warm: the CPU cost of the check shows in full
        for name in rates:
            rates[name].append(loader_rate(stores.get(name, root), 1, cfg.clips, verify=name != "unchecked"))
    clips = {k: median(v) for k, v in rates.items()}
    hash_mb = {a: digest_rate(feature_files(root), a) for a in DIGESTS}
    verify_mb = {a: verify_rate(stores[a]) for a in DIGESTS}
    shutil.rmtree(legacy)
    clip_mb = 8 * TOKENS * VITG_DIM * 2 / 1e6
    read_mb = {"blake3": clip_mb, "sha256": (7 / CHUNK + 1) * CHUNK / 8 * clip_mb}  # hashed per window: its rows
    # (row digests), or the whole chunks a random 8-frame window touches
    off = clips["unchecked"]
    rows = [[f"checked against {label} seals" + (" (default)" if a == "blake3" else " (format 2)"),
             f"{clips[a]:.0f}", f"**{clips[a] / off:.0%}**", f"{hash_mb[a]:.0f}",
             f"{1e3 * read_mb[a] / hash_mb[a]:.1f}", f"{verify_mb[a]:.0f}"] for a, label in DIGESTS.items()]
    rows.append(["unchecked", f"{off:.0f}", "100%", "-", "-", "-"])
    body = (f"Store: {cfg.frames} random ViT-g frames (bf16, chunks of {CHUNK} frames), the trainer's DataLoader "
            f"with 1 worker over random 8-frame windows, batches of 8, {cfg.clips} clips per run, median of "
            f"{cfg.repeats} alternating runs, page cache warm (so the check's CPU cost is not hidden behind disk "
            "reads). The SHA-256 store is the same files under SHA-256 seals without row digests (`reseal`), as a "
            f"format-2 store holds them. Digest MB/s: one core, over the chunk files; a window hashes its 8 rows, "
            f"{read_mb['blake3']:.1f} MB, with row digests, else the {read_mb['sha256']:.1f} MB of the chunks it "
            "touches. Verify: `store verify` of the whole store (with row digests it hashes the features twice: "
            "each file, and each row, on a thread per core), page cache warm.\n\n"
            + table(["reads", "clips/s", "of unchecked", "digest MB/s (1 core)", "digest ms per clip",
                     "`store verify` MB/s"], rows))
    return Section("checked-reads", "Checked reads", body,
                   {"clips_s": clips, "digest_mb_s": hash_mb, "verify_mb_s": verify_mb})
