"""Checks of data a caller passes (arrays or sources), cheap and before any compute.

:func:`tfjax.config.validate` calls :func:`check_data` for the ``data=`` of
:func:`tfjax.train.train_and_evaluate`: finite values within
:data:`MAX_ABS_INPUT`, non-empty splits with the same shape per example,
integer labels >= 0, one label per example.  Each message names the array
(``x_train``, ``y_test``, ...) and, for a bad value, the first example.
"""

from __future__ import annotations

import math
from typing import Optional, Tuple

import numpy as np

__all__ = ["MAX_ABS_INPUT", "check_data"]

# Inputs beyond this magnitude overflow float32 in the first layers.
MAX_ABS_INPUT = 1e30


def _held_out(labels, fraction: Optional[float]) -> int:
  """Examples ``validation_fraction`` holds out of ``labels`` (the rule of
  :func:`tfjax.finetune.balanced_subset`: per class round half up, >= 1)."""
  if not fraction:
    return 0
  counts = np.unique(labels, return_counts=True)[1]
  return int(sum(min(n, max(1, math.floor(fraction * n + 0.5))) for n in counts))


def check_data(
  data, validation_fraction: Optional[float] = None, labelled: bool = True
) -> Tuple[int, Optional[int]]:
  """Checks data given as arrays or sources; ``(training examples, classes)``.

  ``data``: ``(x_train, y_train, x_test, y_test)`` arrays, or two sources
  ``(train, test)`` already split (in-memory ones, with ``x`` and
  ``labels``, are checked whole; others by size and shape, without reading
  records).  The training examples exclude those ``validation_fraction``
  holds out of arrays; the classes are those of the training labels (None
  when they are not in memory; None for unlabelled data, ``labelled``
  False, whose labels are all -1).  Raises ValueError naming the array.
  """

  if len(data) == 2:  # two sources, already split: in-memory ones are checked whole
    train, test = data
    shapes = {"x_train": tuple(train.x_shape), "x_test": tuple(test.x_shape)}
    named = {
      "x_train": (getattr(train, "x", None), getattr(train, "labels", None)),
      "x_test": (getattr(test, "x", None), getattr(test, "labels", None)),
    }
    sizes = {"x_train": len(train), "x_test": len(test)}
    held = 0
  elif len(data) == 4:
    x_train, y_train, x_test, y_test = (np.asarray(a) for a in data)
    named = {"x_train": (x_train, y_train), "x_test": (x_test, y_test)}
    shapes = {k: tuple(x.shape[1:]) for k, (x, _) in named.items()}
    sizes = {k: len(x) if x.ndim else 0 for k, (x, _) in named.items()}
    for key, (x, y) in named.items():
      ykey = "y" + key[1:]
      if x.ndim < 1:
        raise ValueError(f"{key} must be an array [N, ...], got shape {x.shape}")
      if len(x) == 0:
        raise ValueError(f"{key} is empty (0 examples)")
      if y.ndim != 1 or len(y) != len(x):
        raise ValueError(f"{ykey} must be [N] with N = len({key}) = {len(x)}, got shape {y.shape}")
    held = _held_out(y_train, validation_fraction)
  else:
    raise ValueError(
      "data must be (x_train, y_train, x_test, y_test) arrays "
      f"or (train, test) sources, got {len(data)} items"
    )
  for key, n in sizes.items():
    if n == 0:
      raise ValueError(f"{key} is empty (0 examples)")
  if shapes["x_test"] != shapes["x_train"]:
    raise ValueError(
      f"x_test has shape {list(shapes['x_test'])} per example, x_train {list(shapes['x_train'])}"
    )
  for key, (x, y) in named.items():
    if x is not None:
      _check_finite(key, x)
    if y is not None and (labelled or not (np.asarray(y) == -1).all()):
      _check_labels_array("y" + key[1:], y)
  labels = named["x_train"][1] if labelled else None
  classes = len(np.unique(labels)) if labels is not None else None
  return sizes["x_train"] - held, classes


def _check_finite(key: str, x) -> None:
  """Every entry of ``x`` finite and within ``MAX_ABS_INPUT`` (in row chunks:
  no full-size temporary)."""
  if not (np.issubdtype(x.dtype, np.number) or x.dtype == bool):
    raise ValueError(f"{key} must hold numbers, got dtype {x.dtype}")
  rows = x.reshape(len(x), -1)
  for start in range(0, len(rows), 4096):
    chunk = rows[start : start + 4096]
    bad = ~(np.abs(chunk) <= MAX_ABS_INPUT).all(axis=1)
    if bad.any():
      first = int(np.flatnonzero(bad)[0])
      what = (
        "NaN/inf"
        if not np.isfinite(chunk[first]).all()
        else f"values beyond ±{MAX_ABS_INPUT:g} (scale the inputs)"
      )
      raise ValueError(f"{key} holds {what} (first at index {start + first})")


def _check_labels_array(key: str, y) -> None:
  if not np.issubdtype(y.dtype, np.integer):
    raise ValueError(f"{key} must hold integer class ids, got dtype {y.dtype}")
  if y.min() < 0:
    raise ValueError(
      f"{key} holds a negative class id {int(y.min())} (at index "
      f"{int(np.argmin(y))}); class ids are >= 0"
    )
