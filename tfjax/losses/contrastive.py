"""The InfoNCE family: :func:`info_nce`, :func:`dcl` and :func:`supcon`.

Cosine-similarity losses with a temperature, over the global batch under
pmap (see :mod:`tfjax.losses` for the ``axis_name`` and gradient
conventions).  Each checks its inputs in Python, then runs one jit-compiled
body.  The embeddings are normalised scale-safely
(:func:`tfjax.normalize.l2_normalize`), in float32 or wider, so each loss is
the same for ``z`` and ``1e±30·z`` and finite for float16/bfloat16 inputs; a
NaN/inf in any input entry makes the loss and its gradient NaN.
"""

from __future__ import annotations

import functools
from typing import Optional

import jax
import jax.numpy as jnp

from tfjax.normalize import l2_normalize
from tfjax.losses._common import (
  _check_embeddings,
  _check_labels,
  _check_temperature,
  _check_views,
  _float,
  _gather,
  _global_rows,
  _psum,
  _row_offset,
  nan_unless_finite,
)

Array = jax.Array

__all__ = ["info_nce", "dcl", "supcon"]


def _two_view_logits(z1, z2, temperature, axis_name):
  """Local anchors' logits against the 2N global keys, and index bookkeeping.

  Anchors are this device's rows ``[z1; z2]`` (2n of them); keys are the
  global ``[Z1; Z2]`` (2N).  Local z1 row i is global key ``off + i``, local
  z2 row i is global key ``N + off + i``; each one's positive is the other.
  """
  n = z1.shape[0]
  u1 = l2_normalize(_float(z1))
  u2 = l2_normalize(_float(z2))
  g1 = _gather(u1, axis_name)
  g2 = _gather(u2, axis_name)
  big_n = g1.shape[0]
  keys = jnp.concatenate([g1, g2], axis=0)  # [2N, d]
  anchors = jnp.concatenate([u1, u2], axis=0)  # [2n, d]
  logits = anchors @ keys.T / temperature  # [2n, 2N]
  off = _row_offset(n, axis_name)
  local = jnp.arange(n) + off
  self_idx = jnp.concatenate([local, local + big_n])  # [2n]
  pos_idx = jnp.concatenate([local + big_n, local])  # [2n]
  cols = jnp.arange(2 * big_n)[None, :]
  self_mask = cols == self_idx[:, None]
  pos_mask = cols == pos_idx[:, None]
  return logits, self_mask, pos_mask, big_n


def info_nce(
  z1: Array, z2: Array, *, temperature: float = 0.1, axis_name: Optional[str] = None
) -> Array:
  """NT-Xent (SimCLR's InfoNCE) of two views ``z1``, ``z2`` [n, d] -> scalar.

  Row i of ``z1`` and of ``z2`` are two views of the same source.  With
  ``u = z/‖z‖`` and the 2N embeddings ``u_1..u_2N`` of the (global) batch,
  anchor a with positive p(a) (its other view) contributes

      ℓ_a = −log  exp(u_a·u_p(a)/τ) / Σ_{k ≠ a} exp(u_a·u_k/τ)

  (the denominator holds the other 2N−1 embeddings: the positive and the
  2N−2 negatives), and the loss is the mean of ℓ_a over the 2N anchors.

  Args:
    z1, z2: [n, d] float embeddings of the two views (unnormalised).
    temperature: τ > 0 (ValueError when concrete; a traced temperature
      cannot be checked).
    axis_name: pmap axis; negatives then span the global batch and the
      result is the global mean, identical on every device.

  Normalisation ``z / ‖z‖`` is scale-safe; a zero row stays zero (cosine 0
  with everything, zero gradient: our choice).

  Example::

      >>> z = jax.random.normal(jax.random.key(0), (8, 16))
      >>> info_nce(z, z + 0.1, temperature=0.5)   # scalar
  """
  z1, z2 = _check_views(z1, z2)
  _check_temperature(temperature)
  return _info_nce(z1, z2, temperature, axis_name=axis_name)


@functools.partial(jax.jit, static_argnames=("axis_name",))
def _info_nce(z1, z2, temperature, axis_name):
  logits, self_mask, pos_mask, big_n = _two_view_logits(z1, z2, temperature, axis_name)
  masked = jnp.where(self_mask, -jnp.inf, logits)
  lse = jax.nn.logsumexp(masked, axis=-1)
  pos = jnp.sum(jnp.where(pos_mask, logits, 0.0), axis=-1)
  loss = _psum(jnp.sum(lse - pos), axis_name) / (2 * big_n)
  return nan_unless_finite(loss, z1, z2, temperature, axis_name=axis_name)


def dcl(
  z1: Array, z2: Array, *, temperature: float = 0.1, axis_name: Optional[str] = None
) -> Array:
  """Decoupled contrastive loss (Yeh et al. 2022) of two views [n, d] -> scalar.

  Like :func:`info_nce` but the positive is removed from the denominator:

      ℓ_a = −u_a·u_p(a)/τ + log Σ_{k ∉ {a, p(a)}} exp(u_a·u_k/τ)

  mean over the 2N anchors (the unweighted DCL, not DCLW).  The loss can be
  negative.  Needs a global batch of N ≥ 2 sources (ValueError otherwise: the
  denominator would be empty).

  Args:
    z1, z2: [n, d] float embeddings of the two views.
    temperature: τ > 0.
    axis_name: pmap axis (global negatives, global mean).

  Example::

      >>> z = jax.random.normal(jax.random.key(0), (8, 16))
      >>> dcl(z, z + 0.1)   # scalar
  """
  z1, z2 = _check_views(z1, z2)
  _check_temperature(temperature)
  big_n = _global_rows(z1.shape[0], axis_name)
  if big_n < 2:
    raise ValueError(f"dcl needs at least 2 sources in the (global) batch, got N={big_n}")
  return _dcl(z1, z2, temperature, axis_name=axis_name)


@functools.partial(jax.jit, static_argnames=("axis_name",))
def _dcl(z1, z2, temperature, axis_name):
  logits, self_mask, pos_mask, big_n = _two_view_logits(z1, z2, temperature, axis_name)
  masked = jnp.where(self_mask | pos_mask, -jnp.inf, logits)
  lse = jax.nn.logsumexp(masked, axis=-1)
  pos = jnp.sum(jnp.where(pos_mask, logits, 0.0), axis=-1)
  loss = _psum(jnp.sum(lse - pos), axis_name) / (2 * big_n)
  return nan_unless_finite(loss, z1, z2, temperature, axis_name=axis_name)


def supcon(
  z: Array, labels: Array, *, temperature: float = 0.1, axis_name: Optional[str] = None
) -> Array:
  """Supervised contrastive loss "L_out" (Khosla et al. 2020) -> scalar.

  ``z`` [n, d] holds all views flattened (e.g. ``concatenate([z1, z2])``) and
  ``labels`` [n] their integer classes.  With ``u = z/‖z‖``, for anchor i,
  A(i) = all other samples of the (global) batch and
  P(i) = {p ∈ A(i): y_p = y_i}:

      ℓ_i = −(1/|P(i)|) Σ_{p∈P(i)} log  exp(u_i·u_p/τ) / Σ_{a∈A(i)} exp(u_i·u_a/τ)

  The loss is the mean of ℓ_i over anchors with |P(i)| ≥ 1; rows without a
  positive are left out, and a batch with none gives exactly 0 (NaN if an
  input entry is NaN/inf, like every loss here).  With
  ``labels`` = source ids it is the multi-view SimCLR loss (two views: equal
  to :func:`info_nce`).  Every integer value is a group id, negative ones
  included (our choice: there is no "unlabelled" value here).

  Args:
    z: [n, d] float embeddings.
    labels: [n] int (AssertionError from chex for non-integers).
    temperature: τ > 0.
    axis_name: pmap axis (global batch, global mean).

  Example::

      >>> z = jax.random.normal(jax.random.key(0), (8, 16))
      >>> supcon(z, jnp.array([0, 1, 2, 3, 0, 1, 2, 3]))
  """
  z = _check_embeddings("z", z)
  labels = _check_labels(labels, z.shape[0])
  _check_temperature(temperature)
  return _supcon(z, labels, temperature, axis_name=axis_name)


@functools.partial(jax.jit, static_argnames=("axis_name",))
def _supcon(z, labels, temperature, axis_name):
  n = z.shape[0]
  u = l2_normalize(_float(z))
  keys = _gather(u, axis_name)
  key_labels = _gather(labels, axis_name)
  logits = u @ keys.T / temperature  # [n, N]
  off = _row_offset(n, axis_name)
  self_mask = (jnp.arange(n)[:, None] + off) == jnp.arange(keys.shape[0])[None]
  pos_mask = (labels[:, None] == key_labels[None, :]) & ~self_mask
  lse = jax.nn.logsumexp(jnp.where(self_mask, -jnp.inf, logits), axis=-1)
  n_pos = jnp.sum(pos_mask, axis=-1)
  pos_mean = jnp.sum(jnp.where(pos_mask, logits, 0.0), axis=-1) / jnp.maximum(n_pos, 1)
  valid = n_pos > 0
  total = _psum(jnp.sum(jnp.where(valid, lse - pos_mean, 0.0)), axis_name)
  count = _psum(jnp.sum(valid.astype(logits.dtype)), axis_name)
  return nan_unless_finite(total / jnp.maximum(count, 1.0), z, temperature, axis_name=axis_name)
