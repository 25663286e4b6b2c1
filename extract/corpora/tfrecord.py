"""TFRecord files and tf.train.Example records, without TensorFlow.

A TFRecord file is a sequence of records: uint64 length (little endian), uint32 masked CRC-32C of
those 8 bytes, the data, uint32 masked CRC-32C of the data. The Example message is built here
from its schema (tensorflow/core/example/{example,feature}.proto) with the protobuf package.
"""

from __future__ import annotations

import struct
from functools import cache
from pathlib import Path

import google_crc32c
import numpy as np

from store.location import RemotePath

MASK_DELTA = 0xA282EAD8


class CorruptRecord(ValueError):
    """A record whose length or data does not match its CRC, or that the file cuts short."""


def masked_crc(data: bytes) -> int:
    crc = google_crc32c.value(bytes(data))
    return (((crc >> 15) | (crc << 17)) + MASK_DELTA) & 0xFFFFFFFF


def frame(data: bytes) -> bytes:
    """One record as a TFRecord file holds it."""
    length = struct.pack("<Q", len(data))
    return length + struct.pack("<I", masked_crc(length)) + data + struct.pack("<I", masked_crc(data))


def record_offsets(path: Path | RemotePath) -> tuple[list[int], str | None]:
    """Byte offsets of a file's records, from their length headers (checked; the data is skipped), and why
    the file ends before its last record (a header that fails its CRC, a cut), or None."""
    size, offsets = path.stat().st_size, []
    with path.open("rb") as f:
        while (offset := f.tell()) < size:
            header = f.read(12)
            if len(header) < 12 or struct.unpack("<I", header[8:])[0] != masked_crc(header[:8]):
                return offsets, f"the length header at byte {offset} fails its CRC"
            length = struct.unpack("<Q", header[:8])[0]
            if offset + 16 + length > size:
                return offsets, f"the record at byte {offset} ends past the end of the file"
            f.seek(length + 4, 1)
            offsets.append(offset)
    return offsets, None


def read_record(path: Path | RemotePath, offset: int) -> bytes:
    """The data of the record at `offset`, its CRC checked."""
    with path.open("rb") as f:
        f.seek(offset)
        length = struct.unpack("<Q", f.read(12)[:8])[0]
        data, crc = f.read(length), f.read(4)
    if len(data) != length or len(crc) != 4 or struct.unpack("<I", crc)[0] != masked_crc(data):
        raise CorruptRecord(f"the record at byte {offset} fails its CRC")
    return data


@cache
def example_class() -> type:
    """The tf.train.Example message class (package `tensorflow`), from its schema."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    f = descriptor_pb2.FileDescriptorProto(name="tfrecord_example.proto", package="tensorflow", syntax="proto3")
    T = descriptor_pb2.FieldDescriptorProto
    for name, kind in (("BytesList", T.TYPE_BYTES), ("FloatList", T.TYPE_FLOAT), ("Int64List", T.TYPE_INT64)):
        m = f.message_type.add(name=name)
        field = m.field.add(name="value", number=1, type=kind, label=T.LABEL_REPEATED)
        field.options.packed = kind != T.TYPE_BYTES
    feature = f.message_type.add(name="Feature")
    feature.oneof_decl.add(name="kind")
    for number, name in enumerate(("bytes_list", "float_list", "int64_list"), start=1):
        feature.field.add(name=name, number=number, type=T.TYPE_MESSAGE, label=T.LABEL_OPTIONAL, oneof_index=0,
                          type_name=".tensorflow." + "".join(p.capitalize() for p in name.split("_")))
    features = f.message_type.add(name="Features")
    entry = features.nested_type.add(name="FeatureEntry")
    entry.options.map_entry = True
    entry.field.add(name="key", number=1, type=T.TYPE_STRING, label=T.LABEL_OPTIONAL)
    entry.field.add(name="value", number=2, type=T.TYPE_MESSAGE, label=T.LABEL_OPTIONAL,
                    type_name=".tensorflow.Feature")
    features.field.add(name="feature", number=1, type=T.TYPE_MESSAGE, label=T.LABEL_REPEATED,
                       type_name=".tensorflow.Features.FeatureEntry")
    f.message_type.add(name="Example").field.add(name="features", number=1, type=T.TYPE_MESSAGE,
                                                 label=T.LABEL_OPTIONAL, type_name=".tensorflow.Features")
    pool = descriptor_pool.DescriptorPool()
    pool.Add(f)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("tensorflow.Example"))


def parse_example(data: bytes) -> dict[str, list[bytes] | np.ndarray]:
    """Feature name -> its values: a list of bytes, or a flat float32 / int64 array."""
    example = example_class()()
    example.ParseFromString(data)
    out = {}
    for key, feature in example.features.feature.items():
        kind = feature.WhichOneof("kind")
        if kind == "bytes_list":
            out[key] = list(feature.bytes_list.value)
        elif kind == "float_list":
            out[key] = np.array(feature.float_list.value, np.float32)
        elif kind == "int64_list":
            out[key] = np.array(feature.int64_list.value, np.int64)
    return out


def serialize_example(values: dict[str, list[bytes] | np.ndarray]) -> bytes:
    """An Example of bytes lists, float lists (float arrays) and int64 lists (integer or bool arrays)."""
    example = example_class()()
    for key, value in values.items():
        feature = example.features.feature[key]
        if isinstance(value, list):
            feature.bytes_list.value.extend(value)
        elif np.issubdtype(np.asarray(value).dtype, np.floating):
            feature.float_list.value.extend(np.asarray(value, np.float32).ravel().tolist())
        else:
            feature.int64_list.value.extend(np.asarray(value, np.int64).ravel().tolist())
    return example.SerializeToString()
