"""Blockwise ReLU attention ``adjacency(q, k) @ v`` with a custom backward.

Notation as in :mod:`tfjax.blockwise`.

**Attention** (:func:`blockwise_attention`), ``O = A v``: one pass over key
blocks accumulates ``s_i`` and ``U_i = Σ_j W_ij v_j``; ``O = U / s``.  No
running maximum is needed because ``W`` is bounded (act of a cosine).
Backward, with ``D_i = dO_i · O_i``::

    dW_ij = (dO_i · v_j − D_i) / s_i,   dC = act'(C) ⊙ dW,
    dq̂ = dC k̂,   dk̂ = dCᵀ q̂,   dv = Aᵀ dO

one more pass over key blocks, recomputing ``C`` and ``W`` block by block.
Residuals are O(n·h): q̂, k̂ (with their inverse norms), v, O and s.
"""

from __future__ import annotations

import functools
from typing import Any, Optional

import jax
import jax.numpy as jnp

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

__all__ = ["blockwise_attention"]


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2))
def _attention(act, block_size, cdt, q, k, v, offset):
  out, _ = _attention_fwd(act, block_size, cdt, q, k, v, offset)
  return out


def _attention_fwd(act, block_size, cdt, q, k, v, offset):
  act_fn = get_activation(act)
  _, acc = _compute_dtype(None, q, k, v)
  n, m = q.shape[0], k.shape[0]
  b, nb, _ = _layout(m, block_size)
  qn, q_r, q_on = _normalize(q)
  kn, k_r, k_on = _normalize(k)
  qc = qn.astype(cdt)
  kb = _blocks(kn.astype(cdt), nb, b)
  vb = _blocks(v.astype(cdt), nb, b)
  starts = jnp.arange(nb) * b

  def body(carry, xs):
    s, u = carry
    k_blk, v_blk, start = xs
    c = _dot_t(qc, k_blk, acc)
    w = _weights(act_fn, c, _allowed(n, b, start, m, offset))
    return (s + jnp.sum(w, axis=1), u + _dot(w.astype(cdt), v_blk, acc)), None

  init = (jnp.zeros((n,), acc), jnp.zeros((n, v.shape[1]), acc))
  (s, u), _ = jax.lax.scan(body, init, (kb, vb, starts))
  out = (u / _safe(s)[:, None]).astype(jnp.result_type(q, k, v))
  return out, ((qn, q_r, q_on), (kn, k_r, k_on), v, offset, out, s)


def _attention_bwd(act, block_size, cdt, res, d_out):
  (qn, q_r, q_on), (kn, k_r, k_on), v, offset, out, s = res
  act_fn = get_activation(act)
  _, acc = _compute_dtype(None, qn, kn, v)
  n, m = qn.shape[0], kn.shape[0]
  b, nb, _ = _layout(m, block_size)
  qc = qn.astype(cdt)
  kb = _blocks(kn.astype(cdt), nb, b)
  vb = _blocks(v.astype(cdt), nb, b)
  starts = jnp.arange(nb) * b
  d_out = d_out.astype(acc)
  inv_s = 1.0 / _safe(s)
  delta = jnp.sum(d_out * out.astype(acc), axis=1)  # D_i = dO_i · O_i
  d_out_c = d_out.astype(cdt)

  def body(dq, xs):
    k_blk, v_blk, start = xs
    c = _dot_t(qc, k_blk, acc)
    allowed = _allowed(n, b, start, m, offset)
    w, act_pull = jax.vjp(lambda c_: _weights(act_fn, c_, allowed), c)
    a = w * inv_s[:, None]
    d_a = _dot_t(d_out_c, v_blk, acc)  # dO_i · v_j
    d_w = (d_a - delta[:, None]) * inv_s[:, None]
    (d_c,) = act_pull(d_w)  # zero where masked
    d_c = d_c.astype(cdt)
    dq = dq + _dot(d_c, k_blk, acc)
    dk_blk = _tdot(d_c, qc, acc)
    dv_blk = _tdot(a.astype(cdt), d_out_c, acc)
    return dq, (dk_blk, dv_blk)

  dq, (dk, dv) = jax.lax.scan(body, jnp.zeros((n, qn.shape[1]), acc), (kb, vb, starts))
  dk = dk.reshape(-1, kn.shape[1])[:m]
  dv = dv.reshape(-1, v.shape[1])[:m]
  dq = _normalize_bwd(qn, q_r, q_on, dq)
  dk = _normalize_bwd(kn, k_r, k_on, dk)
  return dq, dk, dv.astype(v.dtype), None


_attention.defvjp(_attention_fwd, _attention_bwd)


def blockwise_attention(
  q: Array,
  k: Array,
  v: Array,
  *,
  activation: Activation = "relu",
  diagonal_offset=0,
  block_size: int = DEFAULT_BLOCK_SIZE,
  compute_dtype: Optional[Any] = None,
) -> Array:
  """``adjacency(q, k) @ v`` without ever forming the [n, m] adjacency -> [n, h_v].

  Same math as :func:`tfjax.attention.relu_attention` (see the module
  docstring), computed over blocks of ``block_size`` keys in the forward and
  in the (custom) backward pass; memory O(n·block_size + (n + m)·h).

  Args:
    q: [n, h] queries; k: [m, h] keys; v: [m, h_v] values (any float dtype).
    activation: "relu", "sigmoid", "leaky_relu" or a callable, as in
      :func:`tfjax.attention.adjacency`.
    diagonal_offset: column of row 0's own (masked) entry; int, may be traced.
    block_size: keys per block (m need not be a multiple: the last block is
      padded with masked columns).
    compute_dtype: dtype of the matmuls (e.g. ``jnp.bfloat16``); sums are
      accumulated in float32.  Default: the inputs' dtype.

  Returns:
    [n, h_v] array in the inputs' result dtype.

  Example::

      >>> x = jax.random.normal(jax.random.key(0), (10, 4))
      >>> blockwise_attention(x, x, x, block_size=4).shape      # (10, 4)
      # equals tfjax.attention.relu_attention(x, x, x) to float rounding
  """
  _check_2d("q", q)
  _check_2d("k", k)
  _check_2d("v", v)
  if q.shape[1] != k.shape[1]:
    raise ValueError(f"q and k must have the same width, got q {q.shape} and k {k.shape}")
  check_row_scale("q", q)
  check_row_scale("k", k)
  if v.shape[0] != k.shape[0]:
    raise ValueError(f"k and v must have the same number of rows, got k {k.shape} and v {v.shape}")
  check_columns(q.shape[0], k.shape[0], diagonal_offset)
  block_size = _check_block_size(block_size)
  get_activation(activation)  # fail early on an unknown name
  cdt, _ = _compute_dtype(compute_dtype, q, k, v)
  offset = jnp.asarray(diagonal_offset, jnp.int32)
  return _attention(activation, block_size, cdt, q, k, v, offset)
