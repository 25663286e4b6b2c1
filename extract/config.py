"""Settings of the extraction commands (`extract`, `demo-corpus`): defaults, help and limits, once."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from common.settings import check, device_setting, setting
from model import ENCODER_FAMILIES
from store.format import CODECS, COMPRESSIONS, check_source

FORMATS = ("droid", "lerobot", "webdataset", "rlds")
DROID_CAMERAS = ("left", "right", "wrist")  # the first is the default


@dataclass
class ExtractConfig:
    corpus: str = setting(help="Corpus root: DROID folders (or a list file), a LeRobot dataset, .tar shards, or an "
                               "RLDS dataset's version folder (features.json and .tfrecord shards); a folder or an "
                               "fsspec URL (s3://bucket/prefix, gs://...: read where it lies).")
    out: str = setting(help="Store to create or resume: a folder, or an fsspec URL (s3://bucket/prefix, gs://...).")
    format: str = setting("droid", "Corpus format.", choices=FORMATS)
    camera: str | None = setting(None, "DROID camera (default left). LeRobot and RLDS corpora pick theirs with "
                                       "--video-key; a WebDataset sample holds one video.", choices=DROID_CAMERAS)
    video_key: str | None = setting(None, "LeRobot video key (camera), e.g. observation.images.front; RLDS image "
                                          "key under steps/, dotted, e.g. observation.exterior_image_1_left.")
    state_key: str | None = setting(None, "LeRobot column with the robot's per-frame state (any dims); RLDS: step "
                                          "keys, dotted, comma-separated to concatenate (e.g. observation.cartesian_"
                                          "position,observation.gripper_position). Default: observation.state.")
    actions: str | None = setting(None, "How the action between stored frames is defined: pose-delta (DROID's 7-D "
                                        "end-effector rule), state-delta (s_t+1 - s_t), or column:KEY (the dataset's "
                                        "own column; the native rows between two stored frames concatenated). "
                                        "Default: pose-delta for DROID; column:action for LeRobot and WebDataset "
                                        "when there is one, else state-delta.")
    fps: float = setting(4.0, "Stored frames per second; stride = ceil(native fps / fps).", min=0.01, max=1000)
    native_fps: float | None = setting(None, "The source's frames per second, for --format rlds (RLDS records "
                                             "none; DROID's RLDS release: 15).", gt=0, max=10000)
    encoder: str = setting("vjepa2", "Encoder family: vjepa2 (V-JEPA 2 ViT: --preset, --checkpoint); hf (a "
                                     "transformers vision backbone folder as --checkpoint: DINOv2, SigLIP, CLIP; the "
                                     "[hf] extra; a --checkpoint folder of another model than V-JEPA 2 picks it by "
                                     "itself); efficientnet-lite0 (ImageNet weights from the [pretrained] extra).",
                           choices=ENCODER_FAMILIES)
    feature_stride: int | None = setting(None, "efficientnet-lite0: the feature map taken as tokens, at stride 16 "
                                               "(default: 14x14 at 224 px) or 32 (7x7).", min=1)
    image_size: int | None = setting(None, "efficientnet-lite0: frame size in pixels, a multiple of 32 (default 224, "
                                           "ImageNet's; 128: an 8x8 map at stride 16).", min=32, max=1024)
    preset: str = setting("auto", "Encoder: vit_large | vit_huge | vit_giant (256 px) | vit_giant_384; small: "
                                  "vit_g_mini, vit_demo, vit_test; auto: the dims of a transformers checkpoint's "
                                  "config.json, else vit_giant.")
    checkpoint: Path | None = setting(None, "Encoder weights, local: a released .pt file (vitg.pt, "
                                            "vjepa2-ac-vitg.pt, ...), a transformers V-JEPA 2 model folder "
                                            "(config.json + safetensors, sharded or not), or a .safetensors file.")
    random_init: bool = setting(False, "Random weights (from seed 0): a large vjepa2 preset without checkpoint "
                                       "(timing only), or efficientnet-lite0 (the baseline beside its ImageNet "
                                       "weights).")
    codec: str = setting("bf16", "Feature codec.", choices=CODECS)
    compression: str = setting("none", "Chunk compression.", choices=COMPRESSIONS)
    chunk_frames: int = setting(4, "Frames per feature chunk file (4: see BENCHMARKS.md, loader).", min=1, max=4096)
    episodes_per_unit: int = setting(64, "Episodes per work unit (= per shard).", min=1, max=1_000_000)
    batch_size: int = setting(64, "Frames per encoder batch.", min=1, max=65536)
    workers: int = setting(4, "Decoding worker processes (0: decode in the main process).", min=0, max=256)
    rank: int | None = setting(None, "This rank (default $RANK or 0): takes units rank, rank+world, ...", min=0)
    world_size: int | None = setting(None, "Number of ranks (default $WORLD_SIZE or 1).", min=1)
    device: str | None = device_setting()
    limit: int | None = setting(None, "Only the first N episodes of the corpus.", min=1)
    retry_skipped: bool = setting(False, "Redo, each whole, the sealed units that hold skipped episodes (after a fix "
                                         "to the corpus or the decoders). Until they are sealed again and merged, the "
                                         "store does not open for training (a stopped run: run it again).")

    def __post_init__(self) -> None:
        check(self)
        if self.actions is not None:
            check_source(self.actions)
