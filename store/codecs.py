"""Feature codecs (how a float feature becomes stored integers) and chunk compressors.

- bf16: the bfloat16 bit pattern as uint16 (zarr-python 3.1 has no bfloat16 dtype);
  lossless for bf16 input, round-to-nearest-even from fp32.
- fp16: IEEE half; exact for fp16 input.
- int8: symmetric per-token quantisation, q = round(x / s) with one float16 scale s per
  token, s = max|x| / 127 rounded *up* to the next float16 so |x / s| <= 127 always holds.
  Error bound per element: |x - q * s| <= s / 2.
"""

from __future__ import annotations

import numpy as np
import torch
from zarr.codecs import BloscCodec, ZstdCodec

from .format import CODECS, COMPRESSIONS
STORED_DTYPE = {"bf16": np.uint16, "fp16": np.float16, "int8": np.int8}
FRAME_ARRAYS = ("features", "scales")  # chunked by chunk_frames and compressed as the store says; the rest per row
FEATURE_DTYPE = {"bf16": torch.bfloat16, "fp16": torch.float16, "int8": torch.float16}  # what decode gives
AS_STORED = ("bf16", "fp16")  # codecs whose stored bytes are the decoded features' bytes


def encode(x: torch.Tensor, codec: str) -> tuple[np.ndarray, np.ndarray | None]:
    """[..., D] features -> (stored array, per-token scales [...] float16 or None)."""
    x = x.detach().cpu()
    if codec == "bf16":
        return x.to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16), None
    if codec == "fp16":
        return x.to(torch.float16).numpy(), None
    if codec == "int8":
        x = x.float()
        amax = x.abs().amax(dim=-1)
        scale = (amax / 127).to(torch.float16)
        # round the fp16 scale up where rounding went down, so |x| / scale <= 127
        low = scale.float() < amax / 127
        scale[low] = torch.nextafter(scale[low], torch.tensor(torch.inf, dtype=torch.float16))
        safe = torch.where(scale > 0, scale.float(), torch.ones_like(amax))
        q = torch.round(x / safe.unsqueeze(-1)).clamp_(-127, 127).to(torch.int8)
        return q.numpy(), scale.numpy()
    raise ValueError(f"unknown codec {codec!r}; choose one of {', '.join(CODECS)}")


def decode(stored: np.ndarray, scales: np.ndarray | None, codec: str) -> torch.Tensor:
    """Stored array -> torch features: bf16 for bf16, float16 for fp16 and int8."""
    if codec == "bf16":
        return torch.from_numpy(np.ascontiguousarray(stored).view(np.int16)).view(torch.bfloat16)
    if codec == "fp16":
        return torch.from_numpy(np.ascontiguousarray(stored))
    if codec == "int8":
        q = torch.from_numpy(np.ascontiguousarray(stored)).float()
        s = torch.from_numpy(np.ascontiguousarray(scales)).float().unsqueeze(-1)
        return (q * s).to(torch.float16)
    raise ValueError(f"unknown codec {codec!r}")


def stored_view(features: torch.Tensor, codec: str) -> np.ndarray | None:
    """The stored array's bytes as a view of a features tensor (decode's output dtype), for reading straight
    into it; None for int8, whose stored bytes are not the features."""
    if codec not in AS_STORED:
        return None
    return features.view(torch.int16).numpy().view(np.uint16) if codec == "bf16" else features.numpy()


def shard_layout(config) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """The arrays a shard of this store holds: the shape of one row and the dtype of each (the writer creates
    them so, readers open them and `store verify` checks them)."""
    c = config
    layout = {"features": ((c.tokens, c.feature_dim), STORED_DTYPE[c.codec]), "state": ((c.state_dim,), np.float32),
              "frame_index": ((), np.int64), "timestamp": ((), np.float64), "episode": ((), np.int64)}
    if c.stored_actions:  # an episode's last row has no next frame: NaN
        layout["action"] = ((c.action_dim,), np.float32)
    if c.codec == "int8":
        layout["scales"] = ((c.tokens,), np.float16)
    return {name: (shape, np.dtype(dtype)) for name, (shape, dtype) in layout.items()}


def frame_bytes(config) -> int | None:
    """Bytes of one feature row in a chunk file of a store of this StoreConfig, where the file holds the rows'
    features as they are (uncompressed bf16, fp16); else None."""
    if config.compression != "none" or config.codec not in AS_STORED:
        return None
    return config.tokens * config.feature_dim * np.dtype(STORED_DTYPE[config.codec]).itemsize


def compressors(name: str) -> list | None:
    """Zarr compressor list for a compression name."""
    if name == "none":
        return None
    if name == "zstd":
        return [ZstdCodec(level=3)]
    if name == "blosc-zstd":
        # byte shuffle groups the (low-entropy) high bytes of 16-bit floats together
        return [BloscCodec(cname="zstd", clevel=3, shuffle="shuffle")]
    raise ValueError(f"unknown compression {name!r}; choose one of {', '.join(COMPRESSIONS)}")
