"""The V-JEPA 2 transformer pieces (SPEC §1-§3), shared by the frozen encoder and the AC predictor.

Module and parameter names follow the released checkpoints: `norm1`, `attn.qkv`,
`attn.proj`, `norm2`, `mlp.fc1`, `mlp.fc2`, `patch_embed.proj`, `norm`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from common.errors import UserError

from .preprocess import InputSpec

PATCH = 16
TUBELET = 2
LN_EPS = 1e-6


def rope_slice(head_dim: int) -> int:
    """Width d of each of the time/row/column slices of a head; the rest of the head is not rotated."""
    return 2 * ((head_dim // 3) // 2)


def rope_angles(positions: torch.Tensor, d: int) -> torch.Tensor:
    """Angles [..., d] for a slice of width d at integer positions [...].

    Frequencies w_i = 10000^(-i / (d/2)), i < d/2. The released weights were trained with the
    d/2 angles *concatenated twice* (element j uses angle index j mod d/2), not interleaved:
    reproduced here on purpose.
    """
    omega = 1.0 / 10000 ** (torch.arange(d // 2, dtype=torch.float64, device=positions.device) / (d / 2))
    angles = positions.double().unsqueeze(-1) * omega
    return torch.cat([angles, angles], dim=-1)


def rope_tables(time: torch.Tensor, row: torch.Tensor | None, col: torch.Tensor | None,
                head_dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin [N, head_dim] for N tokens at (time, row, col).

    Dims [0,d) rotate by time, [d,2d) by row, [2d,3d) by column; the rest stay as they are.
    Tokens whose row is -1 (the predictor's action and state tokens) rotate by time only.
    """
    d = rope_slice(head_dim)
    n = time.shape[0]
    angles = torch.zeros(n, head_dim, dtype=torch.float64, device=time.device)
    angles[:, :d] = rope_angles(time, d)
    keep = torch.zeros(n, head_dim, dtype=torch.bool, device=time.device)
    keep[:, :d] = True
    if row is not None:
        spatial = row >= 0
        angles[spatial, d:2 * d] = rope_angles(row[spatial], d)
        angles[spatial, 2 * d:3 * d] = rope_angles(col[spatial], d)
        keep[spatial, d:3 * d] = True
    cos = torch.where(keep, angles.cos(), torch.ones_like(angles))
    sin = torch.where(keep, angles.sin(), torch.zeros_like(angles))
    return cos.float(), sin.float()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x * cos + rot(x) * sin with rot(x0, x1, x2, x3, ...) = (-x1, x0, -x3, x2, ...)."""
    pairs = x.unflatten(-1, (-1, 2))
    rotated = torch.stack((-pairs[..., 1], pairs[..., 0]), dim=-1).flatten(-2)
    return x * cos.to(x.dtype) + rotated * sin.to(x.dtype)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None,
              step_tokens: int | None = None) -> torch.Tensor:
    """Scaled dot-product attention over [B, heads, L, Dh].

    With `step_tokens`, block-causal attention computed step by step: the queries of step t
    attend to the keys of steps <= t, with no mask at all, so CUDA can use its flash kernel
    and skips the masked half. Otherwise SDPA with `mask` (True = may attend). Keys may hold
    more steps than the queries: the earlier ones (a KVCache's), which every query sees.
    """
    if step_tokens is None:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    past = k.shape[2] - q.shape[2]
    ends = range(step_tokens, q.shape[2] + 1, step_tokens)
    return torch.cat([F.scaled_dot_product_attention(q[:, :, e - step_tokens:e], k[:, :, :past + e],
                                                     v[:, :, :past + e]) for e in ends], dim=2)


class KVCache:
    """Keys and values of the steps a block-causal model has already seen, per block: with them, a new
    step costs only its own tokens (the earlier steps' keys and values never change when one is added)."""

    def __init__(self, blocks: int):
        self.k: list[torch.Tensor | None] = [None] * blocks
        self.v: list[torch.Tensor | None] = [None] * blocks
        self.steps = 0

    def extend(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The keys and values of all steps so far, this call's [B, heads, L, Dh] appended."""
        if self.k[layer] is not None:
            k, v = torch.cat([self.k[layer], k], 2), torch.cat([self.v[layer], v], 2)
        self.k[layer], self.v[layer] = k, v
        return k, v


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=True)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, mask: torch.Tensor | None = None,
                step_tokens: int | None = None, cache: KVCache | None = None, layer: int = 0) -> torch.Tensor:
        b, n, dim = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, dim // self.heads).permute(2, 0, 3, 1, 4)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if cache is not None:
            k, v = cache.extend(layer, k, v)
        out = attention(q, k, v, mask, step_tokens)
        return self.proj(out.transpose(1, 2).reshape(b, n, dim))


class MLP(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm1(x)), then x + mlp(norm2(x))."""

    def __init__(self, dim: int, heads: int, mlp_hidden: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=LN_EPS)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=LN_EPS)
        self.mlp = MLP(dim, mlp_hidden)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, mask: torch.Tensor | None = None,
                step_tokens: int | None = None, cache: KVCache | None = None, layer: int = 0) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), cos, sin, mask, step_tokens, cache, layer)
        return x + self.mlp(self.norm2(x))


def init_weights(model: nn.Module, blocks: nn.ModuleList, std: float = 0.02) -> None:
    """Trunc-normal Linear/Conv weights, zero biases, LayerNorm (1, 0); residual outputs of block i /= sqrt(2 i)."""
    for m in model.modules():
        if isinstance(m, (nn.Linear, nn.Conv3d)):
            nn.init.trunc_normal_(m.weight, std=std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    with torch.no_grad():
        for i, block in enumerate(blocks, start=1):
            block.attn.proj.weight.div_((2.0 * i) ** 0.5)
            block.mlp.fc2.weight.div_((2.0 * i) ** 0.5)


@dataclass(frozen=True)
class EncoderPreset:
    dim: int
    depth: int
    heads: int
    mlp: int
    image_size: int = 256

    def __post_init__(self) -> None:  # (the size: a multiple of the patch's)
        if min(self.dim, self.depth, self.heads, self.mlp, self.image_size) < 1 or self.dim % self.heads \
                or self.image_size % PATCH:
            raise ValueError(f"no ViT has dim {self.dim}, depth {self.depth}, heads {self.heads}, mlp {self.mlp} at "
                             f"{self.image_size} px: all positive, dim a multiple of heads, the size of {PATCH} px")

    @property
    def grid(self) -> tuple[int, int]:
        return (self.image_size // PATCH, self.image_size // PATCH)


ENCODER_PRESETS = {
    "vit_large": EncoderPreset(1024, 24, 16, 4096),
    "vit_huge": EncoderPreset(1280, 32, 16, 5120),
    "vit_giant": EncoderPreset(1408, 40, 22, 6144),
    "vit_giant_384": EncoderPreset(1408, 40, 22, 6144, image_size=384),  # vitg-384.pt, vjepa2-vitg-fpc64-384
    # small random-init presets for the demo and tests: same code path, head dim 64 / 32
    "vit_demo": EncoderPreset(128, 4, 2, 512, image_size=128),
    # ViT-g scaled down for CPU benchmarks: with ac_vitg_mini it keeps the real pair's FLOP ratio
    # (encoder 0.8x the predictor's training step per clip; `cli.py bench cached-vs-online`)
    "vit_g_mini": EncoderPreset(320, 10, 5, 1408, image_size=128),
    "vit_test": EncoderPreset(32, 2, 1, 64, image_size=64),
}
LARGE_PRESETS = ("vit_large", "vit_huge", "vit_giant", "vit_giant_384")


def preset_name(preset: EncoderPreset) -> str:
    """A built-in preset's name, or a name that spells the dims out (vit_1024x24x16x4096@256)."""
    for name, p in ENCODER_PRESETS.items():
        if p == preset:
            return name
    return f"vit_{preset.dim}x{preset.depth}x{preset.heads}x{preset.mlp}@{preset.image_size}"


def encoder_preset(name: str) -> EncoderPreset | None:
    """The preset of a name of preset_name's, or None."""
    if name in ENCODER_PRESETS:
        return ENCODER_PRESETS[name]
    try:
        dims, size = name.removeprefix("vit_").split("@")
        numbers = [*map(int, dims.split("x")), int(size)]
    except ValueError:
        return None
    if len(numbers) != 5:
        return None
    try:
        return EncoderPreset(*numbers)
    except ValueError as e:
        raise UserError(f"--preset {name}: {e}") from None


class VisionTransformer(nn.Module):
    """The V-JEPA 2 encoder applied to single frames: [B, 3, S, S] -> [B, (S/16)^2, D].

    As every frame encoder (model.encoders): `family`, `name`, `input` (an InputSpec), `dim`, `grid`."""

    family = "vjepa2-vit"

    def __init__(self, preset: EncoderPreset):
        super().__init__()
        self.preset = preset
        self.name, self.input, self.dim, self.grid = preset_name(preset), InputSpec(preset.image_size), preset.dim, \
            preset.grid
        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Conv3d(3, preset.dim, kernel_size=(TUBELET, PATCH, PATCH),
                                          stride=(TUBELET, PATCH, PATCH))
        self.blocks = nn.ModuleList(Block(preset.dim, preset.heads, preset.mlp) for _ in range(preset.depth))
        self.norm = nn.LayerNorm(preset.dim, eps=LN_EPS)
        init_weights(self, self.blocks)
        rows, cols = preset.grid
        with torch.device("cpu"):  # built on the CPU, also when the default device is another
            r, c = torch.meshgrid(torch.arange(rows), torch.arange(cols), indexing="ij")
            # one tubelet, so time position 0 for every token; row-major tokens
            cos, sin = rope_tables(torch.zeros(rows * cols), r.flatten(), c.flatten(), preset.dim // preset.heads)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        clip = frames.unsqueeze(2).expand(-1, -1, TUBELET, -1, -1)  # each frame repeated twice
        x = self.patch_embed.proj(clip).flatten(2).transpose(1, 2)  # [B, tokens, D]
        for block in self.blocks:
            x = block(x, self.rope_cos, self.rope_sin)
        return self.norm(x)
