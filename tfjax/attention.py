"""ReLU attention across the samples of a batch: TransFusion's adjacency.

The adjacency of TransFusion (its ReLU attention across the samples of a
batch, ``docs/design.md``, section "Model") is a row-stochastic n×m matrix
built from cosine similarities:

    C_ij = <q_i, k_j> / (‖q_i‖ ‖k_j‖)                 (no 1/sqrt(h) scaling)
    R_ij = act(C_ij), with R_{i, i+offset} = 0         (no attention to oneself)
    A_ij = (R_ij + ε) / Σ_j' (R_ij' + ε)               over the allowed j only

ε (1e-10) only matters for a row whose activations are all zero (a zero query,
or ReLU of all-negative cosines): that row becomes uniform over its allowed
entries instead of 0/0.  For any other row it changes nothing measurable.

Numerics (our choices):

* Scale: each row is divided by its largest |entry| before it is squared, and
  norms are accumulated in float32 (float64 for float64 inputs), so the
  cosines, hence the adjacency, are the same for ``x`` and ``c·x`` for any
  c > 0 that keeps the row finite (up to float32's largest value, 3.4e38)
  and its largest |entry| at or above :func:`smallest_row_max` (9.9e-32 in
  float32), and a float16 row of norm ≥ 256 (whose squared norm overflows
  float16) is fine.  Below that bound XLA flushes the entries under
  float32's smallest normal (1.2e-38) to zero, which would turn the row
  silently: a concrete input raises ValueError naming the array and row
  (:func:`check_row_scale`), and under jit that row normalises to NaN.
* Dtypes: rows are normalised in float32 (float64 for float64 inputs) and
  cast back to the inputs' dtype; the cosine matmul accumulates in float32,
  and the activations and the row normalisation run in float32, where
  ε = 1e-10 is representable, so the "never NaN" promise for zero rows holds
  for float16/bfloat16 inputs too; the adjacency is cast back to the inputs'
  dtype at the end (for float16 inputs the cosines carry float16 rounding of
  the normalised rows, about 1e-3).
* Non-finite inputs are never masked: a NaN or inf in a query row makes
  that adjacency row NaN, and one in a key row makes every row that can
  attend to it NaN (its normalisation sums over that column).
* An activation must map cosines in [-1, 1] to finite non-negative weights.
  A callable is checked once on a grid of cosines (ValueError naming it);
  on concrete inputs the dense adjacency also checks its actual weights; a
  negative weight that still occurs under jit becomes NaN (never a negative
  "probability").
* A row needs at least one column besides its own: one key that is the row's
  own sample (n = m = 1) raises ValueError.

Everything here is a pure function of arrays, jit-able, and works with traced
``diagonal_offset`` (under ``jax.pmap`` a device holds rows
``[offset, offset + n)`` of a global adjacency whose keys were all-gathered).
"""

from __future__ import annotations

import functools
from typing import Callable, Optional, Union

import chex
import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array
Activation = Union[str, Callable[[Array], Array]]

ROW_EPS = 1e-10
LEAKY_SLOPE = 0.01


def _shifted_leaky_relu(c: Array) -> Array:
  # A probability row needs non-negative weights, and plain leaky-ReLU of a
  # negative cosine is negative.  Cosines lie in [-1, 1], so adding the slope
  # keeps every weight >= 0 while keeping leaky-ReLU's shape (our choice: the
  # papers do not say how the authors' leaky-ReLU variant was normalised).
  # The outer maximum only absorbs a rounded cosine a few ulp below −1 (it
  # keeps NaN: jnp.maximum propagates it).
  return jnp.maximum(jnp.maximum(c, LEAKY_SLOPE * c) + LEAKY_SLOPE, 0.0)


ACTIVATIONS: dict[str, Callable[[Array], Array]] = {
    "relu": jax.nn.relu,
    "sigmoid": jax.nn.sigmoid,
    "leaky_relu": _shifted_leaky_relu,
    # The squared cosine of the authors' self-supervised loss (their
    # src/Loss_SymNSQ.py): non-negative, and a cosine of −1 weighs like +1.
    "square": jnp.square,
}


def get_activation(activation: Activation) -> Callable[[Array], Array]:
  """Returns the activation function named ``activation`` (or ``activation``).

  Known names: ``"relu"`` (default of TransFusion), ``"sigmoid"``,
  ``"leaky_relu"`` (shifted by its slope to stay non-negative; our choice)
  and ``"square"`` (the squared cosine of the authors' self-supervised loss).
  A callable must map cosines in [-1, 1] elementwise to finite non-negative
  weights: it is evaluated once on 201 cosines spanning [-1, 1] and a
  negative or non-finite weight there raises ValueError naming it (a
  callable that cannot be evaluated on its own, e.g. one that closes over
  traced values, is not checked here).
  """
  if callable(activation):
    try:
      _check_callable_activation(activation)
    except TypeError:                 # unhashable callable: check uncached
      _check_callable_activation.__wrapped__(activation)
    return activation
  if not isinstance(activation, str):
    raise TypeError(
        f"activation must be a name or a callable, got {activation!r}")
  try:
    return ACTIVATIONS[activation]
  except KeyError:
    raise ValueError(
        f"unknown activation {activation!r}; known: {sorted(ACTIVATIONS)} "
        "or a callable") from None


def activation_name(activation: Activation) -> str:
  """A readable name of ``activation`` for error messages."""
  if isinstance(activation, str):
    return repr(activation)
  return repr(getattr(activation, "__name__", activation))


_COSINE_GRID = np.linspace(-1.0, 1.0, 201, dtype=np.float32)


@functools.lru_cache(maxsize=256)
def _check_callable_activation(fn) -> None:
  try:
    with jax.ensure_compile_time_eval():
      out = fn(jnp.asarray(_COSINE_GRID))
  except Exception:  # pylint: disable=broad-except
    return  # cannot be evaluated alone: the NaN guard still applies
  if isinstance(out, jax.core.Tracer):
    return
  out = np.asarray(out, np.float64)
  if out.shape != _COSINE_GRID.shape:
    raise ValueError(
        f"activation {activation_name(fn)} must be elementwise: cosines of "
        f"shape {_COSINE_GRID.shape} gave shape {out.shape}")
  bad = ~np.isfinite(out) | (out < 0)
  if bad.any():
    c = float(_COSINE_GRID[np.argmax(bad)])
    raise ValueError(
        f"activation {activation_name(fn)} must map cosines in [-1, 1] to "
        f"finite non-negative weights, but gives {out[np.argmax(bad)]} at "
        f"cosine {c:.3g}")


def guard_weights(w: Array) -> Array:
  """Activation weights with every negative entry replaced by NaN.

  The weights of a probability row must be ≥ 0; a negative one (an
  activation breaking its contract on traced data) would silently give a
  negative "probability", so it becomes NaN instead (NaN stays NaN).
  """
  return jnp.where(w < 0, jnp.nan, w)


def _acc_dtype(*dtypes):
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
  info = jnp.finfo(_acc_dtype(dtype))
  return float(info.tiny) / float(info.eps)


def check_row_scale(name: str, x, axis: int = -1) -> None:
  """ValueError unless every row of a concrete ``x`` is zero or large enough.

  A row along ``axis`` whose largest |entry| is non-zero but below
  :func:`smallest_row_max` cannot be normalised in float32 without flushing
  entries to zero (see there).  The check reads the values on the host,
  where nothing is flushed; traced arrays, and arrays that are not floating
  point, are not checked (under jit such a row normalises to NaN).  NaN/inf
  entries are not an error here: they propagate to NaN.
  """
  if isinstance(x, jax.core.Tracer):
    return
  a = np.asarray(x)
  if a.size == 0 or not jnp.issubdtype(a.dtype, jnp.floating):
    return
  bound = smallest_row_max(a.dtype)
  row_max = np.max(np.abs(a.astype(np.float64)), axis=axis)
  bad = np.argwhere((row_max > 0) & (row_max < bound))
  if bad.size:
    row = tuple(int(i) for i in bad[0])
    where = f"row {row[0]}" if len(row) == 1 else f"row {row}"
    raise ValueError(
        f"{name} {where} has largest |entry| {row_max[row]:.3g}, below "
        f"{bound:.3g}: entries under float32's smallest normal "
        f"({float(jnp.finfo(jnp.float32).tiny):.3g}) are flushed to zero and "
        f"would change its direction; rescale {name} (its normalisation "
        "ignores any common factor)")


def l2_normalize(x: Array, axis: int = -1,
                 eps: Optional[float] = None) -> Array:
  """Scales ``x`` to unit L2 norm along ``axis``; a zero vector stays zero.

  ``x / ‖x‖`` for every row that is not exactly zero, at any scale (the row
  is divided by its largest |entry| before squaring, and the norm is summed
  in float32 or wider), so ``l2_normalize(c·x) == l2_normalize(x)`` for any
  c > 0 that keeps the row finite and its largest |entry| at or above
  :func:`smallest_row_max` (9.9e-32 in float32), and no float16 row
  overflows.  A smaller non-zero row raises ValueError when ``x`` is
  concrete and gives a NaN row under jit (its small entries would be
  flushed to zero: see :func:`smallest_row_max`).  A zero row gives zeros
  with a zero gradient (our choice: it has no direction).  With ``eps``
  given, the floor ``x / max(‖x‖, eps)`` instead (rows below ``eps`` are
  scaled by 1/eps, gradient 1/eps).  NaN/inf entries give NaN.  The result
  has ``x``'s shape and dtype.

  >>> l2_normalize(jnp.array([[3., 4.], [0., 0.]]))  # [[.6, .8], [0, 0]]
  """
  check_row_scale("x", x, axis)
  return normalize_parts(x, axis, eps)[0]


def _too_small_rows(xa: Array, axis: int) -> Array:
  """Rows whose largest |entry| is non-zero and below smallest_row_max.

  Read from the bits: arithmetic and comparisons on XLA:CPU treat a
  subnormal as zero, so ``max(|x|) > 0`` cannot see such a row.  For
  non-negative floats the integer order of the bits is the numeric order.
  """
  int_type = jnp.int64 if xa.dtype.itemsize == 8 else jnp.int32
  magnitude = jax.lax.bitcast_convert_type(xa, int_type) & jnp.iinfo(
      int_type).max                   # clears the sign bit
  bound = np.asarray(smallest_row_max(xa.dtype), xa.dtype).view(
      np.dtype(int_type))
  row_max = jnp.max(magnitude, axis=axis, keepdims=True)
  return (row_max > 0) & (row_max < bound)


def normalize_parts(x: Array, axis: int = -1, eps: Optional[float] = None):
  """``l2_normalize(x)`` with what its backward needs -> (x̂, r, on).

  ``x̂`` (shape and dtype of x), ``r = 1/‖x‖`` (``1/max(‖x‖, eps)`` with
  ``eps``; 0 for a zero row without ``eps``) and ``on`` (the row is not
  zero, resp. ``‖x‖ > eps``); ``r`` and ``on`` keep ``axis`` with size 1,
  ``r`` in float32 or wider (it can exceed float16's range).
  :mod:`tfjax.blockwise` saves these as residuals and applies
  ``dx = r·(dx̂ − [on] x̂ (x̂·dx̂))`` itself.
  """
  acc = _acc_dtype(x.dtype)
  xa = x.astype(acc)
  # x̂ does not depend on the row scale m, so m is a constant for autodiff.
  m = jax.lax.stop_gradient(jnp.max(jnp.abs(xa), axis=axis, keepdims=True))
  zero = m == 0                       # False for NaN: NaN propagates
  scale = jnp.where(zero, 1.0, m)
  # XLA divides by multiplying with 1/scale, which is subnormal, hence
  # flushed to 0, for scale > 1/tiny (8.5e37 in float32).  Rows above
  # sqrt(max) are brought down by an exact power of two on both sides
  # first; every other row is multiplied by 1.0 (same bits).
  big = float(np.sqrt(float(jnp.finfo(acc).max)))
  pre = jnp.where(scale > big, 1.0 / big, 1.0).astype(acc)
  y = (xa * pre) / (scale * pre)      # largest |entry| is 1
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
  # A row too small to normalise (see smallest_row_max) becomes NaN, with a
  # NaN gradient: a product, not a where, so the backward sees it too.
  poison = jnp.where(_too_small_rows(xa, axis), jnp.nan, 1.0).astype(acc)
  return (x_hat * poison).astype(x.dtype), r * poison, on


def _check_2d(name: str, x: Array) -> None:
  """Asserts (chex) that ``x`` is a 2-D floating-point array [rows, features]."""
  chex.assert_rank(
      x, 2, custom_message=f"{name} must be a 2-D array [rows, features]")
  chex.assert_type(x, float, custom_message=f"{name} must be floating point")


def self_mask(n: int, m: int, diagonal_offset=0) -> Array:
  """Boolean [n, m] mask, True at the entries (i, i + diagonal_offset)."""
  rows = jnp.arange(n)[:, None] + diagonal_offset
  return rows == jnp.arange(m)[None, :]


def _check_pair(q: Array, k: Array) -> None:
  _check_2d("q", q)
  _check_2d("k", k)
  if q.shape[1] != k.shape[1]:
    raise ValueError(
        f"q and k must have the same width, got q {q.shape} and k {k.shape}")
  check_row_scale("q", q)
  check_row_scale("k", k)


def _cosines(q: Array, k: Array) -> Array:
  """Cosines [n, m] in float32 or wider (the dtype the adjacency works in)."""
  acc = _acc_dtype(q.dtype, k.dtype)
  return jnp.matmul(normalize_parts(q)[0], normalize_parts(k)[0].T,
                    preferred_element_type=acc).astype(acc)


def cosine_similarity(q: Array, k: Array) -> Array:
  """Cosine similarity of every row of ``q`` [n, h] with every row of ``k`` [m, h] -> [n, m].

  Scale-safe (see :func:`l2_normalize`; a zero row has cosine 0 with
  everything), summed in float32 or wider, returned in the inputs' dtype.
  """
  _check_pair(q, k)
  return _cosines(q, k).astype(jnp.result_type(q, k))


def check_columns(n: int, m: int, diagonal_offset=0) -> None:
  """ValueError unless every one of n rows has a column besides its own.

  With m ≥ 2 keys every row has one.  With m = 1 a row whose own index is
  the only column (always when the offset is traced) has nothing to attend
  to; m = 0 has no column at all.
  """
  if m >= 2 or n == 0:
    return
  if m == 1 and not isinstance(diagonal_offset, jax.core.Tracer):
    off = int(np.asarray(diagonal_offset))
    if not 0 <= -off < n:
      return                          # no row of this device owns column 0
  raise ValueError(
      f"the adjacency of n = {n} row(s) against m = {m} key(s) has a row "
      "with no column besides its own (the diagonal is excluded): it needs "
      "at least 2 samples")


def normalize_rows(weights: Array, mask: Array, eps: float = ROW_EPS) -> Array:
  """Row-normalises non-negative ``weights`` [n, m], zero where ``mask``.

  ``(w + ε) / Σ(w + ε)`` over the unmasked entries, computed in float32 (or
  float64 for float64 weights, where ε = 1e-10 is representable) and cast
  back to the weights' dtype: an all-zero row becomes uniform over its
  unmasked entries, never NaN.  A NaN/inf weight in an unmasked entry gives
  NaN (it is not masked); a negative weight gives NaN (see
  :func:`guard_weights`).
  """
  acc = _acc_dtype(weights.dtype)
  w = guard_weights(weights.astype(acc)) + eps
  w = jnp.where(mask, 0.0, w)
  return (w / jnp.sum(w, axis=-1, keepdims=True)).astype(weights.dtype)


def adjacency(q: Array, k: Array, *, activation: Activation = "relu",
              diagonal_offset=0) -> Array:
  """TransFusion's adjacency of queries ``q`` [n, h] and keys ``k`` [m, h] -> [n, m].

  Math::

      C = rownorm(q) rownorm(k)ᵀ,   R = act(C),   R_{i, i+offset} = 0,
      A_ij = (R_ij + ε) / Σ_j (R_ij + ε)   (ε = 1e-10, allowed entries only)

  Every row sums to 1 and is zero at column ``i + diagonal_offset``; a zero
  query or a row whose activations are all zero is uniform over its allowed
  entries.  ``diagonal_offset`` may be a traced integer: a device holding
  rows ``offset..offset+n-1`` of a global batch passes ``offset`` so that the
  zero diagonal falls at global indices.  Columns beyond ``m`` are never
  masked (an offset that puts a row's own index outside ``[0, m)`` masks
  nothing on that row).

  Args:
    q: [n, h] queries (any scale: they are L2-normalised here,
      scale-safely; a non-zero row needs its largest |entry| at or above
      :func:`smallest_row_max`, 9.9e-32 in float32, ValueError otherwise).
    k: [m, h] keys (m ≥ 2, or m = 1 when no row owns that column:
      ValueError otherwise).
    activation: "relu" (default), "sigmoid", "leaky_relu" or a callable
      mapping cosines to finite non-negative weights (checked, see the
      module docstring).
    diagonal_offset: column of row 0's own entry (int, may be traced).

  Returns:
    [n, m] row-stochastic matrix in the inputs' dtype (computed in float32,
    or float64 for float64 inputs).  NaN/inf in q or k give NaN entries.

  Example::

      >>> q = jax.random.normal(jax.random.key(0), (6, 4))
      >>> a = adjacency(q, q)
      >>> a.shape, a.sum(-1)            # (6, 6), all ones; diag(a) == 0
  """
  act = get_activation(activation)
  _check_pair(q, k)
  n, m = q.shape[0], k.shape[0]
  check_columns(n, m, diagonal_offset)
  c = _cosines(q, k)
  w = act(c)
  if not isinstance(w, jax.core.Tracer) and bool(jnp.any(w < 0)):
    raise ValueError(
        f"activation {activation_name(activation)} gave negative weights "
        f"(min {float(jnp.min(w)):.3g}); the adjacency needs weights >= 0")
  a = normalize_rows(w, self_mask(n, m, diagonal_offset))
  return a.astype(jnp.result_type(q, k))


def relu_attention(q: Array, k: Array, v: Array, *,
                   activation: Activation = "relu",
                   diagonal_offset=0) -> Array:
  """ReLU attention: ``adjacency(q, k) @ v`` -> [n, h_v].

  Args:
    q: [n, h] queries; k: [m, h] keys; v: [m, h_v] values.
    activation, diagonal_offset: as in :func:`adjacency`.

  Each output row is a convex combination of the value rows of the other
  samples (never of its own).

      >>> x = jax.random.normal(jax.random.key(0), (8, 4))
      >>> relu_attention(x, x, x).shape   # (8, 4)
  """
  _check_2d("v", v)
  if v.shape[0] != k.shape[0]:
    raise ValueError(
        f"k and v must have the same number of rows, got k {k.shape} and "
        f"v {v.shape}")
  a = adjacency(q, k, activation=activation, diagonal_offset=diagonal_offset)
  return a @ v
