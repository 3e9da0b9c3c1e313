"""CLOA's Orthonormal Anchor Regression (OAR).

* :func:`orthonormal_anchors` — k fixed, never-trained orthonormal class
  anchors [k, D];
* :func:`oar_loss` — mean ``1 − cos(z_i, anchor of y_i)`` over the labelled
  rows (label −1 = unlabelled);
* :func:`with_oar` — a base loss plus the weighted OAR term (CLOA's total
  loss).
"""

from __future__ import annotations

import functools
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from tfjax.normalize import l2_normalize
from tfjax.losses._common import (
  _check_embeddings,
  _check_labels,
  _check_scalar,
  _float,
  _is_concrete,
  _psum,
  nan_unless_finite,
)

Array = jax.Array

__all__ = ["orthonormal_anchors", "oar_loss", "with_oar"]


def orthonormal_anchors(key: Array, num_classes: int, dim: int, *, dtype=jnp.float32) -> Array:
  """k = ``num_classes`` fixed orthonormal anchors in R^dim -> [k, dim].

  The rows of the Q factor of a QR decomposition of a [dim, k] standard
  Gaussian matrix, with the sign of each column fixed by the sign of R's
  diagonal (so Q is Haar-distributed on the Stiefel manifold and the result
  is a deterministic function of ``key``).  The paper asks for rows of a
  random orthogonal matrix; this construction is our choice.  Rows satisfy
  ``A Aᵀ = I_k``.  Never trained: keep the array out of the optimised
  parameters.

  Args:
    key: a PRNG key.
    num_classes: k, a static int with 1 ≤ k ≤ dim (ValueError otherwise).
    dim: D, the embedding width.
    dtype: a floating dtype for the result (TypeError otherwise: an integer
      dtype would round every entry to 0).  Drawn in float32 and cast.

  Example::

      >>> a = orthonormal_anchors(jax.random.key(0), 10, 128)
      >>> a.shape, jnp.allclose(a @ a.T, jnp.eye(10), atol=1e-5)
  """
  for name, v in (("num_classes", num_classes), ("dim", dim)):
    if not isinstance(v, (int, np.integer)) or isinstance(v, bool):
      raise TypeError(f"{name} must be a Python int, got {v!r}")
  if num_classes < 1:
    raise ValueError(f"num_classes must be >= 1, got {num_classes}")
  if num_classes > dim:
    raise ValueError(
      f"cannot draw {num_classes} orthonormal anchors in R^{dim}: num_classes must be <= dim"
    )
  try:
    floating = jnp.issubdtype(jnp.dtype(dtype), jnp.floating)
  except TypeError:
    floating = False
  if not floating:
    raise TypeError(f"orthonormal_anchors needs a floating dtype, got dtype={dtype!r}")
  return _anchors(key, int(num_classes), int(dim)).astype(dtype)


@functools.partial(jax.jit, static_argnums=(1, 2))
def _anchors(key, num_classes, dim):
  g = jax.random.normal(key, (dim, num_classes), dtype=jnp.float32)
  q, r = jnp.linalg.qr(g, mode="reduced")
  sign = jnp.where(jnp.diagonal(r) < 0, -1.0, 1.0)
  return (q * sign[None, :]).T


def oar_loss(z: Array, labels: Array, anchors: Array, *, axis_name: Optional[str] = None) -> Array:
  """Orthonormal Anchor Regression loss (CLOA) -> scalar in [0, 2].

  Pulls each labelled embedding toward its class anchor:

      L_OAR = (1/|S|) Σ_{i∈S} (1 − cos(z_i, c_{y_i})),   S = {i : y_i ≥ 0}

  ``z`` [n, D] may be all views flattened with ``labels`` repeated per view,
  so the mean also averages over the views.  Label −1 marks an unlabelled
  sample, ignored.  A batch (global batch under pmap) with no labelled sample
  gives exactly 0, with a zero gradient.

  Label values: when ``labels`` is concrete (eager call) a label ≥ k or < −1
  raises ValueError (our choice: only −1 means unlabelled).  Under jit/pmap
  the values are traced and cannot be checked; there every label outside
  [0, k) is masked out like −1 (our choice: never clipped onto another
  class's anchor).  The anchors are L2-normalised too, which changes
  nothing for orthonormal anchors (our choice, for arbitrary anchors).
  Normalisation is scale-safe (``1e±30·z`` gives the same loss) and in
  float32 or wider.  A NaN/inf anywhere in ``z`` or ``anchors`` — even in an
  unlabelled row — makes the loss and its gradient NaN.

  Args:
    z: [n, D] float embeddings.
    labels: [n] int class labels in [0, k), or −1.
    anchors: [k, D] from :func:`orthonormal_anchors` (only their direction
      matters: cos normalises them).
    axis_name: pmap axis; the mean is over the labelled rows of all devices.

  Example::

      >>> a = orthonormal_anchors(jax.random.key(0), 3, 8)
      >>> oar_loss(a[jnp.array([0, 2])], jnp.array([0, 2]), a)   # 0.0
      >>> oar_loss(a[:2], jnp.array([-1, -1]), a)                # 0.0
  """
  z = _check_embeddings("z", z)
  labels = _check_labels(labels, z.shape[0])
  anchors = _check_embeddings("anchors", anchors)
  k = anchors.shape[0]
  if anchors.shape[1] != z.shape[1]:
    raise ValueError(
      f"anchors must have the embeddings' width {z.shape[1]}, got anchors "
      f"{anchors.shape} for z {z.shape}"
    )
  if _is_concrete(labels):
    lab = np.asarray(labels)
    if lab.size and (lab.max() >= k or lab.min() < -1):
      raise ValueError(
        f"labels must lie in [0, {k}) (k = number of anchors) or be −1 for "
        f"unlabelled; got min {lab.min()}, max {lab.max()}"
      )
  return _oar_loss(z, labels, anchors, axis_name=axis_name)


@functools.partial(jax.jit, static_argnames=("axis_name",))
def _oar_loss(z, labels, anchors, axis_name):
  k = anchors.shape[0]
  valid = (labels >= 0) & (labels < k)
  idx = jnp.where(valid, labels, 0)
  u = l2_normalize(_float(z))
  c = l2_normalize(_float(anchors))[idx]  # [n, D]
  cos = jnp.sum(u * c, axis=-1)
  total = _psum(jnp.sum(jnp.where(valid, 1.0 - cos, 0.0)), axis_name)
  count = _psum(jnp.sum(valid.astype(cos.dtype)), axis_name)
  return nan_unless_finite(total / jnp.maximum(count, 1.0), z, anchors, axis_name=axis_name)


def with_oar(
  base_loss: Array,
  z: Array,
  labels: Array,
  anchors: Array,
  *,
  weight: float = 1.0,
  axis_name: Optional[str] = None,
) -> Array:
  """CLOA's total loss ``L = base_loss + weight · oar_loss(z, labels, anchors)``.

  ``base_loss`` is any scalar loss already computed on the batch (InfoNCE,
  DCL, Barlow Twins, VICReg, TransFusion's JSD...); λ = ``weight`` = 1 by
  default (base loss and anchor regression weighted equally; see
  ``docs/design.md``, section "Losses"); it must be finite and ≥ 0
  (ValueError when concrete).  Pass the same ``axis_name`` as for the base
  loss.

  Example::

      >>> a = orthonormal_anchors(jax.random.key(0), 4, 16)
      >>> z1, z2 = ...                                # [n, 16] each
      >>> y = ...                                     # [n], −1 = unlabelled
      >>> with_oar(info_nce(z1, z2), jnp.concatenate([z1, z2]),
      ...          jnp.concatenate([y, y]), a)
  """
  _check_scalar("weight", weight, nonnegative=True)
  return base_loss + weight * oar_loss(z, labels, anchors, axis_name=axis_name)
