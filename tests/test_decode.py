"""The decoding layer on real files: every codec x size robot datasets hold, through every corpus reader,
gives PyAV's own decode of the file at the sampled indices (decord where it works, PyAV where it does not)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from common import media
from common.media import Video, read_image
from extract.config import ExtractConfig
from extract.corpora import open_corpus
from extract.job import run_extract
from model.encoders import build_encoder
from store import open_store, verify
from tests import corpora
from tests.conftest import ROOT, cli_main

N = 24  # frames per video: three GOPs of 8, so strided reads seek
CODECS = {  # name: (encoder, pix_fmt, options)
    "h264": ("libx264", "yuv420p", {"crf": "18", "preset": "fast", "bf": "2", "g": "8"}),  # with B-frames
    "h264-444": ("libx264", "yuv444p", {"crf": "18", "preset": "ultrafast", "g": "8"}),
    "h264-rgb": ("libx264rgb", "rgb24", {"crf": "0", "preset": "ultrafast", "g": "8"}),  # lossless
    "av1": ("libsvtav1", "yuv420p", {"crf": "30", "g": "2"}),  # as LeRobot writes it
    "hevc": ("libx265", "yuv420p", {"preset": "ultrafast", "x265-params": "log-level=none:keyint=8:bframes=3"}),
    "vp9": ("libvpx-vp9", "yuv420p", {"deadline": "realtime", "cpu-used": "8", "g": "8"}),
    "mpeg4": ("mpeg4", "yuv420p", {"qscale": "3", "g": "8"}),
}
SIZES = [(84, 84), (96, 96), (100, 75), (160, 120), (224, 224), (320, 180), (640, 480)]
# x264 and x265 cannot encode 4:2:0 at an odd height
CASES = [(c, s) for c in CODECS for s in SIZES if not (s == (100, 75) and c in ("h264", "hevc"))]


@pytest.fixture(autouse=True)
def fresh_decoders(monkeypatch):
    """Each test starts with no frame size known to fail in decord."""
    monkeypatch.setattr(media, "_DECORD_FAILED", {})


def moving(first: int, n: int, width: int, height: int) -> list[np.ndarray]:
    """Smooth frames, each unlike its neighbours (a frame decoded at the wrong index shows)."""
    y, x = np.mgrid[0:height, 0:width] / np.array([height, width])[:, None, None]
    out = []
    for i in range(first, first + n):
        rgb = [128 + 100 * np.sin(2 * np.pi * (x + i / 12)), 128 + 100 * np.sin(2 * np.pi * (y + i / 9)),
               128 + 60 * np.cos(2 * np.pi * (x + y + i / 7))]
        out.append(np.stack(rgb, -1).round().astype(np.uint8))
    return out


def write_video(path: Path, codec: str, width: int, height: int, n: int = N, fps: int = 15) -> Path:
    encoder, pix_fmt, options = CODECS[codec]
    with av.open(str(path), "w", format="mp4") as container:
        stream = container.add_stream(encoder, rate=fps, options=options)
        stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
        for frame in moving(0, n, width, height):
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    return path


def decord_decodes(video: Path) -> bool:
    """Whether the installed decord decodes this file's frames in one batch (decord2 before 3.4 failed every
    96-px-wide video so; 3.4 decodes them)."""
    try:
        media.DecordReader(video).frames(list(range(0, N, 3)))
        return True
    except Exception:  # noqa: BLE001 - whatever decord raises
        return False


def pyav_decode(source: Path | bytes) -> np.ndarray:
    """PyAV's own decode of every frame, the reference."""
    import io

    with av.open(io.BytesIO(source) if isinstance(source, bytes) else str(source)) as c:
        return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])


def assert_decoded(got: np.ndarray, ref: np.ndarray, index: np.ndarray, lossless: bool) -> None:
    """Frame-exact: bit-exact for a lossless stream; else within the two decoders' colour-conversion
    rounding (4:2:0 at odd sizes) and each frame nearest to the reference frame of its own index."""
    assert got.shape == ref[index].shape
    if lossless:
        assert np.array_equal(got, ref[index])
        return
    for frame, i in zip(got.astype(np.int16), index):
        errors = np.abs(ref.astype(np.int16) - frame).mean(axis=(1, 2, 3))
        assert errors[i] < 2.0 and errors.argmin() == i, (i, errors.round(2))


@pytest.mark.parametrize("codec,size", CASES, ids=[f"{c}-{w}x{h}" for c, (w, h) in CASES])
def test_every_reader_decodes_every_codec_and_size(codec, size, tmp_path):
    video = write_video(tmp_path / "v.mp4", codec, *size)
    ref = pyav_decode(video)
    assert len(ref) == N

    def copy(path: Path, first: int, n: int, fps: int) -> None:
        assert (first, n) == (0, N)
        shutil.copyfile(video, path)

    corpora.droid_episode(tmp_path / "droid", "ep", steps=N, video=copy)
    corpora.lerobot_v21(tmp_path / "v21", [N], video=copy)
    corpora.lerobot_v30(tmp_path / "v30", [7, 9, N - 16], video=copy)  # one shared file: later episodes seek
    corpora.webdataset_shard(tmp_path / "wds" / "a.tar", [{"key": "ep", "n": N, "fps": 15, "mp4": video.read_bytes()}])
    decoded = 0
    for root, fmt in (("droid", "droid"), ("v21", "lerobot"), ("v30", "lerobot"), ("wds", "webdataset")):
        corpus = open_corpus(tmp_path / root, fmt)
        for source in corpus.sources():
            ep = corpus.load(source, fps=5)  # every 3rd frame
            assert_decoded(ep.frames(slice(0, len(ep))), ref, ep.decode_index, lossless=codec == "h264-rgb")
            decoded += len(ep)
            if codec == "hevc":  # x265's open GOPs: decord would seek to wrong frames, PyAV decoded them
                assert "keyframes indexed in decoding order" in ep.video.fallback
            elif size[0] == 96 and not decord_decodes(video):  # decord2 < 3.4: PyAV decoded them
                assert ep.video.fallback.startswith("decord: Check failed")
            else:
                assert ep.video.fallback is None
    assert decoded == 3 * 8 + 3 * 3  # 8 rows each for DROID, v2.1 and WebDataset; v3: 3 + 3 + 3


def test_a_96px_av1_lerobot_v3_dataset_extracts_completely(tmp_path):
    """LeRobot's own layout and codec at the hub's PushT size: every episode stored, its features those of
    PyAV's frames; where decord cannot decode it (decord2 before 3.4), PyAV did, and the run says so once."""
    corpus = corpora.lerobot_v30(tmp_path / "pusht", [20, 30, 25], fps=10,
                                 video=lambda path, first, n, fps: corpora.write_mp4(
                                     path, moving(first, n, 96, 96), fps=fps, codec="libsvtav1"))
    out = tmp_path / "store"
    code, stdout, _ = cli_main("extract", "--corpus", corpus, "--format", "lerobot", "--out", out, "--preset",
                               "vit_test", "--workers", 1, "--fps", 5, "--device", "cpu")
    assert code is None or code == 0
    video = corpus / "videos" / corpora.VIDEO_KEY / "chunk-000" / "file-000.mp4"
    if decord_decodes(video):
        assert "decoded by PyAV (decord" not in stdout and "every episode decoded by PyAV" not in stdout
    else:
        assert stdout.count("decoded by PyAV (decord: Check failed") == 1 and "every episode decoded by PyAV" in stdout
    store = open_store(out)
    rows = store.episodes.to_pylist()
    assert [r["status"] for r in rows] == ["ok"] * 3 and [r["num_frames"] for r in rows] == [10, 15, 13]
    ref = pyav_decode(video)
    encoder, _ = build_encoder("vit_test", random_init=True)
    with torch.inference_mode():
        expect = encoder(encoder.input.apply(ref[20 + np.arange(0, 30, 2)]))
    stored = store.read_episode(1)["features"].float()
    assert torch.allclose(stored, expect.to(torch.bfloat16).float())
    assert verify(out) == []


def audio_only_mp4(path: Path) -> Path:
    with av.open(str(path), "w", format="mp4") as container:
        stream = container.add_stream("aac", rate=16000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
        frame.sample_rate = 16000
        for _ in range(8):
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return path


def test_files_no_decoder_can_read_are_skipped_with_both_reasons(tmp_path, capfd):
    good = corpora.mp4_bytes(12)
    bad = {"text": b"this is not a video\n" * 50, "empty": b"", "cut": good[: len(good) // 2],
           "audio": audio_only_mp4(tmp_path / "audio.mp4").read_bytes()}
    samples = [{"key": "a_good", "n": 12, "fps": 15, "mp4": good}]
    samples += [{"key": f"b_{name}", "n": 12, "fps": 15, "mp4": data} for name, data in bad.items()]
    corpora.webdataset_shard(tmp_path / "corpus" / "a.tar", samples)
    out = tmp_path / "store"
    summary = run_extract(ExtractConfig(corpus=tmp_path / "corpus", out=out, format="webdataset",
                                        preset="vit_test", workers=0, device="cpu"))
    assert summary.episodes_ok == 1 and summary.fallback == []
    assert "this is not a video" not in capfd.readouterr().err  # decord's log of what it cannot open is muted
    reasons = dict((source.split("#")[1], why) for source, why in summary.skipped)
    assert sorted(reasons) == sorted(f"b_{name}" for name in bad)
    for why in reasons.values():
        assert why.startswith("unreadable video (damaged, truncated, or not a video): decord: ")
        assert "; PyAV: " in why and "\n" not in why and "/project/src" not in why
    assert reasons["b_audio"].endswith("PyAV: no video stream")
    store = open_store(out)
    assert store.episodes.to_pylist()[0]["num_frames"] == 3 and len(store.read_episode(0)["features"]) == 3
    assert verify(out) == []


def test_images_decode_as_written(tmp_path):
    from PIL import Image

    image = moving(0, 1, 40, 30)[0]
    Image.fromarray(image).save(tmp_path / "a.png")
    assert np.array_equal(read_image(tmp_path / "a.png"), image)
    assert np.array_equal(read_image((tmp_path / "a.png").read_bytes()), image)
    (tmp_path / "bad.png").write_bytes(b"not an image")
    with pytest.raises(ValueError, match="^PIL: .*; PyAV: "):
        read_image(tmp_path / "bad.png")


def test_a_decoder_failing_mid_video_hands_over_to_pyav(tmp_path, monkeypatch):
    """decord opens the file but fails on a batch (as decord2 before 3.4 did on every 96-px-wide video; injected
    here, so whichever decord2 is installed): PyAV decodes that batch and every later one, and the next video of
    that size in this process goes to PyAV at once."""
    def check_failed(self, index):
        raise RuntimeError("[10:00:00] /src/video/video_reader.cc:123: Check failed: injected batch failure")

    monkeypatch.setattr(media.DecordReader, "frames", check_failed)
    video = Video(write_video(tmp_path / "v.mp4", "h264", 96, 96))
    assert video.fallback is None  # decord opened it
    ref = pyav_decode(tmp_path / "v.mp4")
    assert np.array_equal(video.frames([3, 6, 9]), ref[[3, 6, 9]])
    assert video.fallback.startswith("decord: Check failed") and "injected" in video.fallback
    assert np.array_equal(video.frames([1, 2, 20]), ref[[1, 2, 20]])  # behind the decoder: it seeks back
    again = Video(tmp_path / "v.mp4")
    assert again.fallback == video.fallback and np.array_equal(again.frames([5]), ref[[5]])


def test_workers_forked_after_decoding_in_the_same_process_do_not_hang(tmp_path):
    """A process that decoded with PyAV (its decoder threads waiting) and then forks DataLoader workers: a worker
    freeing the inherited PyAV garbage would wait forever on those threads' condition variables, so jobs free it
    before they fork (`media.free_decoders`). Run in a subprocess, so a hang is a timeout, not a stuck suite."""
    video = write_video(tmp_path / "v.mp4", "h264", 160, 120)
    corpus = corpora.webdataset_shard(tmp_path / "corpus" / "a.tar", [{"key": "ep", "n": N, "fps": 15,
                                                                       "mp4": video.read_bytes()}])
    script = f"""
import gc
from common import media
gc.disable()  # until a worker starts: the garbage below is left for it, as a busy process may leave it
reader = media.PyAVReader({str(video)!r})
reader.frames([0, 3, 6])  # its decoder threads started
del reader  # garbage now: PyAV's reference cycles leave it to the cyclic GC
from extract import job
from extract.config import ExtractConfig

def collecting_worker(worker_id, init=job.ignore_stop_signals):
    gc.collect()  # what a worker's GC does with inherited garbage, at once
    init(worker_id)

job.ignore_stop_signals = collecting_worker
job.run_extract(ExtractConfig(corpus={str(corpus.parent)!r}, out={str(tmp_path / "store")!r}, format="webdataset",
                          preset="vit_test", workers=1, device="cpu"))
"""
    subprocess.run([sys.executable, "-c", script], cwd=ROOT, timeout=300, check=True, capture_output=True)
    assert [r["status"] for r in open_store(tmp_path / "store").episodes.to_pylist()] == ["ok"]
