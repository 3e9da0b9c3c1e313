"""Deep Fusion: the v2 head of arXiv 2403.18681 (softmax attention + FFN, NT-Xent).

The paper's second version replaces TransFusion's ReLU attention and
JSD-to-target loss (:mod:`tfjax.models`) with transformer encoder blocks
applied *across the samples of the batch* — the batch rows are the sequence —
and trains their output with NT-Xent (:func:`tfjax.losses.info_nce`).
Layout, following the authors' code (docs/deep_fusion.md)::

    x [n, d_in] ─▶ Dense(width) ─▶ DeepFusionBlock ×L ─▶ Dense(out) ─▶ [n, out]

One :class:`DeepFusionBlock` (``norm="post"``, the authors' placement)::

    x ← LayerNorm(x + MHA(x));   x ← LayerNorm(x + FFN(x))

with ``MHA`` multi-head softmax attention whose queries, keys and values are
all rows of the (global) batch — each row attends to every row, itself
included — and ``FFN(x) = act(x W₁ + b₁) W₂ + b₂`` of hidden width
``mlp_ratio · width``.  ``norm="pre"`` gives x ← x + MHA(LN(x)),
x ← x + FFN(LN(x)).  There is no dropout (the authors' attention and FFN have
none).

Under ``jax.pmap`` with ``axis_name`` every block all-gathers its keys and
values (:func:`tfjax.fusion_blocks.gather_batch`), so each device computes its rows
of attention over the *global* batch, and :meth:`DeepFusionHead.loss`
reduces NT-Xent over the global batch: one device and several give the same
numbers.

``implementation="blockwise"`` computes the same attention a block of
``block_size`` query rows at a time
(:func:`tfjax.softmax_attention.blockwise_softmax_attention`):
the h×n×N score tensor is never held whole, in the forward or the backward
pass.
"""

from __future__ import annotations

import math
from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from tfjax.blockwise import DEFAULT_BLOCK_SIZE
from tfjax.fusion_blocks import IMPLEMENTATIONS, gather_batch
from tfjax.losses import info_nce
from tfjax.softmax_attention import blockwise_softmax_attention, softmax_attention

Array = jax.Array

# The FFN's activation: exact (erf) GELU as in the authors' code, or ReLU.
ACTIVATIONS = {"gelu": lambda x: nn.gelu(x, approximate=False), "relu": nn.relu}
# Where each block's LayerNorms sit: after the residual sum (the authors') or
# before the sublayer.
NORM_PLACEMENTS = ("post", "pre")
LAYER_NORM_EPSILON = 1e-5  # the authors' (PyTorch's) LayerNorm default


def _check_choice(name: str, value, choices) -> None:
  if value not in choices:
    raise ValueError(f"unknown {name} {value!r}; choose one of {tuple(choices)}")


class BatchAttention(nn.Module):
  """Multi-head softmax self-attention across the rows of the (global) batch.

  ``__call__(x [n, d]) -> [n, d]``: q, k, v = x W + b split into
  ``num_heads`` heads of width d / num_heads; keys and values all-gathered
  over ``axis_name``; :func:`tfjax.softmax_attention.softmax_attention`
  (or its blockwise form);
  heads concatenated and projected back to d (W_o, b_o).
  """

  num_heads: int = 8
  axis_name: Optional[str] = None
  implementation: str = "dense"
  block_size: int = DEFAULT_BLOCK_SIZE

  @nn.compact
  def __call__(self, x: Array) -> Array:
    _check_choice("implementation", self.implementation, IMPLEMENTATIONS)
    width = x.shape[-1]
    if self.num_heads < 1 or width % self.num_heads:
      raise ValueError(
        f"Deep Fusion width {width} is not divisible by "
        f"num_heads={self.num_heads} (set deep_fusion.features "
        "or deep_fusion.num_heads)"
      )
    shape = (self.num_heads, width // self.num_heads)
    q = nn.DenseGeneral(shape, name="query")(x)
    k = nn.DenseGeneral(shape, name="key")(x)
    v = nn.DenseGeneral(shape, name="value")(x)
    k_all, _ = gather_batch(k, self.axis_name)
    v_all, _ = gather_batch(v, self.axis_name)
    if self.implementation == "blockwise":
      out = blockwise_softmax_attention(q, k_all, v_all, block_size=self.block_size)
    else:
      out = softmax_attention(q, k_all, v_all)
    return nn.DenseGeneral(width, axis=(-2, -1), name="out")(out)


class FeedForward(nn.Module):
  """The per-row MLP of a block: ``act(x W₁ + b₁) W₂ + b₂``, [n, d] -> [n, d]."""

  hidden: int
  activation: str = "gelu"

  @nn.compact
  def __call__(self, x: Array) -> Array:
    _check_choice("activation", self.activation, ACTIVATIONS)
    h = ACTIVATIONS[self.activation](nn.Dense(self.hidden, name="hidden")(x))
    return nn.Dense(x.shape[-1], name="output")(h)


class DeepFusionBlock(nn.Module):
  """One transformer encoder block across the batch rows, [n, d] -> [n, d].

  ``norm="post"`` (the authors'): x ← LN₁(x + MHA(x)); x ← LN₂(x + FFN(x)).
  ``norm="pre"``: x ← x + MHA(LN₁(x)); x ← x + FFN(LN₂(x)).  LN is
  LayerNorm over the features with ε = 1e-5, two-pass variance; the FFN's
  hidden width is ``round(mlp_ratio · d)``.
  """

  num_heads: int = 8
  mlp_ratio: float = 4.0
  activation: str = "gelu"
  norm: str = "post"
  axis_name: Optional[str] = None
  implementation: str = "dense"
  block_size: int = DEFAULT_BLOCK_SIZE

  @nn.compact
  def __call__(self, x: Array) -> Array:
    _check_choice("norm", self.norm, NORM_PLACEMENTS)
    attend = BatchAttention(
      self.num_heads, self.axis_name, self.implementation, self.block_size, name="attention"
    )
    ffn = FeedForward(max(1, round(self.mlp_ratio * x.shape[-1])), self.activation, name="mlp")
    norm_1 = nn.LayerNorm(epsilon=LAYER_NORM_EPSILON, use_fast_variance=False, name="norm_1")
    norm_2 = nn.LayerNorm(epsilon=LAYER_NORM_EPSILON, use_fast_variance=False, name="norm_2")
    if self.norm == "post":
      x = norm_1(x + attend(x))
      return norm_2(x + ffn(x))
    x = x + attend(norm_1(x))
    return x + ffn(norm_2(x))


class Linear(nn.Module):
  """``x W + b``, [n, d] -> [n, features] (default ``features``: d)."""

  features: Optional[int] = None

  @nn.compact
  def __call__(self, x: Array) -> Array:
    width = self.features or x.shape[-1]
    kernel = self.param("kernel", nn.initializers.lecun_normal(), (x.shape[-1], width))
    bias = self.param("bias", nn.initializers.zeros_init(), (width,))
    return x @ kernel + bias


class DeepFusionHead(nn.Module):
  """Deep Fusion: Dense(width) → ``num_layers`` blocks → Dense(out_features).

  ``__call__(x [n, d]) -> [n, out_features]`` (= :meth:`fuse`): the fused,
  transductive output — each row depends on every row of the (global)
  batch.  ``loss(x, groups, labels, num_views=2, temperature=τ)`` is NT-Xent
  of the two views' outputs.

  Attributes:
    num_layers: blocks L (≥ 1; the authors' default 5).
    num_heads: attention heads (the authors' default 8); must divide the width.
    features: the blocks' width (default: the input width d).
    out_features: the output width (default: the blocks' width).
    mlp_ratio: the FFN's hidden width over the blocks' width (> 0).
    activation: the FFN's activation, "gelu" (exact) or "relu".
    norm: "post" (the authors') or "pre", see :class:`DeepFusionBlock`.
    fuse_within_view: with ``num_views = V > 1`` attend within each view's
      rows only (V view-major chunks, each fused on its own) instead of across
      all V·n rows together (the authors' code feeds both views as one batch).
    axis_name: pmap axis whose devices' rows every block attends over.
    implementation: "dense" or "blockwise"
      (:func:`tfjax.softmax_attention.blockwise_softmax_attention`).
    block_size: query rows per block of the "blockwise" implementation.

  Example::

      >>> head = DeepFusionHead(num_layers=2, num_heads=4)
      >>> x = jax.random.normal(jax.random.key(0), (16, 8))
      >>> params = head.init(jax.random.key(1), x)
      >>> head.apply(params, x).shape                               # (16, 8)
      >>> groups = jnp.tile(jnp.arange(8), 2)
      >>> head.apply(params, x, groups, method=DeepFusionHead.loss)  # scalar
  """

  num_layers: int = 5
  num_heads: int = 8
  features: Optional[int] = None
  out_features: Optional[int] = None
  mlp_ratio: float = 4.0
  activation: str = "gelu"
  norm: str = "post"
  fuse_within_view: bool = False
  axis_name: Optional[str] = None
  implementation: str = "dense"
  block_size: int = DEFAULT_BLOCK_SIZE

  def setup(self):
    check_options(
      num_layers=self.num_layers,
      num_heads=self.num_heads,
      features=self.features,
      out_features=self.out_features,
      mlp_ratio=self.mlp_ratio,
      activation=self.activation,
      norm=self.norm,
      implementation=self.implementation,
      block_size=self.block_size,
    )
    self._input = Linear(self.features, name="input")
    self._output = Linear(self.out_features, name="output")
    self.blocks = [
      DeepFusionBlock(
        self.num_heads,
        self.mlp_ratio,
        self.activation,
        self.norm,
        self.axis_name,
        self.implementation,
        self.block_size,
        name=f"block_{i}",
      )
      for i in range(self.num_layers)
    ]

  def fuse(self, x: Array, num_views: int = 1) -> Array:
    """The head's output [n, out_features] of rows ``x`` [n, d].

    With ``fuse_within_view`` and ``num_views = V > 1`` the rows are V
    view-major chunks, each fused on its own.
    """
    if x.ndim != 2:
      raise ValueError(f"DeepFusionHead expects [n, d] inputs, got {x.shape}")
    if self.fuse_within_view and num_views > 1:
      if x.shape[0] % num_views:
        raise ValueError(f"{x.shape[0]} rows do not split into {num_views} views")
      n = x.shape[0] // num_views
      h = jnp.concatenate(
        [self._blocks(self._input(x[v * n : (v + 1) * n])) for v in range(num_views)]
      )
    else:
      h = self._blocks(self._input(x))
    return self._output(h)

  def _blocks(self, h):
    for block in self.blocks:
      h = block(h)
    return h

  def __call__(self, x: Array, num_views: int = 1) -> Array:
    return self.fuse(x, num_views)

  def loss(
    self,
    x: Array,
    groups: Array,
    labels: Optional[Array] = None,
    num_views: int = 2,
    *,
    temperature: float = 0.1,
  ) -> Array:
    """NT-Xent (:func:`tfjax.losses.info_nce`) of the head's output.

    ``x`` [2n, d] holds two view-major chunks (rows i and n + i are views of
    one source: the positives); ``groups``/``labels`` are accepted for the
    step's common head interface and unused — NT-Xent's target is the view
    pairing.  Under pmap the negatives span the global batch and the result
    is the global mean.
    """
    del groups, labels
    if num_views != 2:
      raise ValueError(f"Deep Fusion's NT-Xent takes exactly 2 views, got num_views={num_views}")
    out = self.fuse(x, num_views)
    n = out.shape[0] // 2
    return info_nce(out[:n], out[n:], temperature=temperature, axis_name=self.axis_name)


def check_options(
  *,
  num_layers,
  num_heads,
  features,
  out_features,
  mlp_ratio,
  activation,
  norm,
  implementation,
  block_size,
  prefix: str = "",
) -> None:
  """ValueError naming the first bad Deep Fusion option (``prefix`` + name)."""

  def positive_int(name, value, optional=False):
    if optional and value is None:
      return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
      raise ValueError(
        f"{prefix}{name} must be a positive int{' (or None)' if optional else ''}, got {value!r}"
      )

  positive_int("num_layers", num_layers)
  positive_int("num_heads", num_heads)
  positive_int("features", features, optional=True)
  positive_int("out_features", out_features, optional=True)
  positive_int("block_size", block_size)
  if (
    isinstance(mlp_ratio, bool)
    or not isinstance(mlp_ratio, (int, float))
    or (not math.isfinite(mlp_ratio) or mlp_ratio <= 0)
  ):
    raise ValueError(f"{prefix}mlp_ratio must be finite and > 0, got {mlp_ratio!r}")
  for name, value, choices in (
    ("activation", activation, ACTIVATIONS),
    ("norm", norm, NORM_PLACEMENTS),
    ("implementation", implementation, IMPLEMENTATIONS),
  ):
    if value not in choices:
      raise ValueError(f"unknown {prefix}{name} {value!r}; choose one of {tuple(choices)}")
  if features is not None and features % num_heads:
    raise ValueError(
      f"{prefix}features={features} is not divisible by {prefix}num_heads={num_heads}"
    )


def head_from_config(config, axis_name: Optional[str] = None) -> DeepFusionHead:
  """The :class:`DeepFusionHead` of ``config.deep_fusion``, its fields checked.

  Without ``deep_fusion.features`` the blocks' width is the embedding width
  (``embed_dim``), which must then divide by ``num_heads`` (checked here when
  the projector sets it; with ``embed_dim = 0`` at initialisation).
  """
  opts = config.deep_fusion
  check_options(
    num_layers=opts.num_layers,
    num_heads=opts.num_heads,
    features=opts.features,
    out_features=opts.out_features,
    mlp_ratio=opts.mlp_ratio,
    activation=opts.activation,
    norm=opts.norm,
    implementation=opts.implementation,
    block_size=opts.block_size,
    prefix="deep_fusion.",
  )
  if opts.features is None and config.embed_dim and (config.embed_dim % opts.num_heads):
    raise ValueError(
      f"deep_fusion.num_heads={opts.num_heads} does not divide "
      f"the head's width embed_dim={config.embed_dim}; set "
      "deep_fusion.features or deep_fusion.num_heads"
    )
  return DeepFusionHead(
    num_layers=opts.num_layers,
    num_heads=opts.num_heads,
    features=opts.features,
    out_features=opts.out_features,
    mlp_ratio=float(opts.mlp_ratio),
    activation=opts.activation,
    norm=opts.norm,
    fuse_within_view=bool(opts.fuse_within_view),
    axis_name=axis_name,
    implementation=opts.implementation,
    block_size=opts.block_size,
  )
