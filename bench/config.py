"""Settings of the benchmarks (`cli.py bench NAME`), one dataclass per benchmark; its docstring is the help."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from common.errors import UserError
from common.settings import check, seed_setting, setting
from sim.config import SimTask
from train.config import CEMConfig, energy_setting, state_weight_setting



def names(text: str, option: str, known) -> list[str]:
    """A comma-separated list of names, each one of `known` (one-line UserError otherwise)."""
    listed = [n.strip() for n in text.split(",") if n.strip()]
    if not listed or any(n not in known for n in listed):
        raise UserError(f"{option} {text!r}: choose from {', '.join(known)}")
    return listed


def counts(text: str, option: str) -> list[int]:
    """A comma-separated list of whole numbers >= 1, sorted, each once (one-line UserError otherwise)."""
    try:
        values = sorted({int(v) for v in text.split(",")})
    except ValueError:
        raise UserError(f"{option} {text!r} must be whole numbers separated by commas") from None
    if values[0] < 1:
        raise UserError(f"{option} {text!r} must be at least 1 each")
    return values

@dataclass
class BenchConfig:
    write: bool = setting(True, "Write the section into BENCHMARKS.md.")

    def __post_init__(self) -> None:
        check(self)


@dataclass
class DirBench(BenchConfig):
    directory: Path = setting(Path("data/bench"), "Working folder (corpora and stores are reused).")


@dataclass
class OnlineBench(DirBench):
    """Training clips/s from the store vs decoding + encoding on every step (the reference way)."""

    pairs: str = setting("vit_demo:ac_demo,vit_g_mini:ac_vitg_mini",
                         "encoder:predictor pairs (vit_giant:ac_vitg on a GPU).")
    batch: int = setting(4, "Clips per step.", min=1)
    batches: int = setting(8, "Steps per run.", min=1)
    repeats: int = setting(5, "Runs per path, alternating (the median is reported).", min=1)
    workers: int = setting(1, "DataLoader workers.", min=0)


@dataclass
class LoaderBench(DirBench):
    """Random 8-frame windows through the trainer's DataLoader vs a plain sequential read of the shards."""

    frames: int = setting(6000, "Frames in each benchmark store (ViT-g size: 704 KiB each).", min=66)
    clips: int = setting(200, "Clips read per measurement.", min=8)
    store_url: str | None = setting(None, "Instead: the 4-frame-chunk store copied to this fsspec URL (s3://...), "
                                          "read from there cold and through --cache, beside the local copy "
                                          "(`make bench-s3` runs it against a loopback S3 server).")


@dataclass
class CheckedReadsBench(DirBench):
    """What checking every chunk read against the shard's seal costs the trainer's data path."""

    frames: int = setting(1320, "Frames in the benchmark store (ViT-g size: 704 KiB each).", min=66)
    clips: int = setting(1000, "Clips read per measurement (runs of seconds: steadier than short ones).", min=8)
    repeats: int = setting(9, "Runs per variant, alternating (the median is reported).", min=1)


@dataclass
class ExtractBench(DirBench):
    """Whole-job frames/s vs decode-only and encode-only; the decoding layer vs decord alone and PyAV alone."""

    preset: str = setting("vit_demo", "Encoder preset (vit_giant on a GPU).")
    batch: int = setting(64, "Encoder batch (frames).", min=1)
    workers: int = setting(1, "Decoding workers.", min=0)
    episodes: int = setting(32, "Demo corpus episodes.", min=1)
    videos: int = setting(16, "Videos in the decoder comparison.", min=1)
    repeats: int = setting(5, "Runs per decoder (or per corpus location), alternating (the median is reported).",
                           min=1)
    corpus_url: str | None = setting(None, "Instead: the whole job on the demo corpus copied to this fsspec URL "
                                           "(s3://...) next to its local copy (`make bench-s3` runs it against a "
                                           "loopback S3 server).")


@dataclass
class CodecsBench(DirBench):
    """Bytes per frame, read speed and fidelity of each codec and compression; int8 vs bf16 training."""

    steps: int = setting(300, "Training steps of the int8-vs-bf16 comparison.", min=1)


@dataclass
class AttentionBench(BenchConfig):
    """The predictor's block-causal attention: masked SDPA vs per-step SDPA vs plain softmax."""


@dataclass
class MemoryBench(DirBench):
    """Peak RSS of the extraction job and of training at the demo sizes."""


@dataclass
class GpuBench(BenchConfig):
    """ViT-g encoder frames/s (bf16, batch 64); ac_vitg step time and MFU at 8 and 16 clips."""


@dataclass
class PlanBench(BenchConfig):
    """Energy evaluations/s and seconds per planning call (paper settings: 800 x 10, horizon 1)."""

    presets: str = setting("ac_demo", "Predictor presets: ac_demo (128-dim 8x8 features), ac_vitg (ViT-g).")
    horizons: str = setting("1,3,6", "Actions planned, comma-separated: cached and uncached rollouts at each.")
    cem: CEMConfig = setting(factory=CEMConfig)


@dataclass
class SimBench(BenchConfig):
    """Closed-loop success (sim eval) against training steps and CEM samples, beside the baselines."""

    run: Path = setting(Path("data/demo-run"), "Training run: each step_*.pt is evaluated at the largest --samples, "
                                               "the last one at each.")
    samples: str = setting("25,50,100,200", "CEM samples per iteration, comma-separated.")
    iterations: int = setting(6, "CEM iterations.", min=1, max=10_000)
    energy: str = energy_setting()
    state_weight: float = state_weight_setting()
    sim: SimTask = setting(factory=SimTask)


@dataclass
class EncodersBench(BenchConfig):
    """Which frozen features let the predictor plan: PushT through each encoder and camera, same data, predictor
    and CEM (collect, extract, train, eval, sim eval; hours on CPU; reruns resume)."""

    directory: Path = setting(Path("data/bench/encoders"), "Working folder (corpora, stores, runs, reports are "
                                                           "reused).")
    encoders: str = setting("vit_demo,effnet-random,effnet-imagenet", "Encoders, comma-separated: vit_demo "
                                                                     "(random ViT), effnet-random, effnet-imagenet "
                                                                     "(EfficientNet-Lite0, [pretrained] extra).")
    cameras: str = setting("top,agent", "PushT cameras, comma-separated: top (gym-pusht's), agent.")
    conditionings: str = setting("token,concat", "Predictor action conditionings, comma-separated (train "
                                                 "--action-conditioning): token, concat.")
    predictors: str = setting("ac_demo", "Predictor presets, comma-separated (train --preset): ac_demo, "
                                         "ac_vitg_mini (~5x ac_demo's training step time), ...")
    corpus_episodes: int = setting(400, "Scripted episodes collected per camera.", min=10)
    fps: float = setting(10.0, "Stored frames per second (PushT runs at 10 Hz: 2 stores every 5th frame, and the "
                               "planner's action spans 5 control steps).", gt=0, max=10)
    steps: int = setting(3000, "Training steps per row.", min=10)
    episodes: int = setting(20, "sim eval episodes per task.", min=1)
    oracle_episodes: int = setting(5, "Episodes per task planned with the simulator as the world model (0: none).",
                                   min=0)
    size: int = setting(128, "Frame pixels (collect, extract, sim eval); vit_demo takes 128 only.", min=32, max=1024)
    feature_stride: int = setting(16, "EfficientNet-Lite0's feature map (size / stride tokens a side): 16 or 32; "
                                      "vit_demo's patches are 16.")
    budget: int = setting(48, "Control steps per episode.", min=1)
    samples: int = setting(50, "CEM samples per iteration.", min=1)
    iterations: int = setting(6, "CEM iterations.", min=1)


@dataclass
class SoakBench(DirBench):
    """Faults a cluster throws, at random: SIGKILLs and SIGTERMs of random ranks and object-store outages during a
    2-rank extraction into a loopback S3 server and a 2-rank training run from it (torchrun, CPU), with 503
    SlowDown answers and lost answers throughout; every failed run relaunched, then the store, checkpoint and
    metrics compared with uninterrupted runs ([test] extra: moto)."""

    kills: int = setting(3, "SIGKILLs or SIGTERMs (drawn at random) of a random rank, per run.", min=0)
    outages: int = setting(2, "Object-store outages per run, short (ridden out) and long (the run fails) in turn.",
                           min=0)
    slow_down: float = setting(0.02, "Fraction of object-store requests answered 503 SlowDown.", min=0, max=0.5)
    lost_answers: float = setting(0.01, "Fraction of object-store requests done by the server whose answer is lost "
                                  "(the client sends them again).", min=0, max=0.5)
    episodes: int = setting(24, "Demo corpus episodes, one extraction unit each.", min=4)
    steps: int = setting(60, "Training steps (checkpoint every 5).", min=10)
    seed: int = seed_setting("Seed of the faults' kinds, ranks and moments.")


BENCHES = {  # command name -> (module in bench/, settings)
    "cached-vs-online": ("online", OnlineBench), "loader": ("loader", LoaderBench),
    "checked-reads": ("checked", CheckedReadsBench),
    "extract": ("extract", ExtractBench), "codecs": ("codecs", CodecsBench),
    "attention": ("attention", AttentionBench), "memory": ("memory", MemoryBench),
    "gpu": ("gpu", GpuBench), "plan": ("plan", PlanBench), "sim": ("sim", SimBench),
    "encoders": ("encoders", EncodersBench), "soak": ("soak", SoakBench),
}
