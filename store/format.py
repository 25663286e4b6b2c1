"""The on-disk contract between the extraction job and everything that reads features.

The specification, versioned, is docs/store-format.md: the layout, the root attributes (here
`StoreConfig`), the seal, the manifest's columns, the codecs and the action definitions. This
module holds its constants, the root metadata, the plan, and the paths of a store's parts.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING

from common.errors import StoreError

from .digest import LEGACY_DIGEST, check_digest, chunk_digests, digest_bytes
from .location import RemotePath, list_files, where, write_bytes

if TYPE_CHECKING:  # pyarrow (store.manifest) is imported where a table is read: the settings modules import this
    import pyarrow as pa  # module for its names, and `--help` must not load pyarrow and numpy

FORMAT_VERSION = 3
PLAN_FILE = "plan.parquet"
MANIFEST_FILE = "manifest.parquet"
SHARDS_DIR = "shards"
SEAL_FILE = "sealed.json"
EPISODES_FILE = "episodes.parquet"
FEATURE_CHUNKS_DIR = "features/c/"  # where a shard's feature chunk files are (feature_chunk)
# how a store's actions are defined (store.actions): the names, free of torch for the settings modules
POSE_DELTA, STATE_DELTA, COLUMN = "pose-delta", "state-delta", "column:"
STATE_RULES = ("hold", "target")  # how a column action moves the state when planning
POSE_STATE_NAMES = ("x", "y", "z", "roll", "pitch", "yaw", "gripper")  # DROID; docs/store-format.md, "Actions"
# version 1 stores: DROID's 7-D end effector with pose-delta actions, no names, no statistics
V1_ROBOT = {"state_dim": 7, "action_dim": 7, "actions": "pose-delta", "state_names": None, "action_names": None}
CODECS = ("bf16", "fp16", "int8")  # see store.codecs
COMPRESSIONS = ("none", "zstd", "blosc-zstd")


@dataclass(frozen=True)
class StoreConfig:
    """Everything that determines the stored features; two runs must agree on all of it."""

    encoder: str  # model family, "vjepa2-vit"
    preset: str  # encoder preset name, e.g. "vit_giant"
    checkpoint_sha256: str  # of the weights file; "random-init" when none was loaded
    feature_dim: int
    grid: tuple[int, int]  # (rows, cols) of patch tokens per frame
    image_size: int
    fps: float  # target sampling rate of stored frames
    crop: str  # the encoder's preprocessing rule, model.preprocess.InputSpec.describe()
    camera: str
    codec: str  # "bf16" | "fp16" | "int8"
    compression: str  # see store.codecs.COMPRESSIONS
    chunk_frames: int  # rows per feature chunk file
    source_format: str  # "droid" | "lerobot" | "webdataset"
    state_dim: int  # S, per-frame state
    action_dim: int  # A, action from stored frame t to t+1
    actions: str  # how actions are defined: "pose-delta" | "state-delta" | "column:KEY" (store.actions)
    state_names: tuple[str, ...] | None  # from the source (LeRobot info.json `names`), when it has them
    action_names: tuple[str, ...] | None

    @property
    def tokens(self) -> int:
        return self.grid[0] * self.grid[1]

    @property
    def stored_actions(self) -> bool:
        """Whether the shards hold an `action` array (a dataset's column) or actions come from the states."""
        return self.actions.startswith(COLUMN)

    def to_attrs(self) -> dict:
        d = asdict(self)
        for k in ("grid", "state_names", "action_names"):
            d[k] = None if d[k] is None else list(d[k])
        return d

    @classmethod
    def from_attrs(cls, d: dict) -> "StoreConfig":
        if d.get("format_version") == 1:
            d = {**V1_ROBOT, **d}
        names = {f.name for f in fields(cls)}
        missing = names - set(d)
        if missing:
            raise StoreError(f"store attributes lack {sorted(missing)}")
        kw = {k: d[k] for k in names}
        for k in ("grid", "state_names", "action_names"):
            kw[k] = None if kw[k] is None else tuple(kw[k])
        return cls(**kw)

    def differences(self, other: "StoreConfig") -> list[str]:
        a, b = self.to_attrs(), other.to_attrs()
        return [f"{k}: {a[k]!r} != {b[k]!r}" for k in a if a[k] != b[k]]


def check_source(source: str) -> None:
    if source not in (POSE_DELTA, STATE_DELTA) and not (source.startswith(COLUMN) and len(source) > len(COLUMN)):
        raise StoreError(f"--actions {source!r} is not one of: pose-delta, state-delta, column:KEY")


def column_key(source: str) -> str | None:
    """KEY of a `column:KEY` source, else None (the actions come from the states)."""
    return source[len(COLUMN):] if source.startswith(COLUMN) else None


def state_names(names, actions: str, dim: int) -> list[str]:
    """Names of the state dims: the source's, pose-delta's, or s0, s1, ..."""
    if names:
        return list(names)
    return list(POSE_STATE_NAMES) if actions == POSE_DELTA else [f"s{i}" for i in range(dim)]


def action_names(names, actions: str, dim: int) -> list[str]:
    """Names of the action dims: the source's, pose-delta's (dx, ..., dgripper), or a0, a1, ..."""
    if names:
        return list(names)
    return [f"d{n}" for n in POSE_STATE_NAMES] if actions == POSE_DELTA else [f"a{i}" for i in range(dim)]


Location = Path | RemotePath  # a store's folder, local or in an object store (store.location)


def feature_chunk(index: int) -> str:
    """The name, in its shard, of the file of feature rows [index * chunk_frames, (index + 1) * chunk_frames): zarr's
    default chunk key with separator "/" (one chunk spans all tokens and dims); the last one is padded with zeros."""
    return f"{FEATURE_CHUNKS_DIR}{index}/0/0"


def shard_dir(root: Location, unit: int) -> Location:
    return where(root) / SHARDS_DIR / f"{unit:05d}"


def read_root_attrs(root: Location | str) -> dict:
    """Attributes of a store's root group, with one-line errors for anything that is not a store."""
    root = where(root)
    if isinstance(root, Path) and root.exists() and not root.is_dir():
        raise StoreError(f"{root}: is a file, not a store directory")
    try:
        raw = (root / "zarr.json").read_bytes()  # (remotely, a GET tells a denied request from a missing key)
    except FileNotFoundError:
        if isinstance(root, RemotePath) and not root.bucket_exists():
            raise StoreError(f"{root}: the bucket does not exist") from None
        if not root.exists():
            raise StoreError(f"{root}: no such file or directory") from None
        raise StoreError(f"{root}: not a feature store (no zarr.json)") from None
    except OSError as e:
        raise StoreError(f"{root}: zarr.json is unreadable ({e})") from None
    try:
        attrs = json.loads(raw)["attributes"]
        version = attrs["format_version"]
    except (ValueError, KeyError, TypeError) as e:
        raise StoreError(f"{root}: zarr.json is unreadable or damaged ({type(e).__name__}: {e}); "
                         "not a feature store, or its metadata was overwritten") from None
    if isinstance(version, int) and version > FORMAT_VERSION:
        raise StoreError(
            f"{root}: store format version {version} is newer than this code supports "
            f"({FORMAT_VERSION}); upgrade the package"
        )
    if not isinstance(version, int) or not isinstance(attrs.get("num_units"), int) or attrs["num_units"] < 1:
        raise StoreError(f"{root}: zarr.json holds no valid format_version and num_units (damaged metadata)")
    return attrs


def update_root_attrs(root: Location, **values) -> None:
    """Set root attributes (rewriting zarr.json atomically; concurrent writers of equal values are harmless)."""
    meta = where(root) / "zarr.json"
    doc = json.loads(meta.read_bytes())
    doc["attributes"].update(values)
    write_bytes(meta, json.dumps(doc, indent=2).encode())


def read_checked(path: Location, digest: str | None, algorithm: str = "sha256") -> bytes:
    """A file's bytes, refused unless they match `digest` (when one is recorded) under `algorithm`."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise StoreError(f"{path}: missing") from None
    except OSError as e:
        raise StoreError(f"{path}: unreadable ({e.strerror})") from None
    if digest and digest_bytes(data, algorithm) != digest:
        raise StoreError(f"{path}: does not match its recorded checksum (damaged, or changed after it was written)")
    return data


def read_manifest(root: Location, attrs: dict) -> pa.Table | None:
    """The merged manifest, checked against its recorded checksum; None before the merge (one lost after it is a
    StoreError)."""
    from .manifest import SCHEMA, parse_table

    path, digest = where(root) / MANIFEST_FILE, attrs.get("manifest_sha256")
    if not path.exists():
        if digest:
            raise StoreError(f"{path}: missing although the store was merged (`cli.py store merge` rewrites it)")
        return None
    return parse_table(read_checked(path, digest), SCHEMA, path)


def read_plan(root: Location, attrs: dict) -> pa.Table:
    """The work plan, checked against its checksum and against the unit count of the root attributes."""
    from .manifest import PLAN_SCHEMA, parse_table

    path = where(root) / PLAN_FILE
    plan = parse_table(read_checked(path, attrs.get("plan_sha256")), PLAN_SCHEMA, path)
    units = len(set(plan["unit"].to_pylist()))
    if units != attrs["num_units"]:
        raise StoreError(f"{root}: zarr.json says {attrs['num_units']} units but {PLAN_FILE} has {units} "
                         "(damaged metadata)")
    return plan


def _units(root: Location, sealed: bool) -> list[int]:
    shards = where(root) / SHARDS_DIR
    if not shards.is_dir():
        read_root_attrs(root)  # names the problem if root is no store at all
        raise StoreError(f"{root}: feature store without a {SHARDS_DIR}/ directory")
    return sorted(int(d.name) for d in shards.iterdir() if d.name.isdigit() and (d / SEAL_FILE).exists() == sealed)


def sealed_units(root: Location) -> list[int]:
    return _units(root, sealed=True)


def unsealed_units(root: Location) -> list[int]:
    return _units(root, sealed=False)


def read_seal(root: Location, unit: int, raw: bytes | None = None) -> dict:
    """A sealed shard's seal: unit, rows, episodes, `digest` (the algorithm; SHA-256 where a format-2 seal
    names none), the digest of every other file of the shard and, where the feature chunks hold the rows as they
    are, `frame_digests`, one per row. `raw`: the seal file's bytes, where the caller has read them."""
    path = shard_dir(root, unit) / SEAL_FILE
    try:
        seal = json.loads(path.read_bytes() if raw is None else raw)
        if not (isinstance(seal["files"], dict) and isinstance(seal["rows"], int) and isinstance(seal["episodes"], int)):
            raise TypeError("wrong field types")
        if "frame_digests" in seal and not (isinstance(seal["frame_digests"], list)
                                            and len(seal["frame_digests"]) == seal["rows"]):
            raise TypeError("frame_digests is not one digest per row")
        seal.setdefault("digest", LEGACY_DIGEST)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise StoreError(f"shard {unit:05d}: unreadable seal ({type(e).__name__}: {e})") from None
    check_digest(seal["digest"], f"shard {unit:05d}: its seal")
    return seal


def shard_episodes(root: Location, unit: int, seal: dict | None = None) -> pa.Table:
    """A sealed shard's episode table, checked against its seal."""
    from .manifest import SCHEMA, parse_table

    seal = seal or read_seal(root, unit)
    path = shard_dir(root, unit) / EPISODES_FILE
    return parse_table(read_checked(path, seal["files"].get(EPISODES_FILE), seal["digest"]), SCHEMA, path)


def shard_files(directory: Location) -> list[str]:
    """Every file under a shard directory except the seal itself (and its temporaries), sorted."""
    return [rel for rel in list_files(directory) if rel != SEAL_FILE and not rel.startswith(f".{SEAL_FILE}")]


def shard_digests(names: list[str], read: Callable[[str], bytes], algorithm: str, frame: int | None
                  ) -> tuple[dict[str, str], dict[str, list[str]]]:
    """The digests of some files of a shard, each read once by `read(name)`: {name: digest}, and where `frame`
    is given (the feature chunks hold the rows as they are), {chunk name: its rows' digests} (in_row_order)."""
    files, rows = {}, {}
    for rel in names:
        data = read(rel)
        if frame is not None and rel.startswith(FEATURE_CHUNKS_DIR):  # the file and its rows, hashed at once
            files[rel], rows[rel] = chunk_digests(data, algorithm, frame)
        else:
            files[rel] = digest_bytes(data, algorithm)
    return files, rows


def in_row_order(chunk_rows: dict[str, list[str]], rows: int, chunk_frames: int) -> list[str]:
    """Per-row digests by chunk file name -> a seal's `frame_digests`, one per row in row order (the padding rows
    of the last chunk dropped)."""
    return [d for i in range(-(-rows // chunk_frames)) for d in chunk_rows[feature_chunk(i)]][:rows]
