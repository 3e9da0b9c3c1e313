"""TransFusion's blocks as Flax linen modules over :mod:`tfjax.attention`.

A :class:`FusionBlock` is one head of ReLU attention across the samples of
the batch, with no MLP and no dropout, [n, d] -> [n, d]::

    x̂ = LayerNorm(x);  Q, K, V = x̂W_q + b_q, x̂W_k + b_k, x̂W_v + b_v
    x ← adjacency(Q, K) V + x̂

The :class:`AdjacencyBlock` is the truncated last block: it stops after the
adjacency, [n, d] -> [n, N].  With ``axis_name`` set (inside ``jax.pmap``)
every block all-gathers the keys and values of all devices
(:func:`gather_batch`), so each device computes its rows of the *global*
adjacency, with the zero diagonal at global indices.

Our choice, following the authors' code rather than the paper's text: the
truncated block applies the same LayerNorm before its Q and K projections.

Every block takes ``implementation`` (:data:`IMPLEMENTATIONS`): ``"dense"``
(default, the formulas of :mod:`tfjax.attention` on the full n×N adjacency)
or ``"blockwise"`` (the same numbers from :mod:`tfjax.blockwise`, holding
only [n, block_size] blocks of the adjacency in forward and backward), and
``compute_dtype`` (e.g. ``jnp.bfloat16``; None: the inputs' dtype), the
dtype of the LayerNorm output, projections and attention matmuls, with
float32 sums (:mod:`tfjax.precision`).  :class:`tfjax.models.TransFusionHead`
stacks them.
"""

from __future__ import annotations

from typing import Any, Optional

import flax.linen as nn
import jax

from tfjax.affinity import jsd_loss, target_affinity
from tfjax.attention import Activation, adjacency
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


def check_implementation(implementation: str) -> None:
  """ValueError unless ``implementation`` is one of :data:`IMPLEMENTATIONS`."""
  if implementation not in IMPLEMENTATIONS:
    raise ValueError(f"unknown implementation {implementation!r}; choose one of {IMPLEMENTATIONS}")


def _gathered_ids(groups, labels, axis_name):
  column_groups, offset = gather_batch(groups, axis_name)
  column_labels = None if labels is None else gather_batch(labels, axis_name)[0]
  return column_groups, column_labels, offset


# How the truncated block makes its queries and keys (AdjacencyBlock.projection):
# from most to fewest parameters.
PROJECTIONS = ("learned", "tied", "norm", "none")


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
    check_implementation(self.implementation)
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
    check_implementation(self.implementation)
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
    check_implementation(self.implementation)
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
