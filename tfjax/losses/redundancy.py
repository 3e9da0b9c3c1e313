"""Redundancy-reduction losses: :func:`barlow_twins` and :func:`vicreg`.

Both standardise or regularise per-feature statistics of two views, taken
over the global batch under pmap (``psum`` of sums, see :mod:`tfjax.losses`);
neither normalises the embeddings.  Both compute in float32 or wider
(float16/bfloat16 inputs are upcast) and are NaN (value and gradient) when
an input entry is NaN/inf.

Scale: Barlow Twins is scale-invariant up to its ``eps`` (it standardises
each feature); we divide each feature by its largest |entry| first, so
``1e30·z`` gives the value of ``z`` instead of overflowing, and ``1e-30·z``
gives the exact value with ``eps`` dominating (≈ d).  VICReg is not
scale-invariant by definition (a squared distance and a variance hinge at
1); its float32 value overflows to inf only when the true value exceeds
float32's range (|z| beyond about 1e9).
"""

from __future__ import annotations

import functools
from typing import Optional

import jax
import jax.numpy as jnp

from tfjax.losses._common import (
  _check_scalar,
  _check_views,
  _float,
  _global_mean,
  _global_rows,
  _pmax,
  _psum,
  nan_unless_finite,
)

Array = jax.Array

__all__ = ["barlow_twins", "vicreg"]


def barlow_twins(
  z1: Array,
  z2: Array,
  *,
  lambda_offdiag: float = 5e-3,
  eps: float = 1e-5,
  axis_name: Optional[str] = None,
) -> Array:
  """Barlow Twins loss (Zbontar et al. 2021) of two views [n, d] -> scalar.

  Each view is standardised per feature over the (global) batch of N rows,
  ``ẑ = (z − mean) / sqrt(var + eps)`` with the biased variance (as the
  authors' BatchNorm1d(affine=False); our choice of ``eps = 1e-5`` likewise),
  then

      C = ẑ1ᵀ ẑ2 / N                        [d, d]
      loss = Σ_i (1 − C_ii)² + λ Σ_{i≠j} C_ij²

  No embedding normalisation and no loss scaling beyond that.  Computed
  scale-safely: each feature is first divided by its largest |entry| over
  the (global) batch, with eps scaled to match, which is the same number
  without overflow (our implementation choice).

  Args:
    z1, z2: [n, d] float embeddings (projector outputs); the global batch
      needs N ≥ 2 rows (a batch standard deviation), ValueError otherwise.
    lambda_offdiag: λ ≥ 0 and finite, weight of the redundancy term
      (ValueError when concrete).
    eps: added to the variance (> 0 and finite, ValueError when concrete).
    axis_name: pmap axis (statistics and C over the global batch).

  Example::

      >>> z = jax.random.normal(jax.random.key(0), (32, 8))
      >>> barlow_twins(z, z)   # small: C ≈ I up to the off-diagonal noise
  """
  z1, z2 = _check_views(z1, z2)
  big_n = _global_rows(z1.shape[0], axis_name)
  if big_n < 2:
    raise ValueError(
      f"barlow_twins needs at least 2 rows in the (global) batch to "
      f"standardise each feature, got N={big_n}"
    )
  _check_scalar("lambda_offdiag", lambda_offdiag, nonnegative=True)
  _check_scalar("eps", eps, positive=True)
  return _barlow_twins(z1, z2, lambda_offdiag, eps, axis_name=axis_name)


def _standardise(z, eps, axis_name):
  """(z − mean)/sqrt(var + eps) per feature, without overflow -> ([n, d], N).

  With s = max|z| per feature (a constant for autodiff: the result does not
  depend on it), y = z/s has entries in [−1, 1] and the result is
  (y − ȳ)·k with k = 1/sqrt(var_y + eps/s²), written as
  s/sqrt(s²·var_y + eps) when s < 1 so that neither form overflows.
  """
  z = _float(z)
  # stop_gradient before the pmax (which has no differentiation rule).
  s = _pmax(jax.lax.stop_gradient(jnp.max(jnp.abs(z), axis=0)), axis_name)  # [d]
  s = jnp.where(s == 0, 1.0, s)  # NaN stays
  y = z / s
  mean, big_n = _global_mean(y, axis_name)
  x = y - mean
  var = _psum(jnp.sum(jnp.square(x), axis=0), axis_name) / big_n
  big = s >= 1
  s_big = jnp.where(big, s, 1.0)
  s_small = jnp.where(big, 1.0, s)
  k = jnp.where(
    big,
    jax.lax.rsqrt(var + eps / jnp.square(s_big)),
    s_small * jax.lax.rsqrt(jnp.square(s_small) * var + eps),
  )
  return x * k, big_n


@functools.partial(jax.jit, static_argnames=("axis_name",))
def _barlow_twins(z1, z2, lambda_offdiag, eps, axis_name):
  a, big_n = _standardise(z1, eps, axis_name)
  b, _ = _standardise(z2, eps, axis_name)
  c = _psum(a.T @ b, axis_name) / big_n
  diag = jnp.diagonal(c)
  on = jnp.sum(jnp.square(1.0 - diag))
  off = jnp.sum(jnp.square(c)) - jnp.sum(jnp.square(diag))
  loss = on + lambda_offdiag * off
  return nan_unless_finite(loss, z1, z2, lambda_offdiag, eps, axis_name=axis_name)


def vicreg(
  z1: Array,
  z2: Array,
  *,
  sim_coeff: float = 25.0,
  std_coeff: float = 25.0,
  cov_coeff: float = 1.0,
  eps: float = 1e-4,
  axis_name: Optional[str] = None,
) -> Array:
  """VICReg loss (Bardes et al. 2022) of two views [n, d] -> scalar.

  With N rows in the (global) batch and d features:

      inv  = (1/(N d)) Σ ‖z1_i − z2_i‖²                         (MSE)
      var  = ½ mean_j relu(1 − sqrt(Var_j(z1) + eps))
           + ½ mean_j relu(1 − sqrt(Var_j(z2) + eps))
      cov  = (1/d) Σ_{j≠k} Cov(z1)_jk² + (1/d) Σ_{j≠k} Cov(z2)_jk²
      loss = sim_coeff·inv + std_coeff·var + cov_coeff·cov

  Var and Cov are unbiased (divide by N − 1), as in the authors' code, so the
  global batch needs N ≥ 2 (ValueError otherwise).  Not scale-invariant (see
  the module docstring); computed in float32 or wider.

  Args:
    z1, z2: [n, d] float embeddings (expander outputs).
    sim_coeff, std_coeff, cov_coeff: the three weights (25, 25, 1), each
      finite and ≥ 0 (ValueError when concrete).
    eps: added to the variance under the square root; > 0 and finite
      (ValueError when concrete: with eps ≤ 0 the square root of a zero
      variance has an infinite or NaN gradient).
    axis_name: pmap axis (statistics over the global batch).

  Example::

      >>> z = jax.random.normal(jax.random.key(0), (32, 8))
      >>> vicreg(z, z)   # inv = 0; var, cov from the sample statistics
  """
  z1, z2 = _check_views(z1, z2)
  big_n = _global_rows(z1.shape[0], axis_name)
  if big_n < 2:
    raise ValueError(f"vicreg needs at least 2 rows in the (global) batch, got N={big_n}")
  for name, value in (("sim_coeff", sim_coeff), ("std_coeff", std_coeff), ("cov_coeff", cov_coeff)):
    _check_scalar(name, value, nonnegative=True)
  _check_scalar("eps", eps, positive=True)
  return _vicreg(z1, z2, sim_coeff, std_coeff, cov_coeff, eps, axis_name=axis_name)


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
  loss = sim_coeff * inv + std_coeff * 0.5 * (s1 + s2) + cov_coeff * (c1 + c2)
  return nan_unless_finite(loss, z1, z2, sim_coeff, std_coeff, cov_coeff, eps, axis_name=axis_name)
