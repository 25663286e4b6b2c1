"""The sharded Zarr feature store: the one contract between extraction and training.

The names below load their module on first use, so `store.format` alone (the layout and
its names) is cheap to import (the CLI's --help imports it; torch, zarr, numpy and pyarrow stay
unloaded).
"""

import importlib

_HOMES = {
    "CODECS": "format", "COMPRESSIONS": "format", "FORMAT_VERSION": "format", "StoreConfig": "format",
    "sealed_units": "format", "unsealed_units": "format", "EpisodeInfo": "manifest", "Store": "reader",
    "open_store": "reader", "verify": "integrity", "ShardWriter": "writer", "StoredEpisode": "writer",
    "create_store": "writer", "merge_manifest": "writer", "plan_units": "writer", "remove_unsealed": "writer",
    "write_store": "writer", "reseal": "writer", "ChunkCache": "cache",
}
__all__ = list(_HOMES)


def __getattr__(name: str):
    if name not in _HOMES:
        raise AttributeError(f"module 'store' has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_HOMES[name]}", __name__), name)
