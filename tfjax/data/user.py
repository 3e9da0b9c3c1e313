"""The user's data as datasets: ``tfds:NAME``, ``folder:PATH`` and ``npz:PATH``.

``config.dataset`` names data the registry does not list:

* ``tfds:NAME[/CONFIG]`` (or a bare TFDS name outside the registry): any TFDS
  dataset prepared in the ``array_record`` file format under ``data_dir``; its
  kind, shape and classes come from its ``DatasetInfo`` (an image or tensor
  feature and a ``ClassLabel``).  Images of varying size are resized to
  ``image_size``.  A dataset prepared only as tfrecord is refused with the
  one command that converts it in place (``python -m tfjax.data.convert
  VERSION_DIR``, :mod:`tfjax.data.convert`; no TensorFlow needed).
* ``folder:PATH``: images in one sub-folder per class (``PATH/<class>/*``), or
  ``PATH/train/<class>/*`` and ``PATH/test/<class>/*``; without ``test/`` a
  seeded, class-balanced :data:`FOLDER_TEST_FRACTION` of each class is the
  test split.  Decoded once with Pillow, resized to ``image_size`` x
  ``image_size`` (aspect ratio not kept), written as uint8 ``.npy`` arrays
  under ``PATH/.tfjax_cache/<key>`` (``<key>`` hashes the path, every
  image's name, size and mtime, and ``image_size``; where ``PATH`` is not
  writable, ``~/.cache/tfjax``) and read back memory-mapped.  ``.npy`` rather
  than array_record: the examples are fixed-size arrays, so a memory map
  gives random access with NumPy alone.  Colour and grayscale images in one
  folder are all converted to RGB (grayscale replicated); a folder of
  grayscale images only keeps one channel.
* ``npz:PATH``: a ``.npz`` with ``x_train, y_train, x_test, y_test``; the kind
  follows from the rank of ``x`` (``[N, H, W, C]`` image, ``[N, L, 1]``
  signal, ``[N, d]`` vector), uint8 ``x`` is mapped to ``x / 255``, the class
  count is the largest label + 1 (every class below it must occur in
  ``y_train``).

Unlabelled data (an ``npz`` without ``y_train``; a folder of images without
class folders, or a TFDS dataset without a ``ClassLabel``, with
``config.unlabelled=True``) trains self-supervised methods only; its labels
read as −1, and the probes, which need labels, are skipped.

Every wrong layout raises one line naming the file or folder.  The folder
route lives in :mod:`tfjax.data.folder`, the TFDS one in
:mod:`tfjax.data.tfds_prepared`; :func:`user_spec` and
:func:`open_user_source` dispatch to them.
"""

from __future__ import annotations

import functools
import os
from typing import Dict, Optional, Tuple

import numpy as np

from tfjax.data.registry import DatasetNotFoundError, DatasetSpec, data_kind, set_user_data

__all__ = ["user_spec", "open_user_source", "is_tfds_name", "load_npz", "data_kind", "NPZ_KEYS"]

NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")


def _num_classes(y_train, y_test, where: str) -> int:
  """Largest label + 1, after checking every class below it occurs in ``y_train``."""
  for key, y in (("y_train", y_train), ("y_test", y_test)):
    if y.size and y.min() < 0:
      raise ValueError(f"{where}: {key} holds label {int(y.min())}; labels must be class ids >= 0")
  k = int(max(y_train.max(initial=-1), y_test.max(initial=-1))) + 1
  present = np.bincount(y_train, minlength=k)
  empty = np.flatnonzero(present == 0)
  if empty.size:
    raise ValueError(
      f"{where}: class {int(empty[0])} has no examples in y_train "
      f"(class ids must run 0..{k - 1} without gaps)"
    )
  return k


# ----------------------------------------------------------------------------
# npz
# ----------------------------------------------------------------------------
def _stat_key(path: str) -> Tuple[str, int, int]:
  st = os.stat(path)
  return os.path.abspath(path), st.st_mtime_ns, st.st_size


def load_npz(path: str) -> Dict[str, np.ndarray]:
  """The checked arrays of an ``npz:`` dataset: ``x_*`` float32, ``y_*`` int32.

  ``y_train`` absent: unlabelled (``y_*`` are −1).  Raises one-line
  ``ValueError`` / ``DatasetNotFoundError`` naming ``path``.
  """
  if not os.path.isfile(path):
    raise DatasetNotFoundError(f"npz:{path}: no such file")
  return _load_npz(*_stat_key(path))


@functools.lru_cache(maxsize=4)
def _load_npz(path: str, mtime_ns: int, size: int) -> Dict[str, np.ndarray]:
  del mtime_ns, size  # the cache key: a changed file is read again
  try:
    with np.load(path, allow_pickle=False) as f:
      raw = {k: f[k] for k in f.files}
  except Exception as e:  # noqa: BLE001  (any unreadable file: one line)
    raise ValueError(f"npz:{path}: not a readable .npz file ({type(e).__name__}: {e})") from None
  labelled = "y_train" in raw
  need = NPZ_KEYS if labelled else ("x_train", "x_test")
  missing = [k for k in need if k not in raw]
  if missing:
    raise ValueError(
      f"npz:{path}: missing key {missing[0]!r} (needs x_train, y_train, x_test, "
      f"y_test; without y_train the data is unlabelled); has {sorted(raw)}"
    )
  out = {}
  for split in ("train", "test"):
    x = raw[f"x_{split}"]
    if not (np.issubdtype(x.dtype, np.number) and x.ndim >= 2):
      raise ValueError(
        f"npz:{path}: x_{split} must be a numeric array [N, ...], "
        f"got dtype {x.dtype}, shape {x.shape}"
      )
    x = x.astype(np.float32) / 255.0 if x.dtype == np.uint8 else x.astype(np.float32)
    if not np.isfinite(x).all():
      raise ValueError(f"npz:{path}: x_{split} holds NaN or infinite values")
    out[f"x_{split}"] = x
    y = raw.get(f"y_{split}") if labelled else None
    if y is None:
      out[f"y_{split}"] = np.full(len(x), -1, np.int32)
      continue
    if y.shape != (len(x),):
      raise ValueError(
        f"npz:{path}: y_{split} has shape {y.shape}, but x_{split} holds "
        f"{len(x)} examples (needs [{len(x)}])"
      )
    if not np.issubdtype(y.dtype, np.integer):
      raise ValueError(f"npz:{path}: y_{split} must hold integer class ids, got dtype {y.dtype}")
    out[f"y_{split}"] = y.astype(np.int32)
  if out["x_train"].shape[1:] != out["x_test"].shape[1:]:
    raise ValueError(
      f"npz:{path}: x_train examples have shape {out['x_train'].shape[1:]} but "
      f"x_test examples {out['x_test'].shape[1:]}"
    )
  if len(out["x_train"]) == 0:
    raise ValueError(f"npz:{path}: x_train holds no examples")
  out["labelled"] = labelled
  return out


def _npz_spec(name: str, path: str) -> DatasetSpec:
  d = load_npz(path)
  shape = d["x_train"].shape[1:]
  kind = data_kind(shape, f"npz:{path}")
  k = _num_classes(d["y_train"], d["y_test"], f"npz:{path}") if d["labelled"] else 0
  return DatasetSpec(
    name,
    "",
    kind,
    shape,
    k,
    num_train=len(d["x_train"]),
    num_test=len(d["x_test"]),
    origin="npz",
    path=path,
    labelled=d["labelled"],
  )


# ----------------------------------------------------------------------------
# One entry point
# ----------------------------------------------------------------------------
def user_spec(
  name: str, *, data_dir: Optional[str] = None, image_size: int = 32, unlabelled: bool = False
) -> DatasetSpec:
  """The :class:`DatasetSpec` of ``tfds:``, ``folder:`` or ``npz:`` data (or a bare TFDS name).

  Reads the description from disk and checks the layout (a folder is
  converted here, once).  Raises one line naming the path.
  """
  if name.startswith("npz:"):
    return _npz_spec(name, os.path.expanduser(name[len("npz:") :]))
  if name.startswith("folder:"):
    from tfjax.data.folder import folder_spec

    return folder_spec(name, os.path.expanduser(name[len("folder:") :]), image_size, unlabelled)
  from tfjax.data.tfds_prepared import tfds_spec

  return tfds_spec(name, data_dir, image_size, unlabelled)


def open_user_source(spec: DatasetSpec, split: str):
  """A random-access source of ``split`` (``spec.train_split`` or ``spec.test_split``)."""
  from tfjax.data.sources import ArraySource

  part = "train" if split == spec.train_split else "test" if split == spec.test_split else None
  if spec.origin == "tfds":
    from tfjax.data.tfds_prepared import open_tfds_source

    return open_tfds_source(spec, split)
  if part is None:
    raise ValueError(f"{spec.name}: no split {split!r} (has {spec.train_split}, {spec.test_split})")
  if spec.origin == "npz":
    d = load_npz(spec.path)
    return ArraySource(d[f"x_{part}"], d[f"y_{part}"])
  if spec.origin == "folder":
    from tfjax.data.folder import MemmapImageSource

    return MemmapImageSource(
      os.path.join(spec.path, f"x_{part}.npy"), os.path.join(spec.path, f"y_{part}.npy")
    )
  raise ValueError(f"{spec.name}: unknown origin {spec.origin!r}")


def is_tfds_name(name: str, data_dir: Optional[str] = None) -> bool:
  """True for a bare TFDS name outside the registry (see :mod:`tfjax.data.tfds_prepared`)."""
  from tfjax.data.tfds_prepared import is_tfds_name as known

  return known(name, data_dir)


def _resolve(name: str, *, data_dir: Optional[str], image_size: int, unlabelled: bool):
  """The user's data of ``name`` (``tfds:``, ``folder:``, ``npz:`` or a bare TFDS
  name), or None for a name that is none of these."""
  from tfjax.data.registry import USER_PREFIXES

  if name.startswith(USER_PREFIXES) or is_tfds_name(name, data_dir):
    return user_spec(name, data_dir=data_dir, image_size=image_size, unlabelled=unlabelled)
  return None


# The registry and the sources reach the user's data through these two
# (registered when tfjax.data is imported), so they import nothing above them.
set_user_data(_resolve, open_user_source)
