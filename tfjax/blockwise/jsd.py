"""TransFusion's adjacency fused with its JSD loss, blockwise.

Notation as in :mod:`tfjax.blockwise`.

**Adjacency + JSD** (:func:`blockwise_jsd_loss`): the truncated last block
never needs its adjacency, only the loss against the target
``T_ij = Y_ij / c_i`` (``Y`` = positive pairs, ``c_i`` = positives of row i)::

    pass 1:  s_i = Σ_j W_ij,  c_i = Σ_j Y_ij
    pass 2:  J_i = Σ_j ½ a log a + ½ t log t − m log m     (a = A_ij, t = T_ij, m = (a+t)/2)
             E_i = Σ_j a_ij G_ij,   G_ij = ∂J_i/∂a_ij = ½ [(log a + 1)·1[a>0] − (log m + 1)·1[m>0]]
    backward: dW_ij = g_i (G_ij − E_i) / s_i,  dC = act'(C) ⊙ dW,  dq̂ = dC k̂,  dk̂ = dCᵀ q̂

with ``0·log 0 = 0`` exactly (the same terms as :func:`tfjax.affinity.row_jsd`);
``Σ_j ½ t log t = −½ log c_i`` is added in closed form (our choice: it is the
same number, without an n×N log).  Residuals: q̂, k̂, s, c, E (O(n·h)).
"""

from __future__ import annotations

import functools
from typing import Any, Optional

import jax
import jax.numpy as jnp

from tfjax.affinity import checked_ids, masked_global_mean, nan_unless_finite
from tfjax.normalize import check_row_scale
from tfjax.attention import Activation, _check_2d, check_columns, get_activation
from tfjax.blockwise._common import (
  DEFAULT_BLOCK_SIZE,
  _allowed,
  _blocks,
  _check_block_size,
  _compute_dtype,
  _dot,
  _dot_t,
  _layout,
  _normalize,
  _normalize_bwd,
  _safe,
  _tdot,
  _weights,
)

Array = jax.Array

__all__ = ["blockwise_row_jsd", "blockwise_jsd_loss"]


def _positives(gi, li, gj, lj, allowed):
  both = (li[:, None] >= 0) & (lj[None, :] >= 0)
  pos = (gi[:, None] == gj[None, :]) | (both & (li[:, None] == lj[None, :]))
  return pos & allowed


def _jsd_terms(w, inv_s, pos, inv_c):
  """Per-entry a, and the JSD / gradient terms of one block (see module doc)."""
  a = w * inv_s[:, None]
  t = jnp.where(pos, inv_c[:, None], 0.0).astype(a.dtype)
  mid = 0.5 * (a + t)
  a_pos, m_pos = a > 0, mid > 0
  log_a = jnp.log(jnp.where(a_pos, a, 1.0))
  log_m = jnp.log(jnp.where(m_pos, mid, 1.0))
  # ½ a log a − m log m (the ½ t log t part is added per row in closed form)
  j = 0.5 * a * log_a - mid * log_m
  g = 0.5 * (jnp.where(a_pos, log_a + 1.0, 0.0) - jnp.where(m_pos, log_m + 1.0, 0.0))
  return a, j, g


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2))
def _row_jsd(act, block_size, cdt, q, k, gi, li, gj, lj, offset):
  out, _ = _row_jsd_fwd(act, block_size, cdt, q, k, gi, li, gj, lj, offset)
  return out


def _jsd_setup(act, block_size, cdt, qn, kn, gj, lj):
  _, acc = _compute_dtype(None, qn, kn)
  m = kn.shape[0]
  b, nb, _ = _layout(m, block_size)
  kb = _blocks(kn.astype(cdt), nb, b)
  gb = _blocks(gj, nb, b)
  lb = _blocks(lj, nb, b, fill=-1)
  starts = jnp.arange(nb) * b
  return get_activation(act), acc, b, (kb, gb, lb, starts)


def _row_jsd_fwd(act, block_size, cdt, q, k, gi, li, gj, lj, offset):
  qn, q_r, q_on = _normalize(q)
  kn, k_r, k_on = _normalize(k)
  act_fn, acc, b, xs = _jsd_setup(act, block_size, cdt, qn, kn, gj, lj)
  n, m = q.shape[0], k.shape[0]
  qc = qn.astype(cdt)

  def pass1(carry, xs):
    s, c = carry
    k_blk, g_blk, l_blk, start = xs
    allowed = _allowed(n, b, start, m, offset)
    w = _weights(act_fn, _dot_t(qc, k_blk, acc), allowed)
    pos = _positives(gi, li, g_blk, l_blk, allowed)
    return (s + jnp.sum(w, axis=1), c + jnp.sum(pos, axis=1, dtype=acc)), None

  zeros = jnp.zeros((n,), acc)
  (s, count), _ = jax.lax.scan(pass1, (zeros, zeros), xs)
  inv_s = 1.0 / _safe(s)
  inv_c = 1.0 / jnp.maximum(count, 1.0)

  def pass2(carry, xs):
    jsd, e = carry
    k_blk, g_blk, l_blk, start = xs
    allowed = _allowed(n, b, start, m, offset)
    w = _weights(act_fn, _dot_t(qc, k_blk, acc), allowed)
    pos = _positives(gi, li, g_blk, l_blk, allowed)
    a, j, g = _jsd_terms(w, inv_s, pos, inv_c)
    return (jsd + jnp.sum(j, axis=1), e + jnp.sum(a * g, axis=1)), None

  (jsd, e), _ = jax.lax.scan(pass2, (zeros, zeros), xs)
  # Σ_j ½ t log t = ½ Σ_{positives} (1/c) log(1/c) = −½ log c  (0 if c = 0)
  jsd = jsd - 0.5 * jnp.log(jnp.maximum(count, 1.0))
  return (jsd, count), ((qn, q_r, q_on), (kn, k_r, k_on), gi, li, gj, lj, offset, s, count, e)


def _row_jsd_bwd(act, block_size, cdt, res, cts):
  (qn, q_r, q_on), (kn, k_r, k_on), gi, li, gj, lj, offset, s, count, e = res
  g_row = cts[0]  # the counts are not differentiable
  act_fn, acc, b, xs = _jsd_setup(act, block_size, cdt, qn, kn, gj, lj)
  n, m = qn.shape[0], kn.shape[0]
  qc = qn.astype(cdt)
  inv_s = 1.0 / _safe(s)
  inv_c = 1.0 / jnp.maximum(count, 1.0)
  scale = (g_row.astype(acc) * inv_s)[:, None]

  def body(dq, xs):
    k_blk, g_blk, l_blk, start = xs
    allowed = _allowed(n, b, start, m, offset)
    c = _dot_t(qc, k_blk, acc)
    w, act_pull = jax.vjp(lambda c_: _weights(act_fn, c_, allowed), c)
    pos = _positives(gi, li, g_blk, l_blk, allowed)
    _, _, g = _jsd_terms(w, inv_s, pos, inv_c)
    (d_c,) = act_pull((g - e[:, None]) * scale)
    d_c = d_c.astype(cdt)
    return dq + _dot(d_c, k_blk, acc), _tdot(d_c, qc, acc)

  dq, dk = jax.lax.scan(body, jnp.zeros((n, qn.shape[1]), acc), xs)
  dk = dk.reshape(-1, kn.shape[1])[:m]
  dq = _normalize_bwd(qn, q_r, q_on, dq)
  dk = _normalize_bwd(kn, k_r, k_on, dk)
  return dq, dk, None, None, None, None, None


_row_jsd.defvjp(_row_jsd_fwd, _row_jsd_bwd)


def _ids(groups, labels, column_groups, column_labels):
  groups, labels, cg, cl = checked_ids(groups, labels, column_groups, column_labels)
  if labels is None:
    # No labels ≡ every sample unlabelled: "both labelled" is never true.
    labels = jnp.full(groups.shape, -1, jnp.int32)
    cl = jnp.full(cg.shape, -1, jnp.int32)
  return groups, labels, cg, cl


def blockwise_row_jsd(
  q: Array,
  k: Array,
  groups: Array,
  labels: Optional[Array] = None,
  *,
  column_groups: Optional[Array] = None,
  column_labels: Optional[Array] = None,
  activation: Activation = "relu",
  diagonal_offset=0,
  block_size: int = DEFAULT_BLOCK_SIZE,
  compute_dtype: Optional[Any] = None,
):
  """Row-wise JSD of the adjacency of (q, k) against the target -> ([n], [n]).

  Equals ``row_jsd(adjacency(q, k), target_affinity(groups, labels, ...))``
  (and the number of positives per row), computed in two passes over blocks
  of keys with a one-pass custom backward; the n×m adjacency and target are
  never formed.

  Args:
    q: [n, h] queries of this device's rows; k: [m, h] keys (all devices).
    groups: [n] int ids of the rows; labels: optional [n] int, −1 unlabelled.
    column_groups, column_labels: [m] ids of the key columns (default: the
      rows' own, which requires m == n).
    activation, diagonal_offset: as in :func:`tfjax.attention.adjacency`.
    block_size, compute_dtype: as in :func:`blockwise_attention`.

  Returns:
    (jsd [n] in [0, log 2], positives [n] float counts c_i).  A row with no
    positive has count 0; its JSD value (½ log 2) is meaningless and must be
    left out (as :func:`blockwise_jsd_loss` does).  Only ``jsd`` carries a
    gradient.

  Example::

      >>> q = jax.random.normal(jax.random.key(0), (6, 4))
      >>> jsd, c = blockwise_row_jsd(q, q, jnp.array([0, 0, 1, 1, 2, 2]),
      ...                            block_size=4)   # c == [1, 1, 1, 1, 1, 1]
  """
  _check_2d("q", q)
  _check_2d("k", k)
  if q.shape[1] != k.shape[1]:
    raise ValueError(f"q and k must have the same width, got q {q.shape} and k {k.shape}")
  check_row_scale("q", q)
  check_row_scale("k", k)
  gi, li, gj, lj = _ids(groups, labels, column_groups, column_labels)
  if gi.shape[0] != q.shape[0]:
    raise ValueError(f"groups must have one id per query row ({q.shape[0]}), got {gi.shape[0]}")
  if gj.shape[0] != k.shape[0]:
    raise ValueError(
      f"column_groups must have one id per key row ({k.shape[0]}), got "
      f"{gj.shape[0]} (pass column_groups when keys are gathered)"
    )
  check_columns(q.shape[0], k.shape[0], diagonal_offset)
  block_size = _check_block_size(block_size)
  get_activation(activation)
  cdt, _ = _compute_dtype(compute_dtype, q, k)
  offset = jnp.asarray(diagonal_offset, jnp.int32)
  return _row_jsd(activation, block_size, cdt, q, k, gi, li, gj, lj, offset)


def blockwise_jsd_loss(
  q: Array,
  k: Array,
  groups: Array,
  labels: Optional[Array] = None,
  *,
  column_groups: Optional[Array] = None,
  column_labels: Optional[Array] = None,
  activation: Activation = "relu",
  diagonal_offset=0,
  block_size: int = DEFAULT_BLOCK_SIZE,
  compute_dtype: Optional[Any] = None,
  axis_name: Optional[str] = None,
) -> Array:
  """TransFusion's JSD loss of the adjacency of (q, k), fused and blockwise -> scalar.

  Equals::

      jsd_loss(adjacency(q, k, activation=..., diagonal_offset=o),
               target_affinity(groups, labels, column_groups=...,
                               column_labels=..., diagonal_offset=o),
               axis_name=axis_name)

  i.e. the mean of the row-wise JSD over rows with ≥ 1 positive (0 if none;
  under pmap the mean over all devices' valid rows, via ``psum``), with
  memory O(n·block_size) instead of O(n·m) in forward and backward.  Like
  the dense loss it is NaN (value and gradient) as soon as q or k holds a
  NaN/inf anywhere, even in a row without positives.

  Args: as :func:`blockwise_row_jsd`, plus ``axis_name`` (pmap axis or None).

  Example::

      >>> x = jax.random.normal(jax.random.key(0), (10, 4))
      >>> g = jnp.arange(10) // 2                       # 2 views per source
      >>> blockwise_jsd_loss(x, x, g, block_size=4)     # in [0, log 2]
  """
  jsd, count = blockwise_row_jsd(
    q,
    k,
    groups,
    labels,
    column_groups=column_groups,
    column_labels=column_labels,
    activation=activation,
    diagonal_offset=diagonal_offset,
    block_size=block_size,
    compute_dtype=compute_dtype,
  )
  loss = masked_global_mean(jsd, count > 0, axis_name)
  return nan_unless_finite(loss, q, k, axis_name=axis_name)
