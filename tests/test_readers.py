"""Corpus readers on small corpora of each format, preprocessing, encoder checkpoints."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from common.errors import SkipEpisode, UserError
from extract.corpora import DroidCorpus, LeRobotCorpus, WebDatasetCorpus, open_corpus
from model.encoders import build_encoder
from model.preprocess import crop_box, preprocess
from tests import corpora
from tests.corpora import decode_code


def check_episode(ep, n_states: int, stride: int, first_code: int = 0):
    """Rows are every stride-th source frame; the state and the decoded frame both match it."""
    expect = np.arange(0, n_states, stride)
    assert ep.info.stride == stride
    assert np.array_equal(ep.frame_index, expect)
    assert np.allclose(ep.state[:, 0] * 100, expect)
    assert np.allclose(ep.timestamp, expect / 15)
    frames = ep.frames(slice(0, len(ep)))
    assert frames.shape == (len(expect), corpora.H, corpora.W, 3)
    assert np.array_equal(decode_code(frames), (first_code + expect) % 36)


def test_droid_reader(tmp_path):
    corpora.droid_episode(tmp_path, "ep_b", steps=30)
    corpora.droid_episode(tmp_path, "ep_a", steps=21, video_frames=20, task="fold", success=False)
    c = DroidCorpus(tmp_path, camera="left")
    assert c.sources() == ["LAB/failure/2024-01-01/ep_a", "LAB/success/2024-01-01/ep_b"]
    a = c.load(c.sources()[0], fps=4)
    check_episode(a, 20, 4)  # the MP4 holds one frame fewer: the common 20 frames are used
    assert a.info.note == "video holds 20 frames for 21 states; used the first 20"
    assert (a.info.task, a.info.success, a.info.camera) == ("fold", False, "left:111")
    b = c.load(c.sources()[1], fps=5)  # 15 / 5 = stride 3
    check_episode(b, 30, 3)
    assert b.info.note == ""
    # a list file of episode folders works like the folder walk
    listing = tmp_path / "episodes.txt"
    listing.write_text("# chosen episodes\nLAB/success/2024-01-01/ep_b\n")
    assert DroidCorpus(listing).sources() == ["LAB/success/2024-01-01/ep_b"]
    listing.write_text("LAB/success/2024-01-01/ep_b\nLAB/gone\n")  # a missing folder: skipped later, with its reason
    assert DroidCorpus(listing).sources() == ["LAB/success/2024-01-01/ep_b", "LAB/gone"]
    listing.write_text("root:x:0:0:root:/root:/bin/bash\n")
    with pytest.raises(UserError, match="none of its 1 lines is a folder"):
        DroidCorpus(listing)
    with pytest.raises(SkipEpisode, match="has no wrist_mp4_path"):
        DroidCorpus(tmp_path, camera="wrist").load(c.sources()[0], 4)


def test_droid_missing_h5_key(tmp_path):
    corpora.droid_episode(tmp_path, "ep", steps=12, drop_key="cartesian_position")
    c = DroidCorpus(tmp_path)
    with pytest.raises(SkipEpisode, match="trajectory.h5 lacks .*cartesian_position"):
        c.load(c.sources()[0], 4)


def test_lerobot_v21_reader(tmp_path):
    corpora.lerobot_v21(tmp_path, [17, 25])
    c = open_corpus(tmp_path, "lerobot")
    assert isinstance(c, LeRobotCorpus) and not c.v3
    assert c.sources() == ["episode_000000", "episode_000001"]
    ep = c.load("episode_000001", fps=4)
    check_episode(ep, 25, 4)
    assert ep.info.task == "open the drawer" and ep.info.camera == corpora.VIDEO_KEY


def test_lerobot_v30_av1_reader(tmp_path):
    corpora.lerobot_v30(tmp_path, [14, 23, 9])
    c = LeRobotCorpus(tmp_path)
    assert c.v3 and c.sources() == [f"episode_{i:06d}" for i in range(3)]
    # episode 1 is cut out of the shared AV1 file by its from_timestamp (frame 14 onwards)
    check_episode(c.load("episode_000001", fps=4), 23, 4, first_code=14)
    check_episode(c.load("episode_000002", fps=15), 9, 1, first_code=37)


def test_lerobot_bad_keys(tmp_path):
    corpora.lerobot_v21(tmp_path, [5])
    with pytest.raises(UserError, match="no video key 'cam'"):
        LeRobotCorpus(tmp_path, video_key="cam")
    with pytest.raises(UserError, match="no state key 'missing'"):
        LeRobotCorpus(tmp_path, state_key="missing")
    import json

    info = json.loads((tmp_path / "meta" / "info.json").read_text())
    info["features"]["action"]["shape"] = [6]
    (tmp_path / "meta" / "info.json").write_text(json.dumps(info))
    six = LeRobotCorpus(tmp_path, state_key="action", actions="state-delta").robot(4)  # any state dims
    assert (six.state_dim, six.action_dim, six.actions) == (6, 6, "state-delta")
    with pytest.raises(UserError, match="pose-delta needs a 7-D state .* this one has 6 dims"):
        LeRobotCorpus(tmp_path, state_key="action", actions="pose-delta").robot(4)
    with pytest.raises(UserError, match="--actions column:nope: no column 'nope'"):
        LeRobotCorpus(tmp_path, actions="column:nope").robot(4)
    with pytest.raises(UserError, match="--actions 'colum:x' is not one of"):
        LeRobotCorpus(tmp_path, actions="colum:x")


def test_webdataset_reader(tmp_path):
    shard = tmp_path / "shards" / "000000.tar"
    corpora.webdataset_shard(shard, [
        {"key": "ep0", "n": 18, "fps": 15, "task": "wipe the table"},
        {"key": "ep1", "n": 12},  # no fps: the container's is used, and said so
        {"key": "ep2", "n": 6, "sidecar": b"{not json"},
        {"key": "ep3", "n": 10, "sidecar": b'{"task": "x"}', "npy": corpora.states(10)},
        {"key": "ep4", "n": 6, "sidecar": b'{"state": []}'},
        {"key": "ep5", "n": 6, "sidecar": b'{"state": 3}'},
        {"key": "ep6", "n": 6, "fps": "fast"},
    ])
    c = WebDatasetCorpus(tmp_path)
    assert c.sources() == [f"shards/000000.tar#ep{i}" for i in range(7)]
    ep0 = c.load(c.sources()[0], 4)
    check_episode(ep0, 18, 4)
    assert ep0.info.task == "wipe the table" and ep0.info.note == ""
    ep1 = c.load(c.sources()[1], 4)
    check_episode(ep1, 12, 4)
    assert ep1.info.note == "no fps in the sidecar; used the container's 15.00"
    with pytest.raises(SkipEpisode, match="unreadable .json sidecar"):
        c.load(c.sources()[2], 4)
    check_episode(c.load(c.sources()[3], 4), 10, 4)  # state from the .npy
    for i in (4, 5):
        with pytest.raises(SkipEpisode, match="sidecar 'state' is not a T x S array of numbers"):
            c.load(c.sources()[i], 4)
    with pytest.raises(SkipEpisode, match="sidecar 'fps' 'fast' is not a positive number"):
        c.load(c.sources()[6], 4)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_states_are_a_skip(tmp_path, value):
    corpora.droid_episode(tmp_path, "ep", steps=20, bad_value=value)
    c = DroidCorpus(tmp_path)
    with pytest.raises(SkipEpisode, match=r"state holds NaN or Inf in 1 of 20 rows \(first: row 2\)"):
        c.load(c.sources()[0], 4)


def test_droid_folder_without_metadata_is_listed_and_skipped(tmp_path):
    corpora.droid_episode(tmp_path, "a", steps=12)
    corpora.droid_episode(tmp_path, "b", steps=12, metadata=False)
    c = DroidCorpus(tmp_path)
    assert c.sources() == ["LAB/success/2024-01-01/a", "LAB/success/2024-01-01/b"]
    with pytest.raises(SkipEpisode, match="no metadata_\\*.json"):
        c.load(c.sources()[1], 4)


def test_short_trajectory_says_what_was_cut(tmp_path):
    corpora.droid_episode(tmp_path, "ep", steps=10, video_frames=87)
    c = DroidCorpus(tmp_path)
    ep = c.load(c.sources()[0], 4)
    check_episode(ep, 10, 4)
    assert ep.info.note == "states end before the video: 10 states for 87 video frames; used the first 10 frames"


def test_truncated_shared_v3_video_says_it_ended_early(tmp_path):
    corpora.lerobot_v30(tmp_path, [20, 30, 25, 22], faststart=True)
    video = tmp_path / "videos" / corpora.VIDEO_KEY / "chunk-000" / "file-000.mp4"
    video.write_bytes(video.read_bytes()[: video.stat().st_size // 2])
    c = LeRobotCorpus(tmp_path)
    reasons = []
    for source in c.sources():
        try:
            ep = c.load(source, 4)
            ep.frames(slice(0, len(ep)))
            reasons.append(ep.info.note)
        except SkipEpisode as e:
            reasons.append(str(e))
    assert reasons[0] == ""  # before the cut: whole
    assert all("the video ended early" in r or "video decoding failed" in r for r in reasons[1:]), reasons
    assert any("the video ended early" in r for r in reasons), reasons
    assert all(len(r) < 300 and "/project/src" not in r for r in reasons)  # one line, no decoder log prefixes


def test_truncated_video_is_a_skip(tmp_path):
    folder = corpora.droid_episode(tmp_path, "ep", steps=12)
    mp4 = folder / "recordings" / "MP4" / "111.mp4"
    mp4.write_bytes(mp4.read_bytes()[: mp4.stat().st_size // 2])
    c = DroidCorpus(tmp_path)
    with pytest.raises(SkipEpisode, match="unreadable video"):
        c.load(c.sources()[0], 4)


def test_corpus_config_errors(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        open_corpus(tmp_path / "nope", "droid")
    with pytest.raises(UserError, match="no DROID episodes"):
        open_corpus(tmp_path, "droid")
    with pytest.raises(UserError, match="not a LeRobot dataset"):
        open_corpus(tmp_path, "lerobot")
    with pytest.raises(UserError, match="no .tar shards"):
        open_corpus(tmp_path, "webdataset")
    with pytest.raises(UserError, match="unknown corpus format 'tfds'"):
        open_corpus(tmp_path, "tfds")
    with pytest.raises(UserError, match="unknown DROID camera"):
        open_corpus(tmp_path, "droid", camera="top")


@pytest.mark.parametrize("size,box", [
    ((1280, 720), (0, 154, 720, 972)),  # 16:9: full height, width round(1.35 * 720)
    ((640, 480), (0, 0, 480, 640)),  # 4:3 = 1.33 is inside [0.75, 1.35]: whole frame
    ((480, 640), (0, 0, 640, 480)),  # 3:4 = 0.75: whole frame
    ((720, 1280), (160, 0, 960, 720)),  # 9:16 portrait: full width, height round(720 / 0.75)
])
def test_crop_rule(size, box):
    assert crop_box(*size) == box


def test_preprocess_crops_centre_and_normalises():
    frame = np.zeros((1, 72, 128, 3), np.uint8)
    top, left, h, w = crop_box(128, 72)  # 72 x 97, from column 15
    frame[:, :, left:left + w] = 255  # only the crop is white
    x = preprocess(frame, 32)
    assert x.shape == (1, 3, 32, 32)
    white = (1 - torch.tensor([0.485, 0.456, 0.406])) / torch.tensor([0.229, 0.224, 0.225])
    assert torch.allclose(x[0, :, :, :].amin((1, 2)), white, atol=1e-5)  # nothing outside the crop leaks in


def test_preprocess_keeps_the_frame_s_geometry_and_channels():
    """A square frame at the encoder's size is only normalised: pixel (row, col, channel) lands at [channel, row,
    col]. A wide frame's crop starts and ends at the crop box's columns (one colour each; a third just outside it
    must not show)."""
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    frame = np.random.default_rng(0).integers(0, 256, (1, 48, 48, 3), dtype=np.uint8)
    expected = ((torch.from_numpy(frame[0]).float() / 255 - mean) / std).permute(2, 0, 1)
    torch.testing.assert_close(preprocess(frame, 48)[0], expected, atol=1e-5, rtol=0)
    wide = np.zeros((1, 32, 128, 3), np.uint8)
    top, left, h, w = crop_box(128, 32)  # 32 x 43 from column 42
    wide[:, :, left], wide[:, :, left + w - 1] = (255, 0, 0), (0, 255, 0)
    wide[:, :, [left - 1, left + w]] = (0, 0, 255)
    x = preprocess(wide, w)[0]  # the crop's columns kept as they are (only its rows are resized)
    for column, rgb in ((0, (1.0, 0.0, 0.0)), (w - 1, (0.0, 1.0, 0.0))):
        torch.testing.assert_close(x[:, :, column], ((torch.tensor(rgb) - mean) / std)[:, None].expand(3, w),
                                   atol=1e-5, rtol=0)
    assert float(x[2].max()) < float((1 - mean[2]) / std[2]) - 1  # no blue column inside

def test_encoder_checkpoint_in_released_layout(tmp_path):
    model, _ = build_encoder("vit_test", seed=3)
    ckpt = {"target_encoder": {f"module.backbone.{k}": v for k, v in model.state_dict().items()},
            "encoder": {"junk": torch.zeros(1)}, "epoch": 10}
    path = tmp_path / "vitg.pt"
    torch.save(ckpt, path)
    loaded, weights_id = build_encoder("vit_test", checkpoint=path)
    assert len(weights_id) == 64
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
        assert not torch.equal(build_encoder("vit_test", seed=4)[0](x), model(x))
    # the `encoder` entry is used when there is no target_encoder
    torch.save({"encoder": {f"module.{k}": v for k, v in model.state_dict().items()}}, path)
    assert torch.equal(build_encoder("vit_test", checkpoint=path)[0].norm.weight, model.norm.weight)


def test_encoder_checkpoint_mismatch_is_readable(tmp_path):
    model, _ = build_encoder("vit_test")
    state = dict(model.state_dict())
    state["blocks.0.attn.qkv.weight"] = torch.zeros(5, 32)
    del state["norm.bias"]
    state["pos_embed"] = torch.zeros(1)
    path = tmp_path / "bad.pt"
    torch.save({"target_encoder": state}, path)
    with pytest.raises(UserError) as e:
        build_encoder("vit_test", checkpoint=path)
    msg = str(e.value)
    assert "1 missing: norm.bias" in msg and "1 unexpected: pos_embed" in msg
    assert "blocks.0.attn.qkv.weight (checkpoint [5, 32], model [96, 32])" in msg
    with pytest.raises(UserError, match="not found"):
        build_encoder("vit_test", checkpoint=tmp_path / "missing.pt")
    with pytest.raises(UserError, match="needs --checkpoint"):
        build_encoder("vit_giant")
    with pytest.raises(UserError, match="unknown encoder preset"):
        build_encoder("vit_tiny")


def test_vit_giant_size():
    from model.vit import ENCODER_PRESETS, VisionTransformer

    with torch.device("meta"):
        model = VisionTransformer(ENCODER_PRESETS["vit_giant"])
    n = sum(p.numel() for p in model.parameters())
    assert 1.00e9 < n < 1.02e9  # ~1.01B (SPEC §1)
