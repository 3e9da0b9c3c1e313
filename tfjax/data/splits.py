"""A run's two splits: on disk, opened, in memory.

* :func:`check_prepared` — a registry dataset is prepared on disk (checked
  before any data is read, by :func:`tfjax.config.validate`);
* :func:`open_splits` — ``(train source, evaluation source)`` of a config,
  from the registry or from data a caller passes, with the held-out
  ``validation_fraction``;
* :func:`in_memory_splits` — small sources read into memory once per
  process (``config.input.in_memory_mb``);
* :func:`num_classes` — the class count a run trains with.
"""

from __future__ import annotations

import contextlib
import glob
import os
import sys
import weakref
from typing import Optional

from tfjax.data import pipeline
from tfjax.data.registry import DatasetNotFoundError, DatasetSpec

__all__ = ["check_prepared", "in_memory_splits", "num_classes", "open_splits", "tfds_mocked"]


def tfds_mocked() -> bool:
  """True inside ``tfds.testing.mock_data`` (no files on disk there)."""
  if "tensorflow_datasets" not in sys.modules:
    return False
  try:
    from tensorflow_datasets.core import dataset_builder
  except ImportError:
    return False
  fn = getattr(dataset_builder.DatasetBuilder, "as_data_source", None)
  return getattr(fn, "__module__", "").startswith("tensorflow_datasets.testing")


def _data_dir(data_dir: Optional[str]) -> str:
  return data_dir or os.environ.get("TFDS_DATA_DIR") or os.path.join("~", "tensorflow_datasets")


def check_prepared(spec: DatasetSpec, data_dir: Optional[str] = None) -> None:
  """Checks, without reading data, that a registry dataset is on disk.

  Real (non-offline) TFDS datasets must be prepared as ``array_record``
  under the data directory (``data_dir``, else ``$TFDS_DATA_DIR``, else
  ``~/tensorflow_datasets``); otherwise :class:`DatasetNotFoundError`
  names that directory and how to prepare it.  Offline datasets are
  generated on first use; remote ``gs://`` directories and
  ``tfds.testing.mock_data`` are not checked.
  """
  if spec.offline or spec.origin != "registry" or tfds_mocked():
    return  # generated here, or the user's data (checked when its spec is resolved)
  data_dir = _data_dir(data_dir)
  if "://" in data_dir:
    return
  root = os.path.join(os.path.expanduser(data_dir), *spec.tfds_name.split("/"))
  base = spec.tfds_name.split("/")[0]
  missing = [
    s
    for s in (spec.train_split, spec.test_split)
    if not glob.glob(os.path.join(root, "*", f"{base}-{s.split('[')[0]}.array_record*"))
  ]
  if missing:
    raise DatasetNotFoundError(
      f"dataset {spec.name!r} is not prepared under data_dir "
      f"{data_dir!r} (no array_record files of its "
      f"{'/'.join(missing)} split in {root}): on a machine with "
      f"network run `tfds build {base} --file_format=array_record "
      f"--data_dir=DIR`, then set --config.data_dir=DIR (or "
      "$TFDS_DATA_DIR)"
    )


def open_splits(config, spec: DatasetSpec, data=None):
  """``(train source, evaluation source)``: ``data``, or the registry dataset.

  With ``config.validation_fraction`` the evaluation source is that held-out
  part of the training split (and training uses the rest), not the test split.
  Two sources given as ``data`` are taken as they are (already split).
  """
  if data is not None and len(data) == 2:
    return tuple(data)
  if data is not None:
    x_train, y_train, x_test, y_test = data
    splits = pipeline.ArraySource(x_train, y_train), pipeline.ArraySource(x_test, y_test)
  else:
    splits = tuple(
      pipeline.open_source(config.dataset, split, data_dir=config.data_dir, spec=spec)
      for split in (spec.train_split, spec.test_split)
    )
  if config.get("validation_fraction"):
    return pipeline.split_source(splits[0], config.validation_fraction, seed=0)
  return splits


# Sources already read into memory, by the object a caller passed (a job
# passes the same sources to every run of its seeds): read once.
_READ = weakref.WeakKeyDictionary()


def in_memory_splits(config, *sources):
  """The sources read into memory when small (``config.input.in_memory_mb``)."""
  limit = int(config.get("input", {}).get("in_memory_mb", 0)) << 20
  out = []
  for source in sources:
    try:
      copy = _READ.get(source)
    except TypeError:  # not weak-referable: read it again
      copy = None
    if copy is None or copy.x.nbytes > limit:
      copy = pipeline.in_memory(source, limit)
      if copy is not source:
        with contextlib.suppress(TypeError):
          _READ[source] = copy
    out.append(copy)
  return tuple(out)


def num_classes(spec: DatasetSpec, train_source, data) -> int:
  """The registry's class count; with user ``data``, at least its labels' range."""
  if data is None:
    return spec.num_classes
  return max(spec.num_classes, int(pipeline.source_labels(train_source).max()) + 1)
