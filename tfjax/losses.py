"""Contrastive losses of the CLOA paper and its Orthonormal Anchor Regression.

Every loss is a pure, jit-able function of a batch of embeddings that returns a
scalar.  Each takes an optional ``axis_name``: inside ``jax.pmap`` (or any
mapped axis with collectives) each device passes its *local* rows, the
negatives and batch statistics are taken over the **global** batch
(``jax.lax.all_gather(..., tiled=True)`` / ``jax.lax.psum``), the "self" and
"positive" entries sit at global indices (``axis_index · n_local``), and the
returned value is the global loss, the same scalar on every device.

Gradients under pmap (JAX semantics, not a choice of ours): ``jax.grad`` of a
pmapped function differentiates the *sum over devices* of the per-device
outputs.  Every device returns the same global loss ``L``, so the gradient
w.r.t. a device's local rows is ``num_devices · ∂L/∂rows``, and for replicated
parameters ``jax.lax.pmean(grads, axis_name)`` is exactly the single-device
gradient of ``L`` (the tests check both).

Losses (SPEC §3):

* :func:`info_nce` — NT-Xent of SimCLR (Chen et al. 2020).
* :func:`supcon`   — supervised contrastive, "L_out" (Khosla et al. 2020).
* :func:`dcl`      — decoupled contrastive (Yeh et al. 2022).
* :func:`barlow_twins` — Zbontar et al. 2021.
* :func:`vicreg`   — Bardes et al. 2022.
* :func:`jsd_loss` — TransFusion's JSD loss (re-exported from
  :mod:`tfjax.affinity`).
* :func:`orthonormal_anchors`, :func:`oar_loss`, :func:`with_oar` — CLOA's
  Orthonormal Anchor Regression.

Cosine-based losses L2-normalise the embeddings inside with a safe epsilon
(``x / max(‖x‖, 1e-12)``): a zero row gives a finite loss and gradient.

Each loss validates its inputs in Python, then runs one jit-compiled body
(``axis_name`` static), so eager calls from a notebook are fast; inside a
caller's jit/pmap that body is simply inlined.

Label checks: shapes and dtypes are checked on static shapes before any
compute.  Label *values* can only be checked when they are concrete (an eager
call); under ``jit``/``pmap`` they are traced, and out-of-range labels are
then masked out as documented per function (never clipped onto a wrong
class).
"""

from __future__ import annotations

import functools
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from tfjax.affinity import jsd_loss  # re-exported  # noqa: F401
from tfjax.attention import l2_normalize

Array = jax.Array

__all__ = [
    "info_nce", "supcon", "dcl", "barlow_twins", "vicreg", "jsd_loss",
    "orthonormal_anchors", "oar_loss", "with_oar",
]


# ----------------------------------------------------------------------------
# Checks and pmap helpers.


def _is_concrete(x) -> bool:
  """True when ``x`` holds values we can read now (not a jit/pmap tracer)."""
  return not isinstance(x, jax.core.Tracer)


def _check_embeddings(name: str, z) -> Array:
  z = jnp.asarray(z) if not isinstance(z, jax.core.Tracer) else z
  if z.ndim != 2:
    raise ValueError(
        f"{name} must be a 2-D array [n, d] of embeddings, got shape {z.shape}")
  if not jnp.issubdtype(z.dtype, jnp.floating):
    raise TypeError(f"{name} must be floating point, got dtype {z.dtype}")
  if z.shape[0] < 1 or z.shape[1] < 1:
    raise ValueError(f"{name} must be non-empty [n, d], got shape {z.shape}")
  return z


def _check_views(z1, z2) -> tuple[Array, Array]:
  z1 = _check_embeddings("z1", z1)
  z2 = _check_embeddings("z2", z2)
  if z1.shape != z2.shape:
    raise ValueError(
        f"the two views must have the same shape [n, d], got z1 {z1.shape} "
        f"and z2 {z2.shape}")
  return z1, z2


def _check_labels(labels, n: int) -> Array:
  labels = jnp.asarray(labels) if _is_concrete(labels) else labels
  if not jnp.issubdtype(labels.dtype, jnp.integer):
    raise TypeError(f"labels must be integers, got dtype {labels.dtype}")
  if labels.shape != (n,):
    raise ValueError(
        f"labels must have shape [n] = ({n},) to match the embeddings, got "
        f"{labels.shape}")
  return labels


def _check_temperature(temperature) -> None:
  if _is_concrete(temperature):
    t = np.asarray(temperature)
    if t.ndim != 0:
      raise ValueError(f"temperature must be a scalar, got shape {t.shape}")
    if not np.isfinite(t) or t <= 0:
      raise ValueError(f"temperature must be > 0 and finite, got {float(t)}")


def _gather(x: Array, axis_name: Optional[str]) -> Array:
  """All rows of the global batch (this device's rows when axis_name is None)."""
  if axis_name is None:
    return x
  return jax.lax.all_gather(x, axis_name, tiled=True)


def _psum(x: Array, axis_name: Optional[str]) -> Array:
  return x if axis_name is None else jax.lax.psum(x, axis_name)


def _row_offset(n_local: int, axis_name: Optional[str]):
  """Global index of this device's first row."""
  if axis_name is None:
    return 0
  return jax.lax.axis_index(axis_name) * n_local


def _global_rows(n_local: int, axis_name: Optional[str]) -> int:
  """N, the number of rows of the global batch (a static int)."""
  if axis_name is None:
    return n_local
  return n_local * int(jax.lax.axis_size(axis_name))


def _global_mean(x: Array, axis_name: Optional[str]) -> tuple[Array, int]:
  """Mean over the rows of the global batch [d], and N."""
  big_n = _global_rows(x.shape[0], axis_name)
  return _psum(jnp.sum(x, axis=0), axis_name) / big_n, big_n


def _float(z: Array) -> Array:
  """Computes in at least float32 (bf16/f16 embeddings are upcast)."""
  return z.astype(jnp.promote_types(z.dtype, jnp.float32))


# ----------------------------------------------------------------------------
# Two-view InfoNCE family.


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
  keys = jnp.concatenate([g1, g2], axis=0)                      # [2N, d]
  anchors = jnp.concatenate([u1, u2], axis=0)                   # [2n, d]
  logits = anchors @ keys.T / temperature                       # [2n, 2N]
  off = _row_offset(n, axis_name)
  local = jnp.arange(n) + off
  self_idx = jnp.concatenate([local, local + big_n])            # [2n]
  pos_idx = jnp.concatenate([local + big_n, local])             # [2n]
  cols = jnp.arange(2 * big_n)[None, :]
  self_mask = cols == self_idx[:, None]
  pos_mask = cols == pos_idx[:, None]
  return logits, self_mask, pos_mask, big_n


def info_nce(z1: Array, z2: Array, *, temperature: float = 0.1,
             axis_name: Optional[str] = None) -> Array:
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

  Normalisation ``z / max(‖z‖, 1e-12)`` (our choice of epsilon) keeps a zero
  row finite.

  Example::

      >>> z = jax.random.normal(jax.random.key(0), (8, 16))
      >>> info_nce(z, z + 0.1, temperature=0.5)   # scalar
  """
  z1, z2 = _check_views(z1, z2)
  _check_temperature(temperature)
  return _info_nce(z1, z2, temperature, axis_name=axis_name)


@functools.partial(jax.jit, static_argnames=("axis_name",))
def _info_nce(z1, z2, temperature, axis_name):
  logits, self_mask, pos_mask, big_n = _two_view_logits(
      z1, z2, temperature, axis_name)
  masked = jnp.where(self_mask, -jnp.inf, logits)
  lse = jax.nn.logsumexp(masked, axis=-1)
  pos = jnp.sum(jnp.where(pos_mask, logits, 0.0), axis=-1)
  return _psum(jnp.sum(lse - pos), axis_name) / (2 * big_n)


def dcl(z1: Array, z2: Array, *, temperature: float = 0.1,
        axis_name: Optional[str] = None) -> Array:
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
    raise ValueError(
        f"dcl needs at least 2 sources in the (global) batch, got N={big_n}")
  return _dcl(z1, z2, temperature, axis_name=axis_name)


@functools.partial(jax.jit, static_argnames=("axis_name",))
def _dcl(z1, z2, temperature, axis_name):
  logits, self_mask, pos_mask, big_n = _two_view_logits(
      z1, z2, temperature, axis_name)
  masked = jnp.where(self_mask | pos_mask, -jnp.inf, logits)
  lse = jax.nn.logsumexp(masked, axis=-1)
  pos = jnp.sum(jnp.where(pos_mask, logits, 0.0), axis=-1)
  return _psum(jnp.sum(lse - pos), axis_name) / (2 * big_n)


def supcon(z: Array, labels: Array, *, temperature: float = 0.1,
           axis_name: Optional[str] = None) -> Array:
  """Supervised contrastive loss "L_out" (Khosla et al. 2020) -> scalar.

  ``z`` [n, d] holds all views flattened (e.g. ``concatenate([z1, z2])``) and
  ``labels`` [n] their integer classes.  With ``u = z/‖z‖``, for anchor i,
  A(i) = all other samples of the (global) batch and
  P(i) = {p ∈ A(i): y_p = y_i}:

      ℓ_i = −(1/|P(i)|) Σ_{p∈P(i)} log  exp(u_i·u_p/τ) / Σ_{a∈A(i)} exp(u_i·u_a/τ)

  The loss is the mean of ℓ_i over anchors with |P(i)| ≥ 1; rows without a
  positive are left out, and a batch with none gives exactly 0.  With
  ``labels`` = source ids it is the multi-view SimCLR loss (two views: equal
  to :func:`info_nce`).  Every integer value is a group id, negative ones
  included (our choice: there is no "unlabelled" value here).

  Args:
    z: [n, d] float embeddings.
    labels: [n] int (TypeError for non-integers).
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
  logits = u @ keys.T / temperature                              # [n, N]
  off = _row_offset(n, axis_name)
  self_mask = (jnp.arange(n)[:, None] + off) == jnp.arange(keys.shape[0])[None]
  pos_mask = (labels[:, None] == key_labels[None, :]) & ~self_mask
  lse = jax.nn.logsumexp(jnp.where(self_mask, -jnp.inf, logits), axis=-1)
  n_pos = jnp.sum(pos_mask, axis=-1)
  pos_mean = (jnp.sum(jnp.where(pos_mask, logits, 0.0), axis=-1)
              / jnp.maximum(n_pos, 1))
  valid = n_pos > 0
  total = _psum(jnp.sum(jnp.where(valid, lse - pos_mean, 0.0)), axis_name)
  count = _psum(jnp.sum(valid.astype(logits.dtype)), axis_name)
  return total / jnp.maximum(count, 1.0)


# ----------------------------------------------------------------------------
# Redundancy-reduction losses (batch statistics over the global batch).


def barlow_twins(z1: Array, z2: Array, *, lambda_offdiag: float = 5e-3,
                 eps: float = 1e-5,
                 axis_name: Optional[str] = None) -> Array:
  """Barlow Twins loss (Zbontar et al. 2021) of two views [n, d] -> scalar.

  Each view is standardised per feature over the (global) batch of N rows,
  ``ẑ = (z − mean) / sqrt(var + eps)`` with the biased variance (as the
  authors' BatchNorm1d(affine=False); our choice of ``eps = 1e-5`` likewise),
  then

      C = ẑ1ᵀ ẑ2 / N                        [d, d]
      loss = Σ_i (1 − C_ii)² + λ Σ_{i≠j} C_ij²

  No embedding normalisation and no loss scaling beyond that.

  Args:
    z1, z2: [n, d] float embeddings (projector outputs).
    lambda_offdiag: λ ≥ 0, weight of the redundancy term.
    eps: added to the variance (> 0).
    axis_name: pmap axis (statistics and C over the global batch).

  Example::

      >>> z = jax.random.normal(jax.random.key(0), (32, 8))
      >>> barlow_twins(z, z)   # small: C ≈ I up to the off-diagonal noise
  """
  z1, z2 = _check_views(z1, z2)
  if _is_concrete(eps) and not float(eps) > 0:
    raise ValueError(f"eps must be > 0, got {eps}")
  return _barlow_twins(z1, z2, lambda_offdiag, eps, axis_name=axis_name)


@functools.partial(jax.jit, static_argnames=("axis_name",))
def _barlow_twins(z1, z2, lambda_offdiag, eps, axis_name):
  def standardise(z):
    z = _float(z)
    mean, big_n = _global_mean(z, axis_name)
    var = _psum(jnp.sum(jnp.square(z - mean), axis=0), axis_name) / big_n
    return (z - mean) * jax.lax.rsqrt(var + eps), big_n

  a, big_n = standardise(z1)
  b, _ = standardise(z2)
  c = _psum(a.T @ b, axis_name) / big_n
  diag = jnp.diagonal(c)
  on = jnp.sum(jnp.square(1.0 - diag))
  off = jnp.sum(jnp.square(c)) - jnp.sum(jnp.square(diag))
  return on + lambda_offdiag * off


def vicreg(z1: Array, z2: Array, *, sim_coeff: float = 25.0,
           std_coeff: float = 25.0, cov_coeff: float = 1.0, eps: float = 1e-4,
           axis_name: Optional[str] = None) -> Array:
  """VICReg loss (Bardes et al. 2022) of two views [n, d] -> scalar.

  With N rows in the (global) batch and d features:

      inv  = (1/(N d)) Σ ‖z1_i − z2_i‖²                         (MSE)
      var  = ½ mean_j relu(1 − sqrt(Var_j(z1) + eps))
           + ½ mean_j relu(1 − sqrt(Var_j(z2) + eps))
      cov  = (1/d) Σ_{j≠k} Cov(z1)_jk² + (1/d) Σ_{j≠k} Cov(z2)_jk²
      loss = sim_coeff·inv + std_coeff·var + cov_coeff·cov

  Var and Cov are unbiased (divide by N − 1), as in the authors' code, so the
  global batch needs N ≥ 2 (ValueError otherwise).

  Args:
    z1, z2: [n, d] float embeddings (expander outputs).
    sim_coeff, std_coeff, cov_coeff: the three weights (25, 25, 1).
    eps: added to the variance under the square root.
    axis_name: pmap axis (statistics over the global batch).

  Example::

      >>> z = jax.random.normal(jax.random.key(0), (32, 8))
      >>> vicreg(z, z)   # inv = 0; var, cov from the sample statistics
  """
  z1, z2 = _check_views(z1, z2)
  big_n = _global_rows(z1.shape[0], axis_name)
  if big_n < 2:
    raise ValueError(
        f"vicreg needs at least 2 rows in the (global) batch, got N={big_n}")
  return _vicreg(z1, z2, sim_coeff, std_coeff, cov_coeff, eps,
                 axis_name=axis_name)


@functools.partial(jax.jit, static_argnames=("axis_name",))
def _vicreg(z1, z2, sim_coeff, std_coeff, cov_coeff, eps, axis_name):
  z1, z2 = _float(z1), _float(z2)
  d = z1.shape[1]
  big_n = _global_rows(z1.shape[0], axis_name)
  inv = _psum(jnp.sum(jnp.square(z1 - z2)), axis_name) / (big_n * d)

  def var_cov(z):
    mean, _ = _global_mean(z, axis_name)
    x = z - mean
    cov = _psum(x.T @ x, axis_name) / (big_n - 1)
    var = jnp.diagonal(cov)
    std = jnp.sqrt(var + eps)
    std_loss = jnp.mean(jax.nn.relu(1.0 - std))
    cov_loss = (jnp.sum(jnp.square(cov)) - jnp.sum(jnp.square(var))) / d
    return std_loss, cov_loss

  s1, c1 = var_cov(z1)
  s2, c2 = var_cov(z2)
  return (sim_coeff * inv + std_coeff * 0.5 * (s1 + s2)
          + cov_coeff * (c1 + c2))


# ----------------------------------------------------------------------------
# Orthonormal Anchor Regression (CLOA).


def orthonormal_anchors(key: Array, num_classes: int, dim: int, *,
                        dtype=jnp.float32) -> Array:
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
        f"cannot draw {num_classes} orthonormal anchors in R^{dim}: "
        f"num_classes must be <= dim")
  return _anchors(key, int(num_classes), int(dim)).astype(dtype)


@functools.partial(jax.jit, static_argnums=(1, 2))
def _anchors(key, num_classes, dim):
  g = jax.random.normal(key, (dim, num_classes), dtype=jnp.float32)
  q, r = jnp.linalg.qr(g, mode="reduced")
  sign = jnp.where(jnp.diagonal(r) < 0, -1.0, 1.0)
  return (q * sign[None, :]).T


def oar_loss(z: Array, labels: Array, anchors: Array, *,
             axis_name: Optional[str] = None) -> Array:
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
        f"{anchors.shape} for z {z.shape}")
  if _is_concrete(labels):
    lab = np.asarray(labels)
    if lab.size and (lab.max() >= k or lab.min() < -1):
      raise ValueError(
          f"labels must lie in [0, {k}) (k = number of anchors) or be −1 for "
          f"unlabelled; got min {lab.min()}, max {lab.max()}")
  return _oar_loss(z, labels, anchors, axis_name=axis_name)


@functools.partial(jax.jit, static_argnames=("axis_name",))
def _oar_loss(z, labels, anchors, axis_name):
  k = anchors.shape[0]
  valid = (labels >= 0) & (labels < k)
  idx = jnp.where(valid, labels, 0)
  u = l2_normalize(_float(z))
  c = l2_normalize(_float(anchors))[idx]                         # [n, D]
  cos = jnp.sum(u * c, axis=-1)
  total = _psum(jnp.sum(jnp.where(valid, 1.0 - cos, 0.0)), axis_name)
  count = _psum(jnp.sum(valid.astype(cos.dtype)), axis_name)
  return total / jnp.maximum(count, 1.0)


def with_oar(base_loss: Array, z: Array, labels: Array, anchors: Array, *,
             weight: float = 1.0, axis_name: Optional[str] = None) -> Array:
  """CLOA's total loss ``L = base_loss + weight · oar_loss(z, labels, anchors)``.

  ``base_loss`` is any scalar loss already computed on the batch (InfoNCE,
  DCL, Barlow Twins, VICReg, TransFusion's JSD...); λ = ``weight`` = 1 by
  default (SPEC §3).  Pass the same ``axis_name`` as for the base loss.

  Example::

      >>> a = orthonormal_anchors(jax.random.key(0), 4, 16)
      >>> z1, z2 = ...                                # [n, 16] each
      >>> y = ...                                     # [n], −1 = unlabelled
      >>> with_oar(info_nce(z1, z2), jnp.concatenate([z1, z2]),
      ...          jnp.concatenate([y, y]), a)
  """
  return base_loss + weight * oar_loss(z, labels, anchors, axis_name=axis_name)
