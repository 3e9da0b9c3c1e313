"""TransFusion's head as a Flax linen module over :mod:`tfjax.fusion_blocks`.

Layout (docs/design.md, "Model")::

    x ──▶ FusionBlock ×(L−1) ──▶ AdjacencyBlock ──▶ A_L  [n, n]
             │ fused (transductive) features X_{L−1}

:class:`TransFusionHead` stacks ``num_layers − 1`` fusion blocks and the
truncated adjacency block (:mod:`tfjax.fusion_blocks`: the blocks, their
LayerNorm and projections, the all-gather under ``jax.pmap``).  With
``implementation="blockwise"``, :meth:`TransFusionHead.loss` fuses the
truncated block with the JSD loss, so no n×N matrix is ever formed;
``__call__`` still returns the full adjacency (it is its output).

``compute_dtype`` (e.g. ``jnp.bfloat16``; None: the inputs' dtype) is every
block's compute dtype (:mod:`tfjax.precision`); the parameters, the fused
features :meth:`TransFusionHead.fuse` returns, the adjacency and the loss
are float32.  :func:`check_head_options` checks the config's ``head``
block; :func:`tie_query_key` and :func:`uniform_row_fraction` are the
head's initialisation option and its dead-row diagnostic.
"""

from __future__ import annotations

from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from tfjax.affinity import jsd_loss, target_affinity
from tfjax.attention import Activation, get_activation
from tfjax.blockwise import DEFAULT_BLOCK_SIZE
from tfjax.fusion_blocks import (
  IMPLEMENTATIONS,
  PROJECTIONS,
  AdjacencyBlock,
  FusionBlock,
  check_implementation,
  gather_batch,
)
from tfjax.precision import at_least_float32

Array = jax.Array


def uniform_row_fraction(a: Array, diagonal_offset=0) -> Array:
  """Fraction of rows of an adjacency [n, N] that are uniform off the diagonal.

  With ReLU a row whose cosines are all ≤ 0 has no positive weight and is
  made uniform by the ε rule: a "dead" row, which passes no gradient.  A row
  counts as uniform when its largest and smallest off-diagonal entries agree
  to 1e-6 of their mean.
  """
  n, m = a.shape
  off = ~(jnp.arange(m)[None, :] == (jnp.arange(n) + diagonal_offset)[:, None])
  hi = jnp.max(jnp.where(off, a, -jnp.inf), axis=1)
  lo = jnp.min(jnp.where(off, a, jnp.inf), axis=1)
  return jnp.mean((hi - lo <= 1e-6 / max(m - 1, 1)).astype(jnp.float32))


def tie_query_key(head_params):
  """Head parameters with every block's key projection set to its query's.

  An initialisation option (``head.tie_qk_init``): with independent random
  W_q and W_k a row's score for its positive is no larger than for any other
  row, so the initial adjacency is worse than uniform; tied, ``q_i·k_j``
  starts as a cosine in a random projection, which already favours
  near-duplicates.  The two are trained separately afterwards.
  """
  out = dict(head_params)
  for name, block in head_params.items():
    if "query" in block and "key" in block:
      # A copy, not an alias: the training step donates its buffers.
      out[name] = dict(block, key=jax.tree.map(jnp.copy, block["query"]))
  return out


class TransFusionHead(nn.Module):
  """TransFusion: ``num_layers − 1`` fusion blocks and a truncated last block.

  ``__call__(x [n, d]) -> adjacency [n, N]`` (N = n on one device, the global
  batch under pmap with ``axis_name``); rows sum to 1, zero diagonal.
  ``fuse(x) -> [n, d]`` returns the transductive features X_{L−1}; they
  depend on the other samples of the batch.  ``loss(x, groups, labels)``
  returns the JSD loss against the target affinity of the (global) batch.
  ``implementation="blockwise"`` computes the same numbers without any n×N
  matrix in ``fuse`` and ``loss`` (``block_size`` keys at a time); see
  :mod:`tfjax.blockwise`.  ``compute_dtype`` (e.g. ``jnp.bfloat16``) is the
  blocks' compute dtype; the outputs of ``fuse``, ``__call__`` and ``loss``
  are float32.

  Example::

      >>> head = TransFusionHead(num_layers=3)
      >>> x = jax.random.normal(jax.random.key(0), (16, 8))
      >>> params = head.init(jax.random.key(1), x)
      >>> head.apply(params, x).shape                          # (16, 16)
      >>> head.apply(params, x, method=TransFusionHead.fuse).shape  # (16, 8)
  """

  num_layers: int = 5
  features: Optional[int] = None
  activation: Activation = "relu"
  axis_name: Optional[str] = None
  implementation: str = "dense"
  block_size: int = DEFAULT_BLOCK_SIZE
  compute_dtype: Optional[Any] = None
  final_projection: str = "learned"
  fuse_within_view: bool = False

  def setup(self):
    if self.num_layers < 1:
      raise ValueError(f"num_layers must be >= 1, got {self.num_layers}")
    check_implementation(self.implementation)
    options = dict(
      implementation=self.implementation,
      block_size=self.block_size,
      compute_dtype=self.compute_dtype,
    )
    self.blocks = [
      FusionBlock(self.features, self.activation, self.axis_name, name=f"fusion_{i}", **options)
      for i in range(self.num_layers - 1)
    ]
    self.final = AdjacencyBlock(
      self.features,
      self.activation,
      self.axis_name,
      name="adjacency",
      projection=self.final_projection,
      **options,
    )

  def fuse(self, x: Array, num_views: int = 1) -> Array:
    """Transductive fused features X_{L−1} [n, d].

    With ``fuse_within_view`` and ``num_views = V > 1`` the rows of ``x`` are
    V view-major chunks and each chunk is fused on its own (attention spans
    one view of the batch, as in the authors' code); otherwise attention
    spans all rows.  Float32 (or wider) whatever ``compute_dtype``.
    """
    if x.ndim != 2:
      raise ValueError(f"TransFusionHead expects [n, d] inputs, got {x.shape}")
    if self.fuse_within_view and num_views > 1:
      if x.shape[0] % num_views:
        raise ValueError(f"{x.shape[0]} rows do not split into {num_views} views")
      n = x.shape[0] // num_views
      return jnp.concatenate([self.fuse(x[v * n : (v + 1) * n]) for v in range(num_views)])
    for block in self.blocks:
      x = block(x)
    return at_least_float32(x)

  def __call__(self, x: Array, num_views: int = 1) -> Array:
    return self.final(self.fuse(x, num_views))

  def loss(
    self, x: Array, groups: Array, labels: Optional[Array] = None, num_views: int = 1
  ) -> Array:
    """JSD between this head's adjacency and the target of ``groups``/``labels``.

    Under pmap the groups and labels of all devices are gathered so that the
    target's columns, like the adjacency's, span the global batch.  With
    ``implementation="blockwise"`` the truncated block and the loss are fused
    (:meth:`AdjacencyBlock.loss`): same value, O(n·block_size) memory.  The
    dense path also records the fraction of uniform ("dead") adjacency rows
    in the ``diagnostics`` collection (``uniform_rows``).  ``num_views``:
    see :meth:`fuse`.
    """
    if self.implementation == "blockwise":
      return self.final.loss(self.fuse(x, num_views), groups, labels)
    a = self(x, num_views)
    column_groups, offset = gather_batch(groups, self.axis_name)
    frac = uniform_row_fraction(a, offset)
    if self.axis_name is not None:
      frac = jax.lax.pmean(frac, self.axis_name)
    self.sow("diagnostics", "uniform_rows", frac)
    column_labels = None if labels is None else gather_batch(labels, self.axis_name)[0]
    target = target_affinity(
      groups,
      labels,
      column_groups=column_groups,
      column_labels=column_labels,
      diagonal_offset=offset,
      dtype=a.dtype,
    )
    return jsd_loss(a, target, axis_name=self.axis_name)


def check_head_options(head) -> None:
  """Raises ValueError naming the ``head.*`` field (the config's ``head``
  block) that cannot build a :class:`TransFusionHead`: names, sizes and the
  blockwise options (``head.compute_dtype`` is checked with ``compute_dtype``
  by :func:`tfjax.precision.compute_dtypes`)."""
  if head.final_projection not in PROJECTIONS:
    raise ValueError(
      f"unknown head.final_projection {head.final_projection!r}; choose one of {PROJECTIONS}"
    )
  if head.num_layers < 1:
    raise ValueError(f"head.num_layers must be >= 1, got {head.num_layers}")
  get_activation(head.activation)  # unknown activation -> ValueError
  impl = head.get("implementation", "dense")
  if impl not in IMPLEMENTATIONS:
    raise ValueError(f"unknown head.implementation {impl!r}; choose one of {IMPLEMENTATIONS}")
  if impl == "dense":
    return
  block_size = head.block_size
  if isinstance(block_size, bool) or not isinstance(block_size, int) or (block_size < 1):
    raise ValueError(f"head.block_size must be a positive int, got {block_size!r}")
