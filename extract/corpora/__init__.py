"""Corpus readers: list a corpus's episodes (deterministically) and load one, sampled at a target fps.
One module per source format behind the `Corpus` interface (base.py); sampling in sampling.py,
decoding in common/media.py.

Formats (SPEC §7): DROID raw 1.0.1 folders, LeRobot v2.1 / v3.0 datasets, WebDataset tar shards
with `<key>.mp4` + `<key>.json` (per-frame `state`, optional action columns, `fps`, `task`, `success`),
and TFDS-built RLDS datasets (Open X-Embodiment) read without TensorFlow.
Each corpus also says which state and action space it gives the store (`Robot`, store.actions).

A problem with one episode raises SkipEpisode (recorded in the manifest, the job goes on);
a problem with the corpus as a whole raises UserError (the job stops).
"""

from __future__ import annotations

from pathlib import Path

from common.errors import UserError

from ..config import FORMATS
from .base import Corpus
from .droid import DroidCorpus
from .lerobot import LeRobotCorpus
from .rlds import RLDSCorpus
from .sampling import Episode, Robot, stride_for
from .webdataset import WebDatasetCorpus

__all__ = ["Corpus", "DroidCorpus", "Episode", "LeRobotCorpus", "RLDSCorpus", "Robot", "WebDatasetCorpus",
           "open_corpus", "stride_for"]


def open_corpus(root: str | Path, fmt: str, camera: str | None = None, video_key: str | None = None,
                state_key: str | None = None, actions: str | None = None,
                native_fps: float | None = None) -> Corpus:
    """The corpus at `root`; an option its format has no use for is refused, not ignored."""
    if camera is not None and fmt != "droid":
        why = "a webdataset sample holds one video" if fmt == "webdataset" else "choose the camera with --video-key"
        raise UserError(f"--camera is for --format droid; {why}")
    if state_key is not None and fmt in ("droid", "webdataset"):
        raise UserError(f"--state-key is for --format lerobot and rlds; a {fmt} corpus records its states in "
                        + ("each episode's trajectory.h5" if fmt == "droid" else "each sample's .json sidecar"))
    if native_fps is not None and fmt != "rlds":
        raise UserError(f"--native-fps is for --format rlds; a {fmt} corpus records its own frame rate")
    if video_key is not None and fmt in ("droid", "webdataset"):
        raise UserError(f"--video-key is for --format lerobot and rlds; a {fmt} corpus has one video per camera"
                        + (" (choose it with --camera)" if fmt == "droid" else " per sample"))
    if fmt == "droid":
        return DroidCorpus(root, camera, actions)
    if fmt == "lerobot":
        return LeRobotCorpus(root, video_key, state_key, actions)
    if fmt == "webdataset":
        return WebDatasetCorpus(root, actions)
    if fmt == "rlds":
        return RLDSCorpus(root, video_key, state_key, actions, native_fps)
    raise UserError(f"unknown corpus format {fmt!r}; choose one of {', '.join(FORMATS)}")
