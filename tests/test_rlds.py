"""RLDS datasets in the byte layout TFDS writes (TFRecord framing with masked CRC-32C, tf.train.Example,
features.json, several shards), read without TensorFlow: states, actions and frames exact."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from common.errors import SkipEpisode, UserError
from extract.corpora import RLDSCorpus, open_corpus
from extract.corpora.tfrecord import frame, masked_crc, parse_example, serialize_example
from store import open_store, verify
from tests.conftest import assert_one_error_line, cli_main
from tests.corpora import code, decode_code

TFDS = "tensorflow_datasets.core.features."
LENGTHS = [10, 7, 12]  # episodes 0 and 1 in the first shard, 2 in the second


def _tensor(*shape: int, dtype: str = "float32") -> dict:
    return {"pythonClassName": TFDS + "tensor_feature.Tensor",
            "tensor": {"shape": {"dimensions": [str(d) for d in shape]}, "dtype": dtype, "encoding": "none"}}


def _image(fmt: str) -> dict:
    return {"pythonClassName": TFDS + "image_feature.Image",
            "image": {"shape": {"dimensions": ["24", "32", "3"]}, "dtype": "uint8", "encodingFormat": fmt}}


def _dict(features: dict) -> dict:
    return {"pythonClassName": TFDS + "features_dict.FeaturesDict", "featuresDict": {"features": features}}


FEATURES = _dict({  # as TFDS serialises a DROID-like RLDS builder's FeaturesDict
    "steps": {"pythonClassName": TFDS + "dataset_feature.Dataset", "sequence": {"feature": _dict({
        "observation": _dict({"exterior_image_1_left": _image("png"), "wrist_image_left": _image("jpeg"),
                              "cartesian_position": _tensor(6, dtype="float64"),
                              "gripper_position": _tensor(1, dtype="float64")}),
        "action": _tensor(7), "reward": _tensor(dtype="float32"), "is_first": _tensor(dtype="bool"),
        "is_last": _tensor(dtype="bool"), "is_terminal": _tensor(dtype="bool"),
        "language_instruction": {"pythonClassName": TFDS + "text_feature.Text", "text": {}}}), "length": "-1"}},
    "episode_metadata": _dict({"file_path": {"pythonClassName": TFDS + "text_feature.Text", "text": {}}}),
})


def encoded(value: int, fmt: str) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((24, 32, 3), value, np.uint8)).save(buffer, format=fmt)
    return buffer.getvalue()


def episode(e: int, n: int) -> dict:
    """Step t: exterior image of grey code(t), x = e + t / 100, action row (e, t, 0.5 ...), reward 1 at the end."""
    t = np.arange(n)
    cartesian = np.zeros((n, 6))
    cartesian[:, 0] = e + t / 100
    action = np.stack([np.full(n, e), t, *[np.full(n, 0.5)] * 5], axis=1).astype(np.float32)
    first, last = t == 0, t == n - 1
    return {"steps/observation/exterior_image_1_left": [encoded(code(t), "PNG") for t in range(n)],
            "steps/observation/wrist_image_left": [encoded(code(t), "JPEG") for t in range(n)],
            "steps/observation/cartesian_position": cartesian, "steps/observation/gripper_position": np.full(n, 0.25),
            "steps/action": action, "steps/reward": last.astype(np.float32), "steps/is_first": first,
            "steps/is_last": last, "steps/is_terminal": last,
            "steps/language_instruction": [b"put the marker in the cup"] * n,
            "episode_metadata/file_path": [f"/data/ep{e}.h5".encode()]}


def rlds_dataset(root: Path, lengths: list[int] = LENGTHS) -> Path:
    """`root/droid_like/1.0.0/` with features.json, dataset_info.json and two train shards."""
    version = root / "droid_like" / "1.0.0"
    version.mkdir(parents=True)
    (version / "features.json").write_text(json.dumps(FEATURES))
    (version / "dataset_info.json").write_text(json.dumps({"name": "droid_like", "version": "1.0.0"}))
    shards = [[0, 1], [2]]
    for s, episodes in enumerate(shards):
        with open(version / f"droid_like-train.tfrecord-{s:05d}-of-{len(shards):05d}", "wb") as f:
            for e in episodes:
                f.write(frame(serialize_example(episode(e, lengths[e]))))
    return version


DROID_STATE = "observation.cartesian_position,observation.gripper_position"


def test_example_and_framing_bytes_are_tensorflows():
    """Known answers from the formats' definitions: CRC-32C's check value, TFRecord's mask, and the proto3
    encoding of Example{features{feature{"a": int64_list{1}}}}."""
    import google_crc32c

    assert google_crc32c.value(b"123456789") == 0xE3069283
    assert masked_crc(b"") == 0xA282EAD8  # CRC-32C of nothing is 0: the mask's delta alone
    data = serialize_example({"a": np.array([1])})
    assert data == bytes.fromhex("0a0c0a0a0a01611205" "1a030a0101")
    assert frame(data)[:12] == (14).to_bytes(8, "little") + masked_crc((14).to_bytes(8, "little")).to_bytes(4, "little")
    assert parse_example(data)["a"].tolist() == [1]


def test_rlds_reader_states_actions_frames_exact(tmp_path):
    root = rlds_dataset(tmp_path)
    c = RLDSCorpus(root, "observation.exterior_image_1_left", DROID_STATE, native_fps=15)
    assert c.sources() == ["droid_like-train.tfrecord-00000-of-00002#0", "droid_like-train.tfrecord-00000-of-00002#1",
                           "droid_like-train.tfrecord-00001-of-00002#0"]
    robot = c.robot(5)  # 15 / 5: stride 3, three 7-D action rows per stored frame
    assert (robot.actions, robot.state_dim, robot.action_dim) == ("column:action", 7, 21)
    assert robot.state_names[0] == "observation.cartesian_position[0]"
    assert robot.state_names[6] == "observation.gripper_position[0]"
    for e, source in enumerate(c.sources()):
        ep = c.load(source, fps=5)
        rows = np.arange(0, LENGTHS[e], 3)
        assert np.array_equal(ep.frame_index, rows) and np.allclose(ep.timestamp, rows / 15)
        assert np.allclose(ep.state[:, 0], e + rows / 100) and np.allclose(ep.state[:, 6], 0.25)
        assert np.array_equal(decode_code(ep.frames(slice(0, len(ep)))), rows % 36)  # PNG: exact greys
        assert np.array_equal(ep.action[:-1, 1::7], rows[:-1, None] + np.arange(3))  # the 3 native rows per frame
        assert np.isnan(ep.action[-1]).all()
        assert (ep.info.task, ep.info.success, ep.info.camera) == ("put the marker in the cup", True,
                                                                    "observation.exterior_image_1_left")
    wrist = RLDSCorpus(root, "observation.wrist_image_left", DROID_STATE, native_fps=15).load(c.sources()[2], 15)
    assert np.array_equal(decode_code(wrist.frames(slice(0, 12))), np.arange(12))  # JPEG: within a grey level


def test_rlds_extracts_completely(tmp_path):
    root = rlds_dataset(tmp_path / "corpus")
    out = tmp_path / "store"
    code_, stdout, err = cli_main("extract", "--corpus", root, "--format", "rlds", "--video-key",
                                  "observation.exterior_image_1_left", "--state-key", DROID_STATE, "--native-fps", 15,
                                  "--fps", 5, "--out", out, "--preset", "vit_test", "--workers", 1, "--device", "cpu")
    assert code_ in (None, 0), err
    store = open_store(out)
    rows = store.episodes.to_pylist()
    assert [r["status"] for r in rows] == ["ok"] * 3 and [r["num_frames"] for r in rows] == [4, 3, 4]
    assert store.config.source_format == "rlds" and store.config.action_dim == 21 and verify(out) == []


def test_rlds_bad_input(tmp_path):
    root = rlds_dataset(tmp_path / "corpus")
    args = ["extract", "--corpus", root, "--format", "rlds", "--out", tmp_path / "s", "--state-key", DROID_STATE]
    for extra, message in (
            ([], "--format rlds needs --native-fps"),
            (["--native-fps", 0], "--native-fps must be > 0"),
            (["--native-fps", 15], "has image keys ['observation.exterior_image_1_left', "
                                   "'observation.wrist_image_left']"),
            (["--native-fps", 15, "--video-key", "observation.depth"], "no image key 'observation.depth'"),
            (["--native-fps", 15, "--video-key", "observation.wrist_image_left", "--state-key",
              "language_instruction"], "--state-key 'language_instruction' is not numeric")):
        assert_one_error_line(*cli_main(*args, *extra)[::2], message)
    (root / "features.json").unlink()
    assert_one_error_line(*cli_main(*args, "--native-fps", 15)[::2], "not a TFDS-built RLDS dataset (no features.json)")
    assert_one_error_line(*cli_main("extract", "--corpus", root, "--format", "lerobot", "--native-fps", 15, "--out",
                                    tmp_path / "s")[::2], "--native-fps is for --format rlds")


def test_a_corrupt_record_is_a_skip_naming_its_shard(tmp_path):
    root = rlds_dataset(tmp_path)
    shard = root / "droid_like-train.tfrecord-00000-of-00002"
    data = bytearray(shard.read_bytes())
    data[200] ^= 0xFF  # inside episode 0's data: its CRC no longer matches
    shard.write_bytes(bytes(data))
    c = open_corpus(root, "rlds", video_key="observation.exterior_image_1_left", state_key=DROID_STATE, native_fps=15)
    with pytest.raises(SkipEpisode, match=r"corrupt TFRecord droid_like-train.tfrecord-00000-of-00002: the record "
                                          r"at byte 0 fails its CRC"):
        c.load(c.sources()[0], 5)
    assert len(c.load(c.sources()[1], 5)) == 3  # the next record is intact
    data[8] ^= 0xFF  # the first length header: nothing after it can be found
    shard.write_bytes(bytes(data))
    c = RLDSCorpus(root, "observation.exterior_image_1_left", DROID_STATE, native_fps=15)
    assert c.sources()[0] == "droid_like-train.tfrecord-00000-of-00002#0" and len(c.sources()) == 2
    with pytest.raises(SkipEpisode, match="the length header at byte 0 fails its CRC; the rest of the shard"):
        c.load(c.sources()[0], 5)
    (tmp_path / "features.json").write_text(json.dumps(FEATURES))
    with pytest.raises(UserError, match="no .tfrecord shards"):
        RLDSCorpus(tmp_path, native_fps=15)
