"""Input checks and pmap helpers shared by the :mod:`tfjax.losses` modules.

Checks run in Python on static shapes (and on values only when they are
concrete): ranks, dtypes and shapes through ``chex`` (``AssertionError``),
bad values through ``ValueError`` (including embedding rows too small to
normalise, :func:`tfjax.normalize.check_row_scale`).  The pmap helpers gather rows and sum
statistics over ``axis_name`` (or do nothing when it is ``None``) so that
each loss sees the global batch.  :func:`nan_unless_finite` (from
:mod:`tfjax.affinity`) makes a loss NaN when any input entry is NaN/inf.
"""

from __future__ import annotations

from typing import Optional

import chex
import jax
import jax.numpy as jnp
import numpy as np

from tfjax.affinity import nan_unless_finite  # noqa: F401  (re-exported)
from tfjax.normalize import check_row_scale

Array = jax.Array


def _is_concrete(x) -> bool:
  """True when ``x`` holds values we can read now (not a jit/pmap tracer)."""
  return not isinstance(x, jax.core.Tracer)


def _check_embeddings(name: str, z) -> Array:
  z = jnp.asarray(z) if not isinstance(z, jax.core.Tracer) else z
  chex.assert_rank(z, 2, custom_message=f"{name} must be a 2-D array [n, d] of embeddings")
  chex.assert_type(z, float, custom_message=f"{name} must be floating point")
  if z.shape[0] < 1 or z.shape[1] < 1:
    raise ValueError(f"{name} must be non-empty [n, d], got shape {z.shape}")
  check_row_scale(name, z)
  return z


def _check_views(z1, z2) -> tuple[Array, Array]:
  z1 = _check_embeddings("z1", z1)
  z2 = _check_embeddings("z2", z2)
  chex.assert_equal_shape([z1, z2], custom_message="the two views must have the same shape [n, d]")
  return z1, z2


def _check_labels(labels, n: int) -> Array:
  labels = jnp.asarray(labels) if _is_concrete(labels) else labels
  chex.assert_type(labels, int, custom_message="labels must be integers")
  chex.assert_shape(
    labels, (n,), custom_message=f"labels must have shape [n] = ({n},) to match the embeddings"
  )
  return labels


def _check_temperature(temperature) -> None:
  if _is_concrete(temperature):
    t = np.asarray(temperature)
    chex.assert_rank(t, 0, custom_message="temperature must be a scalar")
    if not np.isfinite(t) or t <= 0:
      raise ValueError(f"temperature must be > 0 and finite, got {float(t)}")


def _check_scalar(name: str, value, *, positive: bool = False, nonnegative: bool = False) -> None:
  """ValueError unless a concrete ``value`` is a finite real scalar (> 0 / ≥ 0).

  A traced value cannot be checked and is accepted as is.
  """
  if not _is_concrete(value):
    return
  v = np.asarray(value)
  if v.ndim != 0 or not (np.issubdtype(v.dtype, np.floating) or np.issubdtype(v.dtype, np.integer)):
    raise ValueError(f"{name} must be a real scalar, got {value!r}")
  v = float(v)
  if not np.isfinite(v):
    raise ValueError(f"{name} must be finite, got {v}")
  if positive and not v > 0:
    raise ValueError(f"{name} must be > 0, got {v}")
  if nonnegative and not v >= 0:
    raise ValueError(f"{name} must be >= 0, got {v}")


def _gather(x: Array, axis_name: Optional[str]) -> Array:
  """All rows of the global batch (this device's rows when axis_name is None)."""
  if axis_name is None:
    return x
  return jax.lax.all_gather(x, axis_name, tiled=True)


def _psum(x: Array, axis_name: Optional[str]) -> Array:
  return x if axis_name is None else jax.lax.psum(x, axis_name)


def _pmax(x: Array, axis_name: Optional[str]) -> Array:
  return x if axis_name is None else jax.lax.pmax(x, axis_name)


def _row_offset(n_local: int, axis_name: Optional[str]):
  """Global index of this device's first row."""
  if axis_name is None:
    return 0
  return jax.lax.axis_index(axis_name) * n_local


def _global_rows(n_local: int, axis_name: Optional[str]) -> int:
  """N, the number of rows of the global batch (a static int)."""
  if axis_name is None:
    return n_local
  return n_local * int(jax.lax.axis_size(axis_name))


def _global_mean(x: Array, axis_name: Optional[str]) -> tuple[Array, int]:
  """Mean over the rows of the global batch [d], and N."""
  big_n = _global_rows(x.shape[0], axis_name)
  return _psum(jnp.sum(x, axis=0), axis_name) / big_n, big_n


def _float(z: Array) -> Array:
  """Computes in at least float32 (bf16/f16 embeddings are upcast)."""
  return z.astype(jnp.promote_types(z.dtype, jnp.float32))
