"""The networks and their checkpoints: the V-JEPA 2 ViT (blocks, 3D RoPE, KV cache), the AC predictor,
building an encoder from a store's record, preprocessing, and loading/exporting weights under the
released key names. Depends on common/ and store/ only; extract/, train/ and sim/ build on it."""

ENCODER_FAMILIES = ("vjepa2", "hf", "efficientnet-lite0")  # model.encoders' (here, free of torch, for the settings)
ACTION_CONDITIONING = ("token", "concat")  # model.predictor's (here, free of torch, for the settings)
RANDOM_INIT = "random-init-seed"  # + seed: the weights id of a random encoder, rebuilt from its seed
