"""TransFusion as Flax linen modules over the pure functions of ``tfjax.attention``.

Layout (docs/design.md, "Model")::

    x ──▶ FusionBlock ×(L−1) ──▶ AdjacencyBlock ──▶ A_L  [n, n]
             │ fused (transductive) features X_{L−1}

A :class:`FusionBlock` is one head of ReLU attention across the samples of
the batch, with no MLP and no dropout::

    x̂ = LayerNorm(x);  Q, K, V = x̂W_q + b_q, x̂W_k + b_k, x̂W_v + b_v
    x ← adjacency(Q, K) V + x̂

The :class:`AdjacencyBlock` is the truncated last block: it stops after the
adjacency.  With ``axis_name`` set (inside ``jax.pmap``) every block
all-gathers the keys and values of all devices, so each device computes its
rows of the *global* adjacency, with the zero diagonal at global indices.

Our choice, following the authors' code rather than the paper's text: the
truncated block applies the same LayerNorm before its Q and K projections.

Every block takes ``implementation``: ``"dense"`` (default, the formulas of
:mod:`tfjax.attention` on the full n×N adjacency) or ``"blockwise"`` (the
same numbers from :mod:`tfjax.blockwise`, holding only [n, block_size]
blocks of the adjacency in forward and backward).  With ``"blockwise"``,
:meth:`TransFusionHead.loss` fuses the truncated block with the JSD loss, so
no n×N matrix is ever formed; ``__call__`` still returns the full adjacency
(it is its output).

``compute_dtype`` (e.g. ``jnp.bfloat16``; None: the inputs' dtype) is the
dtype of every block's LayerNorm output, projections and attention matmuls,
with float32 sums (:mod:`tfjax.precision`); the parameters, the fused
features :meth:`TransFusionHead.fuse` returns, the adjacency and the loss
are float32.
"""

from __future__ import annotations

from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from tfjax.affinity import jsd_loss, target_affinity
from tfjax.attention import Activation, adjacency, get_activation
from tfjax.blockwise import DEFAULT_BLOCK_SIZE, blockwise_attention, blockwise_jsd_loss
from tfjax.precision import at_least_float32

Array = jax.Array


def gather_batch(x: Array, axis_name: Optional[str]):
  """All-gathers ``x`` [n, ...] over ``axis_name`` -> ([D·n, ...], offset).

  ``offset`` is the global index of this device's first row (0 without an
  axis).  The gather's transpose is a reduce-scatter, so gradients flow back
  to the device that owns each row.
  """
  if axis_name is None:
    return x, 0
  gathered = jax.lax.all_gather(x, axis_name, tiled=True)
  return gathered, jax.lax.axis_index(axis_name) * x.shape[0]


IMPLEMENTATIONS = ("dense", "blockwise")


def _check_implementation(implementation: str) -> None:
  if implementation not in IMPLEMENTATIONS:
    raise ValueError(f"unknown implementation {implementation!r}; choose one of {IMPLEMENTATIONS}")


def _gathered_ids(groups, labels, axis_name):
  column_groups, offset = gather_batch(groups, axis_name)
  column_labels = None if labels is None else gather_batch(labels, axis_name)[0]
  return column_groups, column_labels, offset


# How the truncated block makes its queries and keys (AdjacencyBlock.projection):
# from most to fewest parameters.
PROJECTIONS = ("learned", "tied", "norm", "none")


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


class AdjacencyBlock(nn.Module):
  """Truncated block: (LayerNorm → Q, K) → adjacency [n, N] (N = global batch).

  ``__call__(x [n, d]) -> [n, N]``: :func:`tfjax.attention.adjacency` of the
  block's queries and (all-gathered) keys; rows sum to 1, zero diagonal.

  Attributes:
    projection: how Q and K are made from the input x [n, d]:

      * ``"learned"``: q = LN(x) W_q + b_q, k = LN(x) W_k + b_k (LayerNorm,
        then separate Q and K projections; our default);
      * ``"tied"``: q = k = LN(x) W + b (LayerNorm, one projection);
      * ``"norm"``: q = k = LN(x) (LayerNorm with its learned scale and
        bias, no projection): separates what the LayerNorm does from what
        the projections do.  At initialisation (scale 1, bias 0) the cosine
        of two LayerNormed rows is the Pearson correlation of x_i and x_j;
      * ``"none"``: q = k = x, no parameters (the authors' self-supervised
        loss compares the head's outputs directly).

      LN(x) = (x − mean(x)) / sqrt(var(x) + 1e-6) · scale + bias over the
      features of each row (variance computed in two passes).  Q and K have
      width ``features`` for "learned"/"tied", d otherwise.
    features: width of Q and K (default: the input width).
    activation: see :func:`tfjax.attention.adjacency`.
    axis_name: pmap axis to gather keys over (None on one device).
    implementation: "dense" or "blockwise"; only :meth:`loss` differs (the
      adjacency returned by ``__call__`` is n×N either way).
    block_size: see :func:`tfjax.blockwise.blockwise_jsd_loss`.
    compute_dtype: dtype of the LayerNorm output, the Q and K projections
      and the blockwise matmuls (None: the input's).  The adjacency of
      ``__call__`` and the dense loss is computed in float32 from the
      queries and keys (a product of two bfloat16 numbers is exact in
      float32, so this is a bfloat16 matmul with float32 sums).
  """

  features: Optional[int] = None
  activation: Activation = "relu"
  axis_name: Optional[str] = None
  implementation: str = "dense"
  block_size: int = DEFAULT_BLOCK_SIZE
  compute_dtype: Optional[Any] = None
  projection: str = "learned"

  @nn.compact
  def _query_key(self, x: Array):
    if self.projection not in PROJECTIONS:
      raise ValueError(f"unknown projection {self.projection!r}; choose one of {PROJECTIONS}")
    if self.projection == "none":
      q = k = x
    else:
      x_hat = nn.LayerNorm(name="norm", use_fast_variance=False, dtype=self.compute_dtype)(x)
      if self.projection == "norm":
        q = k = x_hat
      else:
        width = self.features or x.shape[-1]
        q = nn.Dense(width, name="query", dtype=self.compute_dtype)(x_hat)
        k = (
          q
          if self.projection == "tied"
          else nn.Dense(width, name="key", dtype=self.compute_dtype)(x_hat)
        )
    k_all, offset = gather_batch(k, self.axis_name)
    return q, k_all, offset

  def __call__(self, x: Array) -> Array:
    _check_implementation(self.implementation)
    q, k_all, offset = self._query_key(x)
    return adjacency(
      at_least_float32(q),
      at_least_float32(k_all),
      activation=self.activation,
      diagonal_offset=offset,
    )

  def loss(self, x: Array, groups: Array, labels: Optional[Array] = None) -> Array:
    """JSD loss of this block's adjacency of ``x`` [n, d] against the target.

    ``groups``/``labels`` [n] are this device's; under pmap they are gathered
    like the keys.  "dense" forms the n×N adjacency and target
    (:func:`tfjax.affinity.jsd_loss`); "blockwise" fuses both into
    :func:`tfjax.blockwise.blockwise_jsd_loss` (same value).
    """
    _check_implementation(self.implementation)
    q, k_all, offset = self._query_key(x)
    column_groups, column_labels, _ = _gathered_ids(groups, labels, self.axis_name)
    if self.implementation == "blockwise":
      return blockwise_jsd_loss(
        q,
        k_all,
        groups,
        labels,
        column_groups=column_groups,
        column_labels=column_labels,
        activation=self.activation,
        diagonal_offset=offset,
        block_size=self.block_size,
        compute_dtype=self.compute_dtype,
        axis_name=self.axis_name,
      )
    a = adjacency(
      at_least_float32(q),
      at_least_float32(k_all),
      activation=self.activation,
      diagonal_offset=offset,
    )
    target = target_affinity(
      groups,
      labels,
      column_groups=column_groups,
      column_labels=column_labels,
      diagonal_offset=offset,
      dtype=a.dtype,
    )
    return jsd_loss(a, target, axis_name=self.axis_name)


class FusionBlock(nn.Module):
  """One ReLU-attention fusion block: ``adjacency(Q, K) V + LayerNorm(x)``.

  Input and output are [n, d] (V projects back to d so that the residual
  adds up); Q and K have width ``features`` (default d).  With the "dense"
  implementation the block's adjacency is sown into the ``intermediates``
  collection as ``"adjacency"`` for inspection (``mutable=["intermediates"]``);
  "blockwise" (:func:`tfjax.blockwise.blockwise_attention`, same output)
  never forms it, so it sows nothing.  ``compute_dtype``: the dtype of the
  LayerNorm output, the projections, the attention and the output.
  """

  features: Optional[int] = None
  activation: Activation = "relu"
  axis_name: Optional[str] = None
  implementation: str = "dense"
  block_size: int = DEFAULT_BLOCK_SIZE
  compute_dtype: Optional[Any] = None

  @nn.compact
  def __call__(self, x: Array) -> Array:
    _check_implementation(self.implementation)
    width = self.features or x.shape[-1]
    # Two-pass variance (flax's default one-pass E[x²] − E[x]² loses ~1e-2
    # relative accuracy in float32 on inputs with a large common offset).
    x_hat = nn.LayerNorm(name="norm", use_fast_variance=False, dtype=self.compute_dtype)(x)
    q = nn.Dense(width, name="query", dtype=self.compute_dtype)(x_hat)
    k = nn.Dense(width, name="key", dtype=self.compute_dtype)(x_hat)
    v = nn.Dense(x.shape[-1], name="value", dtype=self.compute_dtype)(x_hat)
    k_all, offset = gather_batch(k, self.axis_name)
    v_all, _ = gather_batch(v, self.axis_name)
    if self.implementation == "blockwise":
      out = blockwise_attention(
        q,
        k_all,
        v_all,
        activation=self.activation,
        diagonal_offset=offset,
        block_size=self.block_size,
        compute_dtype=self.compute_dtype,
      )
      return out.astype(x_hat.dtype) + x_hat
    a = adjacency(q, k_all, activation=self.activation, diagonal_offset=offset)
    self.sow("intermediates", "adjacency", a)
    return a @ v_all + x_hat


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
    _check_implementation(self.implementation)
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
