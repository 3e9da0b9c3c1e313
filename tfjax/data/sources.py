"""Random-access sources of ``{"x": float32, "label": int32}`` records.

* :class:`ArraySource` — in-memory arrays;
* :class:`TFDSSource` — a TFDS data source (``tfds.data_source``, the
  array_record format) of a registry dataset, opened by :func:`open_source`
  (offline builders are generated on first use; a missing real dataset raises
  :class:`DatasetNotFoundError` at once, saying how to prepare it);
* :class:`Subset` / :func:`split_source` — a class-balanced validation split;
* :func:`labelled_subset_mask` / :func:`semi_labels` — CLOA's seeded,
  class-balanced labelled subset.

Every source has ``len``, ``[i]``, ``x_shape`` and ``labels``; real images
(uint8) are mapped to ``x = image / 255``.
"""

from __future__ import annotations

import contextlib
import os
from typing import Dict, Optional, Tuple

import numpy as np

from tfjax.data.registry import (
  DatasetNotFoundError,
  DatasetSpec,
  get_dataset_spec,
  open_user_source,
)

__all__ = [
  "ArraySource",
  "TFDSSource",
  "Subset",
  "open_source",
  "prepare_dataset",
  "source_labels",
  "split_source",
  "labelled_subset_mask",
  "semi_labels",
  "DatasetNotFoundError",
]


def _check_pos_int(value, what: str):
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
    raise ValueError(f"{what} must be a positive int, got {value!r}")


# ----------------------------------------------------------------------------
# Sources: random access to {"x", "label"} records
# ----------------------------------------------------------------------------
class ArraySource:
  """In-memory arrays as a random-access source (``len`` and ``[i]``).

  Args:
    x: ``[N, ...]`` examples (cast to float32).
    labels: int ``[N]`` class ids.
  """

  def __init__(self, x, labels):
    x = np.asarray(x, np.float32)
    labels = np.asarray(labels)
    if labels.ndim != 1 or len(labels) != len(x):
      raise ValueError(f"labels must be [N] with N = len(x) = {len(x)}, got shape {labels.shape}")
    if labels.size and not np.issubdtype(labels.dtype, np.integer):
      raise TypeError(f"labels must be integers, got dtype {labels.dtype}")
    self.x, self.labels = x, labels.astype(np.int32)

  def __len__(self) -> int:
    return len(self.x)

  def __getitem__(self, i) -> Dict[str, np.ndarray]:
    return {"x": self.x[i], "label": self.labels[i]}

  @property
  def x_shape(self) -> Tuple[int, ...]:
    return tuple(self.x.shape[1:])


class TFDSSource:
  """A TFDS data source whose records are mapped to ``{"x", "label"}``."""

  def __init__(self, spec: DatasetSpec, data_source):
    self.spec, self._source = spec, data_source
    self._labels = None

  def __len__(self) -> int:
    return len(self._source)

  def __getitem__(self, i) -> Dict[str, np.ndarray]:
    ex = self._source[int(i)]
    x = np.asarray(ex[self.spec.image_key])
    x = x.astype(np.float32) / 255.0 if x.dtype == np.uint8 else x.astype(np.float32)
    return {"x": x, "label": self._label(ex)}

  def _label(self, ex) -> np.int32:
    key = self.spec.label_key
    return np.int32(-1) if key is None else np.int32(ex[key])

  @property
  def x_shape(self) -> Tuple[int, ...]:
    return tuple(self[0]["x"].shape)

  @property
  def labels(self) -> np.ndarray:
    """All labels [N] (one pass over the records, kept: 4 bytes each)."""
    if self._labels is None:
      self._labels = np.fromiter(
        (self._label(self._source[i]) for i in range(len(self))), np.int32, count=len(self)
      )
    return self._labels


def _missing_message(spec: DatasetSpec, data_dir, err: Exception) -> str:
  name = spec.tfds_name.split("/")[0]
  return (
    f"dataset {spec.name!r} (TFDS {spec.tfds_name!r}) is not prepared as array_record under "
    f"{data_dir or '$TFDS_DATA_DIR / ~/tensorflow_datasets'} and downloading is disabled "
    f"(download=False). To fix it, either\n"
    f"  * on a machine with network: `tfds build {name} --file_format=array_record --data_dir=DIR` "
    f"or make_dataset(..., download=True, data_dir=DIR), then copy DIR here; or\n"
    f"  * point data_dir=... (or $TFDS_DATA_DIR) at an existing prepared copy.\n"
    f"(TFDS said: {err})"
  )


def require_tensorflow(what: str) -> None:
  """Raises one line when TensorFlow (the ``tfjax[tf]`` extra) is not installed."""
  import importlib.util

  if importlib.util.find_spec("tensorflow") is None:
    raise ImportError(
      f"{what} needs TensorFlow: install tfjax[tf] (pip install 'tfjax[tf]'), "
      "or prepare the data on another machine and set data_dir"
    )


def prepare_dataset(name: str, data_dir: Optional[str] = None, download: bool = False):
  """Return ``(spec, builder)`` of registry dataset ``name``, array_record format.

  Offline datasets are generated here if needed (no network). Real ones are
  downloaded only if ``download=True``; otherwise nothing happens here and
  a missing copy is reported by :func:`open_source`.
  """
  import tensorflow_datasets as tfds

  from tfjax.data import builders as _builders  # noqa: F401  (registers our TFDS builders)

  spec = get_dataset_spec(name)
  builder = tfds.builder(spec.tfds_name, data_dir=data_dir, file_format="array_record")
  with _absl_quiet():  # (TFDS warns of a version folder without dataset_info.json)
    prepared = builder.is_prepared()
  if download and not spec.offline and not prepared:
    require_tensorflow(f"downloading and preparing {name!r} (TFDS encodes its images with it)")
  if (spec.offline or download) and not prepared:
    with (
      _preparing(builder),
      _quiet_tfds(name, builder) if spec.offline else contextlib.nullcontext(),
    ):
      # Built again: another process may have prepared it meanwhile,
      # and a builder reads the splits on disk when it is created.
      builder = tfds.builder(spec.tfds_name, data_dir=data_dir, file_format="array_record")
      builder.download_and_prepare(file_format="array_record")  # no-op when prepared / mocked
  return spec, builder


@contextlib.contextmanager
def _quiet_tfds(name: str, builder):
  """One line instead of TFDS's output while an offline dataset is generated.

  Generating one takes seconds; TFDS's banner, progress bars and absl
  warnings about the not yet written folder would be most of what a first
  run prints.  Downloads of real datasets keep TFDS's progress bars.
  """
  import sys

  from tensorflow_datasets.core.utils import tqdm_utils

  print(
    f"preparing dataset {name} (generated here, once) in {builder.data_dir_root}",
    file=sys.stderr,
    flush=True,
  )
  bars = getattr(tqdm_utils, "_active", True)
  tqdm_utils.display_progress_bar(False)
  try:
    with _absl_quiet(), open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull):
      yield  # TFDS prints its banner to stdout
  finally:
    tqdm_utils.display_progress_bar(bars)


@contextlib.contextmanager
def _absl_quiet():
  """absl's warnings (TFDS logs through absl) held back; errors still shown."""
  import logging

  logger = logging.getLogger("absl")
  level = logger.level
  logger.setLevel(logging.ERROR)
  try:
    yield
  finally:
    logger.setLevel(level)


@contextlib.contextmanager
def _preparing(builder):
  """One process at a time prepares a dataset version in a data directory.

  TFDS writes into a temporary directory and renames it; two processes
  preparing one dataset into one fresh directory race on that rename (the
  loser fails with ``FileExistsError``).  An exclusive ``flock`` on
  ``DATA_DIR/.NAME-CONFIG-VERSION.lock`` makes the second wait until the
  first is done.  Data directories that are not local paths (``gs://``) or
  cannot hold the lock file are prepared without it.
  """
  root = str(builder.data_dir_root)
  if "://" in root:
    yield
    return
  try:
    import fcntl
  except ImportError:  # Windows: no lock
    yield
    return
  variant = os.path.relpath(str(builder.data_dir), root).replace(os.sep, "-")
  try:
    os.makedirs(root, exist_ok=True)
    f = open(os.path.join(root, f".{variant}.lock"), "a")
  except OSError:
    yield
    return
  with f:
    fcntl.flock(f, fcntl.LOCK_EX)  # waits for the process preparing it
    try:
      yield
    finally:
      fcntl.flock(f, fcntl.LOCK_UN)


def open_source(
  name: str,
  split: str,
  *,
  data_dir: Optional[str] = None,
  download: bool = False,
  take: Optional[int] = None,
  spec: Optional[DatasetSpec] = None,
):
  """A random-access source of ``split`` of dataset ``name``.

  ``name``: a registry name or the user's data (``tfds:``, ``folder:``,
  ``npz:``; :mod:`tfjax.data.user`), whose resolved ``spec`` may be passed
  (for a folder, it fixes ``image_size``).  ``take`` keeps the first
  ``take`` records.  Raises :class:`DatasetNotFoundError` at once when the
  data is not on disk.
  """
  if take is not None:
    _check_pos_int(take, "take")
  spec = spec or get_dataset_spec(name, data_dir=data_dir)
  if spec.origin != "registry":
    out = open_user_source(spec, split)
  else:
    spec, builder = prepare_dataset(name, data_dir=data_dir, download=download)
    try:
      source = builder.as_data_source(split=split)
    except (KeyError, AssertionError, FileNotFoundError, NotImplementedError, ValueError) as e:
      raise DatasetNotFoundError(_missing_message(spec, data_dir, e)) from None
    out = TFDSSource(spec, source)
  if take is not None and take < len(out):
    return _Head(out, take)
  return out


class _Head:
  """The first ``n`` records of a source."""

  def __init__(self, source, n: int):
    self._source, self._n = source, n

  def __len__(self):
    return self._n

  def __getitem__(self, i):
    if not 0 <= i < self._n:
      raise IndexError(i)
    return self._source[i]

  @property
  def x_shape(self):
    return self._source.x_shape

  @property
  def labels(self):
    return np.asarray(self._source.labels[: self._n])


class Subset:
  """The records ``indices`` of a source, as a source of their own."""

  def __init__(self, source, indices):
    self._source, self.indices = source, np.asarray(indices, np.int64)

  def __len__(self):
    return len(self.indices)

  def __getitem__(self, i):
    return self._source[int(self.indices[i])]

  @property
  def x_shape(self):
    return self._source.x_shape

  @property
  def labels(self):
    return source_labels(self._source)[self.indices]


def split_source(source, validation_fraction: float, seed: int = 0):
  """``(train, validation)`` subsets of a training source, seeded and class-balanced.

  The validation subset takes ``validation_fraction`` of each class
  (:func:`labelled_subset_mask`'s rule); choose hyper-parameters on it,
  never on the test split.
  """
  if not 0.0 < validation_fraction < 1.0:
    raise ValueError(f"validation_fraction must be in (0, 1), got {validation_fraction}")
  held_out = labelled_subset_mask(source_labels(source), validation_fraction, seed)
  return Subset(source, np.flatnonzero(~held_out)), Subset(source, np.flatnonzero(held_out))


def source_labels(source) -> np.ndarray:
  """All labels of a source, int32 [N]."""
  labels = getattr(source, "labels", None)
  if labels is None:
    labels = np.array([source[i]["label"] for i in range(len(source))], np.int32)
  return np.asarray(labels, np.int32)


def labelled_subset_mask(labels, fraction: float, seed: int) -> np.ndarray:
  """Class-balanced, seeded choice of a labelled subset: bool ``[N]``.

  Class ``c`` with ``n_c`` examples gets ``m_c = floor(fraction * n_c + 0.5)``
  labelled examples (round half up, at least 1 when ``fraction > 0``);
  the same (labels, fraction, seed) give the same mask.

  Example::

      >>> labelled_subset_mask(np.array([0, 0, 1, 1, 1, 1]), 0.5, seed=0).sum()
      3
  """
  from tfjax.finetune import balanced_subset  # the one implementation of the rule

  labels = np.asarray(labels)
  fraction = float(fraction)
  if not 0.0 <= fraction <= 1.0:
    raise ValueError(f"fraction must be in [0, 1], got {fraction}")
  mask = np.zeros(labels.shape, bool)
  if fraction > 0.0 and labels.size:
    mask[balanced_subset(labels, fraction, seed)] = True
  elif labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
    balanced_subset(labels, 1.0, seed)  # raises the shape / dtype error
  return mask


def semi_labels(labels, fraction: Optional[float], seed: int) -> Optional[np.ndarray]:
  """int32 ``[N]``: the label inside the labelled subset, −1 outside (None: no labels)."""
  if fraction is None:
    return None
  labels = np.asarray(labels)
  return np.where(labelled_subset_mask(labels, fraction, seed), labels, -1).astype(np.int32)
