"""Block layout, dtypes and shared pieces of the blockwise custom VJPs.

Splitting N keys into ``block_size`` columns (the tail padded with masked
columns), the matmul / accumulation dtypes, the per-block weights
``act(C) + ε`` on the allowed entries, and the saved-residual form of
``l2_normalize`` with its backward.  Used by :mod:`tfjax.blockwise.attention`
and :mod:`tfjax.blockwise.jsd`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from tfjax.attention import ROW_EPS, guard_weights
from tfjax.normalize import normalize_parts

Array = jax.Array

DEFAULT_BLOCK_SIZE = 512


# ----------------------------------------------------------------------------
# argument checking and layout
# ----------------------------------------------------------------------------
def _check_block_size(block_size) -> int:
  if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1:
    raise ValueError(f"block_size must be a positive int, got {block_size!r}")
  return block_size


def _compute_dtype(compute_dtype, *arrays):
  """Matmul dtype (hashable) and accumulation dtype for the given inputs."""
  base = jnp.result_type(*arrays)
  acc = jnp.promote_types(base, jnp.float32)
  if compute_dtype is None:
    return jnp.dtype(base), jnp.dtype(acc)
  cdt = jnp.dtype(compute_dtype)
  if not jnp.issubdtype(cdt, jnp.floating):
    raise TypeError(f"compute_dtype must be a float dtype, got {cdt}")
  return cdt, jnp.dtype(acc)


def _layout(m: int, block_size: int):
  """Block width, number of blocks and padded length for m keys."""
  b = min(block_size, m)
  nb = -(-m // b)
  return b, nb, nb * b


def _blocks(x: Array, nb: int, b: int, fill=0) -> Array:
  """[m, ...] -> [nb, b, ...], padding the tail with ``fill``."""
  pad = nb * b - x.shape[0]
  if pad:
    x = jnp.pad(x, [(0, pad)] + [(0, 0)] * (x.ndim - 1), constant_values=fill)
  return x.reshape((nb, b) + x.shape[1:])


def _allowed(n: int, b: int, start: Array, m: int, offset: Array) -> Array:
  """[n, b] mask of the columns ``start..start+b`` a row may attend to."""
  cols = start + jnp.arange(b)[None, :]
  rows = jnp.arange(n)[:, None] + offset
  return (cols < m) & (cols != rows)


def _dot(x: Array, y: Array, acc) -> Array:
  return jnp.dot(x, y, preferred_element_type=acc)


def _dot_t(x: Array, y: Array, acc) -> Array:
  """x [a, c] · y[b, c]ᵀ -> [a, b] without materialising the transpose."""
  return jax.lax.dot_general(x, y, (((1,), (1,)), ((), ())), preferred_element_type=acc)


def _tdot(x: Array, y: Array, acc) -> Array:
  """x[c, a]ᵀ · y[c, b] -> [a, b]."""
  return jax.lax.dot_general(x, y, (((0,), (0,)), ((), ())), preferred_element_type=acc)


def _weights(act, c: Array, allowed: Array) -> Array:
  # Same expression as tfjax.attention.normalize_rows before the division
  # (c is already in the float32-or-wider accumulation dtype); a negative
  # weight becomes NaN there and here.
  return jnp.where(allowed, guard_weights(act(c)) + ROW_EPS, 0.0).astype(c.dtype)


def _safe(s: Array) -> Array:
  # s_i > 0 whenever row i has an allowed column (the callers reject inputs
  # with a row that has none); a zero sum would give zeros instead of 0/0.
  # A NaN sum stays NaN.
  return jnp.where(s == 0, 1.0, s)


def _normalize(x: Array):
  # The custom VJPs save x̂ (with r, on) rather than x: the backward then
  # neither recomputes x̂ nor keeps x (the step at n = 16384, width 512 plans
  # 2.48 GiB instead of 2.71 GiB with XLA's default CPU scheduler).
  return normalize_parts(x)


def _normalize_bwd(x_hat: Array, r: Array, on: Array, d_hat: Array) -> Array:
  """VJP of ``l2_normalize``: ``dx = r·(dx̂ − x̂ (x̂·dx̂))`` -> x̂'s dtype.

  ``r = 1/‖x‖`` (float32 or wider) and ``on`` come from
  :func:`tfjax.normalize.normalize_parts`; a zero row has ``r = 0`` (zero
  gradient).  Computed in r's dtype, returned in x̂'s.
  """
  out_dtype = x_hat.dtype
  acc = jnp.promote_types(r.dtype, out_dtype)
  x_hat = x_hat.astype(acc)
  d_hat = d_hat.astype(acc)
  radial = jnp.sum(x_hat * d_hat, axis=-1, keepdims=True)
  # Multiplying by on (not where) keeps a NaN radial part visible.
  return (r * (d_hat - on.astype(acc) * radial * x_hat)).astype(out_dtype)
