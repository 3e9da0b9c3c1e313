"""Multi-head softmax attention of query rows over key rows, pure functions.

:func:`softmax_attention` is the attention of Deep Fusion's blocks
(:mod:`tfjax.deep_fusion`), across the rows of a batch;
:func:`blockwise_softmax_attention` gives the same values ``block_size``
query rows at a time, never holding the whole [h, n, N] score tensor.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from tfjax.blockwise import DEFAULT_BLOCK_SIZE

Array = jax.Array


def softmax_attention(q: Array, k: Array, v: Array) -> Array:
  """Multi-head softmax attention of ``n`` query rows over ``N`` key rows.

  ``q`` [n, h, c], ``k`` [N, h, c], ``v`` [N, h, c_v] -> [n, h, c_v]:
  ``out[i, a] = Σ_j softmax_j(q[i, a]·k[j, a] / √c) v[j, a]``, per head a.
  No mask: every query row attends to every key row, its own included.
  """
  scores = jnp.einsum("nhc,mhc->hnm", q, k) / math.sqrt(q.shape[-1])
  weights = jax.nn.softmax(scores, axis=-1)
  return jnp.einsum("hnm,mhc->nhc", weights, v)


def blockwise_softmax_attention(
  q: Array, k: Array, v: Array, *, block_size: int = DEFAULT_BLOCK_SIZE
) -> Array:
  """:func:`softmax_attention` computed ``block_size`` query rows at a time.

  Same shapes and values.  The query rows are padded to a multiple of
  ``block_size`` and mapped over with ``lax.map``; each block's body is
  rematerialised (``jax.checkpoint``), so forward and backward hold one
  [h, block_size, N] block of scores instead of the whole [h, n, N] (the
  backward recomputes each block's scores once).  Each row's softmax is
  exact: a query block sees all N keys.
  """
  if isinstance(block_size, bool) or not isinstance(block_size, int) or (block_size < 1):
    raise ValueError(f"block_size must be a positive int, got {block_size!r}")
  n = q.shape[0]
  size = min(block_size, n)
  num_blocks = -(-n // size)
  padded = jnp.pad(q, ((0, num_blocks * size - n), (0, 0), (0, 0)))
  blocks = padded.reshape((num_blocks, size) + q.shape[1:])
  attend = jax.checkpoint(lambda q_block: softmax_attention(q_block, k, v))
  out = jax.lax.map(attend, blocks)
  return out.reshape((num_blocks * size,) + out.shape[2:])[:n]
