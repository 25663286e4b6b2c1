"""The networks and their checkpoints: the V-JEPA 2 ViT (blocks, 3D RoPE, KV cache), the AC predictor,
building an encoder from a store's record, preprocessing, and loading/exporting weights under the
released key names. Depends on common/ and store/ only; extract/, train/ and sim/ build on it."""
