"""Decoding video and image files: the same frames whichever decoder delivers them.

A video's frame i is its i-th frame in presentation order. decord decodes it first (fast, batched);
where decord cannot open or decode a file that PyAV can (decord2 3.x fails every batch of 96-px-wide
frames, LeRobot's PushT size), PyAV decodes it instead, to the same frames, and `Video.fallback`
says why. Only when both fail is the file called damaged, with both decoders' words in one line.
Images: PIL, then PyAV.
"""

from __future__ import annotations

import io
import os
import re
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

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


class _Decord:
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


class _PyAV:
    """Frame i = the i-th presentation timestamp among the stream's packets (as decord numbers them).

    Opening reads the packets (not decoding them) for that index. A request seeks to the keyframe
    before its first frame, unless the running decoder is already between the two.
    """

    def __init__(self, source: Path | bytes):
        self.source = source
        self._open()
        packets = [(p.pts, p.is_keyframe) for p in self.container.demux(self.stream) if p.pts is not None]
        self.pts = np.array(sorted(p for p, _ in packets), np.int64)
        self.keys = np.array(sorted(p for p, key in packets if key), np.int64)
        self.fps = float(self.stream.average_rate or self.stream.guessed_rate or 0)
        self._decoded = None  # demuxing read to the end: the first request opens the file again

    def _open(self) -> None:
        import av

        self.container = av.open(io.BytesIO(self.source) if isinstance(self.source, bytes) else str(self.source))
        if not self.container.streams.video:
            raise ValueError("no video stream")
        self.stream = self.container.streams.video[0]
        self.stream.thread_type = "AUTO"
        self.stream.codec_context.thread_count = _threads()
        self._decoded, self._at = self.container.decode(self.stream), None  # _at: pts of the last frame decoded

    def __len__(self) -> int:
        return len(self.pts)

    def key_frames(self) -> list[int]:
        """Indices of the keyframes."""
        return np.searchsorted(self.pts, self.keys).tolist()

    def frames(self, index: list[int]) -> np.ndarray:
        if min(index) < 0 or max(index) >= len(self.pts):
            raise IndexError(f"frame {max(index)} requested of {len(self.pts)}")
        if self._decoded is None:
            self._open()
        wanted: dict[int, list[int]] = {}
        for k, i in enumerate(index):
            wanted.setdefault(int(self.pts[i]), []).append(k)
        first, last = int(self.pts[min(index)]), int(self.pts[max(index)])
        before = np.searchsorted(self.keys, first, side="right") - 1
        key = int(self.keys[before]) if before >= 0 else int(self.pts[0])
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


class Video:
    """The frames of one video file (or its bytes) by index, decoded by decord or, where decord fails, PyAV.

    decord numbers keyframes in decoding order: in a stream whose frames after a keyframe are shown
    before it (open GOPs, as x265 writes) its seeks land frames late, silently. So the packets are
    read once with PyAV, and such a stream is decoded by PyAV. `fallback` is None while decord
    serves, else why it does not ("decord: ..."). Raises SkipEpisode, with both decoders' reasons,
    when neither can open or decode the file.
    """

    def __init__(self, source: Path | bytes):
        self.source = source
        self.fallback: str | None = None
        try:
            self._decoder = _Decord(source)
        except Exception as e:  # noqa: BLE001 - decord raises plain errors whose text is all it tells
            self._use_pyav(_words(e), "unreadable video")
            return
        try:
            index = _PyAV(source)
        except Exception:  # noqa: BLE001 - PyAV cannot read what decord did: decord is all there is
            return
        if index.key_frames() != list(self._decoder.reader.get_key_indices()):
            self._use_pyav("keyframes indexed in decoding order, so its seeks would return later frames", "", index)

    def _use_pyav(self, decord_error: str, what: str, pyav: _PyAV | None = None) -> None:
        self.fallback = f"decord: {decord_error}"
        try:
            self._decoder = pyav or _PyAV(self.source)
        except Exception as e:  # noqa: BLE001 - PyAV's errors (av.error.*, ValueError) carry ffmpeg's words
            raise SkipEpisode(f"{what} (damaged, truncated, or not a video): {self.fallback}; "
                              f"PyAV: {_words(e)}") from None

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
        what = f"video decoding failed between video frames {index[0]} and {index[-1]}"
        try:
            return self._decoder.frames(index)
        except Exception as e:  # noqa: BLE001 - see __init__
            if isinstance(self._decoder, _PyAV):
                raise SkipEpisode(f"{what} (damaged or truncated stream): PyAV: {_words(e)}") from None
            self._use_pyav(_words(e), what)
        try:
            return self._decoder.frames(index)
        except Exception as e:  # noqa: BLE001
            raise SkipEpisode(f"{what} (damaged or truncated stream): {self.fallback}; PyAV: {_words(e)}") from None


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
        return _PyAV(source).frames([0])[0]
    except Exception as e:  # noqa: BLE001
        raise ValueError(f"PIL: {pil}; PyAV: {_words(e)}") from None
