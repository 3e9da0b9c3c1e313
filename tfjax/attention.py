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
  c > 0 that keeps the row's largest |entry| between
  :func:`tfjax.normalize.smallest_row_max` and
  :func:`tfjax.normalize.largest_row_max` (9.9e-32 ... 8.5e37 in float32), and
  a float16 row of norm ≥ 256 (whose squared norm overflows float16) is
  fine.  Outside that range XLA flushes subnormals to zero (the row's tiny
  entries, or the reciprocal of its scale): a concrete input raises
  ValueError naming the array and row (:func:`check_row_scale`); under jit
  the caller keeps the range.
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
from typing import Callable, Union

import chex
import jax
import jax.numpy as jnp
import numpy as np

from tfjax.normalize import acc_dtype, check_row_scale, normalize_parts

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
    except TypeError:  # unhashable callable: check uncached
      _check_callable_activation.__wrapped__(activation)
    return activation
  if not isinstance(activation, str):
    raise TypeError(f"activation must be a name or a callable, got {activation!r}")
  try:
    return ACTIVATIONS[activation]
  except KeyError:
    raise ValueError(
      f"unknown activation {activation!r}; known: {sorted(ACTIVATIONS)} or a callable"
    ) from None


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
      f"shape {_COSINE_GRID.shape} gave shape {out.shape}"
    )
  bad = ~np.isfinite(out) | (out < 0)
  if bad.any():
    c = float(_COSINE_GRID[np.argmax(bad)])
    raise ValueError(
      f"activation {activation_name(fn)} must map cosines in [-1, 1] to "
      f"finite non-negative weights, but gives {out[np.argmax(bad)]} at "
      f"cosine {c:.3g}"
    )


def guard_weights(w: Array) -> Array:
  """Activation weights with every negative entry replaced by NaN.

  The weights of a probability row must be ≥ 0; a negative one (an
  activation breaking its contract on traced data) would silently give a
  negative "probability", so it becomes NaN instead (NaN stays NaN).
  """
  return jnp.where(w < 0, jnp.nan, w)


def _check_2d(name: str, x: Array) -> None:
  """Asserts (chex) that ``x`` is a 2-D floating-point array [rows, features]."""
  chex.assert_rank(x, 2, custom_message=f"{name} must be a 2-D array [rows, features]")
  chex.assert_type(x, float, custom_message=f"{name} must be floating point")


def self_mask(n: int, m: int, diagonal_offset=0) -> Array:
  """Boolean [n, m] mask, True at the entries (i, i + diagonal_offset)."""
  rows = jnp.arange(n)[:, None] + diagonal_offset
  return rows == jnp.arange(m)[None, :]


def _check_pair(q: Array, k: Array) -> None:
  _check_2d("q", q)
  _check_2d("k", k)
  if q.shape[1] != k.shape[1]:
    raise ValueError(f"q and k must have the same width, got q {q.shape} and k {k.shape}")
  check_row_scale("q", q)
  check_row_scale("k", k)


def _cosines(q: Array, k: Array) -> Array:
  """Cosines [n, m] in float32 or wider (the dtype the adjacency works in)."""
  acc = acc_dtype(q.dtype, k.dtype)
  return jnp.matmul(
    normalize_parts(q)[0], normalize_parts(k)[0].T, preferred_element_type=acc
  ).astype(acc)


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
      return  # no row of this device owns column 0
  raise ValueError(
    f"the adjacency of n = {n} row(s) against m = {m} key(s) has a row "
    "with no column besides its own (the diagonal is excluded): it needs "
    "at least 2 samples"
  )


def normalize_rows(weights: Array, mask: Array, eps: float = ROW_EPS) -> Array:
  """Row-normalises non-negative ``weights`` [n, m], zero where ``mask``.

  ``(w + ε) / Σ(w + ε)`` over the unmasked entries, computed in float32 (or
  float64 for float64 weights, where ε = 1e-10 is representable) and cast
  back to the weights' dtype: an all-zero row becomes uniform over its
  unmasked entries, never NaN.  A NaN/inf weight in an unmasked entry gives
  NaN (it is not masked); a negative weight gives NaN (see
  :func:`guard_weights`).
  """
  acc = acc_dtype(weights.dtype)
  w = guard_weights(weights.astype(acc)) + eps
  w = jnp.where(mask, 0.0, w)
  return (w / jnp.sum(w, axis=-1, keepdims=True)).astype(weights.dtype)


def adjacency(q: Array, k: Array, *, activation: Activation = "relu", diagonal_offset=0) -> Array:
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
      f"(min {float(jnp.min(w)):.3g}); the adjacency needs weights >= 0"
    )
  a = normalize_rows(w, self_mask(n, m, diagonal_offset))
  return a.astype(jnp.result_type(q, k))


def relu_attention(
  q: Array, k: Array, v: Array, *, activation: Activation = "relu", diagonal_offset=0
) -> Array:
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
    raise ValueError(f"k and v must have the same number of rows, got k {k.shape} and v {v.shape}")
  a = adjacency(q, k, activation=activation, diagonal_offset=diagonal_offset)
  return a @ v
