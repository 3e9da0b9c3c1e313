"""Memory-efficient (blockwise) ReLU attention and the fused adjacency + JSD loss.

The dense path (:mod:`tfjax.attention`, :mod:`tfjax.affinity`) builds the
whole n×N adjacency; its forward *and* backward hold several n×N arrays, so a
batch of 16384 needs gigabytes per block.  The functions here compute exactly
the same quantities while holding only one [n, B] block of key columns at a
time (B = ``block_size``), in the forward and in the backward pass.

Notation (one device's n rows against N keys; ``o`` = ``diagonal_offset``)::

    q̂ = rownorm(q), k̂ = rownorm(k),  C = q̂ k̂ᵀ
    W_ij = act(C_ij) + ε  on the allowed entries (j ≠ i + o, j < N), else 0
    s_i = Σ_j W_ij,       A_ij = W_ij / s_i                (ε = ROW_EPS)

**Attention** (:func:`blockwise_attention`), ``O = A v``: one pass over key
blocks accumulates ``s_i`` and ``U_i = Σ_j W_ij v_j``; ``O = U / s``.  No
running maximum is needed because ``W`` is bounded (act of a cosine).
Backward, with ``D_i = dO_i · O_i``::

    dW_ij = (dO_i · v_j − D_i) / s_i,   dC = act'(C) ⊙ dW,
    dq̂ = dC k̂,   dk̂ = dCᵀ q̂,   dv = Aᵀ dO

one more pass over key blocks, recomputing ``C`` and ``W`` block by block.
Residuals are O(n·h): q̂, k̂ (with their inverse norms), v, O and s.

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

Both ``jax.custom_vjp`` functions loop over key blocks with ``lax.scan``; N
need not be a multiple of ``block_size`` (the keys are padded with masked
columns).  Optional ``compute_dtype`` (e.g. ``jnp.bfloat16``) runs the
matmuls in that dtype with ``preferred_element_type=float32``; every sum is
accumulated in float32 (or wider when the inputs are float64).

Peak memory per call is O(n·B + (n + N)·h) instead of O(n·N).  (How many
O(n·h) buffers a whole training step keeps alive is up to XLA's scheduler; on
CPU its default concurrency-optimised schedule keeps about twice as many:
see :mod:`tfjax.runtime`.)  The cost is
recomputation: the attention does 7 n×N×h-sized matmuls per training step
instead of 6, the truncated block 5 instead of 3.

Under ``jax.pmap`` the caller gathers keys/values/ids of all devices (e.g.
:func:`tfjax.models.gather_batch`) and passes ``diagonal_offset`` = global
index of its first row; :func:`blockwise_jsd_loss` takes ``axis_name`` and
reduces with ``psum`` exactly like :func:`tfjax.affinity.jsd_loss`.
"""

from __future__ import annotations

import functools
from typing import Any, Optional

import jax
import jax.numpy as jnp

from tfjax.affinity import checked_ids, masked_global_mean
from tfjax.attention import (ROW_EPS, Activation, _check_2d, get_activation,
                             normalize_parts)

Array = jax.Array

DEFAULT_BLOCK_SIZE = 512


# ----------------------------------------------------------------------------
# argument checking and layout
# ----------------------------------------------------------------------------
def _check_block_size(block_size) -> int:
  if (isinstance(block_size, bool) or not isinstance(block_size, int)
      or block_size < 1):
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
  return jax.lax.dot_general(x, y, (((1,), (1,)), ((), ())),
                             preferred_element_type=acc)


def _tdot(x: Array, y: Array, acc) -> Array:
  """x[c, a]ᵀ · y[c, b] -> [a, b]."""
  return jax.lax.dot_general(x, y, (((0,), (0,)), ((), ())),
                             preferred_element_type=acc)


def _weights(act, c: Array, allowed: Array) -> Array:
  # Same expression as tfjax.attention.normalize_rows before the division.
  return jnp.where(allowed, act(c) + ROW_EPS, 0.0).astype(c.dtype)


def _safe(s: Array) -> Array:
  # s_i > 0 whenever row i has an allowed column; a row with none (N = 1)
  # gets zeros instead of 0/0.
  return jnp.where(s > 0, s, 1.0)


def _normalize(x: Array):
  # The custom VJPs save x̂ (with r, on) rather than x: the backward then
  # neither recomputes x̂ nor keeps x (the step at n = 16384, width 512 plans
  # 2.48 GiB instead of 2.71 GiB with XLA's default CPU scheduler).
  return normalize_parts(x)


def _normalize_bwd(x_hat: Array, r: Array, on: Array, d_hat: Array) -> Array:
  """VJP of ``l2_normalize``: ``dx = r·(dx̂ − x̂ (x̂·dx̂))`` (``r·dx̂`` below eps)."""
  radial = jnp.sum(x_hat * d_hat, axis=-1, keepdims=True)
  return r * (d_hat - jnp.where(on, radial, 0.0) * x_hat)


# ----------------------------------------------------------------------------
# attention
# ----------------------------------------------------------------------------
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
  delta = jnp.sum(d_out * out.astype(acc), axis=1)       # D_i = dO_i · O_i
  d_out_c = d_out.astype(cdt)

  def body(dq, xs):
    k_blk, v_blk, start = xs
    c = _dot_t(qc, k_blk, acc)
    allowed = _allowed(n, b, start, m, offset)
    w, act_pull = jax.vjp(lambda c_: _weights(act_fn, c_, allowed), c)
    a = w * inv_s[:, None]
    d_a = _dot_t(d_out_c, v_blk, acc)                     # dO_i · v_j
    d_w = (d_a - delta[:, None]) * inv_s[:, None]
    (d_c,) = act_pull(d_w)                                # zero where masked
    d_c = d_c.astype(cdt)
    dq = dq + _dot(d_c, k_blk, acc)
    dk_blk = _tdot(d_c, qc, acc)
    dv_blk = _tdot(a.astype(cdt), d_out_c, acc)
    return dq, (dk_blk, dv_blk)

  dq, (dk, dv) = jax.lax.scan(body, jnp.zeros((n, qn.shape[1]), acc),
                              (kb, vb, starts))
  dk = dk.reshape(-1, kn.shape[1])[:m]
  dv = dv.reshape(-1, v.shape[1])[:m]
  dq = _normalize_bwd(qn, q_r, q_on, dq.astype(qn.dtype))
  dk = _normalize_bwd(kn, k_r, k_on, dk.astype(kn.dtype))
  return dq, dk, dv.astype(v.dtype), None


_attention.defvjp(_attention_fwd, _attention_bwd)


def blockwise_attention(q: Array, k: Array, v: Array, *,
                        activation: Activation = "relu",
                        diagonal_offset=0,
                        block_size: int = DEFAULT_BLOCK_SIZE,
                        compute_dtype: Optional[Any] = None) -> Array:
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
    raise ValueError(
        f"q and k must have the same width, got q {q.shape} and k {k.shape}")
  if v.shape[0] != k.shape[0]:
    raise ValueError(
        f"k and v must have the same number of rows, got k {k.shape} and "
        f"v {v.shape}")
  block_size = _check_block_size(block_size)
  get_activation(activation)  # fail early on an unknown name
  cdt, _ = _compute_dtype(compute_dtype, q, k, v)
  offset = jnp.asarray(diagonal_offset, jnp.int32)
  return _attention(activation, block_size, cdt, q, k, v, offset)


# ----------------------------------------------------------------------------
# adjacency fused with the JSD loss
# ----------------------------------------------------------------------------
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
  g = 0.5 * (jnp.where(a_pos, log_a + 1.0, 0.0)
             - jnp.where(m_pos, log_m + 1.0, 0.0))
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
  return (jsd, count), ((qn, q_r, q_on), (kn, k_r, k_on), gi, li, gj, lj,
                        offset, s, count, e)


def _row_jsd_bwd(act, block_size, cdt, res, cts):
  (qn, q_r, q_on), (kn, k_r, k_on), gi, li, gj, lj, offset, s, count, e = res
  g_row = cts[0]                        # the counts are not differentiable
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
  dq = _normalize_bwd(qn, q_r, q_on, dq.astype(qn.dtype))
  dk = _normalize_bwd(kn, k_r, k_on, dk.astype(kn.dtype))
  return dq, dk, None, None, None, None, None


_row_jsd.defvjp(_row_jsd_fwd, _row_jsd_bwd)


def _ids(groups, labels, column_groups, column_labels):
  groups, labels, cg, cl = checked_ids(groups, labels, column_groups,
                                       column_labels)
  if labels is None:
    # No labels ≡ every sample unlabelled: "both labelled" is never true.
    labels = jnp.full(groups.shape, -1, jnp.int32)
    cl = jnp.full(cg.shape, -1, jnp.int32)
  return groups, labels, cg, cl


def blockwise_row_jsd(q: Array, k: Array, groups: Array,
                      labels: Optional[Array] = None, *,
                      column_groups: Optional[Array] = None,
                      column_labels: Optional[Array] = None,
                      activation: Activation = "relu",
                      diagonal_offset=0,
                      block_size: int = DEFAULT_BLOCK_SIZE,
                      compute_dtype: Optional[Any] = None):
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
    raise ValueError(
        f"q and k must have the same width, got q {q.shape} and k {k.shape}")
  gi, li, gj, lj = _ids(groups, labels, column_groups, column_labels)
  if gi.shape[0] != q.shape[0]:
    raise ValueError(
        f"groups must have one id per query row ({q.shape[0]}), got "
        f"{gi.shape[0]}")
  if gj.shape[0] != k.shape[0]:
    raise ValueError(
        f"column_groups must have one id per key row ({k.shape[0]}), got "
        f"{gj.shape[0]} (pass column_groups when keys are gathered)")
  block_size = _check_block_size(block_size)
  get_activation(activation)
  cdt, _ = _compute_dtype(compute_dtype, q, k)
  offset = jnp.asarray(diagonal_offset, jnp.int32)
  return _row_jsd(activation, block_size, cdt, q, k, gi, li, gj, lj, offset)


def blockwise_jsd_loss(q: Array, k: Array, groups: Array,
                       labels: Optional[Array] = None, *,
                       column_groups: Optional[Array] = None,
                       column_labels: Optional[Array] = None,
                       activation: Activation = "relu",
                       diagonal_offset=0,
                       block_size: int = DEFAULT_BLOCK_SIZE,
                       compute_dtype: Optional[Any] = None,
                       axis_name: Optional[str] = None) -> Array:
  """TransFusion's JSD loss of the adjacency of (q, k), fused and blockwise -> scalar.

  Equals::

      jsd_loss(adjacency(q, k, activation=..., diagonal_offset=o),
               target_affinity(groups, labels, column_groups=...,
                               column_labels=..., diagonal_offset=o),
               axis_name=axis_name)

  i.e. the mean of the row-wise JSD over rows with ≥ 1 positive (0 if none;
  under pmap the mean over all devices' valid rows, via ``psum``), with
  memory O(n·block_size) instead of O(n·m) in forward and backward.

  Args: as :func:`blockwise_row_jsd`, plus ``axis_name`` (pmap axis or None).

  Example::

      >>> x = jax.random.normal(jax.random.key(0), (10, 4))
      >>> g = jnp.arange(10) // 2                       # 2 views per source
      >>> blockwise_jsd_loss(x, x, g, block_size=4)     # in [0, log 2]
  """
  jsd, count = blockwise_row_jsd(
      q, k, groups, labels, column_groups=column_groups,
      column_labels=column_labels, activation=activation,
      diagonal_offset=diagonal_offset, block_size=block_size,
      compute_dtype=compute_dtype)
  return masked_global_mean(jsd, count > 0, axis_name)
