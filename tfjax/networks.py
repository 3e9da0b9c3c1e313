"""The full network: backbone → projector → (TransFusion head).

Two kinds of representation are kept apart:

* **inductive** — ``features`` (backbone output) and ``embeddings``
  (per-sample projector output): independent of the rest of the batch; the
  downstream evaluations use the backbone features.
* **transductive** — ``fuse`` (the TransFusion head's X_{L−1}) and the
  adjacency: they depend on the other samples in the batch.

Placement of the fusion stack as a projection head after a backbone and a
per-sample MLP projector is our choice, following the authors' code.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import flax.linen as nn
import jax

from tfjax.backbones import MLP
from tfjax.precision import at_least_float32

Array = jax.Array


class Identity(nn.Module):
  """A backbone that passes its input on, flattened to [n, d] (for raw vectors)."""

  @nn.compact
  def __call__(self, x: Array, train: bool = False) -> Array:
    del train
    return x.reshape(x.shape[0], -1)


class ContrastiveNet(nn.Module):
  """Backbone, BatchNorm-MLP projector and an optional head.

  The head is a :class:`TransFusionHead` or a
  :class:`tfjax.deep_fusion.DeepFusionHead` (``fuse`` and ``head_loss``
  work with either; ``adjacency`` is TransFusion's).

  ``__call__(x [n, ...], train) -> (features [n, F], embeddings [n, D])``.
  ``embed_dim = 0`` drops the projector: the embeddings are the features.
  With a ``head``: ``adjacency(embeddings)``, ``fuse(embeddings)`` and
  ``head_loss(embeddings, groups, labels)`` apply it.  Use
  ``init(key, x, method=ContrastiveNet.init_all)`` so that the head's
  parameters exist too.

  ``dtype`` is the projector's compute dtype (the backbone and the head carry
  their own, :mod:`tfjax.precision`).  Features and embeddings are returned
  in float32 (or wider) whatever the compute dtypes, so every loss and
  evaluation works on float32.
  """

  backbone: nn.Module
  embed_dim: int = 64
  projector_hidden: Sequence[int] = (256,)
  head: Optional[nn.Module] = None  # TransFusionHead or DeepFusionHead
  axis_name: Optional[str] = None
  dtype: Optional[Any] = None

  def setup(self):
    self.projector = None
    if self.embed_dim:
      self.projector = MLP(
        hidden=tuple(self.projector_hidden),
        out_features=self.embed_dim,
        batch_norm=True,
        axis_name=self.axis_name,
        dtype=self.dtype,
      )

  def __call__(self, x: Array, train: bool = False):
    features = at_least_float32(self.backbone(x, train=train))
    if self.projector is None:
      return features, features
    return features, at_least_float32(self.projector(features, train=train))

  def features(self, x: Array) -> Array:
    """Inductive backbone features in evaluation mode [n, F] (float32)."""
    return at_least_float32(self.backbone(x, train=False))

  def init_all(self, x: Array, train: bool = False):
    features, z = self(x, train=train)
    if self.head is not None:
      self.head(z)
    return features, z

  def _require_head(self):
    if self.head is None:
      raise ValueError("this ContrastiveNet has no TransFusion head")
    return self.head

  def adjacency(self, z: Array) -> Array:
    return self._require_head()(z)

  def fuse(self, z: Array, num_views: int = 1) -> Array:
    return self._require_head().fuse(z, num_views)

  def head_loss(
    self, z: Array, groups: Array, labels: Optional[Array] = None, num_views: int = 1, **options
  ) -> Array:
    return self._require_head().loss(z, groups, labels, num_views, **options)
