"""RLDS datasets as TFDS builds them (Open X-Embodiment, DROID's RLDS release, Bridge, ...), read without
TensorFlow: a `<name>/<version>/` folder with `features.json` and `<name>-<split>.tfrecord-NNNNN-of-MMMMM`
shards, one tf.train.Example per episode whose step features are flattened under `steps/...`
(e.g. `steps/observation/image`: one encoded JPEG or PNG per step; `steps/action`: steps x A floats).

Keys are given dotted and relative to `steps/` (`observation.image`, `action`). RLDS records no frame
rate: the job passes `--native-fps`.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from common.errors import SkipEpisode, UserError
from common.media import Images
from store.format import STATE_DELTA, check_source, column_key

from .base import STATE_KEY, Corpus, pick_camera, require_dir
from .sampling import Episode, sampled_episode
from .tfrecord import CorruptRecord, parse_example, read_record, record_offsets

NUMERIC = ("float16", "float32", "float64", "int8", "int16", "int32", "int64", "uint8", "uint16", "bool")


def feature_leaves(node: dict, prefix: str = "") -> dict[str, dict]:
    """features.json as TFDS writes it -> flattened name ("steps/observation/image") -> {kind, shape, dtype}."""
    if "featuresDict" in node:
        out = {}
        for name, child in node["featuresDict"]["features"].items():
            out.update(feature_leaves(child, f"{prefix}{name}/"))
        return out
    if "sequence" in node:  # a Dataset (the steps) or a Sequence: its feature, per step
        return feature_leaves(node["sequence"]["feature"], prefix)
    for kind in ("image", "tensor", "text"):
        if kind in node:
            spec = node[kind] or {}
            shape = [int(d) for d in (spec.get("shape") or {}).get("dimensions", [])]
            return {prefix.rstrip("/"): {"kind": kind, "shape": shape, "dtype": spec.get("dtype", "string")}}
    return {prefix.rstrip("/"): {"kind": node.get("pythonClassName", "unknown").rsplit(".", 1)[-1], "shape": [],
                                 "dtype": ""}}


def _step_key(dotted: str) -> str:
    return "steps/" + dotted.replace(".", "/")


def _dotted(key: str) -> str:
    return key.removeprefix("steps/").replace("/", ".")


class RLDSCorpus(Corpus):
    """A TFDS-built RLDS dataset folder (the version folder, holding features.json)."""

    format = "rlds"

    def __init__(self, root: str | Path, video_key: str | None = None, state_key: str | None = None,
                 actions: str | None = None, native_fps: float | None = None):
        self.root = require_dir(root, "an RLDS dataset version folder (features.json and .tfrecord shards)")
        if native_fps is None:
            raise UserError("--format rlds needs --native-fps: RLDS records no frame rate")
        self.fps = float(native_fps)
        path = self.root / "features.json"
        if not path.is_file():
            raise UserError(f"{self.root} is not a TFDS-built RLDS dataset (no features.json)")
        try:
            self.leaves = feature_leaves(json.loads(path.read_text()))
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise UserError(f"{path}: damaged features.json ({type(e).__name__}: {e})") from None
        self.shards = sorted(p.name for p in self.root.glob("*.tfrecord-*"))
        if not self.shards:
            raise UserError(f"no .tfrecord shards in {self.root}")
        images = [_dotted(k) for k, v in self.leaves.items() if k.startswith("steps/") and v["kind"] == "image"]
        video_key = pick_camera(video_key, images, self.root, "image keys")
        self.video_key, self.camera = _step_key(video_key), video_key
        self.state_keys = [k.strip() for k in (state_key or STATE_KEY).split(",")]
        for key in self.state_keys:
            self._numeric(key, "--state-key")
        self.actions = actions or ("column:action" if "steps/action" in self.leaves else STATE_DELTA)
        check_source(self.actions)
        self._offsets: dict[str, int | str] = {}  # source -> byte offset, or why its shard cannot be read there

    def _numeric(self, key: str, option: str) -> int:
        """Dims per step of a numeric step feature."""
        leaf = self.leaves.get(_step_key(key))
        numeric = sorted(_dotted(k) for k, v in self.leaves.items()
                         if k.startswith("steps/") and v["kind"] == "tensor" and v["dtype"] in NUMERIC)
        if leaf is None or leaf["kind"] != "tensor" or leaf["dtype"] not in NUMERIC:
            what = "not numeric" if leaf is not None else "not a step feature"
            raise UserError(f"{option} {key!r} is {what} in {self.root}; numeric step features: {numeric}")
        return int(np.prod(leaf["shape"], dtype=int))

    def sources(self) -> list[str]:
        if not self._offsets:
            for shard in self.shards:
                offsets, broken = record_offsets(self.root / shard)
                self._offsets.update({f"{shard}#{i}": offset for i, offset in enumerate(offsets)})
                if broken:  # the records after a broken length header cannot be found
                    self._offsets[f"{shard}#{len(offsets)}"] = (f"corrupt TFRecord {shard}: {broken}; the rest of "
                                                                "the shard is unreadable")
        return list(self._offsets)

    def _state_shape(self) -> tuple[int, tuple[str, ...] | None]:
        dims = [self._numeric(k, "--state-key") for k in self.state_keys]
        return sum(dims), tuple(f"{k}[{i}]" for k, d in zip(self.state_keys, dims) for i in range(d))

    def _column_shape(self, key: str) -> tuple[int, tuple[str, ...] | None]:
        dim = self._numeric(key, f"--actions column:{key}:")
        return dim, tuple(f"{key}[{i}]" for i in range(dim))

    def _native_fps(self) -> float:
        return self.fps

    def _steps(self, values: dict, key: str, n: int) -> np.ndarray:
        flat = values.get(_step_key(key))
        if flat is None or isinstance(flat, list) or len(flat) % max(n, 1):
            raise SkipEpisode(f"step feature {key!r} is missing or not {n} rows of numbers")
        return flat.reshape(n, -1).astype(np.float32)

    def load(self, source: str, fps: float) -> Episode:
        self.sources()  # the shards' records, listed once
        where = self._offsets[source]
        if isinstance(where, str):
            raise SkipEpisode(where)
        shard = source.split("#", 1)[0]
        try:
            values = parse_example(read_record(self.root / shard, where))
        except CorruptRecord as e:
            raise SkipEpisode(f"corrupt TFRecord {shard}: {e}") from None
        except Exception as e:  # noqa: BLE001 - protobuf's DecodeError and kin: a record that is no Example
            raise SkipEpisode(f"record {source} is not a tf.train.Example ({type(e).__name__})") from None
        images = values.get(self.video_key)
        if not isinstance(images, list) or not images:
            raise SkipEpisode(f"no images under {self.camera!r} in this episode")
        n = len(images)
        state = np.concatenate([self._steps(values, k, n) for k in self.state_keys], axis=1)
        key = column_key(self.actions)
        text = values.get("steps/language_instruction") or []
        reward = values.get("steps/reward")
        idx = np.arange(n)
        return sampled_episode(state, idx, idx / self.fps, idx, Images(images, self.fps), self.fps, fps,
                               self.robot(fps), self.camera, [], task=next((t.decode() for t in text if t), ""),
                               success=None if reward is None or not len(reward) else bool(reward[-1] > 0),
                               native_actions=self._steps(values, key, n) if key else None)
