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

Everything here is a pure function of arrays, jit-able, and works with traced
``diagonal_offset`` (under ``jax.pmap`` a device holds rows
``[offset, offset + n)`` of a global adjacency whose keys were all-gathered).
"""

from __future__ import annotations

from typing import Callable, Union

import chex
import jax
import jax.numpy as jnp

Array = jax.Array
Activation = Union[str, Callable[[Array], Array]]

ROW_EPS = 1e-10
_NORM_EPS = 1e-12
LEAKY_SLOPE = 0.01


def _shifted_leaky_relu(c: Array) -> Array:
  # A probability row needs non-negative weights, and plain leaky-ReLU of a
  # negative cosine is negative.  Cosines lie in [-1, 1], so adding the slope
  # keeps every weight >= 0 while keeping leaky-ReLU's shape (our choice: the
  # papers do not say how the authors' leaky-ReLU variant was normalised).
  return jnp.maximum(c, LEAKY_SLOPE * c) + LEAKY_SLOPE


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
  A callable must map cosines in [-1, 1] to non-negative weights.
  """
  if callable(activation):
    return activation
  try:
    return ACTIVATIONS[activation]
  except KeyError:
    raise ValueError(
        f"unknown activation {activation!r}; known: {sorted(ACTIVATIONS)} "
        "or a callable") from None


def l2_normalize(x: Array, axis: int = -1, eps: float = _NORM_EPS) -> Array:
  """Scales ``x`` to unit L2 norm along ``axis``; a zero vector stays zero.

  ``x / max(‖x‖, eps)``: the value and the gradient are finite for a zero row.

  >>> l2_normalize(jnp.array([[3., 4.], [0., 0.]]))  # [[.6, .8], [0, 0]]
  """
  return normalize_parts(x, axis, eps)[0]


def normalize_parts(x: Array, axis: int = -1, eps: float = _NORM_EPS):
  """``l2_normalize(x)`` with what its backward needs -> (x̂, r, on).

  ``x̂ = x·r`` (shape of x), ``r = 1/max(‖x‖, eps)`` and ``on = ‖x‖ > eps``
  (both with ``axis`` kept, size 1).  :mod:`tfjax.blockwise` saves these as
  residuals and applies ``dx = r·(dx̂ − [on] x̂ (x̂·dx̂))`` itself.
  """
  sq = jnp.sum(jnp.square(x), axis=axis, keepdims=True)
  r = jax.lax.rsqrt(jnp.maximum(sq, eps * eps))
  return x * r, r, sq > eps * eps


def _check_2d(name: str, x: Array) -> None:
  """Asserts (chex) that ``x`` is a 2-D floating-point array [rows, features]."""
  chex.assert_rank(
      x, 2, custom_message=f"{name} must be a 2-D array [rows, features]")
  chex.assert_type(x, float, custom_message=f"{name} must be floating point")


def self_mask(n: int, m: int, diagonal_offset=0) -> Array:
  """Boolean [n, m] mask, True at the entries (i, i + diagonal_offset)."""
  rows = jnp.arange(n)[:, None] + diagonal_offset
  return rows == jnp.arange(m)[None, :]


def cosine_similarity(q: Array, k: Array) -> Array:
  """Cosine similarity of every row of ``q`` [n, h] with every row of ``k`` [m, h] -> [n, m]."""
  _check_2d("q", q)
  _check_2d("k", k)
  if q.shape[1] != k.shape[1]:
    raise ValueError(
        f"q and k must have the same width, got q {q.shape} and k {k.shape}")
  return l2_normalize(q) @ l2_normalize(k).T


def normalize_rows(weights: Array, mask: Array, eps: float = ROW_EPS) -> Array:
  """Row-normalises non-negative ``weights`` [n, m], zero where ``mask``.

  ``(w + ε) / Σ(w + ε)`` over the unmasked entries: an all-zero row becomes
  uniform over its unmasked entries, never NaN.
  """
  w = jnp.where(mask, 0.0, weights + eps)
  return w / jnp.sum(w, axis=-1, keepdims=True)


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
    q: [n, h] queries (any scale: they are L2-normalised here).
    k: [m, h] keys.
    activation: "relu" (default), "sigmoid", "leaky_relu" or a callable
      mapping cosines to non-negative weights.
    diagonal_offset: column of row 0's own entry (int, may be traced).

  Returns:
    [n, m] row-stochastic matrix in q's dtype.

  Example::

      >>> q = jax.random.normal(jax.random.key(0), (6, 4))
      >>> a = adjacency(q, q)
      >>> a.shape, a.sum(-1)            # (6, 6), all ones; diag(a) == 0
  """
  act = get_activation(activation)
  c = cosine_similarity(q, k)
  n, m = c.shape
  return normalize_rows(act(c), self_mask(n, m, diagonal_offset))


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
