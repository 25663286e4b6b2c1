"""Action spaces: how a store defines the action between stored frames t and t+1, and its inverse
(docs/store-format.md, "Actions").

- `pose-delta` (DROID): a 7-D state (x, y, z, roll, pitch, yaw, gripper) with Euler "xyz"
  angles (extrinsic); the action is (xyz_{t+1} - xyz_t, euler(R_{t+1} R_t^T), gripper_{t+1} - gripper_t).
  Rolled forward: xyz + d, R_delta R, gripper clipped to [0, 1].
- `state-delta`: any state; the action is s_{t+1} - s_t, rolled forward as s + a.
- `column:KEY`: the dataset's own action column. The `stride` native-rate rows from stored frame t
  up to t+1 are concatenated in time order into one action of stride x A dims (DINO-WM's frame
  skip); the last stored frame of an episode has none (NaN). Rolled forward by `hold` (the state
  stays) or `target` (the column is an absolute target with the state's dims: the last native row
  of the action becomes the next state).

The first two are computed from the states when clips are read; a column is stored (`action`).
"""

from __future__ import annotations

import numpy as np
import torch

from .format import POSE_DELTA, STATE_DELTA

QUATERNION_TOLERANCE = 1e-3  # |q| of a unit quaternion stored in float32 and rounded by a dataset


def euler_to_matrix(euler: torch.Tensor) -> torch.Tensor:
    """[..., 3] extrinsic x-y-z angles (rad) -> [..., 3, 3] rotation R = Rz(yaw) Ry(pitch) Rx(roll)."""
    a, b, c = euler.unbind(-1)
    ca, sa, cb, sb, cc, sc = a.cos(), a.sin(), b.cos(), b.sin(), c.cos(), c.sin()
    rows = [
        cc * cb, cc * sb * sa - sc * ca, cc * sb * ca + sc * sa,
        sc * cb, sc * sb * sa + cc * ca, sc * sb * ca - cc * sa,
        -sb, cb * sa, cb * ca,
    ]
    return torch.stack(rows, -1).unflatten(-1, (3, 3))


def matrix_to_euler(r: torch.Tensor) -> torch.Tensor:
    """Inverse of euler_to_matrix: roll, yaw in (-pi, pi], pitch in [-pi/2, pi/2]."""
    pitch = torch.asin((-r[..., 2, 0]).clamp(-1.0, 1.0))
    roll = torch.atan2(r[..., 2, 1], r[..., 2, 2])
    yaw = torch.atan2(r[..., 1, 0], r[..., 0, 0])
    return torch.stack([roll, pitch, yaw], -1)


def actions_from_states(states: torch.Tensor) -> torch.Tensor:
    """pose-delta: [..., F, 7] states -> [..., F-1, 7] actions."""
    s = states.double()
    rot = euler_to_matrix(s[..., 3:6])
    delta = rot[..., 1:, :, :] @ rot[..., :-1, :, :].transpose(-1, -2)
    out = torch.cat([s[..., 1:, :3] - s[..., :-1, :3], matrix_to_euler(delta), s[..., 1:, 6:] - s[..., :-1, 6:]], -1)
    return out.to(states.dtype)


def apply_action(state: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
    """pose-delta: the next state from a state and an action: xyz + d, R_delta R, gripper clipped to [0, 1]."""
    s, a = state.double(), action.double()
    rot = euler_to_matrix(a[..., 3:6]) @ euler_to_matrix(s[..., 3:6])
    grip = (s[..., 6:] + a[..., 6:]).clamp(0.0, 1.0)
    return torch.cat([s[..., :3] + a[..., :3], matrix_to_euler(rot), grip], -1).to(state.dtype)


def clip_actions(source: str, states: torch.Tensor, stored: torch.Tensor | None) -> torch.Tensor:
    """The F-1 actions of a clip: from its states [.., F, S], or its stored column rows [.., F, A]."""
    if source == POSE_DELTA:
        return actions_from_states(states)
    if source == STATE_DELTA:
        return states[..., 1:, :] - states[..., :-1, :]
    return stored[..., :-1, :]


def next_state(source: str, rule: str, state: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
    """The state after `action` [.., A] from `state` [.., S], by the source's rule (see the module doc)."""
    if source == POSE_DELTA:
        return apply_action(state, action)
    if source == STATE_DELTA:
        return state + action
    if rule == "target":
        return action[..., -state.shape[-1]:]
    return state


def column_rows(native: np.ndarray, rows: np.ndarray, stride: int) -> np.ndarray:
    """Stored actions [n, stride x A] from a native-rate action column [T, A] at stored rows `rows` (stride apart):
    row t concatenates native rows rows[t] .. rows[t] + stride - 1; the last row has no next frame: NaN."""
    out = np.full((len(rows), stride * native.shape[1]), np.nan, np.float32)
    for t in range(len(rows) - 1):
        out[t] = native[rows[t]:rows[t] + stride].reshape(-1)  # [stride, A] -> [stride x A], time-major
    return out


def looks_like_quaternion(states: np.ndarray) -> bool:
    """Whether dims 3..6 of every row have unit norm: a quaternion where pose-delta expects Euler angles + gripper."""
    s = np.asarray(states, np.float64)
    return s.shape[-1] == 7 and len(s) > 0 and bool(np.all(np.abs(np.linalg.norm(s[:, 3:7], axis=1) - 1) < QUATERNION_TOLERANCE))
