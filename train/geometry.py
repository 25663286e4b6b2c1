"""End-effector state and action maths (SPEC §4, §6): Euler "xyz" (extrinsic) <-> rotation matrices.

State s = (x, y, z, roll, pitch, yaw, gripper); action a_t between stored frames t and t+1 =
(xyz_{t+1} - xyz_t, euler(R_{t+1} R_t^T), gripper_{t+1} - gripper_t).
"""

from __future__ import annotations

import torch


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
    """[..., F, 7] states -> [..., F-1, 7] actions."""
    s = states.double()
    rot = euler_to_matrix(s[..., 3:6])
    delta = rot[..., 1:, :, :] @ rot[..., :-1, :, :].transpose(-1, -2)
    out = torch.cat([s[..., 1:, :3] - s[..., :-1, :3], matrix_to_euler(delta), s[..., 1:, 6:] - s[..., :-1, 6:]], -1)
    return out.to(states.dtype)


def apply_action(state: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
    """Next state from a state and an action (planning): xyz + d, R_delta R, gripper clipped to [0, 1]."""
    s, a = state.double(), action.double()
    rot = euler_to_matrix(a[..., 3:6]) @ euler_to_matrix(s[..., 3:6])
    grip = (s[..., 6:] + a[..., 6:]).clamp(0.0, 1.0)
    return torch.cat([s[..., :3] + a[..., :3], matrix_to_euler(rot), grip], -1).to(state.dtype)
