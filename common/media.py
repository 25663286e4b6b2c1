"""Video and image files: writing MP4s, and decoding the same frames whichever decoder delivers them.

A video's frame i is its i-th frame in presentation order. decord decodes it first (fast, batched);
where decord cannot open or decode a file that PyAV can (decord2 before 3.4 failed every batch of
96-px-wide frames, LeRobot's PushT size), PyAV decodes it instead, to the same frames, and `Video.fallback`
says why. Only when both fail is the file called damaged, with both decoders' words in one line.
Images: PIL, then PyAV.
"""

from __future__ import annotations

import gc
import io
import os
import re
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from functools import cached_property
from pathlib import Path
from typing import Any

import av
import numpy as np

from common.errors import SkipEpisode


def _words(error: BaseException) -> str:
    """A decoder's error in one short line, without decord's log prefix (time, source file:line) or errno."""
    text = re.sub(r"\[[\d:]+\] \S+:\d+: |\[Errno -?\d+\] |: '<none>'", "", " ".join(str(error).split()))
    text = text or type(error).__name__
    return text if len(text) <= 120 else text[:119] + "…"


def _threads() -> int:
    """One decoding thread in a DataLoader worker (the workers are the parallelism); else 0 (all cores)."""
    from torch.utils.data import get_worker_info

    return 1 if get_worker_info() is not None else 0


@contextmanager
def _no_stderr() -> Iterator[None]:
    """Mute file descriptor 2 (C++ code's stderr) for the duration."""
    sys.stderr.flush()
    saved, null = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(null, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(null)


def _readable(source: Path | bytes | Any):
    """What av.open takes: a local path, the bytes as a file, or an object in a bucket (anything with an
    `open`, as store.location.RemotePath) as a file read in ranges."""
    if isinstance(source, bytes):
        return io.BytesIO(source)
    return str(source) if isinstance(source, (str, Path)) else source.open("rb")


class DecordReader:
    def __init__(self, source: Path | bytes):
        import decord

        # ffmpeg and its decoders print to stderr for every damaged packet; a skip reason says it once
        decord.logging.set_level(decord.logging.QUIET)
        with _no_stderr():  # decord's own log of a file it cannot open: the whole file, were it bytes
            self.reader = decord.VideoReader(io.BytesIO(source) if isinstance(source, bytes) else str(source),
                                             num_threads=_threads())
        self.fps = float(self.reader.get_avg_fps())

    def __len__(self) -> int:
        return len(self.reader)

    def frames(self, index: list[int]) -> np.ndarray:
        return self.reader.get_batch(index).asnumpy()


def free_decoders() -> None:
    """Call before a DataLoader forks its workers: frees the PyAV objects (and all other garbage) of this process
    now. PyAV's containers hold reference cycles, so only the cyclic GC frees them; one freed in a forked worker
    instead waits forever on its decoder threads, which live only in this process (a hung worker, seen when the
    same process had decoded or written videos before)."""
    gc.collect()


class PyAVReader:
    """Frame i = the i-th presentation timestamp among the stream's packets (as decord numbers them).

    The packets are read (not decoded) for that index when it is first needed. A request seeks to the
    keyframe before its first frame, unless the running decoder is already between the two.
    """

    def __init__(self, source: Path | bytes | Any):
        self.source = source
        self._open()
        self.fps = float(self.stream.average_rate or self.stream.guessed_rate or 0)
        self.size = (self.stream.width, self.stream.height)
        self.reorders = bool(self.stream.codec_context.has_b_frames)  # frames shown in another order than decoded

    def _open(self) -> av.container.InputContainer:
        container = av.open(_readable(self.source))
        if not container.streams.video:
            raise ValueError("no video stream")
        self.container, self.stream = container, container.streams.video[0]
        self.stream.thread_type = "AUTO"
        self.stream.codec_context.thread_count = _threads()
        self._decoded, self._at = container.decode(self.stream), None  # _at: pts of the last frame decoded
        return container

    @cached_property
    def _index(self) -> tuple[np.ndarray, np.ndarray]:
        """(pts of every frame, pts of the keyframes), each sorted. From the container's own index where it is
        whole and frames are not reordered (MP4: no data read), else from the packets of a second reader."""
        entries = self.stream.index_entries
        if not self.reorders and 0 < len(entries) == self.stream.frames:
            pts = np.array([e.timestamp for e in entries], np.int64)
            return np.sort(pts), np.sort(pts[[e.is_keyframe for e in entries]])
        with av.open(_readable(self.source)) as c:
            packets = [(p.pts, p.is_keyframe) for p in c.demux(c.streams.video[0]) if p.pts is not None]
        return (np.array(sorted(p for p, _ in packets), np.int64),
                np.array(sorted(p for p, key in packets if key), np.int64))

    @property
    def pts(self) -> np.ndarray:
        return self._index[0]

    def __len__(self) -> int:
        return len(self.pts)

    def key_frames(self) -> list[int]:
        """Indices of the keyframes."""
        return np.searchsorted(self.pts, self._index[1]).tolist()

    def frames(self, index: list[int]) -> np.ndarray:
        if min(index) < 0 or max(index) >= len(self.pts):
            raise IndexError(f"frame {max(index)} requested of {len(self.pts)}")
        wanted: dict[int, list[int]] = {}
        for k, i in enumerate(index):
            wanted.setdefault(int(self.pts[i]), []).append(k)
        first, last = int(self.pts[min(index)]), int(self.pts[max(index)])
        keys = self._index[1]
        before = np.searchsorted(keys, first, side="right") - 1
        key = int(keys[before]) if before >= 0 else int(self.pts[0])
        if self._at is None or not key <= self._at < first:
            self.container.seek(key, stream=self.stream, backward=True)
            self._decoded, self._at = self.container.decode(self.stream), None
        out = self._collect(wanted, first, last, len(index))
        if out is None:  # the seek landed past the first wanted frame (a coarse index): decode from the start
            self._open()
            out = self._collect(wanted, first, last, len(index))
        missing = [i for i, f in zip(index, out or [None] * len(index)) if f is None]
        if missing:
            raise EOFError(f"no frame {missing[0]}: the stream ends or breaks before it")
        return np.stack(out)

    def _collect(self, wanted: dict[int, list[int]], first: int, last: int, n: int) -> list | None:
        """Decode on to `last`, keeping the wanted frames; None if the first frame decoded lies past `first`."""
        out: list[np.ndarray | None] = [None] * n
        fresh = self._at is None
        for frame in self._decoded:
            if frame.pts is None:
                continue
            if fresh and frame.pts > first:
                return None
            fresh, self._at = False, frame.pts
            for k in wanted.get(frame.pts, ()):
                out[k] = frame.to_ndarray(format="rgb24")
            if frame.pts >= last:
                break
        return out


# frame size (width, height) -> why decord failed on frames PyAV then decoded, in this process: later videos
# of that size go to PyAV at once (decord2 before 3.4 failed every 96-px-wide video the same way)
_DECORD_FAILED: dict[tuple[int, int], str] = {}


class Video:
    """The frames of one video file (or its bytes) by index, decoded by decord or, where decord fails, PyAV.

    PyAV opens the file first (its header). decord numbers keyframes in decoding order, so in a stream
    whose frames after a keyframe are shown before it (open GOPs, as x265 writes) its seeks land frames
    late, silently: where a stream reorders frames, PyAV reads its packets to check decord's keyframe
    positions, and decodes it if they are off. `fallback` is None while decord serves, else why it does
    not ("decord: ..."). Raises SkipEpisode, with both decoders' reasons, when neither can open or
    decode the file.
    """

    def __init__(self, source: Path | bytes | Any):
        """`source`: a local file, its bytes, or an object in a bucket (a store.location.RemotePath), which PyAV
        reads in ranges (decord reads whole files only)."""
        self.fallback: str | None = None
        try:
            self._pyav: PyAVReader | None = PyAVReader(source)
            self._pyav_error = ""
        except Exception as e:  # noqa: BLE001 - PyAV's errors (av.error.*, ValueError) carry ffmpeg's words
            self._pyav, self._pyav_error = None, _words(e)
        if not isinstance(source, (bytes, str, Path)):
            if self._pyav is None:
                raise SkipEpisode(f"unreadable video (damaged, truncated, or not a video): PyAV: {self._pyav_error}")
            self.fallback, self._decoder = "decord: reads whole files only; this one is read in ranges", self._pyav
            return
        if self._pyav is not None and self._pyav.size in _DECORD_FAILED:
            self.fallback, self._decoder = _DECORD_FAILED[self._pyav.size], self._pyav
            return
        try:
            self._decoder = DecordReader(source)
        except Exception as e:  # noqa: BLE001 - decord raises plain errors whose text is all it tells
            self.fallback = f"decord: {_words(e)}"
            if self._pyav is None:
                raise SkipEpisode(f"unreadable video (damaged, truncated, or not a video): {self.fallback}; "
                                  f"PyAV: {self._pyav_error}") from None
            self._decoder = self._pyav
            return
        if self._pyav is not None and self._pyav.reorders and self._keys_misplaced():
            self.fallback = "decord: keyframes indexed in decoding order, so its seeks would return later frames"
            self._decoder = self._pyav

    def _keys_misplaced(self) -> bool:
        """Whether decord's keyframe positions (decoding order) differ from their places in presentation order."""
        try:
            return self._pyav.key_frames() != list(self._decoder.reader.get_key_indices())
        except Exception:  # noqa: BLE001 - PyAV cannot read the packets decord did: decord is all there is
            return False

    def __len__(self) -> int:
        return len(self._decoder)

    @property
    def fps(self) -> float:
        """The container's average frame rate."""
        return self._decoder.fps

    def frames(self, index: Sequence[int]) -> np.ndarray:
        """uint8 [k, H, W, 3] RGB frames at `index` (increasing indices decode fastest)."""
        index = [int(i) for i in index]
        if not index:
            return np.empty((0, 0, 0, 3), np.uint8)
        what = f"video decoding failed between video frames {index[0]} and {index[-1]} (damaged or truncated stream)"
        try:
            return self._decoder.frames(index)
        except Exception as e:  # noqa: BLE001 - see __init__
            if self._decoder is self._pyav:
                raise SkipEpisode(f"{what}: {self.fallback + '; ' if self.fallback else ''}PyAV: {_words(e)}") from None
            self.fallback = f"decord: {_words(e)}"
            if self._pyav is None:
                raise SkipEpisode(f"{what}: {self.fallback}; PyAV: {self._pyav_error}") from None
            self._decoder = self._pyav
        try:
            frames = self._pyav.frames(index)
        except Exception as e:  # noqa: BLE001
            raise SkipEpisode(f"{what}: {self.fallback}; PyAV: {_words(e)}") from None
        _DECORD_FAILED[self._pyav.size] = self.fallback
        return frames


class Images:
    """Frames stored as encoded images, one per step (RLDS), with a Video's interface: decoded on request."""

    fallback = None

    def __init__(self, images: list[bytes], fps: float):
        self.images, self.fps = images, fps

    def __len__(self) -> int:
        return len(self.images)

    def frames(self, index: Sequence[int]) -> np.ndarray:
        """uint8 [k, H, W, 3] RGB frames at `index`; SkipEpisode naming the step that does not decode."""
        out = []
        for i in index:
            try:
                out.append(read_image(self.images[int(i)]))
            except ValueError as e:
                raise SkipEpisode(f"the image of step {int(i)} does not decode: {e}") from None
        return np.stack(out) if out else np.empty((0, 0, 0, 3), np.uint8)


def read_image(source: Path | bytes) -> np.ndarray:
    """uint8 RGB [H, W, 3] of an image file or its bytes (PNG, JPEG, ...): PIL, else PyAV.

    Raises ValueError naming both decoders' reasons when neither can read it.
    """
    from PIL import Image

    try:
        with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as image:
            return np.asarray(image.convert("RGB"))
    except Exception as e:  # noqa: BLE001 - PIL raises OSError, ValueError, DecompressionBombError, ...
        pil = _words(e)
    try:
        return PyAVReader(source).frames([0])[0]
    except Exception as e:  # noqa: BLE001
        raise ValueError(f"PIL: {pil}; PyAV: {_words(e)}") from None


def write_mp4(path: Path, frames: list[np.ndarray], fps: float, codec: str = "libx264",
              faststart: bool = False) -> None:
    """Encode uint8 RGB frames [H, W, 3] with PyAV: libx264, libx264rgb (lossless RGB: decodes to the same
    pixels), or libsvtav1 (AV1, as LeRobot does).

    `faststart` puts the index (moov) before the frames, so a cut file still opens (with fewer frames).
    """
    options = {"libx264": {"crf": "18", "preset": "ultrafast"}, "libx264rgb": {"crf": "0", "preset": "ultrafast"},
               "libsvtav1": {"crf": "30", "g": "2"}}[codec]
    with av.open(str(path), "w", options={"movflags": "faststart"} if faststart else {}) as container:
        stream = container.add_stream(codec, rate=fps, options=options)
        stream.height, stream.width = frames[0].shape[:2]
        stream.pix_fmt = "rgb24" if codec == "libx264rgb" else "yuv420p"
        for f in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")))
        container.mux(stream.encode())
