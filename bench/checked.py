"""The cost of checked reads: the trainer's data path with and without checking chunks against the seal."""

from __future__ import annotations

import hashlib
import time
from statistics import median

from .config import CheckedReadsBench
from .loader import TOKENS, VITG_DIM, feature_files, loader_rate, make_store
from .report import Section, table

CHUNK = 4  # the default chunk_frames


def sha256_rate(paths: list, repeats: int = 3) -> float:
    """MB/s of SHA-256 over the store's feature chunk files (page cache warm)."""
    data = [p.read_bytes() for p in paths[:64]]
    best = 0.0
    for _ in range(repeats):
        start = time.perf_counter()
        for d in data:
            hashlib.sha256(d).digest()
        best = max(best, sum(map(len, data)) / (time.perf_counter() - start) / 1e6)
    return best


def run(cfg: CheckedReadsBench) -> Section:
    root = make_store(cfg.directory, cfg.frames, CHUNK)
    rates = {True: [], False: []}
    for _ in range(cfg.repeats):  # alternating, page cache warm: the CPU cost of the check shows in full
        for verify in (True, False):
            rates[verify].append(loader_rate(root, 1, cfg.clips, verify=verify))
    on, off = median(rates[True]), median(rates[False])
    hash_mb = sha256_rate(feature_files(root))
    clip_mb = 8 * TOKENS * VITG_DIM * 2 / 1e6
    read_mb = (7 / CHUNK + 1) * CHUNK / 8 * clip_mb  # the chunks a random 8-frame window touches
    body = (f"Store: {cfg.frames} random ViT-g frames (bf16, chunks of {CHUNK} frames), the trainer's DataLoader "
            f"with 1 worker over random 8-frame windows, batches of 8, {cfg.clips} clips per run, median of "
            f"{cfg.repeats} alternating runs, page cache warm (so the check's CPU cost is not hidden behind disk "
            "reads).\n\n"
            + table(["reads", "clips/s"], [["checked against the seal (default)", f"{on:.0f}"],
                                          ["unchecked", f"{off:.0f}"]])
            + f"\n\nChecked / unchecked: **{on / off:.0%}**. SHA-256 runs at {hash_mb:.0f} MB/s on one core here; "
            f"a window reads {read_mb:.1f} MB of chunks, so the check costs {1e3 * read_mb / hash_mb:.1f} ms of "
            "CPU per clip in a DataLoader worker.")
    return Section("checked-reads", "Checked reads", body, {"checked_clips_s": on, "unchecked_clips_s": off,
                                                            "sha256_mb_s": hash_mb})
