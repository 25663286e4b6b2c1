"""The sharded Zarr feature store: the one contract between extraction and training."""

from .codecs import CODECS, COMPRESSIONS
from .format import FORMAT_VERSION, StoreConfig, StoreError, UserError
from .manifest import EpisodeInfo
from .reader import Store, open_store
from .verify import verify
from .writer import (
    ShardWriter, create_store, merge_manifest, remove_unsealed, sealed_units, unsealed_units,
)

__all__ = [
    "CODECS", "COMPRESSIONS", "FORMAT_VERSION", "EpisodeInfo", "ShardWriter", "Store",
    "StoreConfig", "StoreError", "create_store", "merge_manifest", "open_store",
    "remove_unsealed", "sealed_units", "unsealed_units", "verify", "UserError",
]
