"""``folder:PATH`` datasets: images in class folders, converted once to ``.npy``.

See :mod:`tfjax.data.user` for the layout, the split and the cache.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from typing import Dict, List, Optional, Tuple

import numpy as np

from tfjax.data.registry import DatasetNotFoundError, DatasetSpec
from tfjax.data.sources import labelled_subset_mask

__all__ = [
  "FOLDER_TEST_FRACTION",
  "IMAGE_SUFFIXES",
  "folder_arrays",
  "folder_spec",
  "MemmapImageSource",
]

FOLDER_TEST_FRACTION = 0.2  # of each class, when a folder has no test/ sub-folder
FOLDER_SPLIT_SEED = 0
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
_GRAY_MODES = ("1", "L", "LA", "I", "I;16", "F")
_CACHE_VERSION = 1


def _visible(root: str) -> List[str]:
  return sorted(n for n in os.listdir(root) if not n.startswith("."))


def _images_in(folder: str) -> List[str]:
  return [
    os.path.join(folder, n)
    for n in _visible(folder)
    if n.lower().endswith(IMAGE_SUFFIXES) and os.path.isfile(os.path.join(folder, n))
  ]


def _scan_split(root: str, unlabelled: bool) -> Tuple[List[str], List[Optional[str]]]:
  """``(image paths, class names)`` of one split folder (class None when unlabelled)."""
  classes = [n for n in _visible(root) if os.path.isdir(os.path.join(root, n))]
  loose = _images_in(root)
  if unlabelled:
    paths = loose + [p for c in classes for p in _images_in(os.path.join(root, c))]
    if not paths:
      raise ValueError(f"folder:{root}: holds no images ({', '.join(IMAGE_SUFFIXES)})")
    return paths, [None] * len(paths)
  if not classes:
    raise ValueError(
      f"folder:{root}: no class sub-folders (expected {root}/<class>/<image>); "
      "for images without classes set --config.unlabelled=True"
    )
  if loose:
    raise ValueError(
      f"folder:{root}: images outside the class folders ({os.path.basename(loose[0])}, "
      f"...); move them into a class folder"
    )
  paths, names = [], []
  for c in classes:
    found = _images_in(os.path.join(root, c))
    if not found:
      raise ValueError(
        f"folder:{root}: class folder {c!r} holds no images ({', '.join(IMAGE_SUFFIXES)})"
      )
    paths += found
    names += [c] * len(found)
  return paths, names


def _scan_folder(root: str, unlabelled: bool):
  """``{split: (paths, class names)}``; ``test`` is None without a test/ folder."""
  if not os.path.isdir(root):
    raise DatasetNotFoundError(f"folder:{root}: no such directory")
  if os.path.isdir(os.path.join(root, "train")):
    test = os.path.join(root, "test")
    return {
      "train": _scan_split(os.path.join(root, "train"), unlabelled),
      "test": _scan_split(test, unlabelled) if os.path.isdir(test) else None,
    }
  return {"train": _scan_split(root, unlabelled), "test": None}


def _cache_key(root: str, scanned, image_size: int, unlabelled: bool) -> str:
  h = hashlib.sha256(
    json.dumps([_CACHE_VERSION, os.path.abspath(root), image_size, unlabelled]).encode()
  )
  for split in ("train", "test"):
    for p in (scanned[split] or ([], []))[0]:
      st = os.stat(p)
      h.update(f"{split}:{os.path.relpath(p, root)}:{st.st_size}:{st.st_mtime_ns};".encode())
  return h.hexdigest()[:24]


def _decode(paths: List[str], image_size: int, rgb: bool) -> np.ndarray:
  from PIL import Image

  out = np.empty((len(paths), image_size, image_size, 3 if rgb else 1), np.uint8)
  for i, p in enumerate(paths):
    try:
      with Image.open(p) as im:
        im = im.convert("RGB" if rgb else "L").resize((image_size, image_size), Image.BILINEAR)
        out[i] = np.asarray(im, np.uint8).reshape(out.shape[1:])
    except Exception as e:  # noqa: BLE001  (one line naming the file)
      raise ValueError(f"folder: cannot read image {p} ({type(e).__name__}: {e})") from None
  return out


def _any_colour(paths: List[str]) -> bool:
  from PIL import Image

  for p in paths:
    try:
      with Image.open(p) as im:  # reads the header only
        if im.mode not in _GRAY_MODES:
          return True
    except Exception as e:  # noqa: BLE001
      raise ValueError(f"folder: cannot read image {p} ({type(e).__name__}: {e})") from None
  return False


def _cache_root(root: str) -> str:
  here = os.path.join(root, ".tfjax_cache")
  if os.access(root, os.W_OK):
    return here
  base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return os.path.join(base, "tfjax", "folders")


def folder_arrays(root: str, image_size: int = 32, unlabelled: bool = False) -> str:
  """Converts a ``folder:`` dataset once; returns the directory of its arrays.

  The directory holds ``x_train.npy`` / ``x_test.npy`` (uint8
  ``[N, S, S, C]``), ``y_train.npy`` / ``y_test.npy`` (int32, −1 when
  unlabelled) and ``meta.json`` (classes, channels).  A second call with the
  same images and ``image_size`` returns it without decoding.
  """
  try:
    import PIL  # noqa: F401
  except ImportError:
    raise ImportError("folder: datasets decode images with Pillow: pip install pillow") from None
  if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
    raise ValueError(f"image_size must be a positive int, got {image_size!r}")
  root = os.path.abspath(os.path.expanduser(root))
  scanned = _scan_folder(root, unlabelled)
  out = os.path.join(_cache_root(root), _cache_key(root, scanned, image_size, unlabelled))
  if os.path.exists(os.path.join(out, "meta.json")):
    return out
  train_paths, train_names = scanned["train"]
  classes = sorted(set(train_names) - {None})
  if scanned["test"] is not None:
    unknown = sorted(set(scanned["test"][1]) - set(train_names))
    if unknown:
      raise ValueError(f"folder:{root}: test/ has class folder {unknown[0]!r} that train/ lacks")
  all_paths = train_paths + (scanned["test"][0] if scanned["test"] else [])
  rgb = _any_colour(all_paths)
  index = {c: i for i, c in enumerate(classes)}
  y = np.array([index.get(c, -1) for c in train_names], np.int32)
  x = _decode(train_paths, image_size, rgb)
  if scanned["test"] is None:  # seeded, class-balanced hold-out (all -1: one class)
    held = labelled_subset_mask(np.maximum(y, 0), FOLDER_TEST_FRACTION, FOLDER_SPLIT_SEED)
    arrays = {"x_train": x[~held], "y_train": y[~held], "x_test": x[held], "y_test": y[held]}
  else:
    test_paths, test_names = scanned["test"]
    arrays = {
      "x_train": x,
      "y_train": y,
      "x_test": _decode(test_paths, image_size, rgb),
      "y_test": np.array([index.get(c, -1) for c in test_names], np.int32),
    }
  os.makedirs(os.path.dirname(out), exist_ok=True)
  tmp = tempfile.mkdtemp(prefix=".tmp-", dir=os.path.dirname(out))
  for k, v in arrays.items():
    np.save(os.path.join(tmp, f"{k}.npy"), v)
  with open(os.path.join(tmp, "meta.json"), "w") as f:
    json.dump(
      {
        "root": root,
        "image_size": image_size,
        "classes": classes,
        "channels": 3 if rgb else 1,
        "labelled": not unlabelled,
        "test_folder": scanned["test"] is not None,
      },
      f,
    )
  try:
    os.rename(tmp, out)  # atomic: a concurrent conversion of the same key wins once
  except OSError:
    shutil.rmtree(tmp, ignore_errors=True)
  return out


def folder_spec(name: str, root: str, image_size: int, unlabelled: bool) -> DatasetSpec:
  out = folder_arrays(root, image_size, unlabelled)
  with open(os.path.join(out, "meta.json")) as f:
    meta = json.load(f)
  n_train = len(np.load(os.path.join(out, "y_train.npy"), mmap_mode="r"))
  n_test = len(np.load(os.path.join(out, "y_test.npy"), mmap_mode="r"))
  return DatasetSpec(
    name,
    "",
    "image",
    (image_size, image_size, meta["channels"]),
    len(meta["classes"]),
    num_train=n_train,
    num_test=n_test,
    origin="folder",
    path=out,
    labelled=meta["labelled"],
  )


class MemmapImageSource:
  """uint8 images ``[N, H, W, C]`` memory-mapped from ``.npy``; ``x = image / 255``."""

  def __init__(self, x_path: str, y_path: str):
    self._x = np.load(x_path, mmap_mode="r")
    self.labels = np.asarray(np.load(y_path), np.int32)

  def __len__(self) -> int:
    return len(self._x)

  def __getitem__(self, i) -> Dict[str, np.ndarray]:
    return {"x": np.asarray(self._x[int(i)], np.float32) / 255.0, "label": self.labels[int(i)]}

  @property
  def x_shape(self) -> Tuple[int, ...]:
    return tuple(self._x.shape[1:])
