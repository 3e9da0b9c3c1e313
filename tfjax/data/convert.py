"""Converts a TFDS dataset prepared as tfrecord to array_record, without TensorFlow.

grain reads TFDS data through ``tfds.data_source``, which needs the
array_record file format.  A dataset prepared in TFDS's default tfrecord
format is converted once, in place::

    python -m tfjax.data.convert ~/tensorflow_datasets/stl10/1.0.0

Both formats hold the same serialized ``tf.train.Example`` records, so the
conversion copies each record's bytes from the tfrecord shards (a plain
length-prefixed framing, read here with the standard library) into
array_record shards of the same names and lengths, then lists array_record in
``dataset_info.json`` beside tfrecord (the tfrecord files stay, for
``tfds.load``).  TFDS's own ``tfds convert_format`` does the same but imports
TensorFlow and Apache Beam.
"""

from __future__ import annotations

import glob
import json
import os
import struct
import sys
from typing import Iterator

__all__ = ["read_tfrecord", "convert_tfrecord_dir"]


def read_tfrecord(path: str) -> Iterator[bytes]:
  """The records of one tfrecord file, in order (CRCs are not checked).

  Framing of each record: uint64 length, uint32 CRC of the length, the
  ``length`` bytes, uint32 CRC of the bytes (little-endian).
  """
  with open(path, "rb") as f:
    while True:
      head = f.read(12)
      if not head:
        return
      if len(head) < 12:
        raise ValueError(f"{path}: truncated tfrecord (a record header of {len(head)} bytes)")
      (length,) = struct.unpack("<Q", head[:8])
      data = f.read(length)
      if len(data) < length or len(f.read(4)) < 4:
        raise ValueError(f"{path}: truncated tfrecord (a record of {length} bytes is cut short)")
      yield data


def convert_tfrecord_dir(version_dir: str) -> int:
  """Writes array_record shards beside the tfrecord shards of a prepared dataset.

  ``version_dir``: ``DATA_DIR/NAME[/CONFIG]/VERSION`` (holds
  ``dataset_info.json``).  Returns the number of records written.  Raises a
  one-line ``ValueError`` naming the directory when it holds no tfrecord
  dataset or a shard's length disagrees with ``dataset_info.json``.
  """
  from array_record.python.array_record_module import ArrayRecordWriter

  info_path = os.path.join(version_dir, "dataset_info.json")
  if not os.path.isfile(info_path):
    raise ValueError(f"{version_dir}: no dataset_info.json (pass DATA_DIR/NAME[/CONFIG]/VERSION)")
  with open(info_path) as f:
    info = json.load(f)
  formats = [info.get("fileFormat", "tfrecord")] + info.get("alternativeFileFormats", [])
  if "array_record" in formats:
    return 0
  if "tfrecord" not in formats:
    raise ValueError(f"{version_dir}: holds {formats[0]}, not tfrecord")
  total = 0
  for split in info.get("splits", []):
    shards = sorted(glob.glob(os.path.join(version_dir, f"*-{split['name']}.tfrecord-*")))
    expected = [int(n) for n in split.get("shardLengths", [])]
    if len(shards) != len(expected):
      raise ValueError(
        f"{version_dir}: split {split['name']!r} has {len(shards)} tfrecord "
        f"shards, dataset_info.json lists {len(expected)}"
      )
    for shard, want in zip(shards, expected):
      out = shard.replace(".tfrecord-", ".array_record-")
      writer = ArrayRecordWriter(out + ".tmp", "group_size:1")
      count = 0
      for record in read_tfrecord(shard):
        writer.write(record)
        count += 1
      writer.close()
      if count != want:
        os.remove(out + ".tmp")
        raise ValueError(f"{shard}: {count} records, dataset_info.json says {want}")
      os.replace(out + ".tmp", out)
      total += count
  info["alternativeFileFormats"] = info.get("alternativeFileFormats", []) + ["array_record"]
  with open(info_path + ".tmp", "w") as f:
    json.dump(info, f, indent=2)
  os.replace(info_path + ".tmp", info_path)
  return total


def main(argv=None) -> int:
  argv = sys.argv[1:] if argv is None else argv
  if len(argv) != 1:
    print("usage: python -m tfjax.data.convert DATA_DIR/NAME[/CONFIG]/VERSION", file=sys.stderr)
    return 2
  try:
    n = convert_tfrecord_dir(argv[0])
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  print(
    f"{argv[0]}: {n} records written as array_record"
    if n
    else f"{argv[0]}: already holds array_record"
  )
  return 0


if __name__ == "__main__":
  sys.exit(main())
