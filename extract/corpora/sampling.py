"""Sampling an episode at a target frame rate: which rows (and video frames) are kept, and the loaded episode."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from common.errors import SkipEpisode, UserError
from common.media import Images, Video
from store.actions import column_rows, looks_like_quaternion
from store.format import POSE_DELTA, column_key
from store.manifest import EpisodeInfo

# a target rate that divides the native one exactly (15 / 3.75) must not round up to the next stride
STRIDE_TOLERANCE = 1e-9


def stride_for(native_fps: float, target_fps: float) -> int:
    """Source frames between stored frames: ceil(native / target), at least 1."""
    return max(1, math.ceil(native_fps / target_fps - STRIDE_TOLERANCE))


@dataclass
class Episode:
    """A loaded episode: the sampled rows and a way to decode their frames."""

    state: np.ndarray  # [n, S] float32, at the sampled frames
    frame_index: np.ndarray  # [n] index of each sampled frame in the episode's source frames
    timestamp: np.ndarray  # [n] seconds from the episode start
    decode_index: np.ndarray  # [n] frame index in the video file (differs in LeRobot v3 files)
    video: Video | Images
    info: EpisodeInfo  # camera, task, success, native fps, stride, note (id and source: the job's)
    action: np.ndarray | None = None  # [n, A] for column actions (the last row NaN), else None

    def __len__(self) -> int:
        return len(self.state)

    def frames(self, rows: slice) -> np.ndarray:
        """uint8 [k, H, W, 3] frames of the sampled rows."""
        return self.video.frames(self.decode_index[rows])


@dataclass(frozen=True)
class Robot:
    """The state and action space a corpus gives the store (store.actions; StoreConfig's robot fields)."""

    actions: str  # pose-delta | state-delta | column:KEY
    state_dim: int
    action_dim: int
    state_names: tuple[str, ...] | None
    action_names: tuple[str, ...] | None
    stride: int  # native rows per stored frame: a column action concatenates this many rows


def _nonfinite(rows: np.ndarray) -> np.ndarray:
    """Indices of the rows [T, ...] holding a NaN or Inf."""
    return np.flatnonzero(~np.isfinite(rows).reshape(len(rows), -1).all(1)) if len(rows) else np.zeros(0, int)


def sampled_episode(state: np.ndarray, frame_index: np.ndarray, timestamp: np.ndarray,
                    decode_index: np.ndarray, video: Video | Images, native_fps: float, target_fps: float, robot: Robot,
                    camera: str, notes: list[str], task: str = "", success: bool | None = None,
                    shared_video: bool = False, native_actions: np.ndarray | None = None) -> Episode:
    """Keep the rows whose frame the video really holds, then every stride-th of them.

    `shared_video`: the file holds other episodes too (LeRobot v3), so its length says nothing
    about this episode's except where it ends too early. `native_actions` [T, A_native]: the
    action column of a `column:KEY` corpus, at the native rate.
    """
    state = np.asarray(state, np.float32)
    if state.ndim != 2 or state.shape[1] != robot.state_dim:
        raise SkipEpisode(f"state has shape {list(state.shape)}, expected [T, {robot.state_dim}]")
    n_video = len(video)
    usable = int(np.searchsorted(decode_index, n_video))  # decode_index is increasing
    if usable < len(state) and shared_video:
        notes.append(f"the video ended early: the file holds {n_video} frames, this episode needs frames "
                     f"{decode_index[0]}..{decode_index[-1]}; used the first {usable} of {len(state)} states")
    elif usable < len(state):
        notes.append(f"video holds {n_video} frames for {len(state)} states; used the first {usable}")
    elif n_video > len(state) and not shared_video:
        notes.append(f"states end before the video: {len(state)} states for {n_video} video frames; "
                     f"used the first {len(state)} frames")
    bad = _nonfinite(state[:usable])
    if len(bad):
        raise SkipEpisode(f"state holds NaN or Inf in {len(bad)} of {usable} rows (first: row {bad[0]})")
    if robot.actions == POSE_DELTA and looks_like_quaternion(state[:usable]):
        raise UserError("--actions pose-delta: dims 3..6 of every state have unit norm, so the state holds a "
                        "quaternion, not Euler angles and a gripper (SPEC §4); use --actions state-delta or column:KEY")
    stride = stride_for(native_fps, target_fps)
    rows = np.arange(0, usable, stride)
    action = None
    if native_actions is not None:
        key = column_key(robot.actions)
        if stride != robot.stride:
            raise SkipEpisode(f"at {native_fps:g} fps this episode's stride is {stride}; the store's actions "
                              f"concatenate {robot.stride} native rows")
        native_actions = np.asarray(native_actions, np.float32).reshape(len(native_actions), -1)
        if len(native_actions) < usable:
            raise SkipEpisode(f"action column {key!r} has {len(native_actions)} rows for {usable} states")
        bad = _nonfinite(native_actions[:usable])
        if len(bad):
            raise SkipEpisode(f"action column {key!r} holds NaN or Inf in {len(bad)} of {usable} rows "
                              f"(first: row {bad[0]})")
        action = column_rows(native_actions[:usable], rows, stride)
    info = EpisodeInfo(camera=camera, task=task, success=success, native_fps=native_fps, stride=stride,
                       note="; ".join(notes))
    return Episode(state=state[rows], frame_index=np.asarray(frame_index)[rows],
                   timestamp=np.asarray(timestamp, np.float64)[rows],
                   decode_index=np.asarray(decode_index)[rows], video=video, info=info, action=action)
