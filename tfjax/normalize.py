"""Row normalisation, scale-safe over the range the float allows.

Every cosine in tfjax (the attention, the losses, the diagnostics) divides a
row by its norm here: the row is first divided by its largest |entry|, then
the norm is taken in float32 or wider.  That is exact for rows whose largest
|entry| lies in [:func:`smallest_row_max`, :func:`largest_row_max`] (float32:
9.9e-32 ... 8.5e37).  Outside it XLA flushes subnormals to zero (tiny entries,
or the reciprocal of a huge row's scale), so a concrete input with such a row
raises one line naming the array and the row (:func:`check_row_scale`); under
``jit`` the caller keeps the range (docs/training.md says so).
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array


def acc_dtype(*dtypes):
  """float32, or float64 when an input is float64: where norms and sums live."""
  return jnp.promote_types(jnp.result_type(*dtypes), jnp.float32)


def smallest_row_max(dtype) -> float:
  """Smallest largest-|entry| a non-zero row may have to be normalised.

  ``tiny / eps`` of the dtype the norms are computed in (float32 for
  float16/bfloat16/float32 inputs: 2^-103 ≈ 9.9e-32; float64: ≈ 1.0e-292).
  XLA:CPU flushes subnormal numbers (below ``tiny``, 1.2e-38 in float32) to
  zero; in a row whose largest |entry| is at least ``tiny / eps`` the
  flushed entries weigh less than the rounding of the largest one, so the
  row's direction is exact to float rounding.
  """
  info = jnp.finfo(acc_dtype(dtype))
  return float(info.tiny) / float(info.eps)


def largest_row_max(dtype) -> float:
  """Largest largest-|entry| a row may have to be normalised: ``1 / tiny``
  of the dtype the norms are computed in (float32: 8.5e37).  XLA divides by
  multiplying with the reciprocal, which is subnormal, hence flushed to 0,
  above it."""
  return 1.0 / float(jnp.finfo(acc_dtype(dtype)).tiny)


def check_row_scale(name: str, x, axis: int = -1) -> None:
  """ValueError unless every row of a concrete ``x`` is zero or in range.

  A row along ``axis`` whose largest |entry| is non-zero but below
  :func:`smallest_row_max`, or finite and above :func:`largest_row_max`,
  cannot be normalised (entries, or the reciprocal of the largest one, are
  flushed to zero).  The check reads the values on the host, where nothing
  is flushed; traced arrays, and arrays that are not floating point, are not
  checked.  NaN/inf entries are not an error here: they propagate to NaN.
  """
  if isinstance(x, jax.core.Tracer):
    return
  a = np.asarray(x)
  if a.size == 0 or not jnp.issubdtype(a.dtype, jnp.floating):
    return
  bound, top = smallest_row_max(a.dtype), largest_row_max(a.dtype)
  row_max = np.max(np.abs(a.astype(np.float64)), axis=axis)
  tiny = float(jnp.finfo(jnp.float32).tiny)
  for out, why in (
    (
      np.isfinite(row_max) & (row_max > top),
      f"above {top:.3g}: the reciprocal of its scale is flushed to zero",
    ),
    (
      (row_max > 0) & (row_max < bound),
      f"below {bound:.3g}: entries under float32's smallest normal "
      f"({tiny:.3g}) are flushed to zero and would change its direction",
    ),
  ):
    bad = np.argwhere(out)
    if bad.size:
      row = tuple(int(i) for i in bad[0])
      where = f"row {row[0]}" if len(row) == 1 else f"row {row}"
      raise ValueError(
        f"{name} {where} has largest |entry| {row_max[row]:.3g}, {why}; "
        f"rescale {name} (its normalisation ignores any common factor)"
      )


def l2_normalize(x: Array, axis: int = -1, eps: Optional[float] = None) -> Array:
  """Scales ``x`` to unit L2 norm along ``axis``; a zero vector stays zero.

  ``x / ‖x‖`` for every row that is not exactly zero, at any scale (the row
  is divided by its largest |entry| before squaring, and the norm is summed
  in float32 or wider), so ``l2_normalize(c·x) == l2_normalize(x)`` for any
  c > 0 that keeps the row's largest |entry| in [:func:`smallest_row_max`,
  :func:`largest_row_max`] (9.9e-32 ... 8.5e37 in float32), and no float16
  row overflows.  A row outside raises ValueError when ``x`` is concrete
  (see :func:`check_row_scale`).  A zero row gives zeros
  with a zero gradient (our choice: it has no direction).  With ``eps``
  given, the floor ``x / max(‖x‖, eps)`` instead (rows below ``eps`` are
  scaled by 1/eps, gradient 1/eps).  NaN/inf entries give NaN.  The result
  has ``x``'s shape and dtype.

  >>> l2_normalize(jnp.array([[3., 4.], [0., 0.]]))  # [[.6, .8], [0, 0]]
  """
  check_row_scale("x", x, axis)
  return normalize_parts(x, axis, eps)[0]


def normalize_parts(x: Array, axis: int = -1, eps: Optional[float] = None):
  """``l2_normalize(x)`` with what its backward needs -> (x̂, r, on).

  ``x̂`` (shape and dtype of x), ``r = 1/‖x‖`` (``1/max(‖x‖, eps)`` with
  ``eps``; 0 for a zero row without ``eps``) and ``on`` (the row is not
  zero, resp. ``‖x‖ > eps``); ``r`` and ``on`` keep ``axis`` with size 1,
  ``r`` in float32 or wider (it can exceed float16's range).
  :mod:`tfjax.blockwise` saves these as residuals and applies
  ``dx = r·(dx̂ − [on] x̂ (x̂·dx̂))`` itself.
  """
  acc = acc_dtype(x.dtype)
  xa = x.astype(acc)
  # x̂ does not depend on the row scale m, so m is a constant for autodiff.
  m = jax.lax.stop_gradient(jnp.max(jnp.abs(xa), axis=axis, keepdims=True))
  zero = m == 0  # False for NaN: NaN propagates
  scale = jnp.where(zero, 1.0, m)
  y = xa / scale  # largest |entry| is 1
  sq = jnp.sum(jnp.square(y), axis=axis, keepdims=True)
  norm = jnp.where(zero, 0.0, jnp.sqrt(jnp.where(zero, 1.0, sq)))
  if eps is None:
    on = ~zero
    denom = jnp.where(zero, 1.0, norm)
    x_hat = jnp.where(zero, 0.0, y / denom)
    r = jnp.where(zero, 0.0, 1.0 / (scale * denom))
  else:
    floor = eps / scale
    on = norm > floor
    denom = jnp.maximum(norm, floor)
    x_hat = y / denom
    r = 1.0 / (scale * denom)
  return x_hat.astype(x.dtype), r, on
