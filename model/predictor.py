"""The V-JEPA 2-AC action-conditioned predictor (SPEC §3), with the released parameter names."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from common.errors import UserError
from model.vit import LN_EPS, Block, KVCache, init_weights, rope_tables

EXTRINSICS_DIM = 6
COND_TOKENS = 2  # per step, before its frame tokens: the action and the state
MIN_STD = 1e-6  # a dim that never changes in the data is left unscaled


@dataclass(frozen=True)
class PredictorPreset:
    width: int
    depth: int
    heads: int
    mlp: int


PREDICTOR_PRESETS = {
    "ac_vitg": PredictorPreset(1024, 24, 16, 4096),  # the released V-JEPA 2-AC predictor, ~305M
    "ac_demo": PredictorPreset(128, 3, 2, 512),
    "ac_vitg_mini": PredictorPreset(256, 5, 4, 1024),  # pairs with vit_g_mini (benchmarks)
    "ac_test": PredictorPreset(64, 2, 2, 128),
}


def block_causal_mask(steps: int, tokens_per_step: int, device: torch.device | None = None) -> torch.Tensor:
    """[L, L] bool, True where query i may attend key j: step(j) <= step(i)."""
    step = torch.arange(steps, device=device).repeat_interleave(tokens_per_step)
    return step.unsqueeze(1) >= step.unsqueeze(0)


def normalization_from_stats(stats: dict, which: str) -> dict:
    """{"state": {"mean", "std"}, "action": {...}} for `which` ("states,actions", "states", "actions")
    from a store's statistics (store.stats)."""
    out = {}
    for name in ("state", "action"):
        if f"{name}s" in which.split(","):
            std = [s if s > MIN_STD else 1.0 for s in stats[name]["std"]]
            out[name] = {"mean": list(stats[name]["mean"]), "std": std}
    return out


class ACPredictor(nn.Module):
    """Predicts z_{t+1} for every step t from [action_t, state_t, frame tokens of z_t] sequences.

    Inputs z [B, T, N, D] (layer-normalised features), actions [B, T, A] and states [B, T, S] in the
    data's units; output [B, T, N, D] (not normalised). Attention is block-causal over steps.
    `normalization` z-scores states and/or actions on the way in (normalization_from_stats); its
    mean and std are buffers outside the state dict, so the released weights load strictly and our
    checkpoints keep them in their metadata.
    """

    def __init__(self, feature_dim: int, grid: tuple[int, int], preset: PredictorPreset, state_dim: int = 7,
                 action_dim: int = 7, normalization: dict | None = None, activation_checkpointing: bool = False,
                 attention: str = "per-step", action_conditioning: str = "token"):
        super().__init__()
        self.attention = attention  # see train.config.ATTENTION
        self.action_conditioning = action_conditioning  # see train.config: token (released) or concat
        w = preset.width
        self.grid, self.head_dim = tuple(grid), w // preset.heads
        self.activation_checkpointing = activation_checkpointing
        self.predictor_embed = nn.Linear(feature_dim, w)
        self.action_encoder = nn.Linear(action_dim, w)
        self.state_encoder = nn.Linear(state_dim, w)
        # in the released weights, for the reference's option of a camera-extrinsics token per step; no store holds
        # extrinsics, so it stays frozen and unused here
        self.extrinsics_encoder = nn.Linear(EXTRINSICS_DIM, w).requires_grad_(False)
        self.predictor_blocks = nn.ModuleList(Block(w, preset.heads, preset.mlp) for _ in range(preset.depth))
        self.predictor_norm = nn.LayerNorm(w, eps=LN_EPS)
        self.predictor_proj = nn.Linear(w, feature_dim)
        init_weights(self, self.predictor_blocks)
        for name, dim in (("state", state_dim), ("action", action_dim)):
            scale = (normalization or {}).get(name, {"mean": [0.0] * dim, "std": [1.0] * dim})
            self.register_buffer(f"{name}_mean", torch.tensor(scale["mean"], dtype=torch.float32), persistent=False)
            self.register_buffer(f"{name}_std", torch.tensor(scale["std"], dtype=torch.float32), persistent=False)
        self._tables: dict[tuple, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}

    def tables(self, steps: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """RoPE cos/sin and (for attention "mask") the block-causal mask of `steps` steps, built once and cached."""
        key = (steps, str(device))
        if key not in self._tables:
            rows, cols = self.grid
            c, n = COND_TOKENS, rows * cols
            with torch.device("cpu"):  # built on the CPU, also when the default device is another
                r, k = torch.meshgrid(torch.arange(rows), torch.arange(cols), indexing="ij")
                row = torch.cat([torch.full((c,), -1), r.flatten()]).repeat(steps)  # cond tokens: time only
                col = torch.cat([torch.full((c,), -1), k.flatten()]).repeat(steps)
                time = torch.arange(steps).repeat_interleave(c + n)
            cos, sin = rope_tables(time, row, col, self.head_dim)
            mask = block_causal_mask(steps, c + n, device) if self.attention == "mask" else None
            self._tables[key] = (cos.to(device), sin.to(device), mask)
        return self._tables[key]

    def forward(self, z: torch.Tensor, actions: torch.Tensor, states: torch.Tensor,
                cache: KVCache | None = None) -> torch.Tensor:
        """Predictions for the T steps given. With a `cache`, they follow the cache.steps steps it holds (their
        keys and values are reused, this call's are added): the outputs equal those of the whole sequence."""
        b, t, n, _ = z.shape
        if (t, n) != (actions.shape[1], self.grid[0] * self.grid[1]) or states.shape[1] != t:
            raise ValueError(f"z {list(z.shape)}, actions {list(actions.shape)}, states {list(states.shape)} "
                             f"do not fit a {self.grid} grid")
        actions = (actions - self.action_mean) / self.action_std
        states = (states - self.state_mean) / self.state_std
        cond = [self.action_encoder(actions), self.state_encoder(states)]  # each [B, T, W]
        c = COND_TOKENS
        frames = self.predictor_embed(z)  # [B, T, N, W]
        if self.action_conditioning == "concat":  # the step's action joins every frame token: concatenated to its
            frames = frames + cond[0].unsqueeze(2)  # features and projected = the sum of the two projections
        # per step [action, state, N frame tokens]: [B, T, c + N, W] -> [B, T (c + N), W]
        x = torch.cat([e.unsqueeze(2) for e in cond] + [frames], dim=2).flatten(1, 2)
        done = cache.steps if cache is not None else 0
        cos, sin, mask = self.tables(done + t, z.device)
        cos, sin = cos[done * (c + n):], sin[done * (c + n):]  # the rows of the new steps
        mask = None if mask is None else mask[done * (c + n):]
        step_tokens = c + n if mask is None else None
        for i, block in enumerate(self.predictor_blocks):
            if self.activation_checkpointing and self.training:
                x = checkpoint(block, x, cos, sin, mask, step_tokens, cache, i, use_reentrant=False)
            else:
                x = block(x, cos, sin, mask, step_tokens, cache, i)
        if cache is not None:
            cache.steps += t
        x = x.view(b, t, c + n, -1)[:, :, c:]  # [B, T (c + N), W] -> the frame tokens [B, T, N, W]
        return self.predictor_proj(self.predictor_norm(x))  # [B, T, N, D]


def build_model(feature_dim: int, grid: tuple[int, int], preset: str, state_dim: int = 7, action_dim: int = 7,
                normalization: dict | None = None, activation_checkpointing: bool = False,
                attention: str = "per-step", action_conditioning: str = "token") -> ACPredictor:
    if preset not in PREDICTOR_PRESETS:
        raise UserError(f"unknown predictor preset {preset!r}; choose one of {', '.join(PREDICTOR_PRESETS)}")
    return ACPredictor(feature_dim, tuple(grid), PREDICTOR_PRESETS[preset], state_dim, action_dim, normalization,
                       activation_checkpointing=activation_checkpointing, attention=attention,
                       action_conditioning=action_conditioning)
