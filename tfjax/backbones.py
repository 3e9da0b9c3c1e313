"""Backbones: per-sample feature extractors (the *inductive* representation).

Each backbone maps one batch of inputs to features [n, features] and never
mixes samples (BatchNorm statistics aside, which only act in training).
All share the call signature ``__call__(x, train=False) -> [n, out]``; in
training (``train=True``, ``mutable=["batch_stats"]``) BatchNorm uses batch
statistics, reduced across devices over ``axis_name`` under ``jax.pmap``; in
evaluation it uses the running averages and the output is deterministic.

* :class:`MLP` — vectors [n, d];
* :class:`CNN1D` — signals [n, L, C] (MNIST-1D);
* :class:`SmallCNN` — small images [n, H, W, C] (8×8 digits, 32×32 CIFAR);
* :class:`ResNet18` — CIFAR-style ResNet-18.

``get_backbone(name, **kwargs)`` builds one by name from :data:`BACKBONES`.

Every backbone takes ``dtype``, the dtype its layers compute in (e.g.
``jnp.bfloat16``; None: the inputs' and parameters' dtype, float32).  The
parameters stay float32 and BatchNorm reduces its statistics in float32 and
keeps its running averages in float32 (:mod:`tfjax.precision`); the output
is in ``dtype``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional, Sequence

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp

Array = jax.Array


class MLP(nn.Module):
  """Dense → (BatchNorm) → ReLU stacks for vector data: [n, ...] -> [n, out].

  Inputs with more than two axes are flattened per sample.  With
  ``batch_norm`` the statistics are taken over the batch in training
  (``train=True``, mutable ``batch_stats``), across devices when
  ``axis_name`` is set.  The last layer is linear.

  Example::

      >>> mlp = MLP(hidden=(32,), out_features=16)
      >>> variables = mlp.init(jax.random.key(0), jnp.ones((4, 8)))
      >>> mlp.apply(variables, jnp.ones((4, 8))).shape   # (4, 16)
  """

  hidden: Sequence[int] = (256,)
  out_features: int = 128
  batch_norm: bool = False
  axis_name: Optional[str] = None
  dtype: Optional[Any] = None

  @nn.compact
  def __call__(self, x: Array, train: bool = False) -> Array:
    x = x.reshape((x.shape[0], -1))
    for width in self.hidden:
      x = nn.Dense(width, dtype=self.dtype)(x)
      if self.batch_norm:
        x = nn.BatchNorm(
          use_running_average=not train,
          momentum=0.9,
          axis_name=self.axis_name if train else None,
          dtype=self.dtype,
        )(x)
      x = nn.relu(x)
    return nn.Dense(self.out_features, dtype=self.dtype)(x)


def _batch_norm(
  train: bool, axis_name: Optional[str], name: Optional[str] = None, dtype: Optional[Any] = None
):
  """BatchNorm with batch statistics (across ``axis_name``) only in training."""
  return nn.BatchNorm(
    use_running_average=not train,
    momentum=0.9,
    epsilon=1e-5,
    axis_name=axis_name if train else None,
    name=name,
    dtype=dtype,
  )


def _check_ndim(name: str, x: Array, expected: Sequence[int], layout: str):
  """Asserts (chex) that ``x`` has one of the ranks in ``expected``."""
  chex.assert_rank(x, set(expected), custom_message=f"{name} expects inputs shaped {layout}")


class CNN1D(nn.Module):
  """Small 1-D CNN for signals: [n, L, C] (or [n, L]) -> [n, out_features].

  ``len(channels)`` blocks of Conv1D(kernel, 'SAME') → BatchNorm → ReLU
  (no pooling inside; the sequence length is kept), then global average
  pooling over L and a Dense layer to ``out_features``.  Sizes are our
  choice (32/64/64 channels, kernel 5) for MNIST-1D (L = 40, C = 1); an
  input [n, L] is read as one channel.

  Example::

      >>> net = CNN1D(out_features=16)
      >>> x = jnp.ones((4, 40, 1))
      >>> v = net.init(jax.random.key(0), x)
      >>> net.apply(v, x).shape                                    # (4, 16)
      >>> y, upd = net.apply(v, x, train=True, mutable=["batch_stats"])
  """

  channels: Sequence[int] = (32, 64, 64)
  kernel_size: int = 5
  out_features: int = 128
  axis_name: Optional[str] = None
  dtype: Optional[Any] = None

  @nn.compact
  def __call__(self, x: Array, train: bool = False) -> Array:
    _check_ndim("CNN1D", x, (2, 3), "[n, L, C] or [n, L]")
    if x.ndim == 2:
      x = x[..., None]
    for width in self.channels:
      x = nn.Conv(width, (self.kernel_size,), padding="SAME", use_bias=False, dtype=self.dtype)(x)
      x = _batch_norm(train, self.axis_name, dtype=self.dtype)(x)
      x = nn.relu(x)
    x = jnp.mean(x, axis=1)
    return nn.Dense(self.out_features, dtype=self.dtype)(x)


class SmallCNN(nn.Module):
  """Small 2-D CNN for images: [n, H, W, C] (or [n, H, W]) -> [n, out_features].

  For each width in ``channels``: Conv 3×3 'SAME' → BatchNorm → ReLU, then a
  2×2 max-pool only while both spatial sizes are at least 4 (so 8×8 digits
  pool 8→4→2 and 32×32 CIFAR pools 32→16→8→4), then global average pooling
  and a Dense layer to ``out_features``.  Sizes (32/64/128) are our choice.

  Example::

      >>> net = SmallCNN(out_features=10)
      >>> x = jnp.ones((2, 8, 8, 1))
      >>> net.apply(net.init(jax.random.key(0), x), x).shape      # (2, 10)
  """

  channels: Sequence[int] = (32, 64, 128)
  out_features: int = 128
  axis_name: Optional[str] = None
  dtype: Optional[Any] = None

  @nn.compact
  def __call__(self, x: Array, train: bool = False) -> Array:
    _check_ndim("SmallCNN", x, (3, 4), "[n, H, W, C] or [n, H, W]")
    if x.ndim == 3:
      x = x[..., None]
    for width in self.channels:
      x = nn.Conv(width, (3, 3), padding="SAME", use_bias=False, dtype=self.dtype)(x)
      x = _batch_norm(train, self.axis_name, dtype=self.dtype)(x)
      x = nn.relu(x)
      if x.shape[1] >= 4 and x.shape[2] >= 4:
        x = nn.max_pool(x, (2, 2), strides=(2, 2))
    x = jnp.mean(x, axis=(1, 2))
    return nn.Dense(self.out_features, dtype=self.dtype)(x)


class BasicBlock(nn.Module):
  """ResNet basic block: two 3×3 convs with BN, identity or 1×1 projection shortcut.

  [n, H, W, C] -> [n, H/stride, W/stride, features].
  """

  features: int
  stride: int = 1
  axis_name: Optional[str] = None
  dtype: Optional[Any] = None

  @nn.compact
  def __call__(self, x: Array, train: bool = False) -> Array:
    s = (self.stride, self.stride)
    y = nn.Conv(
      self.features,
      (3, 3),
      strides=s,
      padding=((1, 1), (1, 1)),
      use_bias=False,
      name="conv1",
      dtype=self.dtype,
    )(x)
    y = nn.relu(_batch_norm(train, self.axis_name, name="bn1", dtype=self.dtype)(y))
    y = nn.Conv(
      self.features,
      (3, 3),
      padding=((1, 1), (1, 1)),
      use_bias=False,
      name="conv2",
      dtype=self.dtype,
    )(y)
    # Zero-init of the last BN scale is a common trick; we keep scale = 1
    # (our choice, as in the plain CIFAR ResNet-18 used by SimCLR repos).
    y = _batch_norm(train, self.axis_name, name="bn2", dtype=self.dtype)(y)
    if self.stride != 1 or x.shape[-1] != self.features:
      x = nn.Conv(
        self.features, (1, 1), strides=s, use_bias=False, name="shortcut_conv", dtype=self.dtype
      )(x)
      x = _batch_norm(train, self.axis_name, name="shortcut_bn", dtype=self.dtype)(x)
    return nn.relu(y + x)


class ResNet18(nn.Module):
  """CIFAR-style ResNet-18: [n, H, W, C] -> [n, out_features or 512·width].

  3×3 stem conv (stride 1, no max-pool) → BN → ReLU, four stages of two
  :class:`BasicBlock` with widths 64/128/256/512 (× ``width``, at least 1
  channel) and strides 1/2/2/2, global average pooling.  With
  ``out_features=None`` the pooled features (512·width) are returned; with an
  integer a final Dense maps to it.  About 11.2M parameters at width 1.

  Example::

      >>> net = ResNet18(width=0.125)
      >>> x = jnp.ones((2, 32, 32, 3))
      >>> net.apply(net.init(jax.random.key(0), x), x).shape      # (2, 64)
  """

  width: float = 1.0
  out_features: Optional[int] = None
  axis_name: Optional[str] = None
  dtype: Optional[Any] = None

  @nn.compact
  def __call__(self, x: Array, train: bool = False) -> Array:
    _check_ndim("ResNet18", x, (4,), "[n, H, W, C]")
    if self.width <= 0:
      raise ValueError(f"ResNet18 width must be > 0, got {self.width}")
    widths = [max(1, int(round(w * self.width))) for w in (64, 128, 256, 512)]
    x = nn.Conv(
      widths[0],
      (3, 3),
      padding=((1, 1), (1, 1)),
      use_bias=False,
      name="stem_conv",
      dtype=self.dtype,
    )(x)
    x = nn.relu(_batch_norm(train, self.axis_name, name="stem_bn", dtype=self.dtype)(x))
    for stage, (features, blocks) in enumerate(zip(widths, (2, 2, 2, 2))):
      for block in range(blocks):
        stride = 2 if (stage > 0 and block == 0) else 1
        x = BasicBlock(
          features,
          stride,
          self.axis_name,
          dtype=self.dtype,
          name=f"stage{stage + 1}_block{block + 1}",
        )(x, train)
    x = jnp.mean(x, axis=(1, 2))
    if self.out_features is not None:
      x = nn.Dense(self.out_features, name="head", dtype=self.dtype)(x)
    return x


BACKBONES = {"mlp": MLP, "cnn1d": CNN1D, "small_cnn": SmallCNN, "resnet18": ResNet18}


def get_backbone(name: str, **kwargs) -> nn.Module:
  """Builds a backbone by name: ``get_backbone("resnet18", width=0.5)``.

  Known names: ``"mlp"``, ``"cnn1d"``, ``"small_cnn"``, ``"resnet18"``;
  keyword arguments are the module's attributes.  Unknown names raise
  ValueError listing the known ones; unknown attributes raise TypeError.
  """
  if not isinstance(name, str) or name.lower() not in BACKBONES:
    raise ValueError(f"unknown backbone {name!r}; known: {sorted(BACKBONES)}")
  return BACKBONES[name.lower()](**kwargs)


def check_backbone_kwargs(name: str, kwargs) -> None:
  """Raises ValueError for an unknown backbone ``name`` (or ``"identity"``)
  or a keyword argument it does not take, naming ``backbone_kwargs.FIELD``
  and the fields it takes."""
  given = list(kwargs.keys())
  if name == "identity":
    if given:
      raise ValueError(f"backbone_kwargs.{given[0]}: backbone 'identity' takes no backbone_kwargs")
    return
  if name not in BACKBONES:
    raise ValueError(f"unknown backbone {name!r}; known: {sorted(BACKBONES) + ['identity']}")
  accepted = sorted(
    f.name
    for f in dataclasses.fields(BACKBONES[name])
    if f.init and f.name not in ("parent", "name", "axis_name", "dtype")
  )  # dtype: compute_dtype
  unknown = [k for k in given if k not in accepted]
  if unknown:
    names = ", ".join(f"backbone_kwargs.{k}" for k in unknown)
    raise ValueError(
      f"{names} {'is not a field' if len(unknown) == 1 else 'are not fields'}"
      f" of backbone {name!r}; it takes {', '.join(accepted)}"
    )
