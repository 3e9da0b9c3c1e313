"""Memory-efficient (blockwise) ReLU attention and the fused adjacency + JSD loss.

The dense path (:mod:`tfjax.attention`, :mod:`tfjax.affinity`) builds the
whole n×N adjacency; its forward *and* backward hold several n×N arrays, so a
batch of 16384 needs gigabytes per block.  The functions here compute exactly
the same quantities while holding only one [n, B] block of key columns at a
time (B = ``block_size``), in the forward and in the backward pass.

* :mod:`tfjax.blockwise.attention` — :func:`blockwise_attention`, ``A v``;
* :mod:`tfjax.blockwise.jsd` — :func:`blockwise_row_jsd` and
  :func:`blockwise_jsd_loss`, the adjacency fused with TransFusion's loss;
* :mod:`tfjax.blockwise._common` — block layout, dtypes and the L2-norm
  backward shared by both.

All are re-exported here (``from tfjax.blockwise import blockwise_attention,
blockwise_jsd_loss, DEFAULT_BLOCK_SIZE``).

Notation (one device's n rows against N keys; ``o`` = ``diagonal_offset``)::

    q̂ = rownorm(q), k̂ = rownorm(k),  C = q̂ k̂ᵀ
    W_ij = act(C_ij) + ε  on the allowed entries (j ≠ i + o, j < N), else 0
    s_i = Σ_j W_ij,       A_ij = W_ij / s_i                (ε = ROW_EPS)

Both ``jax.custom_vjp`` functions loop over key blocks with ``lax.scan``; N
need not be a multiple of ``block_size`` (the keys are padded with masked
columns).  Optional ``compute_dtype`` (e.g. ``jnp.bfloat16``) runs the
matmuls in that dtype with ``preferred_element_type=float32``; every sum is
accumulated in float32 (or wider when the inputs are float64).

Peak memory per call is O(n·B + (n + N)·h) instead of O(n·N).  (How many
O(n·h) buffers a whole training step keeps alive is up to XLA's scheduler; on
CPU its default concurrency-optimised schedule keeps about twice as many:
see :mod:`tfjax.runtime`.)  The cost is recomputation: the attention does
7 n×N×h-sized matmuls per training step instead of 6, the truncated block 5
instead of 3.

Under ``jax.pmap`` the caller gathers keys/values/ids of all devices (e.g.
:func:`tfjax.fusion_blocks.gather_batch`) and passes ``diagonal_offset`` = global
index of its first row; :func:`blockwise_jsd_loss` takes ``axis_name`` and
reduces with ``psum`` exactly like :func:`tfjax.affinity.jsd_loss`.
"""

from tfjax.blockwise._common import DEFAULT_BLOCK_SIZE, _normalize_bwd  # noqa: F401
from tfjax.blockwise.attention import blockwise_attention
from tfjax.blockwise.jsd import blockwise_jsd_loss, blockwise_row_jsd

__all__ = ["DEFAULT_BLOCK_SIZE", "blockwise_attention", "blockwise_row_jsd", "blockwise_jsd_loss"]
