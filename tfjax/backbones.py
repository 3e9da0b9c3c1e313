"""Backbones: per-sample feature extractors (the *inductive* representation).

Each backbone maps one batch of inputs to features [n, features] and never
mixes samples (BatchNorm statistics aside, which only act in training).
"""

from __future__ import annotations

from typing import Optional, Sequence

import flax.linen as nn
import jax

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

  @nn.compact
  def __call__(self, x: Array, train: bool = False) -> Array:
    x = x.reshape((x.shape[0], -1))
    for width in self.hidden:
      x = nn.Dense(width)(x)
      if self.batch_norm:
        x = nn.BatchNorm(use_running_average=not train, momentum=0.9,
                         axis_name=self.axis_name if train else None)(x)
      x = nn.relu(x)
    return nn.Dense(self.out_features)(x)
